"""The fitted pipeline learns only from the train split, and keeps unseen categories at scoring."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from deltaml.config import load_config
from deltaml.errors import StepInputError
from deltaml.train import LABEL_COL, build_training_pipeline, with_binary_label
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


def _config(**overrides: str):  # type: ignore[no-untyped-def]
    sets = [
        "features.numeric=[tenure]",
        "features.categorical=[contract]",
        "key=id",
        "features.impute.strategy=mean",
        *[f"{k}={v}" for k, v in overrides.items()],
    ]
    return load_config(TELCO_CONF, overrides=sets).pipeline


def test_statistics_come_from_train_rows_only(spark: SparkSession) -> None:
    cfg = _config()
    data = spark.createDataFrame(ROWS, "id long, tenure double, contract string, churn string, split string")
    train = data.where("split = 'train'").transform(with_binary_label("churn", "Yes"))
    model = build_training_pipeline(cfg).fit(train)
    imputer, scaler, indexer = model.stages[0], model.stages[2], model.stages[3]
    # Mean of train tenure (1, 2, 3); validation/test values of 1000 and 2000 would move it a lot.
    assert imputer.surrogateDF.first()["tenure"] == pytest.approx(2.0)
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
    cfg = _config(**{"model.params.maxDepth": "3"})
    with pytest.raises(StepInputError, match=r"model.params \['maxDepth'\] are not params of LogisticRegression"):
        build_training_pipeline(cfg)


def test_threshold_from_config_reaches_the_model(spark: SparkSession) -> None:
    cfg = _config(**{"evaluate.threshold": "0.3"})
    assert build_training_pipeline(cfg).getStages()[-1].getThreshold() == pytest.approx(0.3)
