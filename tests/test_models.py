"""Model families end the same way: a probability vector and a 0/1 prediction at the stored threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from deltaml.errors import StepInputError
from deltaml.models import WEIGHT_COL, DecisionThreshold, class_weights, model_stages

FAMILIES = ["logistic_regression", "random_forest", "gbt", "linear_svc", "mlp"]


def _vectors(spark: SparkSession) -> DataFrame:
    rows = [(Vectors.dense([float(i), float(i % 3)]), 1.0 if i >= 10 else 0.0) for i in range(20)]
    return spark.createDataFrame(rows, ["features", "_label"])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gives_probability_and_thresholded_prediction(spark: SparkSession, family: str) -> None:
    data = _vectors(spark)
    params = {"hidden_layers": [4], "maxIter": 50} if family == "mlp" else {"maxIter": 5} if family == "gbt" else {}
    stages = [*model_stages(family, params, seed=1, num_features=2), DecisionThreshold(threshold=0.5)]
    scored = Pipeline(stages=stages).fit(data).transform(data)
    out = scored.select("_label", vector_to_array("probability")[1].alias("p"), "prediction").collect()
    assert all(0.0 <= r["p"] <= 1.0 for r in out)
    assert all(r["prediction"] == (1.0 if r["p"] >= 0.5 else 0.0) for r in out)
    # The classes are separable on the first feature: every family ranks them almost perfectly.
    positives = [r["p"] for r in out if r["_label"] == 1.0]
    negatives = [r["p"] for r in out if r["_label"] == 0.0]
    pairs = [(p, n) for p in positives for n in negatives]
    assert sum(p > n for p, n in pairs) / len(pairs) > 0.9


def test_decision_threshold_is_hand_checkable_and_survives_save_and_load(spark: SparkSession, tmp_path: Path) -> None:
    data = spark.createDataFrame([(1, 0.2), (2, 0.3), (3, 0.31)], "id int, p double").select(
        "id", array_to_vector(F.array(1 - F.col("p"), F.col("p"))).alias("probability")
    )
    PipelineModel(stages=[DecisionThreshold(threshold=0.3)]).save(str(tmp_path / "m"))
    loaded = PipelineModel.load(str(tmp_path / "m"))
    expected = spark.createDataFrame([(1, 0.0), (2, 1.0), (3, 1.0)], "id int, prediction double")
    assertDataFrameEqual(loaded.transform(data).select("id", "prediction"), expected)
    assert loaded.stages[0].getThreshold() == 0.3


def test_balanced_class_weights(spark: SparkSession) -> None:
    data = spark.createDataFrame([(1.0,), (0.0,), (0.0,), (0.0,)], "_label double")
    weights = sorted(r[WEIGHT_COL] for r in data.transform(class_weights()).collect())
    # 4 rows, 1 positive: positive weight 4 / (2 * 1) = 2, negative 4 / (2 * 3) = 2/3.
    assert weights == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])


@pytest.mark.parametrize(
    ("family", "params", "message"),
    [
        ("random_forest", {"regParam": 0.1}, r"\['regParam'\] are not params of RandomForestClassifier"),
        ("logistic_regression", {"featuresCol": "x"}, r"\['featuresCol'\] are not params"),
        ("gbt", {"hidden_layers": [3]}, r"hidden_layers is a param of mlp only"),
        ("gbt", {"maxDepth": "deep"}, r"gbt param maxDepth='deep' is invalid"),
        ("xgboost", {}, r"unknown model family 'xgboost'"),
    ],
)
def test_bad_model_params_are_one_line(family: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(StepInputError, match=message):
        model_stages(family, params, seed=1, num_features=2)
