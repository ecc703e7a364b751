"""The fit step: one Spark ML Pipeline (features + model) fitted on the train split only, logged to MLflow."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from deltaml.columns import (
    FEATURES_COL,
    LABEL_COL,
    SPLIT_COL,
    TAG_ATTEMPT_KEY,
    TRAIN,
    TREE_FEATURES_COL,
    VALIDATION,
    WEIGHT_COL,
)
from deltaml.config.schema import PipelineConfig
from deltaml.config.search_space import searched_params
from deltaml.errors import SetupError, StepInputError
from deltaml.io.catalog import read_table
from deltaml.io.flavor import positive_probability
from deltaml.io.models import log_spark_model, model_requirements, model_signature, package_folder
from deltaml.io.session import default_parallelism, lost_session, session_lost_error
from deltaml.io.tables import event_tables
from deltaml.io.tracking import active_run_id, active_run_info, get_run_tags, log_table
from deltaml.ml.features import build_feature_stages, category_values, tree_layout
from deltaml.ml.labels import _labelled_split, label_classes
from deltaml.ml.models import (
    SPARK_TREE_FAMILIES,
    class_weights,
    model_stages,
    spark_param_problem,
    supports_weights,
)
from deltaml.ml.single_node import (
    FAMILY_PACKAGES,
    SINGLE_NODE_FAMILIES,
    ShippedData,
    executor_trial,
    fit_single_node,
    fixed_rounds,
    ship_data,
    single_node_estimator,
    single_node_param_problem,
)
from deltaml.ml.training import finishing_stages, fit_pipeline, leading_windows
from deltaml.ml.tuning import (
    FamilyResult,
    SearchBudget,
    TrialLogger,
    TrialOutcome,
    TuningProgress,
    died_attempt_trials,
    search_family,
)
from deltaml.quality.contracts import check_columns
from deltaml.steps.base import Step, StepContext, StepResult
from deltaml.steps.outputs import FitOutput
from deltaml.tasks import loss_of

LOG = logging.getLogger(__name__)


# Up to this many validation rows, a Spark ML trial's metrics are computed on the driver from one
# collect of the scores (the same definitions as the Spark evaluators, see
# deltaml.ml.single_node.validation_metrics) instead of a cached frame and a sort per AUC.
LOCAL_METRIC_ROWS = 100_000


def config_problems(config: PipelineConfig) -> list[tuple[str, str]]:
    """Model params the families do not take, fixed or searched: found from the config alone, with no JVM.

    Returns:
        ``(config key, problem)`` pairs; empty when every candidate's params are known to its family.

    Raises:
        SetupError: A single-node family's library is not installed.
    """
    problems = []
    task = config.label.task
    if config.tuning.engine == "optuna" and importlib.util.find_spec("optuna") is None:
        raise SetupError(
            "tuning.engine optuna needs the optuna package; install it (pip install 'deltaml[optuna]') "
            "or set tuning.engine: hyperopt"
        )
    for i, candidate in enumerate(config.model.all_candidates):
        where = f"model.candidates.{i}" if config.model.candidates else "model.params"
        names = {*candidate.params, *searched_params(candidate.search)}
        if candidate.family in SINGLE_NODE_FAMILIES:
            problem = single_node_param_problem(candidate.family, task, names)
            if problem is None:
                try:  # the fixed values too: whole numbers for integer params
                    single_node_estimator(candidate.family, task, candidate.params, seed=config.seed)
                except StepInputError as exc:
                    problem = str(exc).removeprefix("step 'fit': ")
        else:
            problem = spark_param_problem(candidate.family, task, names)
        if problem:
            problems.append((where, problem))
    return problems


def _check_candidates(config: PipelineConfig) -> None:
    """Build every candidate's estimator with its fixed params, so a bad param fails before Spark work."""
    problems = config_problems(config)
    if problems:
        raise StepInputError("step 'fit': " + "; ".join(f"{where}: {problem}" for where, problem in problems))
    for candidate in config.model.all_candidates:
        if candidate.family not in SINGLE_NODE_FAMILIES:  # Spark checks the values' types
            model_stages(candidate.family, candidate.params, seed=config.seed, num_features=1, task=config.label.task)


def _check_train_labels(config: PipelineConfig, train: DataFrame, classes: list[str] | None) -> tuple[int, int]:
    """Rows and distinct labels of the train split; fails when they cannot train the task."""
    label = config.label
    stats = train.agg(
        F.count("*").alias("n"),
        F.sum(LABEL_COL).alias("positives"),
        F.countDistinct(LABEL_COL).alias("distinct"),
    ).first()
    assert stats is not None
    rows, distinct = int(stats["n"]), int(stats["distinct"])
    if label.task == "binary":
        positives = int(stats["positives"] or 0)
        if rows == 0 or positives in (0, rows):
            raise StepInputError(
                f"step 'fit': the train split has {rows} rows and {positives} with label "
                f"{label.column}={label.positive!r}; both classes are needed (check label.positive)"
            )
        return rows, positives
    if label.task == "multiclass" and distinct < 2:
        raise StepInputError(
            f"step 'fit': the train split has {rows} rows with {distinct} of the classes {classes}; "
            "a multiclass label needs at least two (check label.column and label.classes)"
        )
    if label.task == "regression" and rows < 2:
        raise StepInputError(
            f"step 'fit': the train split has {rows} rows with a numeric {label.column}; "
            "a regression label needs numbers (check label.column)"
        )
    return rows, distinct


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
    classes = label_classes(data, cfg)
    cached: list[DataFrame] = []  # everything cached here is released on the way out, success or not

    def cache(df: DataFrame) -> DataFrame:
        cached.append(df.cache())
        return cached[-1]

    vectors: _Vectors | None = None
    try:
        train = cache(_labelled_split(data, cfg, TRAIN, classes=classes))
        rows, positives = _check_train_labels(cfg, train, classes)
        validation = _labelled_split(data, cfg, VALIDATION, classes=classes)
        # The window joins (nothing to fit) run once on train: their result feeds both the feature
        # fit and the train vectors.
        # Tree families split categories themselves: they read their own vector (ranks, not one-hot slots).
        tree = any(reads_tree_vector(c.family) for c in cfg.model.all_candidates)
        vector_cols = [FEATURES_COL, TREE_FEATURES_COL] if tree else [FEATURES_COL]
        stages = build_feature_stages(cfg.features, events=event_tables(cfg), tree_features=tree)
        windows, rest = leading_windows(stages)
        enriched = cache(windows.transform(train)) if windows.stages else train
        fitted_rest = Pipeline(stages=rest).fit(enriched)
        features = PipelineModel(stages=[*windows.stages, *fitted_rest.stages])
        weighted = cfg.model.class_weight == "balanced"
        train_vectors = fitted_rest.transform(enriched).select(*vector_cols, LABEL_COL)
        if weighted:
            train_vectors = train_vectors.transform(class_weights())
        validation_vectors = features.transform(validation).select(*vector_cols, LABEL_COL)
        # Coalescing never adds partitions: vectors already in fewer stay as they are.
        partitions = trial_partitions(rows, default_parallelism(ctx.spark), cfg.tuning.parallelism)
        vectors = _Vectors(train_vectors.coalesce(partitions), validation_vectors.coalesce(partitions), vector_cols)
        first_column = vector_column(cfg.model.all_candidates[0].family)
        vectors.use(first_column)
        for df in cached:  # the first vectors are cached and computed now; the others are computed from the table
            df.unpersist()
        cached.clear()
        validation_rows = vectors.validation_rows
        if not validation_rows:
            raise StepInputError(
                "step 'fit': the validation split has no labelled rows; set split.validation above 0 "
                "(tuning, the choice of the winner and the decision threshold are measured on it)"
            )
        shape = ModelShape(
            len(classes) if classes else 2,
            weighted,
            validation_rows,
            rows,
            category_values(features) if tree else None,
        )
        results = _tune(ctx, vectors, shape)
        winner = _winner(results, cfg.tuning_metric)
        threshold = _threshold(cfg, winner, vectors.frames(vector_column(winner.family))[1])
        finish = finishing_stages(cfg, threshold, classes)
        feature_stages = features.stages
        if not reads_tree_vector(winner.family):
            feature_stages = [s for s in feature_stages if not _writes(s, TREE_FEATURES_COL)]
        final = PipelineModel(stages=[*feature_stages, *winner.model.stages, *finish])
        if cfg.tuning.refit_on == "train_validation":
            final = _refit(ctx, winner, data, shape, finish, classes)
        example = train.select(*cfg.features.columns).limit(5).toPandas()
    finally:
        for df in cached:
            df.unpersist()
        if vectors is not None:
            vectors.release()
    metric = cfg.tuning_metric
    _log_leaderboard(results, metric)
    with tempfile.TemporaryDirectory(prefix="deltaml-code-") as scratch:
        model_uri = log_spark_model(
            final,
            signature=model_signature(data, cfg.features.columns, cfg.label.task),
            input_example=example,
            pip_requirements=model_requirements(FAMILY_PACKAGES.get(winner.family, ())),
            # The pipeline's cleaning stages are deltaml classes: the model carries their code, so
            # it loads wherever MLflow does, with or without deltaml installed.
            code_paths=[str(package_folder(Path(scratch)))],
        )
    ctx.models[model_uri] = final  # evaluate and register in this run use it without reloading
    trials = sum(len(r.trials) for r in results)
    refit = cfg.tuning.refit_on == "train_validation"
    fitted_on = (
        f"tuned on {rows} train rows, refitted on {rows + validation_rows} train + validation rows"
        if refit
        else f"fitted on {rows} train rows"
    )
    label_stat, label_text_, threshold_text = {
        "binary": ("positives_train", f"{positives} positive", f", threshold {threshold:.3f}"),
        "multiclass": ("classes_train", f"{positives} of {len(classes or [])} classes", ""),
        "regression": ("rows_train", "regression", ""),
    }[cfg.label.task]
    output = FitOutput(
        model_uri=model_uri,
        split_version=split_version,
        classes=classes or None,
        leaderboard=leaderboard_rows(results, metric),
    )
    return StepResult(
        output=output,
        metrics={
            "rows_train": float(rows),
            **({"rows_refit": float(rows + validation_rows)} if refit else {}),
            label_stat: float(positives),
            "split_table_version": float(split_version),
            "trials": float(trials),
            f"winner_validation_{metric}": winner.metrics[metric],
            **({"decision_threshold": threshold} if cfg.label.task == "binary" else {}),
        },
        tags={
            "model_uri": model_uri,
            "split_table": str(ctx.tables.split),
            "winner_family": winner.family,
            "winner_params": json.dumps(winner.params, sort_keys=True, default=str),
        },
        summary=(
            f"{fitted_on} ({label_text_}); {trials} trial(s) over "
            f"{len(results)} famil{'y' if len(results) == 1 else 'ies'}; winner {winner.family} "
            f"(validation {metric} {winner.metrics[metric]:.4f}){threshold_text}, logged {model_uri}"
        ),
    )


def trial_partitions(rows: int, cores: int, parallelism: int, rows_per_partition: int = 20_000) -> int:
    """How many partitions the cached train vectors get, so concurrent trials share the cores.

    Each of ``parallelism`` concurrent trials should get its share of the cores, and a partition
    should hold a useful amount of work: small data in many partitions spends its time in task
    overhead (on the Telco data, 1 partition instead of 4 made each trial about 30% faster).
    """
    return max(1, min(cores // max(1, parallelism), math.ceil(rows / rows_per_partition)))


def reads_tree_vector(family: str) -> bool:
    """Whether the family reads the tree vector (categories as one slot each), not the one-hot ``features``."""
    return family in SINGLE_NODE_FAMILIES or family in SPARK_TREE_FAMILIES


def _writes(stage: Any, column: str) -> bool:
    """Whether ``stage`` is a vector assembler writing ``column``."""
    return isinstance(stage, VectorAssembler) and stage.getOutputCol() == column


def vector_column(family: str) -> str:
    """The vector column the family reads."""
    return TREE_FEATURES_COL if reads_tree_vector(family) else FEATURES_COL


class _Vectors:
    """The train and validation vectors, cached one vector column at a time.

    The one-hot vector (linear models) and the tree vector (trees, single-node families) are not
    needed at once: caching both side by side doubled the cache, and at 10,000,000 rows Spark kept
    it on disk and the tree learners re-read it once per tree level. The families are tuned grouped
    by the vector they read, and only that group's vector is cached; the next is computed from the
    split table when its group starts.
    """

    def __init__(self, train: DataFrame, validation: DataFrame, columns: list[str]) -> None:
        self._train, self._validation, self._columns = train, validation, columns
        self._cached: dict[str, tuple[DataFrame, DataFrame]] = {}
        self.sizes: dict[str, int] = {}
        self.validation_rows = 0

    def frames(self, column: str) -> tuple[DataFrame, DataFrame]:
        """The train and validation frames with ``column`` (cached if it is the cached one)."""
        if column in self._cached:
            return self._cached[column]
        others = [c for c in self._columns if c != column]
        return self._train.drop(*others), self._validation.drop(*others)

    def use(self, column: str) -> tuple[DataFrame, DataFrame]:
        """Cache ``column``'s train and validation frames (releasing the other's) and return them."""
        if column not in self._cached:
            self.release()
            train, validation = (df.cache() for df in self.frames(column))
            self._cached[column] = (train, validation)
            first = train.first()
            assert first is not None
            self.sizes[column] = int(first[column].size)
            self.validation_rows = validation.count()
        return self._cached[column]

    def release(self) -> None:
        for train, validation in self._cached.values():
            train.unpersist()
            validation.unpersist()
        self._cached.clear()


@dataclass(frozen=True)
class ModelShape:
    """What every candidate model is built for: the classes, the weights, the split sizes."""

    num_classes: int
    weighted: bool
    validation_rows: int
    train_rows: int
    # With the tree vector: the most values of its categorical slots (see model_stages' categories).
    categories: int | None = None


def _tune(ctx: StepContext, vectors: _Vectors, shape: ModelShape) -> list[FamilyResult]:
    """Tune every candidate family, grouped by the vector it reads; the results come back in config order."""
    from deltaml.ml.metrics import collected_metrics, task_metrics

    cfg = ctx.config
    task = cfg.label.task
    tuning = cfg.tuning
    metric = cfg.tuning_metric
    active = active_run_info()
    logger = TrialLogger(active[0] if active else None, active[1] if active else None)
    logged = _logged_trials(active)
    deadline = time.monotonic() + tuning.timeout_seconds
    started = time.monotonic()
    candidates = list(enumerate(cfg.model.all_candidates))
    budgets = [(c.max_evals or tuning.max_evals) if c.search else 1 for _, c in candidates]
    overall: dict[str, Any] = {"done": 0, "best": None}  # across families, for the progress line
    first = vector_column(candidates[0][1].family)
    # The first family's vector is cached already: its group goes first, the others after it.
    candidates.sort(key=lambda item: vector_column(item[1].family) != first)
    results: dict[int, FamilyResult] = {}
    shipped: ShippedData | None = None
    try:
        for index, candidate in candidates:
            family = candidate.family
            column = vector_column(family)
            if column != TREE_FEATURES_COL and shipped is not None and lost_session(ctx.spark) is None:
                shipped.destroy()
                shipped = None
            train, validation = vectors.use(column)
            train_trial: Callable[[dict[str, Any]], tuple[Any, dict[str, float]]]
            if family in SINGLE_NODE_FAMILIES:
                if shipped is None:  # the vectors go to the executors once, for every single-node family
                    rows = single_node_rows(
                        tuning.single_node_max_rows,
                        tuning.single_node_max_mb,
                        vectors.sizes[TREE_FEATURES_COL],
                        [shape.train_rows, shape.validation_rows],
                    )
                    shipped = ship_data(
                        ctx.spark,
                        train,
                        validation,
                        max_rows=rows,
                        seed=cfg.seed,
                        features_col=TREE_FEATURES_COL,
                        categorical=tree_layout(cfg.features)[1],
                    )

                def train_trial(
                    params: dict[str, Any], family: str = family, data: ShippedData = shipped
                ) -> tuple[PipelineModel, dict[str, float]]:
                    model, metrics = executor_trial(
                        ctx.spark, data, family, task, params, seed=cfg.seed, num_classes=shape.num_classes
                    )
                    return PipelineModel(stages=[model]), metrics

            else:
                if shape.weighted and not supports_weights(family, task):
                    LOG.warning("model family %s does not support class weights; its trials are unweighted", family)

                def train_trial(
                    params: dict[str, Any],
                    family: str = family,
                    train: DataFrame = train,
                    validation: DataFrame = validation,
                    num_features: int = vectors.sizes[column],
                ) -> tuple[PipelineModel, dict[str, float]]:
                    stages = model_stages(
                        family,
                        params,
                        seed=cfg.seed,
                        num_features=num_features,
                        weighted=shape.weighted,
                        task=task,
                        num_classes=shape.num_classes,
                        categories=shape.categories,
                    )
                    model = Pipeline(stages=stages).fit(train)
                    scored = model.transform(validation)
                    if shape.validation_rows <= LOCAL_METRIC_ROWS:
                        return model, collected_metrics(scored, task, shape.num_classes)
                    return model, task_metrics(scored, task)

            max_evals = budgets[index]

            def progress(trial: TrialOutcome, best: TrialOutcome | None, max_evals: int = max_evals) -> None:
                logger.log(trial, metric)
                value = f"{trial.metrics[metric]:.4f}" if trial.ok else f"failed ({trial.error})"
                best_text = f"{best.metrics[metric]:.4f}" if best else "-"
                elapsed = time.monotonic() - started
                overall["done"] += 1
                if best is not None and (
                    overall["best"] is None
                    or loss_of(metric, best.metrics[metric]) < loss_of(metric, overall["best"].metrics[metric])
                ):
                    overall["best"] = best
                done, total, leader = overall["done"], sum(budgets), overall["best"]
                left = min(elapsed / done * (total - done), max(0.0, deadline - time.monotonic()))
                LOG.info(
                    "trial %s %d/%d: validation %s %s (best %s) in %.1fs, elapsed %.0fs",
                    trial.family,
                    trial.number,
                    max_evals,
                    metric,
                    value,
                    best_text,
                    trial.seconds,
                    elapsed,
                    extra={
                        "progress": TuningProgress(
                            done,
                            total,
                            trial.family,
                            trial.number,
                            max_evals,
                            metric,
                            leader.metrics[metric] if leader else None,
                            leader.family if leader else None,
                            elapsed,
                            left,
                        )
                    },
                )

            budget = SearchBudget(
                max_evals=max_evals,
                parallelism=tuning.parallelism,
                deadline=deadline,
                early_stop_rounds=tuning.early_stop_rounds,
                seed=cfg.seed + index,
                engine=tuning.engine,
            )
            result = search_family(
                family,
                candidate.search,
                candidate.params,
                _stops_when_the_session_is_lost(ctx.spark, family, train_trial),
                metric=metric,
                budget=budget,
                on_trial=progress,
                logged=logged.get(family, {}) if candidate.search else None,
            )
            if result.stopped == "timeout":
                LOG.warning(
                    "%s: tuning.timeout_seconds %d reached: %d of %d trials ran; raise it, or lower max_evals",
                    family,
                    tuning.timeout_seconds,
                    len(result.trials),
                    result.max_evals,
                )
            if (
                family in SINGLE_NODE_FAMILIES
                and shipped is not None
                and shipped.validation_rows < shape.validation_rows
                and result.best is not None
            ):
                # Its trials saw a sample of the validation rows; the other families saw them all.
                # The family's best is measured again on all of them, so the winner is chosen fairly.
                sampled = result.best.metrics[metric]
                result.best.metrics = task_metrics(result.best.model.transform(validation), task)
                LOG.info(
                    "%s best trial: validation %s %.4f on %d sampled rows, %.4f on all %d",
                    family,
                    metric,
                    sampled,
                    shipped.validation_rows,
                    result.best.metrics[metric],
                    shape.validation_rows,
                )
            results[index] = result
    finally:
        if shipped is not None and lost_session(ctx.spark) is None:
            shipped.destroy()
    return [results[index] for index in sorted(results)]


def _logged_trials(active: tuple[str, str] | None) -> dict[str, dict[int, TrialOutcome]]:
    """The finished trials of the last fit with this cache key that died, by family and number (see search_family)."""
    if active is None:
        return {}
    key = get_run_tags(active[0]).get(TAG_ATTEMPT_KEY)
    found = died_attempt_trials(active[0], active[1], key) if key else None
    if not found:
        return {}
    run_id, trials = found
    logged: dict[str, dict[int, TrialOutcome]] = {}
    for trial in trials:
        logged.setdefault(trial.family, {})[trial.number] = trial
    LOG.info(
        "fit: resuming the search of run %s, which did not finish: %d trials logged (%s) are taken where the "
        "search proposes them again",
        run_id,
        len(trials),
        ", ".join(f"{family} {len(numbers)}" for family, numbers in logged.items()),
    )
    return logged


def _stops_when_the_session_is_lost(
    spark: SparkSession, family: str, train_trial: Callable[[dict[str, Any]], tuple[Any, dict[str, float]]]
) -> Callable[[dict[str, Any]], tuple[Any, dict[str, float]]]:
    """``train_trial``, raising :class:`SessionLostError` when a trial fails because the driver JVM died.

    Before, the trials after an out-of-memory death each failed in a second with
    ``ConnectionRefusedError`` and the step ended with that line; now the search stops at once and
    the line says what happened and which settings bound the memory.
    """

    def guarded(params: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        try:
            return train_trial(params)
        except Exception as exc:
            lost = session_lost_error(spark, f"step 'fit': a {family} trial", exc)
            if lost is not None:
                raise lost from exc
            raise

    return guarded


def single_node_rows(max_rows: int, max_mb: int, num_features: int, splits: list[int]) -> int:
    """The most rows of each split single-node families get: ``max_rows``, lowered so the splits' dense float64
    copy fits ``max_mb`` (the smaller splits kept whole where they fit, the larger ones sampled alike).

    Raises:
        StepInputError: Not even 100 rows of each split fit: the features are too many for the budget.
    """
    budget = max_mb * 1024**2 // (8 * max(num_features, 1))
    remaining = budget
    ordered = sorted(splits)
    for index, rows in enumerate(ordered):
        left = len(ordered) - index
        if min(rows, max_rows) * left > remaining:
            cap = min(max_rows, remaining // left)
            break
        remaining -= min(rows, max_rows)
    else:
        return max_rows
    if cap < 100:
        raise StepInputError(
            f"step 'fit': tuning.single_node_max_mb {max_mb} holds only {cap} rows of {num_features} features "
            "for single-node families; raise it, or lower the feature count (features.hashing.num_features, "
            "categorical columns)"
        )
    LOG.info(
        "single-node families: %s rows x %d features would be %.0f MB, above tuning.single_node_max_mb %d; "
        "sampling each split to at most %d rows",
        " + ".join(str(min(r, max_rows)) for r in splits),
        num_features,
        sum(min(r, max_rows) for r in splits) * num_features * 8 / 1024**2,
        max_mb,
        cap,
    )
    return cap


def _threshold(cfg: PipelineConfig, winner: TrialOutcome, validation: DataFrame) -> float:
    """The decision threshold: fixed, or chosen by the configured rule on the validation split."""
    rule = cfg.evaluate.threshold_rule
    if rule == "fixed" or cfg.label.task != "binary":
        return cfg.evaluate.threshold
    from deltaml.report.statistics import choose_threshold, score_histogram

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
    ctx: StepContext,
    winner: TrialOutcome,
    data: DataFrame,
    shape: ModelShape,
    finish: list[Any],
    classes: list[str] | None,
) -> PipelineModel:
    """The whole pipeline refitted on train + validation with the winner's params."""
    cfg = ctx.config
    task = cfg.label.task
    both = _labelled_split(data, cfg, TRAIN, VALIDATION, classes=classes)
    if shape.weighted:
        both = both.transform(class_weights())
    both = both.cache()
    single_node = winner.family in SINGLE_NODE_FAMILIES
    tree = reads_tree_vector(winner.family)
    features = build_feature_stages(cfg.features, events=event_tables(cfg), tree_features=tree)
    try:
        # The features first: refitted on more rows, the vector can change size (mlp needs it).
        fitted = fit_pipeline(Pipeline(stages=features), both)
        # Only what the model reads is cached: the winner's vector, the label, the weights.
        column = vector_column(winner.family)
        vectors = fitted.transform(both).select(column, LABEL_COL, *([WEIGHT_COL] if shape.weighted else [])).cache()
        try:
            first = vectors.first()
            assert first is not None
            if single_node:
                rows = single_node_rows(
                    cfg.tuning.single_node_max_rows,
                    cfg.tuning.single_node_max_mb,
                    int(first[column].size),
                    [shape.train_rows + shape.validation_rows],
                )
                model: Any = fit_single_node(
                    ctx.spark,
                    vectors,
                    winner.family,
                    task,
                    fixed_rounds(winner.model.stages[0], winner.params),
                    seed=cfg.seed,
                    num_classes=shape.num_classes,
                    max_rows=rows,
                    features_col=TREE_FEATURES_COL,
                    categorical=tree_layout(cfg.features)[1],
                )
                return PipelineModel(stages=[*fitted.stages, model, *finish])
            estimator = model_stages(
                winner.family,
                winner.params,
                seed=cfg.seed,
                num_features=int(first[column].size),
                weighted=shape.weighted,
                task=task,
                num_classes=shape.num_classes,
                categories=category_values(fitted) if tree else None,
            )
            model = Pipeline(stages=estimator).fit(vectors)
            return PipelineModel(stages=[*fitted.stages, *model.stages, *finish])
        finally:
            vectors.unpersist()
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
                "max_evals": result.max_evals,
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
            if row["trials"]:
                LOG.warning("  -  %-22s every trial failed", row["family"])
            else:  # the search was cut before its first trial: nothing failed
                LOG.warning("  -  %-22s no trial ran (%s)", row["family"], row["stopped"])
            continue
        ran = (
            f"{row['trials']} of {row['max_evals']} trials ({row['stopped']})"
            if row["trials"] < row["max_evals"]
            else f"{row['trials']} trial(s)"
        )
        LOG.info(
            "  %d. %-22s %.4f  %s, %.1fs  %s",
            row["rank"],
            row["family"],
            row[f"validation_{metric}"],
            ran,
            row["seconds"],
            row["params"],
        )
    if active_run_id() is not None and rows:
        log_table(data={key: [row[key] for row in rows] for key in rows[0]}, artifact_file="leaderboard.json")


STEP = Step(
    name="fit",
    run=run_fit,
    phase="train",
    # The threshold settings only: the report's importances do not change the model.
    sections=(
        "features",
        "label",
        "model",
        "tuning",
        "evaluate.threshold",
        "evaluate.threshold_rule",
        "evaluate.cost",
        "key",
        "seed",
    ),
    tables=lambda ctx: [ctx.tables.split],
    produces=FitOutput,
    check=config_problems,
    headline=("winner_validation_", "trials", "rows_train", "winner_family"),
)
