"""Model metrics computed in Spark: one function per task, and the collected form the steps log."""

from __future__ import annotations

import numpy as np
from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    MulticlassClassificationEvaluator,
)
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.columns import LABEL_COL, PREDICTION_COL, PROBABILITY_COL, RAW_PREDICTION_COL
from deltaml.io.flavor import positive_probability
from deltaml.ml.single_node import arrow_matrix, validation_metrics
from deltaml.tasks import LOG_LOSS_EPS


def binary_metrics(predictions: DataFrame, label_col: str = LABEL_COL) -> dict[str, float]:
    """AUC-ROC, AUC-PR, log-loss and accuracy of a scored DataFrame with a 0/1 label.

    Args:
        predictions: Output of a fitted classification pipeline (``probability``, ``prediction``).
        label_col: The 0.0/1.0 label column.

    Returns:
        ``auc_roc``, ``auc_pr``, ``log_loss``, ``accuracy`` and ``rows``.
    """
    scored = predictions.select(
        F.col(label_col).alias("y"),
        F.col(PREDICTION_COL),
        F.col(RAW_PREDICTION_COL),
        positive_probability().alias("p"),
    ).cache()
    p = F.least(F.greatest(F.col("p"), F.lit(LOG_LOSS_EPS)), F.lit(1 - LOG_LOSS_EPS))
    row = scored.agg(
        F.count("*").alias("rows"),
        F.avg(-(F.col("y") * F.log(p) + (1 - F.col("y")) * F.log(1 - p))).alias("log_loss"),
        F.avg((F.col(PREDICTION_COL) == F.col("y")).cast("double")).alias("accuracy"),
    ).first()
    assert row is not None
    if row["rows"] == 0:
        scored.unpersist()
        return {"rows": 0.0}
    # Ranked by the positive-class probability (not rawPrediction), exactly, as collected_metrics does.
    evaluator = BinaryClassificationEvaluator(labelCol="y", rawPredictionCol="p", numBins=0)
    metrics = {
        "rows": float(row["rows"]),
        "auc_roc": float(evaluator.evaluate(scored, {evaluator.metricName: "areaUnderROC"})),
        "auc_pr": float(evaluator.evaluate(scored, {evaluator.metricName: "areaUnderPR"})),
        "log_loss": float(row["log_loss"]),
        "accuracy": float(row["accuracy"]),
    }
    scored.unpersist()
    return metrics


def multiclass_metrics(predictions: DataFrame, label_col: str = LABEL_COL) -> dict[str, float]:
    """Weighted F1, accuracy and log-loss of a scored DataFrame whose label is the class index.

    Args:
        predictions: Output of a fitted multiclass pipeline (``probability``, ``prediction``).
        label_col: The class-index label column.

    Returns:
        ``f1`` (weighted by class support, as Spark's evaluator computes it), ``accuracy``,
        ``log_loss`` (probabilities clipped to ``[1e-15, 1 - 1e-15]``) and ``rows``.
    """
    scored = predictions.select(
        F.col(label_col).cast("double").alias("y"), F.col(PREDICTION_COL), F.col(PROBABILITY_COL)
    ).cache()
    try:
        rows = scored.count()
        if rows == 0:
            return {"rows": 0.0}
        evaluator = MulticlassClassificationEvaluator(labelCol="y", predictionCol=PREDICTION_COL, eps=LOG_LOSS_EPS)
        return {
            "rows": float(rows),
            "f1": float(evaluator.evaluate(scored, {evaluator.metricName: "f1"})),
            "accuracy": float(evaluator.evaluate(scored, {evaluator.metricName: "accuracy"})),
            "log_loss": float(evaluator.evaluate(scored, {evaluator.metricName: "logLoss"})),
        }
    finally:
        scored.unpersist()


def regression_metrics(predictions: DataFrame, label_col: str = LABEL_COL) -> dict[str, float]:
    """RMSE, MAE and R² of a scored DataFrame, from one Spark aggregation over all rows."""
    y, pred = F.col(label_col).cast("double"), F.col(PREDICTION_COL).cast("double")
    row = predictions.agg(
        F.count("*").alias("rows"),
        F.avg((pred - y) * (pred - y)).alias("mse"),
        F.avg(F.abs(pred - y)).alias("mae"),
        F.sum((pred - y) * (pred - y)).alias("sse"),
        F.var_pop(y).alias("var"),
    ).first()
    assert row is not None
    if not row["rows"]:
        return {"rows": 0.0}
    rows = float(row["rows"])
    total = float(row["var"]) * rows
    return {
        "rows": rows,
        "rmse": float(row["mse"]) ** 0.5,
        "mae": float(row["mae"]),
        "r2": 1.0 - float(row["sse"]) / total if total > 0 else float("nan"),
    }


def task_metrics(predictions: DataFrame, task: str, label_col: str = LABEL_COL) -> dict[str, float]:
    """The metrics of a scored DataFrame for the label's task (``binary``, ``multiclass``, ``regression``)."""
    if task == "multiclass":
        return multiclass_metrics(predictions, label_col)
    if task == "regression":
        return regression_metrics(predictions, label_col)
    return binary_metrics(predictions, label_col)


def collected_metrics(
    predictions: DataFrame, task: str, num_classes: int, label_col: str = LABEL_COL
) -> dict[str, float]:
    """The task's metrics from one collect of the labels and model outputs, computed on the driver.

    For small validation splits during tuning: one Spark job instead of several. The values
    are those of :func:`task_metrics` (exact AUCs, as Spark computes them without bins).
    """
    output = F.col(PREDICTION_COL) if task == "regression" else vector_to_array(F.col(PROBABILITY_COL))
    table = predictions.select(F.col(label_col).cast("double").alias("y"), output.alias("out")).toArrow()
    if not table.num_rows:
        return {"rows": 0.0}
    y = table.column("y").to_numpy()
    if task == "regression":
        out = table.column("out").to_numpy().astype(np.float64)
    else:
        out = arrow_matrix(table.column("out"), "validation probability")
    return validation_metrics(task, y, out, num_classes=num_classes)
