"""The evaluate step: metrics on validation and test and the test report, computed in Spark on all rows."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyspark.errors import PySparkException
from pyspark.ml import PipelineModel
from pyspark.ml.base import PredictionModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.columns import LABEL_COL, PREDICTION_COL, SPLIT_COL, TEST, TRAIN, TREE_FEATURES_COL, VALIDATION
from deltaml.errors import StepInputError, one_line
from deltaml.io.catalog import read_table
from deltaml.io.flavor import positive_probability
from deltaml.io.models import model_run_id
from deltaml.io.tracking import active_run_id, log_folder, log_table
from deltaml.ml.features import bucket_range, bucket_splits, feature_names, tree_layout
from deltaml.ml.labels import labelled_rows
from deltaml.ml.metrics import task_metrics
from deltaml.ml.models import DecisionThreshold, encode_label, model_classes
from deltaml.ml.single_node import SingleNodeModel, permutation_importances
from deltaml.quality.contracts import check_columns
from deltaml.quality.profile import log_reference_profile, prediction_column, reference_profile
from deltaml.report.effects import EffectRow, feature_effects, source_columns
from deltaml.report.statistics import (
    calibration_points,
    confusion_matrix,
    feature_importances,
    importance_kind,
    multiclass_confusion,
    predicted_vs_actual,
    residual_histogram,
    score_histogram,
)
from deltaml.report.writers import write_multiclass_report, write_regression_report, write_report
from deltaml.steps.base import Step, StepContext, StepResult, load_fitted_model
from deltaml.steps.outputs import EvaluateOutput, FitOutput

LOG = logging.getLogger(__name__)

# How many of the most important features the report explains (how the predictions vary with each).
EFFECT_FEATURES = 5


_SUMMARY = {
    "binary": (
        ("test AUC-ROC", "test_auc_roc"),
        ("AUC-PR", "test_auc_pr"),
        ("log-loss", "test_log_loss"),
        ("accuracy", "test_accuracy"),
        ("validation AUC-ROC", "validation_auc_roc"),
    ),
    "multiclass": (
        ("test F1", "test_f1"),
        ("accuracy", "test_accuracy"),
        ("log-loss", "test_log_loss"),
        ("validation F1", "validation_f1"),
    ),
    "regression": (
        ("test RMSE", "test_rmse"),
        ("MAE", "test_mae"),
        ("R²", "test_r2"),
        ("validation RMSE", "validation_rmse"),
    ),
}


def run_evaluate(ctx: StepContext) -> StepResult:
    """Score the validation and test splits with the fitted model and compute their metrics."""
    cfg = ctx.config
    task = cfg.label.task
    model, model_uri = load_fitted_model(ctx)
    data, split_version = read_table(ctx.spark, ctx.tables.split, "evaluate")
    check_columns(
        data, [*cfg.features.columns, cfg.label.column, SPLIT_COL], "evaluate", f"split table {ctx.tables.split}"
    )
    classes = model_classes(model.stages)
    metrics: dict[str, float] = {}
    threshold = decision_threshold(model)
    report_files: list[str] = []
    if classes:
        metrics.update(_unknown_class_rows(data, cfg, classes))
    for split_name in (VALIDATION, TEST):
        # Scored once: the metrics and (for test) the report read the same cached predictions.
        scored = model.transform(labelled_rows(data, cfg, split_name, classes=classes)).cache()
        for name, value in task_metrics(scored, task).items():
            metrics[f"{split_name}_{name}"] = value
        if split_name == TEST:
            report_files = _log_report(
                ctx, model, scored, metrics, threshold, _report_header(ctx, model_uri, split_version)
            )
            _log_profile(ctx, data, scored, model_uri)
        scored.unpersist()
    extra = {"decision_threshold": threshold} if task == "binary" else {}
    refit = cfg.tuning.refit_on == "train_validation"
    return StepResult(
        output=EvaluateOutput(model_uri=model_uri, metrics=metrics),
        metrics={**metrics, "split_table_version": float(split_version), **extra},
        tags={"model_uri": model_uri, "report": ", ".join(report_files)},
        summary=", ".join(f"{label} {metrics[key]:.4f}" for label, key in _SUMMARY[task] if key in metrics)
        # Refitted on train + validation, the model has seen the validation rows: their score is no estimate.
        + (" (in-sample: the model was refitted on train + validation)" if refit else ""),
    )


def _log_profile(ctx: StepContext, data: DataFrame, scored_test: DataFrame, model_uri: str) -> None:
    """Store the reference profile for monitoring (train features, test predictions) with the model's run."""
    cfg = ctx.config
    column = prediction_column(cfg.label.task)
    predictions = scored_test.select(
        positive_probability().alias(column) if cfg.label.task == "binary" else F.col(column)
    )
    profile = reference_profile(cfg, data.where(F.col(SPLIT_COL) == TRAIN), predictions)
    run_id = model_run_id(model_uri)
    if run_id is None:
        LOG.warning("no reference profile stored: model %s was not logged by a run", model_uri)
        return
    log_reference_profile(run_id, profile)


def _unknown_class_rows(data: DataFrame, cfg: Any, classes: list[str]) -> dict[str, float]:
    """Validation and test rows whose label is none of the model's classes (left out of its metrics), in one job."""
    counts = {
        r[SPLIT_COL]: int(r["count"])
        for r in data.where(F.col(SPLIT_COL).isin(VALIDATION, TEST) & F.col(cfg.label.column).isNotNull())
        .where(encode_label(cfg.label, classes).isNull())
        .groupBy(SPLIT_COL)
        .count()
        .collect()
    }
    for split_name, unknown in counts.items():
        LOG.warning(
            "%d %s row(s) have a %s the model never saw in training (classes %s); they are left out of its metrics",
            unknown,
            split_name,
            cfg.label.column,
            classes,
        )
    return {f"{name}_rows_unknown_class": float(counts.get(name, 0)) for name in (VALIDATION, TEST)}


def decision_threshold(model: PipelineModel) -> float:
    """The threshold stored in a deltaml model's :class:`DecisionThreshold` stage (0.5 if it has none)."""
    stages = [s for s in model.stages if isinstance(s, DecisionThreshold)]
    return stages[-1].getThreshold() if stages else 0.5


def classifier_stage(model: PipelineModel) -> Any:
    """The fitted model stage (classifier or regressor) inside a deltaml model, or None."""
    found = [s for s in model.stages if isinstance(s, PredictionModel)]
    return found[-1] if found else None


def _report_header(ctx: StepContext, model_uri: str, split_version: int) -> list[tuple[str, str]]:
    """The report's header: which model, which runs, which data, when, and with which config."""
    cfg = ctx.config
    fitted = ctx.output(FitOutput)
    winner = fitted.leaderboard[0].get("family") if fitted is not None and fitted.leaderboard else None
    refit = " (refitted on train + validation)" if cfg.tuning.refit_on == "train_validation" else ""
    return [
        ("pipeline", cfg.name),
        ("model", f"{winner or 'the fitted model'}{refit}: {model_uri}"),
        ("label", f"{cfg.label.column} ({cfg.label.task})"),
        ("evaluated", f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, MLflow run {active_run_id() or '(none)'}"),
        ("fit run", ctx.run_ids.get("fit", "(not in this pipeline run)")),
        ("data", f"{ctx.tables.split} version {split_version}: validation and test splits"),
        ("config", ctx.provenance().removeprefix("config ")),
    ]


def _log_report(
    ctx: StepContext,
    model: PipelineModel,
    scored_test: DataFrame,
    metrics: dict[str, float],
    threshold: float,
    header: list[tuple[str, str]],
) -> list[str]:
    """Write the test split's evaluation report (plots, metrics, one HTML page) to the step's MLflow run."""
    cfg = ctx.config
    title = f"{cfg.name}: evaluation on the test split"
    test_metrics = {k: v for k, v in metrics.items() if k.startswith(("test_", "validation_"))}
    fitted = ctx.output(FitOutput)
    leaderboard = fitted.leaderboard if fitted is not None and fitted.leaderboard else None

    def importances() -> tuple[list[tuple[str, float]], str]:
        """The importances, and what they are (for the report's axis and table)."""
        settings = cfg.evaluate.importances
        if not settings.enabled:
            return [], ""
        try:
            single = [s for s in model.stages if isinstance(s, SingleNodeModel)]
            stage = single[-1] if single else classifier_stage(model)
            if stage is not None and stage.getFeaturesCol() == TREE_FEATURES_COL:
                names = tree_layout(cfg.features)[0]
            else:
                names = feature_names(model, cfg.features)
            if single:
                values = permutation_importances(
                    single[-1],
                    scored_test,
                    max_rows=settings.max_rows,
                    repeats=settings.repeats,
                    seed=cfg.seed,
                    max_seconds=settings.max_seconds,
                )
                if values and len(values) != len(names):
                    raise ValueError(f"{len(values)} importances for {len(names)} feature names")
                measure = {"binary": "AUC-ROC", "multiclass": "accuracy", "regression": "R²"}[cfg.label.task]
                kind = f"permutation importance: the drop in test {measure} when the feature is shuffled"
                return sorted(zip(names, values, strict=False), key=lambda pair: -abs(pair[1])), kind
            return feature_importances(stage, names), importance_kind(stage)
        except (ValueError, StepInputError) as exc:
            LOG.warning("feature importances left out of the report: %s", exc)
            return [], ""

    def explained() -> Explained:
        top, kind = importances()
        return top, kind, _effects(cfg.label.task, model, scored_test, top)

    with tempfile.TemporaryDirectory() as tmp:
        try:
            if cfg.label.task == "multiclass":
                files = _multiclass_report(
                    Path(tmp), model, scored_test, explained(), (title, header), test_metrics, leaderboard
                )
            elif cfg.label.task == "regression":
                files = _regression_report(
                    Path(tmp), scored_test, explained(), (title, header), test_metrics, leaderboard
                )
            else:
                files = _binary_report(
                    Path(tmp), scored_test, explained, (title, header), test_metrics, threshold, leaderboard
                )
        except StepInputError as exc:
            LOG.warning("no evaluation report: %s", exc)
            return []
        if files and active_run_id() is not None:
            where = log_folder(tmp, artifact_path="report")
            _log_report_tables(Path(tmp) / "metrics.json")
            LOG.info("logged the evaluation report (%d files) to %s", len(files), where)
        return [f"report/{f.name}" for f in files]


# The report's tables the MLflow UI shows as tables too (beside report.html): lift and gains, per class.
REPORT_TABLES = ("lift", "per_class", "feature_effects")

# The importances, what they are, and how the predictions vary with the top features.
Explained = tuple[list[tuple[str, float]], str, list[EffectRow]]


def _effects(
    task: str, model: PipelineModel, scored_test: DataFrame, importances: list[tuple[str, float]]
) -> list[EffectRow]:
    """How the predictions vary with the features behind the top importances (none without importances)."""
    columns = source_columns([name for name, _ in importances], scored_test.columns, EFFECT_FEATURES)
    label = F.col(LABEL_COL).cast("double")
    if task == "binary":
        predicted, actual = positive_probability(), label
    elif task == "regression":
        predicted, actual = F.col(PREDICTION_COL), label
    else:
        predicted, actual = (F.col(PREDICTION_COL) == label).cast("double"), None
    try:
        found = feature_effects(scored_test, columns, predicted=predicted, actual=actual)
    except (ValueError, PySparkException) as exc:
        LOG.warning("the features' effects left out of the report: %s", one_line(exc, 300))
        return []
    splits = bucket_splits(model)  # a bucket feature's groups read as ranges of its source column
    return [
        dataclasses.replace(e, level=bucket_range(e.level, splits[e.feature]) or e.level) if e.feature in splits else e
        for e in found
    ]


def _log_report_tables(document: Path) -> None:
    """Log the report's row tables with ``mlflow.log_table``, so the run's artifact view shows them as tables."""
    found = json.loads(document.read_text())
    for name in REPORT_TABLES:
        rows = found.get(name) or []
        if rows:
            log_table({key: [row[key] for row in rows] for key in rows[0]}, f"report/{name}_table.json")


def _binary_report(
    out: Path,
    scored_test: DataFrame,
    importances: Callable[[], Explained],
    about: tuple[str, list[tuple[str, str]]],
    metrics: dict[str, float],
    threshold: float,
    leaderboard: Any,
) -> list[Path]:
    scored = scored_test.select(F.col(LABEL_COL).alias("y"), positive_probability().alias("p")).cache()
    try:
        histogram = score_histogram(scored)
        if histogram.total_positives == 0 or histogram.total_negatives == 0:
            LOG.warning("no evaluation report: the test split does not have both classes")
            return []
        confusion = confusion_matrix(scored, threshold)
    finally:
        scored.unpersist()
    top, kind, effects = importances()
    return write_report(
        out,
        title=about[0],
        header=about[1],
        metrics=metrics,
        histogram=histogram,
        confusion=confusion,
        threshold=threshold,
        calibration=calibration_points(histogram),
        importances=top,
        importance_kind=kind,
        effects=effects,
        leaderboard=leaderboard,
    )


def _multiclass_report(
    out: Path,
    model: PipelineModel,
    scored_test: DataFrame,
    importances: Explained,
    about: tuple[str, list[tuple[str, str]]],
    metrics: dict[str, float],
    leaderboard: Any,
) -> list[Path]:
    labels = model_classes(model.stages) or []
    scored = scored_test.select(F.col(LABEL_COL).alias("y"), F.col(PREDICTION_COL).alias("pred"))
    confusion = multiclass_confusion(scored, len(labels))
    return write_multiclass_report(
        out,
        title=about[0],
        header=about[1],
        metrics=metrics,
        labels=labels,
        confusion=confusion,
        importances=importances[0],
        importance_kind=importances[1],
        effects=importances[2],
        leaderboard=leaderboard,
    )


def _regression_report(
    out: Path,
    scored_test: DataFrame,
    importances: Explained,
    about: tuple[str, list[tuple[str, str]]],
    metrics: dict[str, float],
    leaderboard: Any,
) -> list[Path]:
    scored = scored_test.select(F.col(LABEL_COL).alias("y"), F.col(PREDICTION_COL).alias("pred")).cache()
    try:
        residuals = residual_histogram(scored)
        grid = predicted_vs_actual(scored)
    finally:
        scored.unpersist()
    return write_regression_report(
        out,
        title=about[0],
        header=about[1],
        metrics=metrics,
        residuals=residuals,
        grid=grid,
        importances=importances[0],
        importance_kind=importances[1],
        effects=importances[2],
        leaderboard=leaderboard,
    )


STEP = Step(
    name="evaluate",
    run=run_evaluate,
    phase="train",
    sections=("evaluate", "features", "label", "key", "seed", "monitor.top_k", "tuning.refit_on"),
    tables=lambda ctx: [ctx.tables.split],
    consumes=(FitOutput,),
    produces=EvaluateOutput,
    headline=("test_", "validation_", "decision_threshold"),
)
