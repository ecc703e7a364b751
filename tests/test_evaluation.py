"""Metrics computed in Spark agree with scikit-learn's on the same rows."""

from __future__ import annotations

import math

import pytest
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import SparkSession
from pyspark.sql.types import DoubleType, StructField, StructType
from sklearn.metrics import accuracy_score, auc, log_loss, precision_recall_curve, roc_auc_score

from deltaml.ml.metrics import binary_metrics

Y = [1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0]
P = [0.9, 0.2, 0.65, 0.4, 0.3, 0.55, 0.8, 0.1, 0.45, 0.35, 0.05, 0.6]


def test_metrics_match_scikit_learn(spark: SparkSession) -> None:
    rows = [
        (
            float(y),
            Vectors.dense([1 - p, p]),
            Vectors.dense([-math.log(p / (1 - p)), math.log(p / (1 - p))]),
            float(p >= 0.5),
        )
        for y, p in zip(Y, P, strict=True)
    ]
    df = spark.createDataFrame(rows, ["_label", "probability", "rawPrediction", "prediction"])
    got = binary_metrics(df)
    precision, recall, _ = precision_recall_curve(Y, P)
    assert got["rows"] == len(Y)
    assert got["auc_roc"] == pytest.approx(roc_auc_score(Y, P), abs=1e-9)
    assert got["log_loss"] == pytest.approx(log_loss(Y, P), abs=1e-9)
    assert got["accuracy"] == pytest.approx(accuracy_score(Y, [p >= 0.5 for p in P]), abs=1e-9)
    # Spark interpolates the PR curve linearly from (0, first precision); allow for that.
    assert got["auc_pr"] == pytest.approx(auc(recall, precision), abs=0.05)


def test_empty_split_reports_zero_rows(spark: SparkSession) -> None:
    schema = StructType(
        [
            StructField("_label", DoubleType()),
            StructField("probability", VectorUDT()),
            StructField("rawPrediction", VectorUDT()),
            StructField("prediction", DoubleType()),
        ]
    )
    df = spark.createDataFrame([], schema)
    assert binary_metrics(df) == {"rows": 0.0}


def test_collected_metrics_equal_the_spark_metrics_for_every_task(spark: SparkSession) -> None:
    from deltaml.ml.metrics import collected_metrics, task_metrics

    rows = [
        (float(y), Vectors.dense([1 - p, p]), Vectors.dense([1 - p, p]), float(p >= 0.5))
        for y, p in zip(Y, P, strict=True)
    ]
    binary = spark.createDataFrame(rows, ["_label", "probability", "rawPrediction", "prediction"])
    spark_values, local_values = task_metrics(binary, "binary"), collected_metrics(binary, "binary", 2)
    assert local_values == pytest.approx(spark_values, abs=1e-12)
    assert set(spark_values) == {"rows", "auc_roc", "auc_pr", "log_loss", "accuracy"}

    probabilities = [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3], [0.2, 0.5, 0.3]]
    labels = [0.0, 1.0, 2.0, 2.0, 1.0]
    multiclass = spark.createDataFrame(
        [
            (y, Vectors.dense(p), float(max(range(3), key=p.__getitem__)))
            for y, p in zip(labels, probabilities, strict=True)
        ],
        ["_label", "probability", "prediction"],
    )
    assert collected_metrics(multiclass, "multiclass", 3) == pytest.approx(
        task_metrics(multiclass, "multiclass"), abs=1e-12
    )

    regression = spark.createDataFrame([(1.0, 1.5), (2.0, 1.5), (3.0, 3.5), (4.0, 3.0)], ["_label", "prediction"])
    assert collected_metrics(regression, "regression", 0) == pytest.approx(
        task_metrics(regression, "regression"), abs=1e-12
    )
