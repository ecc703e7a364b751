"""Derived features: hand-computed expected values, statistics from train only, and readable slot names."""

from __future__ import annotations

import math
from datetime import date, datetime
from pathlib import Path

import pytest
from pyspark.ml import Pipeline
from pyspark.ml.feature import Bucketizer
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from deltaml.columns import FEATURES_COL, TREE_FEATURES_COL
from deltaml.config.loader import load_config
from deltaml.config.schema import FeaturesConfig
from deltaml.errors import ConfigError
from deltaml.ml.features import build_feature_stages, feature_names, tree_layout
from deltaml.ml.labels import with_binary_label
from deltaml.ml.training import build_training_pipeline
from tests.conftest import TELCO_CONF

ROWS = [
    # id, a, b, d1, d2
    (1, 10.0, 2.0, date(2024, 1, 1), date(2024, 1, 31)),
    (2, 0.0, 0.0, date(2024, 3, 15), date(2024, 3, 15)),
    (3, -3.0, None, None, date(2024, 12, 31)),
]
SCHEMA = "id long, a double, b double, d1 date, d2 date"


def _derived(spark: SparkSession, derived: list[dict[str, object]], columns: list[str]) -> list[tuple[object, ...]]:
    features = FeaturesConfig.model_validate({"numeric": ["a", "b"], "derived": derived, "scale": False})
    stages = build_feature_stages(features)
    data = spark.createDataFrame(ROWS, SCHEMA)
    out = Pipeline(stages=stages).fit(data).transform(data).orderBy("id").select("id", *columns)
    return [tuple(row) for row in out.collect()]


def test_row_wise_derived_features_match_hand_computed_values(spark: SparkSession) -> None:
    derived: list[dict[str, object]] = [
        {"name": "ratio", "kind": "ratio", "columns": ["a", "b"]},
        {"name": "diff", "kind": "difference", "columns": ["a", "b"]},
        {"name": "log_a", "kind": "log", "columns": ["a"]},
        {"name": "log1p_a", "kind": "log1p", "columns": ["a"]},
        {"name": "sq", "kind": "power", "columns": ["a"], "exponent": 2},
        {"name": "clipped", "kind": "clip", "columns": ["a"], "min": -1, "max": 5},
        {"name": "ab", "kind": "interaction", "columns": ["a", "b"]},
        {"name": "days", "kind": "days_between", "columns": ["d1", "d2"]},
        {"name": "month", "kind": "date_part", "columns": ["d2"], "part": "month"},
        {"name": "dow", "kind": "date_part", "columns": ["d1"], "part": "day_of_week"},
        {"name": "twice", "kind": "sql", "columns": ["a"], "expression": "a * 2 + 1"},
    ]
    names = ["ratio", "diff", "log_a", "log1p_a", "sq", "clipped", "ab", "days", "month", "dow", "twice"]
    got = _derived(spark, derived, names)
    assert got == [
        (1, 5.0, 8.0, math.log(10), math.log1p(10), 100.0, 5.0, 20.0, 30.0, 1.0, 2.0, 21.0),
        (2, None, 0.0, None, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 6.0, 1.0),
        (3, None, None, None, None, 9.0, -1.0, None, None, 12.0, None, -5.0),
    ]


def test_cyclical_encoding_puts_december_next_to_january(spark: SparkSession) -> None:
    derived: list[dict[str, object]] = [
        {"name": "m", "kind": "date_part", "columns": ["d2"], "part": "month"},
        {"name": "mc", "kind": "cyclical", "columns": ["m"], "period": 12},
    ]
    got = {row[0]: row[1:] for row in _derived(spark, derived, ["mc_sin", "mc_cos"])}
    assert got[1] == pytest.approx((math.sin(2 * math.pi / 12), math.cos(2 * math.pi / 12)))
    assert got[3] == pytest.approx((0.0, 1.0), abs=1e-12)  # December: the angle 2*pi is back at January's side


def test_quantile_buckets_are_learned_on_train_only(spark: SparkSession) -> None:
    features = FeaturesConfig.model_validate(
        {"numeric": ["a"], "derived": [{"name": "a_q", "kind": "bucket", "columns": ["a"], "quantiles": 2}]}
    )
    train = spark.createDataFrame([(i, float(i)) for i in range(1, 11)], "id long, a double")
    model = Pipeline(stages=build_feature_stages(features)).fit(train)
    bucketizer = next(s for s in model.stages if type(s).__name__ == "Bucketizer")
    assert isinstance(bucketizer, Bucketizer)
    # The median of train's 1..10 splits the buckets; a later 1000 cannot move it.
    assert bucketizer.getSplits()[1] == pytest.approx(5.0, abs=1.0)
    scoring = spark.createDataFrame([(1, 2.0), (2, 1000.0)], "id long, a double")
    expected = spark.createDataFrame([(1, 0.0), (2, 1.0)], "id long, a_q double")
    assertDataFrameEqual(model.transform(scoring).select("id", "a_q"), expected)


def test_feature_names_follow_the_vector_slots(spark: SparkSession) -> None:
    cfg = load_config(
        TELCO_CONF,
        overrides=[
            "key=id",
            "features.numeric=[tenure]",
            "features.categorical=[contract]",
            "features.impute.indicator=true",
            "features.derived=[{name: tenure_q, kind: bucket, columns: [tenure], splits: [10], as: categorical}]",
        ],
    ).pipeline
    rows = [(1, 5.0, "Month", "Yes"), (2, 20.0, "Year", "No"), (3, None, "Month", "No")]
    data = spark.createDataFrame(rows, "id long, tenure double, contract string, churn string")
    model = build_training_pipeline(cfg).fit(data.transform(with_binary_label("churn", "Yes")))
    names = feature_names(model, cfg.features)
    assert names == [
        "tenure",
        "missing(tenure)",
        "contract=Month",
        "contract=Year",
        "contract=<unseen or null>",
        # A bucket's levels read as its ranges of the source column (before: tenure_q=0.0, tenure_q=1.0).
        "tenure_q=<10",
        "tenure_q=>=10",
        "tenure_q=<unseen or null>",
    ]
    vectors = [r[0] for r in model.transform(data).orderBy("id").select("features").collect()]
    assert len(names) == vectors[0].size
    # Row 1: tenure 5 (standardised), not missing, contract=Month, tenure_q below 10.
    assert [names[i] for i in vectors[0].indices if i > 0] == ["contract=Month", "tenure_q=<10"]


def test_the_tree_vector_holds_numbers_unscaled_and_each_category_as_its_frequency_rank(spark: SparkSession) -> None:
    cfg = load_config(
        TELCO_CONF,
        overrides=[
            "key=id",
            "features.numeric=[tenure]",
            "features.categorical=[contract]",
            "features.derived=[]",
            "features.impute={strategy: median, indicator: true}",
            "features.scale=true",
        ],
    ).pipeline
    rows = [(1, 5.0, "Month"), (2, 20.0, "Year"), (3, None, "Month"), (4, 7.0, None)]
    data = spark.createDataFrame(rows, "id long, tenure double, contract string")
    stages = build_feature_stages(cfg.features, tree_features=True)

    model = Pipeline(stages=stages).fit(data)

    names, categorical = tree_layout(cfg.features)
    assert (names, categorical) == (["tenure", "missing(tenure)", "contract"], [2])
    vectors = [r[0].toArray().tolist() for r in model.transform(data).orderBy("id").select(TREE_FEATURES_COL).collect()]
    # Tenure unscaled (the median 7 imputed for row 3); Month is the most frequent level (rank 0),
    # Year rank 1, and a null gets the rank after the last level.
    assert vectors == [[5.0, 0.0, 0.0], [20.0, 0.0, 1.0], [7.0, 1.0, 0.0], [7.0, 0.0, 2.0]]
    # The one-hot vector for the other families is unchanged, and without the flag there is no tree vector.
    first = model.transform(data).select(FEATURES_COL).first()
    assert first is not None and first[0].size == 5
    plain = Pipeline(stages=build_feature_stages(cfg.features)).fit(data)
    assert TREE_FEATURES_COL not in plain.transform(data).columns


@pytest.mark.parametrize(
    ("derived", "message"),
    [
        ({"name": "r", "kind": "ratio", "columns": ["a"]}, r"kind 'ratio' takes 2 column\(s\), got 1"),
        ({"name": "p", "kind": "power", "columns": ["a"]}, r"kind 'power' needs 'exponent'"),
        ({"name": "c", "kind": "clip", "columns": ["a"], "min": 5, "max": 1}, r"min \(5\) is greater than max \(1\)"),
        (
            {"name": "q", "kind": "bucket", "columns": ["a"], "quantiles": 4, "splits": [1, 2]},
            r"exactly one of 'splits' or 'quantiles'",
        ),
        ({"name": "q", "kind": "bucket", "columns": ["a"], "splits": [3, 1]}, r"strictly increasing"),
        ({"name": "tenure", "kind": "log", "columns": ["monthly_charges"]}, r"repeat or shadow an input column"),
        ({"name": "x", "kind": "cube", "columns": ["a"]}, r"'features.derived.0.kind': Input should be 'log'"),
        (
            {"name": "leak", "kind": "sql", "columns": ["tenure"], "expression": "CASE WHEN churn = 'Yes' THEN 1 END"},
            r"derived feature 'leak': .* reads 'churn', the label column 'churn'.*leaks the answer",
        ),
    ],
)
def test_bad_derived_feature_is_a_config_error(derived: dict[str, object], message: str) -> None:
    import yaml

    with pytest.raises(ConfigError, match=message):
        load_config(
            TELCO_CONF, overrides=[f"features.derived=[{yaml.safe_dump(derived, default_flow_style=True).strip()}]"]
        )


def test_encodings_join_the_numeric_features_and_are_named(spark: SparkSession) -> None:
    cfg = load_config(
        TELCO_CONF,
        overrides=[
            "key=id",
            "features.numeric=[tenure]",
            "features.categorical=[]",
            "features.encodings={frequency: [contract], target: [contract], target_smoothing: 0}",
            "features.scale=false",
            "features.derived=[]",
            "features.impute.indicator=false",
        ],
    ).pipeline
    assert cfg.features.columns == ["tenure", "contract"]
    rows = [(1, 5.0, "Month", "Yes"), (2, 20.0, "Year", "No"), (3, 7.0, "Month", "No")]
    data = spark.createDataFrame(rows, "id long, tenure double, contract string, churn string")
    model = build_training_pipeline(cfg).fit(data.transform(with_binary_label("churn", "Yes")))
    assert feature_names(model, cfg.features) == ["tenure", "contract_freq", "contract_target"]
    vectors = {r["id"]: r["features"].toArray().tolist() for r in model.transform(data).collect()}
    assert vectors[1] == pytest.approx([5.0, 2 / 3, 0.5])
    assert vectors[2] == pytest.approx([20.0, 1 / 3, 0.0])


def test_hashing_category_cap_and_slot_selection_keep_names_aligned(spark: SparkSession) -> None:
    features = FeaturesConfig.model_validate(
        {
            "numeric": ["a", "a2", "c"],
            "categorical": ["city"],
            "hashing": {"columns": ["user"], "num_features": 8},
            "rare_categories": {"min_frequency": 0.0, "max_categories": 2},
            "selection": {"drop_constant": True, "max_correlation": 0.99},
            "impute": {"indicator": False},
            "scale": False,
        }
    )
    # a2 = 2a duplicates a; c is constant; city z is the third-most frequent level, over the cap of 2.
    rows = [(i, float(i), 2.0 * i, 1.0, city, f"u{i}") for i, city in enumerate("xxxyyz", start=1)]
    data = spark.createDataFrame(rows, "id long, a double, a2 double, c double, city string, user string")
    model = Pipeline(stages=build_feature_stages(features)).fit(data)

    names = feature_names(model, features)
    vectors = [r["features"].toArray() for r in model.transform(data).orderBy("id").collect()]
    assert len(names) == len(vectors[0])
    assert names[:4] == ["a", "city=x", "city=y", "city=__other__"]
    assert {"a2", "c", "city=<unseen or null>"}.isdisjoint(names)
    assert all(n.startswith("hash(user)[") for n in names[4:])
    # Every kept slot varies over the rows it was fitted on; a hash slot no user fell into is gone.
    assert all(len({v[i] for v in vectors}) > 1 for i in range(len(names)))
    # Row 6 is city z: grouped into the shared level.
    assert vectors[5][names.index("city=__other__")] == 1.0


def test_loaded_window_stages_are_pointed_at_this_environment(tmp_path: Path) -> None:
    from pyspark.ml import PipelineModel

    from deltaml.config.schema import WindowFeaturesConfig
    from deltaml.io.catalog import Table
    from deltaml.ml.features import bind_window_stages, window_stage

    window = WindowFeaturesConfig.model_validate(
        {
            "events": {"path": "old/events"},
            "key": "customer",
            "time": "at",
            "reference_time": "ref",
            "prefix": "txn",
            "aggregates": [{"function": "count", "days": [7, 30]}],
        }
    )
    stage = window_stage(window, Table("/old/events", is_path=True))
    assert stage.getOrDefault(stage.aggregates) == ["count::7", "count::30"]
    model = PipelineModel(stages=[stage])

    bind_window_stages(model, [window], [Table("main.ml.events", is_path=False)], datetime(2025, 1, 2, 3, 4))
    assert (stage.getEventsTable(), stage.getOrDefault(stage.eventsIsPath)) == ("main.ml.events", False)
    assert stage.getOrDefault(stage.asOf) == "2025-01-02T03:04:00"
    bind_window_stages(model, [window], [Table("/new/events", is_path=True)])
    assert (stage.getEventsTable(), stage.getOrDefault(stage.asOf)) == ("/new/events", "")
