"""The evaluate step: classification metrics on validation and test, computed in Spark on all rows."""

from __future__ import annotations

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.catalog import read_table
from deltaml.context import StepContext, StepResult
from deltaml.split import SPLIT_COL, TEST, VALIDATION
from deltaml.train import LABEL_COL, check_columns, load_fitted_model, with_binary_label

_EPS = 1e-15


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
        F.col("prediction"),
        F.col("rawPrediction"),
        vector_to_array(F.col("probability"))[1].alias("p"),
    ).cache()
    p = F.least(F.greatest(F.col("p"), F.lit(_EPS)), F.lit(1 - _EPS))
    row = scored.agg(
        F.count("*").alias("rows"),
        F.avg(-(F.col("y") * F.log(p) + (1 - F.col("y")) * F.log(1 - p))).alias("log_loss"),
        F.avg((F.col("prediction") == F.col("y")).cast("double")).alias("accuracy"),
    ).first()
    assert row is not None
    if row["rows"] == 0:
        scored.unpersist()
        return {"rows": 0.0}
    evaluator = BinaryClassificationEvaluator(labelCol="y", rawPredictionCol="rawPrediction")
    metrics = {
        "rows": float(row["rows"]),
        "auc_roc": float(evaluator.evaluate(scored, {evaluator.metricName: "areaUnderROC"})),
        "auc_pr": float(evaluator.evaluate(scored, {evaluator.metricName: "areaUnderPR"})),
        "log_loss": float(row["log_loss"]),
        "accuracy": float(row["accuracy"]),
    }
    scored.unpersist()
    return metrics


def run_evaluate(ctx: StepContext) -> StepResult:
    """Score the validation and test splits with the fitted model and compute their metrics."""
    cfg = ctx.config
    model, model_uri = load_fitted_model(ctx)
    data, split_version = read_table(ctx.spark, ctx.tables.split, "evaluate")
    check_columns(
        data, [*cfg.features.columns, cfg.label.column, SPLIT_COL], "evaluate", f"split table {ctx.tables.split}"
    )
    labelled = data.where(F.col(cfg.label.column).isNotNull()).transform(
        with_binary_label(cfg.label.column, cfg.label.positive)
    )
    metrics: dict[str, float] = {}
    for split_name in (VALIDATION, TEST):
        part = labelled.where(F.col(SPLIT_COL) == split_name)
        for name, value in binary_metrics(model.transform(part)).items():
            metrics[f"{split_name}_{name}"] = value
    ctx.outputs["metrics"] = metrics
    return StepResult(
        metrics={**metrics, "split_table_version": float(split_version)},
        tags={"model_uri": model_uri},
        summary=", ".join(
            f"{label} {metrics[key]:.4f}"
            for label, key in (
                ("test AUC-ROC", "test_auc_roc"),
                ("AUC-PR", "test_auc_pr"),
                ("log-loss", "test_log_loss"),
                ("accuracy", "test_accuracy"),
                ("validation AUC-ROC", "validation_auc_roc"),
            )
            if key in metrics
        ),
    )
