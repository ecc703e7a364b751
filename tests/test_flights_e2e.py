"""The second example end to end: real flights with point-in-time window features, checked against pandas."""

from __future__ import annotations

from pathlib import Path

import mlflow.spark
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from deltaml.cli import main
from deltaml.ml.features import feature_names
from deltaml.ml.windows import WindowFeatures
from tests.conftest import ROOT, write_config

pytestmark = pytest.mark.slow

# The first week of January 2013: about 6,000 flights, so the test stays small.
FIRST_WEEK = "month = 1 AND day <= 7"


@pytest.fixture
def flights_conf(tmp_path: Path) -> Path:
    data = yaml.safe_load((ROOT / "conf" / "flight_delays.yml").read_text())
    data["state_dir"] = str(tmp_path / "state")
    data["source"]["filter"] = FIRST_WEEK
    return write_config(tmp_path / "flight_delays.yml", data)


def _expected_plane_windows(clean: pd.DataFrame) -> pd.DataFrame:
    """plane_count_1d and plane_dep_delay_mean_7d by brute force: every pair of flights of one plane."""
    flights = clean[["flight_id", "tailnum", "scheduled_at"]]
    events = clean.loc[clean["departed_at"].notna(), ["tailnum", "departed_at", "dep_delay"]]
    pairs = flights.merge(events, on="tailnum", how="left")
    before = pairs["departed_at"] < pairs["scheduled_at"]
    age = pairs["scheduled_at"] - pairs["departed_at"]
    day = pairs[before & (age <= pd.Timedelta(days=1))].groupby("flight_id").size()
    week = pairs[before & (age <= pd.Timedelta(days=7))].groupby("flight_id")["dep_delay"].mean()
    out = flights[["flight_id"]].set_index("flight_id")
    out["plane_count_1d"] = day.reindex(out.index).fillna(0).astype("int64")
    out["plane_dep_delay_mean_7d"] = week.reindex(out.index)
    return out.reset_index()


def test_flights_pipeline_trains_and_scores_with_point_in_time_windows(
    spark: SparkSession, flights_conf: Path, tmp_path: Path
) -> None:
    assert main(["run", str(flights_conf)]) == 0
    state = tmp_path / "state" / "warehouse"
    clean = spark.read.format("delta").load(str(state / "bronze/flights_clean"))
    predictions = spark.read.format("delta").load(str(state / "gold/flight_delay_predictions"))
    rows = clean.count()
    assert 5000 < rows < 8000
    assert predictions.count() == predictions.select("flight_id").distinct().count() == rows

    champion = MlflowClient().get_model_version_by_alias("flight_delays", "champion")
    assert float(champion.tags["metric.test_auc_roc"]) > 0.65
    model = mlflow.spark.load_model(f"models:/flight_delays/{champion.version}")
    windows = [s for s in model.stages if isinstance(s, WindowFeatures)]
    assert [w.getPrefix() for w in windows] == ["plane", "same_flight"]
    from deltaml.config.loader import load_config

    features = load_config(flights_conf).pipeline.features
    names = feature_names(model, features)
    assert len(names) == model.transform(clean.limit(1)).first()["features"].size
    assert {"plane_count_1d", "same_flight_dep_delay_mean_7d", "missing(plane_dep_delay_mean_7d)"} <= set(names)
    # In one week of data a 30-day mean is the 7-day mean: the selection dropped the copy.
    assert "same_flight_dep_delay_mean_30d" not in names
    assert any(n.startswith("hash(tailnum)[") for n in names)

    # The registered model's window stage against pandas on the same rows: only departures
    # strictly before each flight's scheduled time, within 1 (or 7) days, count.
    clean_pdf = clean.select("flight_id", "tailnum", "scheduled_at", "departed_at", "dep_delay").toPandas()
    expected = spark.createDataFrame(
        _expected_plane_windows(clean_pdf), "flight_id long, plane_count_1d long, plane_dep_delay_mean_7d double"
    )
    actual = windows[0].transform(clean).select("flight_id", "plane_count_1d", "plane_dep_delay_mean_7d")
    assertDataFrameEqual(actual, expected, rtol=1e-9)
    assert actual.where("plane_count_1d > 0").count() > rows // 2
