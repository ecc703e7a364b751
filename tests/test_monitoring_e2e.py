"""Monitoring and retraining on the Telco champion: no drift on a batch like the training data, drift on exactly
the shifted features, decay against late labels, and a retraining policy with dry run and cooldown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from deltaml.cli import main
from deltaml.config.loader import load_config
from deltaml.pipeline.retraining import retrain
from tests.browser import rendered_text
from tests.conftest import telco_config_dict, write_config
from tests.test_pipeline_e2e import run_notebook

pytestmark = pytest.mark.slow

CLEAN = "warehouse/silver/telco_churn_clean"
SPLIT = "warehouse/silver/telco_churn_split"
MONITORING = "warehouse/gold/telco_churn_predictions_monitoring"
RETRAINING = "warehouse/gold/telco_churn_predictions_retraining"
SHIFTED = {"monthly_charges", "tenure", "contract"}


@pytest.fixture(scope="module")
def trained(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One Telco run (one untuned logistic regression), labels arriving in the clean table, low drift limits."""
    folder = tmp_path_factory.mktemp("monitoring")
    data = telco_config_dict()
    data["state_dir"] = str(folder / "state")
    data["model"] = {"family": "logistic_regression", "params": {"regParam": 0.01, "maxIter": 20}}
    data["tuning"] = {"max_evals": 1}
    data["register"] = {"gate": {"enabled": False}}
    data["monitor"]["drift_share"] = 0.1
    data["monitor"]["labels"] = {"table": {"path": "silver/telco_churn_clean"}}
    data["retrain"] = {"drift_share": 0.1, "performance_drop": None, "cooldown_hours": 0}
    conf = write_config(folder / "telco_churn.yml", data)
    assert main(["run", str(conf)]) == 0
    yield conf


def _load(spark: SparkSession, conf: Path, path: str) -> DataFrame:
    return spark.read.format("delta").load(str(conf.parent / "state" / path))


def _append_test_rows(spark: SparkSession, conf: Path, batch: str, offset: int, shift: bool) -> None:
    """The test split's rows under new keys as a new clean batch; ``shift`` moves three features."""
    test = _load(spark, conf, SPLIT).where("split = 'test'").drop("split")
    rows = test.withColumn("customer_id", F.col("customer_id") + offset).withColumn("_ingest_batch_id", F.lit(batch))
    if shift:
        rows = (
            rows.withColumn("monthly_charges", F.col("monthly_charges") * 1.3 + 15)
            .withColumn("tenure", F.col("tenure") + 24)
            .withColumn("contract", F.lit("Month-to-month"))
        )
    clean = _load(spark, conf, CLEAN)
    rows.select(*clean.columns).write.format("delta").mode("append").save(str(conf.parent / "state" / CLEAN))


def _window_rows(spark: SparkSession, conf: Path) -> list[Any]:
    table = _load(spark, conf, MONITORING)
    latest = table.agg(F.max("monitored_at")).first()
    assert latest is not None
    return table.where(F.col("monitored_at") == latest[0]).collect()


def _drifted(rows: list[Any]) -> set[str]:
    return {r["feature"] for r in rows if r["drifted"] and r["kind"] in ("numeric", "categorical")}


def test_monitor_flags_exactly_the_shifted_features_and_retraining_follows(
    spark: SparkSession, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(trained).pipeline
    features = {*cfg.features.numeric, *cfg.features.categorical}

    # A batch drawn like the training data: scored alone (incremental), no feature drifts.
    _append_test_rows(spark, trained, "like-train", 1_000_000, shift=False)
    assert main(["score", str(trained)]) == 0
    assert main(["monitor", str(trained)]) == 0
    calm = _window_rows(spark, trained)
    assert {r["feature"] for r in calm if r["kind"] in ("numeric", "categorical")} == {*features, "__predictions__"}
    assert _drifted(calm) - {"__predictions__"} == set()
    share = next(r for r in calm if r["metric"] == "drifted_share")
    assert (share["value"], share["drifted"], share["current_rows"]) == (0.0, False, 1056)
    assert {r["batches"] for r in calm} == {"like-train"}

    # The dry run and the policy see no trigger.
    quiet = retrain(load_config(trained), spark=spark)
    assert (quiet.action, quiet.fired) == ("no_trigger", [])

    # A shifted batch: exactly the three shifted features drift, through the notebook this time.
    _append_test_rows(spark, trained, "shifted", 2_000_000, shift=True)
    assert main(["score", str(trained)]) == 0
    capsys.readouterr()
    run_notebook("monitor.py", conf=str(trained), env="", overrides="")
    shifted = _window_rows(spark, trained)
    assert _drifted(shifted) - {"__predictions__"} == SHIFTED
    share = next(r for r in shifted if r["metric"] == "drifted_share")
    assert share["value"] == pytest.approx(len(SHIFTED) / len(features))
    assert share["drifted"] is True
    psi = {r["feature"]: r["value"] for r in shifted if r["metric"] == "psi"}
    assert min(psi[f] for f in SHIFTED) > 0.2 > max(v for f, v in psi.items() if f not in SHIFTED | {"__predictions__"})

    # Decay: the live AUC of the window against its late labels, computed independently here.
    live = next(r for r in shifted if r["metric"] == "auc_roc")
    test = next(r for r in shifted if r["metric"] == "test_auc_roc")
    decay = next(r for r in shifted if r["metric"] == "auc_roc_decay")
    window = _load(spark, trained, "warehouse/gold/telco_churn_predictions").where("batch_id = 'shifted'")
    labels = _load(spark, trained, CLEAN).select("customer_id", "churn")
    pairs: pd.DataFrame = window.join(labels, "customer_id").select("probability", "churn").toPandas()
    assert live["value"] == pytest.approx(roc_auc_score(pairs["churn"] == "Yes", pairs["probability"]), abs=1e-9)
    assert decay["value"] == pytest.approx(test["value"] - live["value"], abs=1e-9)
    champion = MlflowClient().get_model_version_by_alias("telco_churn", "champion")
    assert test["value"] == pytest.approx(float(champion.tags["metric.test_auc_roc"]))

    # The report is in MLflow.
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    assert experiment is not None
    monitor_run = MlflowClient().search_runs(
        [experiment.experiment_id],
        filter_string="tags.`deltaml.step` = 'monitor'",
        order_by=["attributes.start_time DESC"],
    )[0]
    files = {a.path for a in MlflowClient().list_artifacts(monitor_run.info.run_id, "drift")}
    assert {"drift/report.html", "drift/drift_psi.png", "drift/overlay_1.png"} <= files
    # As Chromium shows it: the drifted share, then one row per feature, the drifted ones first and marked.
    page = mlflow.artifacts.download_artifacts(f"runs:/{monitor_run.info.run_id}/drift/report.html")
    text = rendered_text(Path(page))
    assert f"Drifted share of features: {len(SHIFTED) / len(features):.0%}" in text
    table = text.split("feature\tkind\tdrifted\t", 1)[1].splitlines()[1:]
    marked = [row.split("\t")[0] for row in table if row.split("\t")[2:3] == ["yes"]]
    assert set(marked) >= SHIFTED and table[: len(marked)] == [r for r in table if r.split("\t")[2:3] == ["yes"]]

    # The policy: a dry run records and trains nothing; then it retrains; then the cooldown holds it.
    dry = retrain(load_config(trained), dry_run=True, spark=spark)
    assert dry.action == "dry_run" and dry.fired and dry.fired[0].startswith("drifted share 0.16 > 0.1")
    assert int(MlflowClient().get_model_version_by_alias("telco_churn", "champion").version) == 1
    done = retrain(load_config(trained), spark=spark)
    assert (done.action, done.new_version, done.promoted, done.champion_after) == ("retrained", 2, True, 2)
    # The drift was measured on version 1's predictions, so it no longer counts for champion version 2.
    after = retrain(load_config(trained), dry_run=True, spark=spark)
    assert after.fired == [] and after.checks["drift_share"] == "no monitoring yet"
    # Version 2 is older than a tiny max age, but the one-hour cooldown holds the retraining back.
    policy = ["retrain.max_age_days=0.000001", "retrain.cooldown_hours=1"]
    held = retrain(load_config(trained, overrides=policy), spark=spark)
    assert held.fired[0].startswith("champion v2 is 0.0 days old")
    assert held.action == "cooldown" and "cooldown: the last training (or failed retraining) was" in held.notes[0]
    assert len(MlflowClient().search_model_versions("name = 'telco_churn'")) == 2
    # The retrain notebook, as the bundle's job would run it, in dry-run mode.
    notebook = run_notebook("retrain.py", conf=str(trained), env="", overrides="", dry_run="true")
    assert notebook["decision"].action == "dry_run"
    log = _load(spark, trained, RETRAINING).orderBy("decided_at").collect()
    assert [r["action"] for r in log] == ["no_trigger", "dry_run", "retrained", "dry_run", "cooldown", "dry_run"]
    assert [r["new_version"] for r in log] == [None, None, 2, None, None, None]
    assert len(MlflowClient().search_model_versions("name = 'telco_churn'")) == 2
