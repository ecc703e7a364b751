"""The evaluate step: classification metrics on validation and test, computed in Spark on all rows."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from pyspark.ml import PipelineModel
from pyspark.ml.classification import ClassificationModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.catalog import read_table
from deltaml.context import StepContext, StepResult
from deltaml.errors import StepInputError
from deltaml.features import feature_names
from deltaml.models import DecisionThreshold, positive_probability
from deltaml.report import (
    calibration_points,
    confusion_matrix,
    feature_importances,
    score_histogram,
    write_report,
)
from deltaml.split import SPLIT_COL, TEST, VALIDATION
from deltaml.train import LABEL_COL, check_columns, labelled_rows, load_fitted_model

LOG = logging.getLogger(__name__)
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
        positive_probability().alias("p"),
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
    metrics: dict[str, float] = {}
    threshold = decision_threshold(model)
    report_files: list[str] = []
    for split_name in (VALIDATION, TEST):
        # Scored once: the metrics and (for test) the report read the same cached predictions.
        scored = model.transform(labelled_rows(data, cfg, split_name)).cache()
        for name, value in binary_metrics(scored).items():
            metrics[f"{split_name}_{name}"] = value
        if split_name == TEST:
            report_files = _log_report(ctx, model, scored, metrics, threshold)
        scored.unpersist()
    ctx.outputs["metrics"] = metrics
    return StepResult(
        metrics={**metrics, "split_table_version": float(split_version), "decision_threshold": threshold},
        tags={"model_uri": model_uri, "report": ", ".join(report_files)},
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


def decision_threshold(model: PipelineModel) -> float:
    """The threshold stored in a deltaml model's :class:`DecisionThreshold` stage (0.5 if it has none)."""
    stages = [s for s in model.stages if isinstance(s, DecisionThreshold)]
    return stages[-1].getThreshold() if stages else 0.5


def classifier_stage(model: PipelineModel) -> Any:
    """The fitted classifier inside a deltaml model, or None."""
    found = [s for s in model.stages if isinstance(s, ClassificationModel)]
    return found[-1] if found else None


def _log_report(
    ctx: StepContext, model: PipelineModel, scored_test: DataFrame, metrics: dict[str, float], threshold: float
) -> list[str]:
    """Write the test split's evaluation report (plots, metrics, one HTML page) to the step's MLflow run."""
    cfg = ctx.config
    scored = scored_test.select(F.col(LABEL_COL).alias("y"), positive_probability().alias("p")).cache()
    try:
        histogram = score_histogram(scored)
        if histogram.total_positives == 0 or histogram.total_negatives == 0:
            LOG.warning("no evaluation report: the test split does not have both classes")
            return []
        confusion = confusion_matrix(scored, threshold)
    except StepInputError as exc:
        LOG.warning("no evaluation report: %s", exc)
        return []
    finally:
        scored.unpersist()
    try:
        importances = feature_importances(classifier_stage(model), feature_names(model, cfg.features))
    except ValueError as exc:
        LOG.warning("feature importances left out of the report: %s", exc)
        importances = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_report(
            Path(tmp),
            title=f"{cfg.name}: test split",
            metrics={k: v for k, v in metrics.items() if k.startswith("test_")},
            histogram=histogram,
            confusion=confusion,
            threshold=threshold,
            calibration=calibration_points(histogram),
            importances=importances,
            leaderboard=ctx.outputs.get("leaderboard"),
        )
        if mlflow.active_run() is not None:
            mlflow.log_artifacts(tmp, artifact_path="report")
    return [f"report/{f.name}" for f in files]
