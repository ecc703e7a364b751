"""The fit step: one Spark ML Pipeline (features + model) fitted on the train split only, logged to MLflow."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import mlflow
import mlflow.spark
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

import deltaml
from deltaml.catalog import read_table
from deltaml.config import PipelineConfig
from deltaml.context import StepContext, StepResult, event_tables
from deltaml.errors import StepInputError
from deltaml.features import FEATURES_COL, build_feature_stages
from deltaml.models import (
    LABEL_COL,
    DecisionThreshold,
    class_weights,
    model_stages,
    positive_probability,
    supports_weights,
)
from deltaml.split import SPLIT_COL, TRAIN, VALIDATION
from deltaml.tuning import FamilyResult, SearchBudget, TrialLogger, TrialOutcome, loss_of, search_family
from deltaml.windows import WindowFeatures

LOG = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
__all__ = ["LABEL_COL", "build_training_pipeline", "fit_pipeline", "load_fitted_model", "run_fit", "with_binary_label"]
_MLFLOW_TYPES = {
    T.IntegerType: "integer",
    T.LongType: "long",
    T.ShortType: "integer",
    T.ByteType: "integer",
    T.FloatType: "float",
    T.DoubleType: "double",
    T.StringType: "string",
    T.BooleanType: "boolean",
    T.DateType: "datetime",
    T.TimestampType: "datetime",
    T.TimestampNTZType: "datetime",
    T.DecimalType: "double",
}


def with_binary_label(label: str, positive: Any) -> Any:
    """Return a transform adding ``_label``: 1.0 where ``label`` equals the positive value, else 0.0."""

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn(LABEL_COL, F.when(F.col(label) == F.lit(positive), 1.0).otherwise(0.0))

    return transform


def build_training_pipeline(config: PipelineConfig) -> Pipeline:
    """Feature stages, the first candidate's model with its fixed params, and the decision threshold.

    The untuned pipeline, for one fit of one family; ``run_fit`` tunes the candidates instead.
    """
    candidate = config.model.all_candidates[0]
    model = model_stages(candidate.family, candidate.params, seed=config.seed)
    features = build_feature_stages(config.features, events=event_tables(config))
    return Pipeline(stages=[*features, *model, DecisionThreshold(threshold=config.evaluate.threshold)])


def leading_windows(stages: list[Any]) -> tuple[PipelineModel, list[Any]]:
    """The leading :class:`~deltaml.windows.WindowFeatures` stages (nothing to fit) and the stages after them."""
    leading = 0
    while leading < len(stages) and isinstance(stages[leading], WindowFeatures):
        leading += 1
    return PipelineModel(stages=[s for s in stages[:leading] if isinstance(s, WindowFeatures)]), stages[leading:]


def fit_pipeline(pipeline: Pipeline, train: DataFrame) -> PipelineModel:
    """Fit ``pipeline`` like ``Pipeline.fit``, computing its leading window-feature joins once.

    ``Pipeline.fit`` hands every estimator the lazily transformed data, so each estimator
    (imputer, indexer, scaler, model) would re-run the point-in-time joins. Here the leading
    :class:`~deltaml.windows.WindowFeatures` stages transform once, the result is cached for
    the rest of the fit, and the fitted model is the same sequence of stages.
    """
    windows, rest = leading_windows(pipeline.getStages())
    if not windows.stages:
        return pipeline.fit(train)
    enriched = windows.transform(train).cache()
    try:
        fitted = Pipeline(stages=rest).fit(enriched)
    finally:
        enriched.unpersist()
    return PipelineModel(stages=[*windows.stages, *fitted.stages])


def model_signature(df: DataFrame, columns: list[str]) -> ModelSignature:
    """The model's input schema from the Spark schema; every column optional, since the pipeline imputes."""
    fields = {f.name: f for f in df.schema.fields}
    specs: list[ColSpec | TensorSpec] = []
    for column in columns:
        mlflow_type = _MLFLOW_TYPES.get(type(fields[column].dataType))
        if mlflow_type is None:
            raise StepInputError(f"step 'fit': column '{column}' has unsupported type {fields[column].dataType}")
        specs.append(ColSpec(mlflow_type, column, required=False))
    outputs = Schema([ColSpec("double", "prediction")])
    return ModelSignature(inputs=Schema(specs), outputs=outputs)


def model_requirements() -> list[str]:
    """The pip requirements of a logged Spark model, pinned to what trained it.

    Giving them explicitly spares MLflow its requirement inference, which re-imports the
    model in a subprocess and costs ~15 s per logged model.
    """
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in ("pyspark", "mlflow")]


def check_columns(df: DataFrame, columns: list[str], step: str, where: str) -> None:
    """Fail with one line if ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StepInputError(
            f"step '{step}': {where} has no column(s) {missing}; present: {df.columns} "
            "(fix the features section or the source)"
        )


def _check_candidates(config: PipelineConfig) -> None:
    """Build every candidate's estimator with its fixed params, so a bad param fails before Spark work."""
    for candidate in config.model.all_candidates:
        model_stages(candidate.family, candidate.params, seed=config.seed, num_features=1)


def labelled_rows(data: DataFrame, config: PipelineConfig, *splits: str) -> DataFrame:
    """The rows of ``splits`` whose label is known, with the 0/1 ``_label`` added."""
    return (
        data.where(F.col(SPLIT_COL).isin(*splits))
        .where(F.col(config.label.column).isNotNull())
        .transform(with_binary_label(config.label.column, config.label.positive))
    )


def _labelled_split(data: DataFrame, config: PipelineConfig, *splits: str) -> DataFrame:
    return labelled_rows(data, config, *splits).select(*config.features.columns, LABEL_COL)


def run_fit(ctx: StepContext) -> StepResult:
    """Fit the features on train, tune every candidate family on validation, log the winner's pipeline.

    The feature stages are fitted once, on the train split; every trial then fits only its model
    on the cached feature vectors and is scored on the validation split. The winner's model joins
    the fitted feature stages (or, with ``tuning.refit_on: train_validation``, the whole pipeline
    is refitted on train + validation with the winner's params), and the decision threshold ends it.
    """
    cfg = ctx.config
    _check_candidates(cfg)  # bad model params fail here, before any Spark work
    data, split_version = read_table(ctx.spark, ctx.tables.split, "fit")
    check_columns(data, [*cfg.features.columns, cfg.label.column, SPLIT_COL], "fit", f"split table {ctx.tables.split}")
    train = _labelled_split(data, cfg, TRAIN).cache()
    stats = train.agg(F.count("*").alias("n"), F.sum(LABEL_COL).alias("positives")).first()
    assert stats is not None
    rows, positives = int(stats["n"]), int(stats["positives"] or 0)
    if rows == 0 or positives in (0, rows):
        train.unpersist()
        raise StepInputError(
            f"step 'fit': the train split has {rows} rows and {positives} with label "
            f"{cfg.label.column}={cfg.label.positive!r}; both classes are needed (check label.positive)"
        )
    validation = _labelled_split(data, cfg, VALIDATION)
    # The window joins (nothing to fit) run once on train: their result feeds both the feature
    # fit and the train vectors.
    windows, rest = leading_windows(build_feature_stages(cfg.features, events=event_tables(cfg)))
    enriched = windows.transform(train).cache() if windows.stages else train
    fitted_rest = Pipeline(stages=rest).fit(enriched)
    features = PipelineModel(stages=[*windows.stages, *fitted_rest.stages])
    weighted = cfg.model.class_weight == "balanced"
    train_vectors = fitted_rest.transform(enriched).select(FEATURES_COL, LABEL_COL)
    if weighted:
        train_vectors = train_vectors.transform(class_weights())
    validation_vectors = features.transform(validation).select(FEATURES_COL, LABEL_COL)
    partitions = trial_partitions(rows, ctx.spark.sparkContext.defaultParallelism, cfg.tuning.parallelism)
    if partitions < train_vectors.rdd.getNumPartitions():
        train_vectors = train_vectors.coalesce(partitions)
    if partitions < validation_vectors.rdd.getNumPartitions():
        validation_vectors = validation_vectors.coalesce(partitions)
    train_vectors, validation_vectors = train_vectors.cache(), validation_vectors.cache()
    first = train_vectors.first()
    assert first is not None
    num_features = int(first[FEATURES_COL].size)
    if enriched is not train:
        enriched.unpersist()  # the train vectors are cached and computed now
    candidates = cfg.model.all_candidates
    if (len(candidates) > 1 or any(c.search for c in candidates)) and validation_vectors.isEmpty():
        raise StepInputError("step 'fit': tuning needs validation rows; set split.validation above 0")
    try:
        results = _tune(ctx, train_vectors, validation_vectors, num_features, weighted)
        winner = _winner(results, cfg.tuning.metric)
        threshold = _threshold(cfg, winner, validation_vectors)
        final = PipelineModel(stages=[*features.stages, *winner.model.stages, DecisionThreshold(threshold=threshold)])
        if cfg.tuning.refit_on == "train_validation":
            final = _refit(cfg, winner, data, num_features, weighted, threshold)
    finally:
        train_vectors.unpersist()
        validation_vectors.unpersist()
    example = train.select(*cfg.features.columns).limit(5).toPandas()
    train.unpersist()
    metric = cfg.tuning.metric
    _log_leaderboard(results, metric)
    info = mlflow.spark.log_model(
        final,
        artifact_path=MODEL_ARTIFACT,
        signature=model_signature(data, cfg.features.columns),
        input_example=example,
        pip_requirements=model_requirements(),
        # The pipeline's cleaning stages are deltaml classes: the model carries their code, so
        # it loads wherever MLflow does, with or without deltaml installed.
        code_paths=[str(Path(deltaml.__file__).parent)],
    )
    ctx.outputs.update(
        model=final,
        model_uri=info.model_uri,
        split_version=split_version,
        leaderboard=leaderboard_rows(results, metric),
    )
    trials = sum(len(r.trials) for r in results)
    return StepResult(
        metrics={
            "rows_train": float(rows),
            "positives_train": float(positives),
            "split_table_version": float(split_version),
            "trials": float(trials),
            f"winner_validation_{metric}": winner.metrics[metric],
            "decision_threshold": threshold,
        },
        tags={
            "model_uri": info.model_uri,
            "split_table": str(ctx.tables.split),
            "winner_family": winner.family,
            "winner_params": json.dumps(winner.params, sort_keys=True, default=str),
        },
        summary=(
            f"fitted on {rows} train rows ({positives} positive); {trials} trial(s) over "
            f"{len(results)} famil{'y' if len(results) == 1 else 'ies'}; winner {winner.family} "
            f"(validation {metric} {winner.metrics[metric]:.4f}), threshold {threshold:.3f}, logged {info.model_uri}"
        ),
    )


def trial_partitions(rows: int, cores: int, parallelism: int, rows_per_partition: int = 20_000) -> int:
    """How many partitions the cached train vectors get, so concurrent trials share the cores.

    Each of ``parallelism`` concurrent trials should get its share of the cores, and a partition
    should hold a useful amount of work: small data in many partitions spends its time in task
    overhead (on the Telco data, 1 partition instead of 4 made each trial about 30% faster).
    """
    return max(1, min(cores // max(1, parallelism), math.ceil(rows / rows_per_partition)))


def _tune(
    ctx: StepContext, train: DataFrame, validation: DataFrame, num_features: int, weighted: bool
) -> list[FamilyResult]:
    from deltaml.evaluation import binary_metrics

    cfg = ctx.config
    tuning = cfg.tuning
    active = mlflow.active_run()
    logger = TrialLogger(active.info.run_id if active else None, active.info.experiment_id if active else None)
    deadline = time.monotonic() + tuning.timeout_seconds
    started = time.monotonic()
    results: list[FamilyResult] = []
    for index, candidate in enumerate(cfg.model.all_candidates):
        family = candidate.family
        if weighted and not supports_weights(family):
            LOG.warning("model family %s does not support class weights; its trials are unweighted", family)

        def train_trial(params: dict[str, Any], family: str = family) -> tuple[PipelineModel, dict[str, float]]:
            stages = model_stages(family, params, seed=cfg.seed, num_features=num_features, weighted=weighted)
            model = Pipeline(stages=stages).fit(train)
            return model, binary_metrics(model.transform(validation))

        max_evals = (candidate.max_evals or tuning.max_evals) if candidate.search else 1

        def progress(trial: TrialOutcome, best: TrialOutcome | None, max_evals: int = max_evals) -> None:
            logger.log(trial, tuning.metric)
            value = f"{trial.metrics[tuning.metric]:.4f}" if trial.ok else f"failed ({trial.error})"
            best_text = f"{best.metrics[tuning.metric]:.4f}" if best else "-"
            LOG.info(
                "trial %s %d/%d: validation %s %s (best %s) in %.1fs, elapsed %.0fs",
                trial.family,
                trial.number,
                max_evals,
                tuning.metric,
                value,
                best_text,
                trial.seconds,
                time.monotonic() - started,
            )

        budget = SearchBudget(
            max_evals=max_evals,
            parallelism=tuning.parallelism,
            deadline=deadline,
            early_stop_rounds=tuning.early_stop_rounds,
            seed=cfg.seed + index,
        )
        results.append(
            search_family(
                family,
                candidate.search,
                candidate.params,
                train_trial,
                metric=tuning.metric,
                budget=budget,
                on_trial=progress,
            )
        )
    return results


def _threshold(cfg: PipelineConfig, winner: TrialOutcome, validation: DataFrame) -> float:
    """The decision threshold: fixed, or chosen by the configured rule on the validation split."""
    rule = cfg.evaluate.threshold_rule
    if rule == "fixed":
        return cfg.evaluate.threshold
    from deltaml.report import choose_threshold, score_histogram

    scored = winner.model.transform(validation).select(F.col(LABEL_COL).alias("y"), positive_probability().alias("p"))
    threshold = choose_threshold(score_histogram(scored), rule, cfg.evaluate.cost, cfg.evaluate.threshold)
    LOG.info("decision threshold %.3f chosen by %s on the validation split", threshold, rule)
    return threshold


def _winner(results: list[FamilyResult], metric: str) -> TrialOutcome:
    finished = [r.best for r in results if r.best is not None]
    if not finished:
        errors = "; ".join(f"{r.family}: {r.trials[0].error}" for r in results if r.trials)
        raise StepInputError(f"step 'fit': every trial failed ({errors})")
    return min(finished, key=lambda t: loss_of(metric, t.metrics[metric]))


def _refit(
    cfg: PipelineConfig, winner: TrialOutcome, data: DataFrame, num_features: int, weighted: bool, threshold: float
) -> PipelineModel:
    both = _labelled_split(data, cfg, TRAIN, VALIDATION)
    stages = [
        *build_feature_stages(cfg.features, events=event_tables(cfg)),
        *model_stages(winner.family, winner.params, seed=cfg.seed, num_features=num_features, weighted=weighted),
        DecisionThreshold(threshold=threshold),
    ]
    if weighted:
        both = both.transform(class_weights())
    both = both.cache()
    try:
        return fit_pipeline(Pipeline(stages=stages), both)
    finally:
        both.unpersist()


def leaderboard_rows(results: list[FamilyResult], metric: str) -> list[dict[str, Any]]:
    """Every family's best trial, best first (families whose trials all failed come last)."""
    ranked = sorted(results, key=lambda r: loss_of(metric, r.best.metrics[metric]) if r.best is not None else math.inf)
    rows: list[dict[str, Any]] = []
    for rank, result in enumerate(ranked, start=1):
        best = result.best
        rows.append(
            {
                "rank": rank if best is not None else None,
                "family": result.family,
                f"validation_{metric}": round(best.metrics[metric], 6) if best is not None else None,
                "trials": len(result.trials),
                "failed": sum(not t.ok for t in result.trials),
                "seconds": round(result.seconds, 1),
                "stopped": result.stopped,
                "params": json.dumps(best.params, sort_keys=True, default=str) if best is not None else "",
            }
        )
    return rows


def _log_leaderboard(results: list[FamilyResult], metric: str) -> None:
    """The leaderboard on the console and as an MLflow table (``leaderboard.json``)."""
    rows = leaderboard_rows(results, metric)
    LOG.info("leaderboard (validation %s):", metric)
    for row in rows:
        if row["rank"] is None:
            LOG.warning("  -  %-20s every trial failed", row["family"])
            continue
        LOG.info(
            "  %d. %-20s %.4f  %d trial(s), %.1fs  %s",
            row["rank"],
            row["family"],
            row[f"validation_{metric}"],
            row["trials"],
            row["seconds"],
            row["params"],
        )
    if mlflow.active_run() is not None and rows:
        mlflow.log_table(data={key: [row[key] for row in rows] for key in rows[0]}, artifact_file="leaderboard.json")


def load_fitted_model(ctx: StepContext) -> tuple[PipelineModel, str]:
    """The model fitted earlier in this run, or the one logged by the latest finished fit run."""
    if "model" in ctx.outputs:
        return ctx.outputs["model"], ctx.outputs["model_uri"]
    from deltaml.tracking import latest_step_run

    run = latest_step_run(ctx.config, "fit")
    uri = run.data.tags.get("deltaml.model_uri") or f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}"
    model = mlflow.spark.load_model(uri)
    ctx.outputs.update(model=model, model_uri=uri)
    return model, uri
