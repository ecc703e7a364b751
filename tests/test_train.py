"""The fitted pipeline learns only from the train split, and keeps unseen categories at scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.feature import ImputerModel, StandardScalerModel, StringIndexerModel
from pyspark.sql import SparkSession

from deltaml.columns import LABEL_COL
from deltaml.config.loader import load_config
from deltaml.config.schema import PipelineConfig
from deltaml.errors import StepInputError
from deltaml.ml.labels import with_binary_label
from deltaml.ml.models import DecisionThreshold
from deltaml.ml.training import build_training_pipeline
from tests.conftest import TELCO_CONF

ROWS = [
    # id, tenure, contract, churn, split
    (1, 1.0, "Month", "Yes", "train"),
    (2, 2.0, "Month", "No", "train"),
    (3, None, "Year", "Yes", "train"),
    (4, 3.0, "Year", "No", "train"),
    (5, 1000.0, "Weekly", "Yes", "validation"),
    (6, 2000.0, "Weekly", "No", "test"),
]


def _config(**overrides: str) -> PipelineConfig:
    sets = [
        "features.numeric=[tenure]",
        "features.categorical=[contract]",
        "key=id",
        "features.impute.strategy=mean",
        "features.derived=[]",
        *[f"{k}={v}" for k, v in overrides.items()],
    ]
    return load_config(TELCO_CONF, overrides=sets).pipeline


def test_statistics_come_from_train_rows_only(spark: SparkSession) -> None:
    cfg = _config()
    data = spark.createDataFrame(ROWS, "id long, tenure double, contract string, churn string, split string")
    train = data.where("split = 'train'").transform(with_binary_label("churn", "Yes"))
    model = build_training_pipeline(cfg).fit(train)
    by_type = {type(stage).__name__: stage for stage in model.stages}
    imputer, scaler, indexer = by_type["ImputerModel"], by_type["StandardScalerModel"], by_type["StringIndexerModel"]
    assert isinstance(imputer, ImputerModel)
    assert isinstance(scaler, StandardScalerModel)
    assert isinstance(indexer, StringIndexerModel)
    # Mean of train tenure (1, 2, 3); validation/test values of 1000 and 2000 would move it a lot.
    surrogate = imputer.surrogateDF.first()
    assert surrogate is not None
    assert surrogate["tenure"] == pytest.approx(2.0)
    assert scaler.mean.toArray().tolist() == pytest.approx([2.0])
    assert sorted(indexer.labelsArray[0]) == ["Month", "Year"]
    # "Weekly" never occurs in train: it is scored through the unseen-category slot, not an error.
    scored = model.transform(data.where("split != 'train'")).select("id", "probability").collect()
    assert [r["id"] for r in scored] == [5, 6]


def test_binary_label_marks_only_the_positive_value(spark: SparkSession) -> None:
    data = spark.createDataFrame([("Yes",), ("No",), ("yes",), (None,)], "churn string")
    labels = [r[LABEL_COL] for r in data.transform(with_binary_label("churn", "Yes")).collect()]
    assert labels == [1.0, 0.0, 0.0, 0.0]


def test_unknown_model_param_is_named() -> None:
    cfg = _config(**{"model.candidates": "[]", "model.params.maxDepth": "3"})
    with pytest.raises(StepInputError, match=r"\['maxDepth'\] are not params of LogisticRegression"):
        build_training_pipeline(cfg)


def test_threshold_from_config_reaches_the_model(spark: SparkSession) -> None:
    cfg = _config(**{"evaluate.threshold": "0.3"})
    threshold = build_training_pipeline(cfg).getStages()[-1]
    assert isinstance(threshold, DecisionThreshold)
    assert threshold.getThreshold() == pytest.approx(0.3)


def test_cleaning_options_learn_on_train_and_survive_save_and_load(spark: SparkSession, tmp_path: Path) -> None:
    cfg = load_config(
        TELCO_CONF,
        overrides=[
            "key=id",
            "features.numeric=[tenure]",
            "features.categorical=[contract]",
            "features.impute={strategy: constant, value: -1, indicator: true}",
            "features.outliers={method: iqr, iqr_multiplier: 1.0}",
            "features.rare_categories={min_count: 2}",
            "features.derived=[]",
        ],
    ).pipeline
    train_rows: list[tuple[int, float | None, str, str]] = [
        (i, float(i), "Month" if i % 2 else "Year", "Yes" if i % 3 else "No") for i in range(1, 9)
    ]
    train_rows += [(9, None, "Once", "No")]
    schema = "id long, tenure double, contract string, churn string"
    train = spark.createDataFrame(train_rows, schema).transform(with_binary_label("churn", "Yes"))
    model = build_training_pipeline(cfg).fit(train)
    by_type = {type(stage).__name__: stage for stage in model.stages}
    # Train tenure after the constant fill: -1, 1..8 -> q1 = 2, q3 = 6, IQR 4 -> fences [-2, 10].
    capper = by_type["OutlierCapperModel"]
    assert capper.getOrDefault("lowerBounds") == pytest.approx([-2.0])
    assert capper.getOrDefault("upperBounds") == pytest.approx([10.0])
    assert by_type["RareCategoryGrouperModel"].getOrDefault("keptCategories") == [["Month", "Year"]]
    scoring = spark.createDataFrame([(20, 1000.0, "Never", None), (21, None, "Year", None)], schema)
    out = model.transform(scoring).select("id", "_imputed_tenure", "_missing_tenure", "_grouped_contract")
    expected = [(20, 10.0, 0.0, "__other__"), (21, -1.0, 1.0, "Year")]
    assert [tuple(r) for r in out.orderBy("id").collect()] == expected
    model.write().save(str(tmp_path / "model"))
    reloaded = PipelineModel.load(str(tmp_path / "model"))
    again = reloaded.transform(scoring).select("id", "_imputed_tenure", "_missing_tenure", "_grouped_contract")
    assert [tuple(r) for r in again.orderBy("id").collect()] == expected


@pytest.mark.parametrize(
    ("rows", "cores", "parallelism", "expected"),
    [(4_931, 4, 2, 1), (235_741, 4, 2, 2), (10_000_000, 64, 4, 16), (100, 1, 8, 1)],
)
def test_trial_partitions_share_cores_and_keep_partitions_useful(
    rows: int, cores: int, parallelism: int, expected: int
) -> None:
    from deltaml.steps.fit import trial_partitions

    assert trial_partitions(rows, cores, parallelism) == expected


def test_fit_caches_one_vector_column_at_a_time(spark: SparkSession) -> None:
    """The one-hot and tree vectors are never cached side by side (at 10M rows that pushed both to disk)."""
    from pyspark.ml.linalg import Vectors

    from deltaml.columns import FEATURES_COL, TREE_FEATURES_COL
    from deltaml.steps.fit import _Vectors

    rows = [(Vectors.dense([1.0, 0.0, 2.0]), Vectors.dense([3.0, 4.0]), float(i % 2)) for i in range(6)]
    data = spark.createDataFrame(rows, [FEATURES_COL, TREE_FEATURES_COL, LABEL_COL])
    vectors = _Vectors(data, data.limit(4), [FEATURES_COL, TREE_FEATURES_COL])
    one_hot = vectors.use(FEATURES_COL)
    assert [df.columns for df in one_hot] == [[FEATURES_COL, LABEL_COL]] * 2
    assert all(df.storageLevel.useMemory for df in one_hot)
    assert (vectors.sizes, vectors.validation_rows) == ({FEATURES_COL: 3}, 4)
    assert vectors.use(FEATURES_COL) is one_hot  # the cached pair is reused, not cached again
    tree = vectors.use(TREE_FEATURES_COL)
    assert [df.columns for df in tree] == [[TREE_FEATURES_COL, LABEL_COL]] * 2
    assert not any(df.storageLevel.useMemory for df in one_hot)  # released before the next was cached
    assert all(df.storageLevel.useMemory for df in tree)
    assert vectors.sizes == {FEATURES_COL: 3, TREE_FEATURES_COL: 2}
    assert not vectors.frames(FEATURES_COL)[0].storageLevel.useMemory  # the other vector, computed when read
    vectors.release()
    assert not any(df.storageLevel.useMemory for df in tree)
