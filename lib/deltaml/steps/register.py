"""The register step: the fitted model into the MLflow registry with lineage tags, then the champion/challenger gate."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml._version import __version__
from deltaml.columns import (
    CHALLENGER,
    CHAMPION,
    LABEL_COL,
    METRIC_TAG_PREFIX,
    PREDICTION_COL,
    PROBABILITY_COL,
    SPLIT_COL,
    TAG_CONFIG_HASH,
    TAG_GATE,
    TAG_GIT_SHA,
    TAG_MODEL_URI,
    TAG_PIPELINE,
    TAG_RAW_TABLE,
    TAG_TRAINING_TABLE,
    TAG_TRAINING_TABLE_VERSION,
    TAG_VERSION,
    TEST,
)
from deltaml.errors import DeltamlError, StepInputError, one_line
from deltaml.io.catalog import read_table, table_version
from deltaml.io.flavor import positive_probability
from deltaml.io.models import load_spark_model, registered_model_uri
from deltaml.io.registry import (
    champion_version,
    describe_model,
    describe_version,
    promote,
    register_version,
    tag_version,
)
from deltaml.io.tables import event_tables
from deltaml.io.tracking import active_run_id, artifact_text, latest_step_run, log_text_to, mlflow_client
from deltaml.ml.features import bind_window_stages
from deltaml.ml.labels import labelled_rows
from deltaml.ml.models import model_classes
from deltaml.quality.contracts import check_columns
from deltaml.quality.gate import GateDecision, gate_decision
from deltaml.report.html import gate_comparison, with_gate_comparison
from deltaml.steps.base import Step, StepContext, StepResult, load_fitted_model
from deltaml.steps.outputs import EvaluateOutput, FitOutput, RegisterOutput

LOG = logging.getLogger(__name__)


def run_register(ctx: StepContext) -> StepResult:
    """Register the model fitted in this run (or the latest fit run) as @challenger; the gate decides @champion.

    The new version gets the lineage tags and the alias ``challenger``. Unless
    ``register.gate.enabled`` is false, it is then compared with the current @champion on the
    test rows of the split table (:func:`deltaml.quality.gate.gate_decision`) and promoted only if it
    passes; a champion that cannot score these rows (trained on other features) is replaced.
    The decision is returned as ``gate_*`` metrics and tags.
    """
    cfg = ctx.config
    name = cfg.mlflow.registered_model
    _, model_uri = load_fitted_model(ctx)
    evaluated = ctx.output(EvaluateOutput)
    evaluated_uri: str | None
    evaluate_run = ctx.run_ids.get("evaluate")
    if evaluated is not None:
        metrics, evaluated_uri = evaluated.metrics, evaluated.model_uri
    else:
        run = latest_step_run(ctx.loaded.pipeline, "evaluate")
        metrics, evaluated_uri = dict(run.data.metrics), run.data.tags.get(TAG_MODEL_URI)
        evaluate_run = run.info.run_id
    if evaluated_uri != model_uri:
        raise StepInputError(
            f"step 'register': the latest evaluate run scored {evaluated_uri}, "
            f"not the model to register ({model_uri}); run --step evaluate first"
        )
    fitted = ctx.output(FitOutput)
    split_version = fitted.split_version if fitted is not None else table_version(ctx.spark, ctx.tables.split)
    lineage = {
        TAG_PIPELINE: cfg.name,
        TAG_CONFIG_HASH: ctx.loaded.config_hash,
        TAG_VERSION: __version__,
        TAG_GIT_SHA: ctx.git_sha,
        TAG_TRAINING_TABLE: str(ctx.tables.split),
        TAG_TRAINING_TABLE_VERSION: str(split_version),
        TAG_RAW_TABLE: str(ctx.tables.raw),
        TAG_MODEL_URI: model_uri,
        **{f"{METRIC_TAG_PREFIX}{k}": f"{v:.6f}" for k, v in sorted(metrics.items()) if k.startswith("test_")},
    }
    client = mlflow_client()
    version = register_version(client, model_uri, name, lineage)

    gate = cfg.registration.gate
    decision: GateDecision | None = None
    if not gate.enabled:
        previous = promote(client, name, version, "gate disabled")
        promoted, reason = True, "gate disabled"
    else:
        decision = _decide(ctx, client, version, int(split_version))
        promoted, reason = decision.promote, decision.reason
        previous = promote(client, name, version, f"gate: {reason}") if promoted else decision.champion_version
    tag_version(client, name, version, TAG_GATE, f"{'promoted' if promoted else 'kept'}: {reason}")
    family = fitted.leaderboard[0].get("family") if fitted is not None and fitted.leaderboard else None
    describe_version(client, name, version, version_description(ctx, family, metrics, int(split_version), reason))
    describe_model(
        client,
        name,
        f"deltaml pipeline {cfg.name}: {cfg.label.task} model of {cfg.label.column!r}, trained on {ctx.tables.split} "
        f"(from {ctx.tables.raw}). Each version's description has its metrics and lineage; @{CHAMPION} is the one "
        "batch scoring uses.",
    )

    outcome = f"promoted to @{CHAMPION}" if promoted else f"kept version {previous} as @{CHAMPION}"
    if evaluate_run is not None:
        rows = gate_rows(decision, version, previous, reason, f"{ctx.tables.split} v{split_version}", gate.confidence)
        decided = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, register run {active_run_id() or '(none)'}"
        _add_to_report(evaluate_run, gate_comparison([*rows, ("decided", decided)], promoted))
    gate_metrics = decision.as_metrics() if decision else {"gate_promoted": 1.0}
    gate_tags = decision.as_tags() if decision else {"gate_decision": "promoted", "gate_reason": reason}
    return StepResult(
        output=RegisterOutput(model_version=version, promoted=promoted),
        metrics={"model_version": float(version), **gate_metrics},
        tags={"registered_model": name, "model_version": str(version), **gate_tags},
        summary=f"{name} version {version} @{CHALLENGER}; {outcome} ({reason})",
    )


def gate_rows(
    decision: GateDecision | None, version: int, previous: int | None, reason: str, rows: str, confidence: float
) -> list[tuple[str, str]]:
    """The champion-vs-challenger comparison as ``(name, value)`` rows, the decision first."""
    if decision is None:
        return [("decision", f"promoted: version {version} is @{CHAMPION}"), ("reason", reason)]
    if decision.promote:
        outcome = f"promoted: version {version} is the new @{CHAMPION}"
    else:
        outcome = f"kept: version {previous} stays @{CHAMPION}; version {version} is @{CHALLENGER}"
    champion = (
        f"version {decision.champion_version}: {decision.champion_value:.4f}"
        if decision.champion_version is not None and decision.champion_value is not None
        else f"version {decision.champion_version}: cannot score these rows"
        if decision.champion_version is not None
        else "none yet: this is the first version"
    )
    found = [
        ("decision", outcome),
        ("reason", reason),
        ("compared on", f"{decision.metric}, the test rows of {rows}"),
        (f"@{CHAMPION}", champion),
        (f"@{CHALLENGER}", f"version {version}: {decision.challenger_value:.4f}"),
    ]
    if decision.difference is not None:
        difference = f"{decision.difference:+.4f} (the challenger's improvement: positive means it is better)"
        if decision.ci_low is not None and decision.ci_high is not None:
            difference += (
                f"; {confidence:.0%} interval {decision.ci_low:+.4f} to {decision.ci_high:+.4f} "
                f"over {decision.resamples} bootstrap resamples"
            )
        found.append(("difference", difference))
    return found


def _add_to_report(run_id: str, comparison: str) -> None:
    """Write the gate's comparison into the evaluation report of the evaluate run (when it has one)."""
    page = artifact_text(run_id, "report/report.html")
    if page is None:
        LOG.info("evaluate run %s has no report to add the gate's decision to", run_id)
        return
    # The version is registered and the aliases are set by now: a failed write must not fail the step.
    try:
        log_text_to(run_id, with_gate_comparison(page, comparison), "report/report.html")
    except (MlflowException, OSError) as exc:
        LOG.warning("the gate's decision is not in the report of run %s: %s", run_id, one_line(exc, 300))
        return
    LOG.info("added the gate's decision to the evaluation report of run %s", run_id)


def version_description(
    ctx: StepContext, family: str | None, metrics: dict[str, float], split_version: int, reason: str
) -> str:
    """A version's description: the model, its test and validation metrics, its lineage and the gate's reason."""
    cfg = ctx.config
    shown = [k for k in sorted(metrics) if k.startswith(("test_", "validation_")) and not k.endswith("_rows")]
    values = ", ".join(f"{k.replace('_', ' ', 1)} {metrics[k]:.4f}" for k in shown)
    what = f"{family} " if family else ""
    return (
        f"{what}{cfg.label.task} model of {cfg.label.column!r} (pipeline {cfg.name}). {values}. "
        f"Trained on {ctx.tables.split} v{split_version}; {ctx.provenance()}; "
        f"fit run {ctx.run_ids.get('fit', 'not in this run')}. Gate: {reason}."
    )


def _decide(ctx: StepContext, client: MlflowClient, version: int, split_version: int) -> GateDecision:
    """Score the split's test rows with the challenger and the current champion, and run the gate."""
    cfg = ctx.config
    name = cfg.mlflow.registered_model
    challenger, _ = load_fitted_model(ctx)
    test = _test_rows(ctx, split_version, model_classes(challenger.stages))
    current = champion_version(client, name)

    def decide(scored: DataFrame, champion: int | None) -> GateDecision:
        return gate_decision(
            scored,
            cfg.registration.gate,
            seed=cfg.seed,
            champion_version=champion,
            challenger_version=version,
            task=cfg.label.task,
            metric=cfg.gate_metric,
        )

    def challenger_alone() -> GateDecision:
        return decide(
            score_test_rows(test, cfg.key, challenger, None, label=cfg.label.column, task=cfg.label.task), None
        )

    if current is None:
        return challenger_alone()
    try:
        scored = _score_with_champion(ctx, test, challenger, current)
    except DeltamlError:
        raise
    except Exception as exc:  # Spark's and MLflow's errors: the champion does not fit this data
        first = one_line(exc, 300)
        LOG.warning("champion %s version %s cannot score the test rows, replacing it: %s", name, current, first)
        alone = challenger_alone()
        return dataclasses.replace(
            alone,
            champion_version=current,
            reason=f"champion version {current} cannot score this data ({type(exc).__name__}); "
            f"{alone.metric} {alone.challenger_value:.4f}",
        )
    try:
        return decide(scored, current)
    finally:
        scored.unpersist()


def _score_with_champion(ctx: StepContext, test: DataFrame, challenger: PipelineModel, version: int) -> DataFrame:
    """Both models' scores of the test rows, cached; a champion that cannot score them fails here, not in the gate."""
    cfg = ctx.config
    champion = load_spark_model(registered_model_uri(cfg.mlflow.registered_model, version))
    bind_window_stages(champion, cfg.features.windows, event_tables(cfg))
    scored = score_test_rows(test, cfg.key, challenger, champion, label=cfg.label.column, task=cfg.label.task).cache()
    try:
        scored.count()
    except Exception:
        scored.unpersist()
        raise
    return scored


def _test_rows(ctx: StepContext, split_version: int, classes: list[str] | None) -> DataFrame:
    """The labelled TEST rows of the split table at the version the model was trained on."""
    cfg = ctx.config
    data, _ = read_table(ctx.spark, ctx.tables.split, "register", version=split_version)
    where = f"split table {ctx.tables.split} v{split_version}"
    check_columns(data, [cfg.key, *cfg.features.columns, cfg.label.column, SPLIT_COL], "register", where)
    test = labelled_rows(data, cfg, TEST, classes=classes)
    counts = test.agg(F.count("*").alias("rows"), F.countDistinct(cfg.key).alias("keys")).first()
    assert counts is not None
    if counts["rows"] != counts["keys"]:
        raise StepInputError(
            f"step 'register': key '{cfg.key}' is not unique and non-null in the test rows of {where} "
            f"({counts['rows']} rows, {counts['keys']} distinct keys); the gate pairs both models' scores "
            "by key (add a unique rule on it to the contract)"
        )
    return test


def score_test_rows(
    test: DataFrame,
    key: str,
    challenger: PipelineModel,
    champion: PipelineModel | None,
    *,
    label: str | None = None,
    task: str = "binary",
) -> DataFrame:
    """Both models' scores of the same rows, paired by ``key``.

    Args:
        test: Rows with ``key``, the features and the numeric ``_label`` in the challenger's encoding.
        key: A column unique per row.
        challenger: The new model.
        champion: The current champion, or None.
        label: The label column as configured (needed for ``multiclass``).
        task: ``binary``, ``multiclass`` or ``regression``.

    Returns:
        ``y``, ``p_challenger``, ``pred_challenger`` and, with a champion, ``p_champion`` and
        ``pred_champion``. Binary: the probability of the positive class and the 0/1 prediction.
        Multiclass: the probability of the row's true class and the predicted class as an index
        of the challenger's classes (each model reads its own class order, so a champion trained
        with other classes still compares fairly). Regression: the prediction in both columns.
    """
    challenger_classes = model_classes(challenger.stages) if task == "multiclass" else None

    def scores(model: PipelineModel, role: str) -> DataFrame:
        scored = model.transform(test)
        if task == "multiclass":
            if label is None or challenger_classes is None:
                raise StepInputError("gate: a multiclass model needs its label column and ClassLabels stage")
            own = F.array(*[F.lit(c) for c in model_classes(model.stages) or []])
            theirs = F.array(*[F.lit(c) for c in challenger_classes])
            truth = F.col(label).cast("string")
            probability = F.element_at(
                vector_to_array(F.col(PROBABILITY_COL)), F.array_position(own, truth).cast("int")
            )
            predicted = F.element_at(own, F.col(PREDICTION_COL).cast("int") + 1)
            p = F.coalesce(F.when(F.array_position(own, truth) > 0, probability), F.lit(0.0))
            pred = (F.array_position(theirs, predicted) - 1).cast("double")
        elif task == "regression":
            p = pred = F.col(PREDICTION_COL).cast("double")
        else:
            p, pred = positive_probability(), F.col(PREDICTION_COL).cast("double")
        return scored.select(
            F.col(key),
            F.col(LABEL_COL).cast("double").alias("y"),
            p.alias(f"p_{role}"),
            pred.alias(f"pred_{role}"),
        )

    scored = scores(challenger, "challenger")
    if champion is not None:
        scored = scored.join(scores(champion, "champion").drop("y"), on=key, how="inner")
    return scored.drop(key)


STEP = Step(
    name="register",
    run=run_register,
    phase="train",
    sections=("register", "mlflow.registered_model", "features", "label", "key", "seed"),
    tables=lambda ctx: [ctx.tables.split],
    consumes=(FitOutput, EvaluateOutput),
    produces=RegisterOutput,
    headline=("model_version", "gate_promoted", "registered_model", "gate_decision"),
)
