"""Frequency and target encoding: values by hand, learned on train only, unseen handled, saved and loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from deltaml.errors import StepInputError
from deltaml.ml.encoders import CategoryEncoder

TRAIN = [("a", 1.0), ("a", 0.0), ("a", 1.0), ("b", 0.0), (None, 1.0)]
SCORE = [(1, "a"), (2, "b"), (3, "never seen"), (4, None)]


def test_frequency_and_target_values_by_hand(spark: SparkSession, tmp_path: Path) -> None:
    train = spark.createDataFrame(TRAIN, "c string, _label double")
    stages: list[Estimator[Any] | Transformer] = [
        CategoryEncoder(inputCols=["c"], outputCols=["c_freq"], method="frequency"),
        CategoryEncoder(inputCols=["c"], outputCols=["c_target"], method="target", smoothing=2.0),
    ]
    model = Pipeline(stages=stages).fit(train)
    # Frequency: a 3/5, b 1/5, unseen and null 0. Target: prior 3/5; a (2 + 2*0.6)/(3 + 2) = 0.64;
    # b (0 + 1.2)/(1 + 2) = 0.4; unseen and null get the prior 0.6.
    expected = spark.createDataFrame(
        [(1, "a", 0.6, 0.64), (2, "b", 0.2, 0.4), (3, "never seen", 0.0, 0.6), (4, None, 0.0, 0.6)],
        "id long, c string, c_freq double, c_target double",
    )
    scoring = spark.createDataFrame(SCORE, "id long, c string")
    assertDataFrameEqual(model.transform(scoring), expected)
    model.write().save(str(tmp_path / "m"))
    assertDataFrameEqual(PipelineModel.load(str(tmp_path / "m")).transform(scoring), expected)


def test_encoding_ignores_rows_it_was_not_fitted_on(spark: SparkSession) -> None:
    train = spark.createDataFrame([("a", 1.0), ("b", 0.0)], "c string, _label double")
    model = CategoryEncoder(inputCols=["c"], outputCols=["t"], method="target", smoothing=0.0).fit(train)
    other = spark.createDataFrame([("a",), ("a",), ("a",)], "c string")
    assert [r["t"] for r in model.transform(other).collect()] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "onehot"}, r"method must be one of \['frequency', 'target'\]"),
        ({"method": "target", "labelCol": "y"}, r"column\(s\) \['y'\] not found"),
        ({"smoothing": -1.0}, r"smoothing must be >= 0"),
    ],
)
def test_bad_encoder_settings(spark: SparkSession, kwargs: dict[str, object], message: str) -> None:
    train = spark.createDataFrame(TRAIN, "c string, _label double")
    with pytest.raises(StepInputError, match=message):
        CategoryEncoder(inputCols=["c"], outputCols=["e"], **kwargs).fit(train)  # type: ignore[arg-type]
