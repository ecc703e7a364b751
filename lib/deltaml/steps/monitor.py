"""The monitor step: drift of scored batches against the model's training profile, and decay once labels land.

At evaluation, :func:`log_reference_profile` stores with the model's MLflow run a profile of its
train rows (the features it reads) and of its test predictions. ``deltaml monitor CONF`` reads a
window of the predictions table, takes the exact input rows that were scored (the source table at
the version each prediction records, matched on key and input hash; the score step's input table
when the prediction names it by its Delta table id, wherever its folder now is), compares them and the
predictions with that profile (:mod:`deltaml.quality.drift`, Spark aggregations only), and writes one row
per feature and metric to the monitoring Delta table, with the window's drifted share and, when a
labels table is configured, the live metric against the model's test metric.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from deltaml.columns import (
    BATCH_COL,
    INPUT_HASH_COL,
    METRIC_TAG_PREFIX,
    MODEL_NAME_COL,
    MODEL_VERSION_COL,
    PREDICTED_LABEL_COL,
    PREDICTION_COL,
    PROBABILITY_COL,
    SCORED_AT_COL,
    SOURCE_TABLE_COL,
    SOURCE_VERSION_COL,
)
from deltaml.config.schema import PipelineConfig
from deltaml.errors import StepInputError, one_line
from deltaml.io.catalog import read_table, recorded_table, replace_rows, resolve_table, sql_literal, table_exists
from deltaml.io.registry import version_tags
from deltaml.io.tables import scoring_input
from deltaml.io.tracking import active_run_id, log_folder, log_metrics, mlflow_client
from deltaml.ml.models import encode_label
from deltaml.ml.predictions import ScoredSource, input_hash, scored_source
from deltaml.quality.drift import DriftMetric, Profile, compare
from deltaml.quality.profile import (
    PREDICTIONS_FEATURE,
    WINDOW_FEATURE,
    as_profiled,
    current_shares,
    load_reference_profile,
    reference_shares,
)
from deltaml.report.writers import write_drift_report
from deltaml.steps.base import Step, StepContext, StepResult
from deltaml.tasks import LOG_LOSS_EPS, improvement, live_metrics

LOG = logging.getLogger(__name__)


# Probabilities are clipped like Spark's log-loss evaluator does.


@dataclass(frozen=True)
class Window:
    """The prediction rows monitored together, and what identifies them."""

    rows: DataFrame
    window_id: str
    description: str
    model_version: int
    batches: list[str]
    count: int
    first_scored_at: datetime
    last_scored_at: datetime


def select_window(predictions: DataFrame, spec: str, now: datetime) -> Window:
    """The predictions of the window ``spec``: ``last_run`` (the latest scoring), ``all``, or ``<n>d`` / ``<n>h``.

    Raises:
        StepInputError: The window holds no predictions.
    """
    if spec == "last_run":
        # The comparison stays in Spark: a timestamp collected to Python and sent back can shift by an
        # hour in a driver time zone's repeated DST hour.
        latest = predictions.agg(F.max(SCORED_AT_COL).alias("_latest"))
        rows = predictions.join(F.broadcast(latest), F.col(SCORED_AT_COL) == F.col("_latest")).drop("_latest")
        description = "the latest score run"
    elif spec == "all":
        rows, description = predictions, "every prediction"
    else:
        amount, unit = int(spec[:-1]), spec[-1]
        since = now - (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
        rows = predictions.where(F.col(SCORED_AT_COL) >= F.lit(since))
        description = f"predictions scored since {since:%Y-%m-%d %H:%M}"
    # One model's predictions at a time: the newest model's, compared with its own profile.
    newest = rows.agg(F.max(MODEL_VERSION_COL).alias("_newest"))
    rows = rows.join(F.broadcast(newest), F.col(MODEL_VERSION_COL) == F.col("_newest")).drop("_newest")
    info = rows.agg(
        F.count(F.lit(1)).alias("n"),
        F.max(MODEL_VERSION_COL).alias("model"),
        F.sort_array(F.collect_set(BATCH_COL)).alias("batches"),
        F.min(SCORED_AT_COL).alias("first"),
        F.max(SCORED_AT_COL).alias("last"),
    ).first()
    if info is None or not info["n"]:
        raise StepInputError(f"step 'monitor': no predictions in the window ({description}); run `deltaml score` first")
    batches = [str(b) for b in info["batches"]]
    key = "|".join([spec, str(info["first"]), str(info["last"]), *batches])
    return Window(
        rows=rows,
        window_id=hashlib.sha256(key.encode()).hexdigest()[:16],
        description=f"{description}, model v{int(info['model'])}",
        model_version=int(info["model"]),
        batches=batches,
        count=int(info["n"]),
        first_scored_at=info["first"],
        last_scored_at=info["last"],
    )


def scored_inputs(spark: SparkSession, window: Window, cfg: PipelineConfig) -> DataFrame:
    """The input rows the window's predictions were made from: each source at its recorded version,
    matched on key and input hash, so a row changed since is not mistaken for the one scored.

    Predictions made from the score step's input table (by its Delta table id, see
    :class:`~deltaml.ml.predictions.ScoredSource`) are read from where that table is now, so a moved or
    copied state folder is monitored from its own tables; others from the path or name they record.
    """
    if INPUT_HASH_COL not in window.rows.columns:
        raise StepInputError(
            "step 'monitor': the predictions were written before deltaml recorded each row's input hash, so the "
            "rows they were made from cannot be found; rescore them with `deltaml score CONF --full`"
        )
    current = _current_input(spark, cfg)
    from_current = F.expr(current.predicate(window.rows.columns)) if current is not None else F.lit(False)
    rows = window.rows.withColumn("_current", from_current).withColumn(
        "_recorded", F.when(~F.col("_current"), F.col(SOURCE_TABLE_COL))
    )
    sources = rows.select("_current", "_recorded", SOURCE_VERSION_COL).distinct().collect()
    frames = []
    for is_current, recorded, version in sorted(sources, key=lambda s: (s[0], s[1] or "", s[2])):
        # Each source version is matched only with the predictions read at that version, so a row
        # unchanged across several scored versions counts once per prediction, not once per version.
        wanted = (
            rows.where(
                (F.col("_current") == F.lit(is_current))
                & F.col("_recorded").eqNullSafe(F.lit(recorded))
                & (F.col(SOURCE_VERSION_COL) == version)
            )
            .select(cfg.key, F.col(INPUT_HASH_COL).alias("_input_hash"))
            .distinct()
        )
        table = current.table if is_current and current is not None else recorded_table(str(recorded))
        try:
            data, _ = read_table(spark, table, "monitor", version=int(version))
            data.schema  # noqa: B018 - resolve the time travel now, so a vacuumed version fails here
        except AnalysisException as exc:
            raise StepInputError(
                f"step 'monitor': {table} v{version}, which the window's predictions were made from, cannot be "
                f"read ({one_line(exc.getMessage(), 200)}); monitor a shorter window (monitor.window) or "
                "keep more table history (delta.logRetentionDuration, and VACUUM's retention)"
            ) from None
        hashed = data.withColumn("_input_hash", input_hash(cfg.key, cfg.features.columns))
        frames.append(as_profiled(hashed.join(wanted, [cfg.key, "_input_hash"], "left_semi"), cfg))
    inputs = frames[0]
    for frame in frames[1:]:
        inputs = inputs.unionByName(frame)
    return inputs


def _current_input(spark: SparkSession, cfg: PipelineConfig) -> ScoredSource | None:
    """The score step's input table as it is now, or None when it does not exist (any more)."""
    table = scoring_input(cfg)
    return scored_source(spark, table, cfg.state_path) if table_exists(spark, table) else None


def drift_rows(metrics: list[DriftMetric], cfg: PipelineConfig) -> tuple[list[dict[str, Any]], dict[str, bool], float]:
    """Apply the thresholds: one row per metric, which features drifted, and the drifted share of features."""
    thresholds = cfg.monitor.thresholds.model_dump()
    rows: list[dict[str, Any]] = []
    drifted: dict[str, bool] = {}
    for m in metrics:
        threshold = thresholds.get(m.metric)
        crossed = False
        if threshold is not None:
            crossed = m.value < threshold if m.metric == "chi2_pvalue" else abs(m.value) > threshold
        drifted[m.feature] = drifted.get(m.feature, False) or crossed
        rows.append(
            {
                "feature": m.feature,
                "kind": m.kind,
                "metric": m.metric,
                "value": float(m.value),
                "threshold": None if threshold is None else float(threshold),
                "drifted": crossed,
                "reference_rows": m.reference_rows,
                "current_rows": m.current_rows,
            }
        )
    features = [f for f in drifted if f != PREDICTIONS_FEATURE]
    share = sum(drifted[f] for f in features) / len(features) if features else 0.0
    return rows, drifted, share


def live_performance(
    window: Window, cfg: PipelineConfig, labels: DataFrame, test_metrics: dict[str, float]
) -> list[dict[str, Any]]:
    """A metric on the window's predictions whose label has arrived, its test value, and the decay.

    The metric is the gate's where the predictions table allows it (:func:`deltaml.tasks.live_metrics`), else the
    task's first. Decay is how much worse live is than test (test - live for higher-is-better metrics).
    """
    assert cfg.monitor.labels is not None
    label = cfg.monitor.labels.column or cfg.label.column
    allowed = live_metrics(cfg.label.task)
    metric = cfg.gate_metric if cfg.gate_metric in allowed else allowed[0]
    arrived = labels.select(cfg.key, F.col(f"`{label}`").alias(cfg.label.column))
    joined = window.rows.drop(cfg.label.column).join(arrived, cfg.key).where(F.col(cfg.label.column).isNotNull())
    rows = joined.count()
    if rows == 0:
        LOG.info("no labels yet for the %d predictions of the window", window.count)
        return []
    live = _metric(joined, cfg, metric)
    test = test_metrics.get(f"test_{metric}")
    out = [{"metric": metric, "value": live, "threshold": None, "drifted": False, "current_rows": rows}]
    if test is not None:
        decay = improvement(metric, test, live)
        limit = cfg.retrain.performance_drop
        out += [
            {"metric": f"test_{metric}", "value": test, "threshold": None, "drifted": False, "current_rows": rows},
            {
                "metric": f"{metric}_decay",
                "value": decay,
                "threshold": limit,
                "drifted": limit is not None and decay > limit,
                "current_rows": rows,
            },
        ]
    return out


def _metric(joined: DataFrame, cfg: PipelineConfig, metric: str) -> float:
    task = cfg.label.task
    if task == "multiclass":
        hit = (F.col(PREDICTED_LABEL_COL).cast("string") == F.col(cfg.label.column).cast("string")).cast("double")
        return _single(joined.agg(F.avg(hit).alias("v")))
    y = encode_label(cfg.label)
    if task == "binary":
        frame = joined.select(y.alias("y"), F.col(PROBABILITY_COL).cast("double").alias("p"), PREDICTION_COL)
        if metric in ("auc_roc", "auc_pr"):
            evaluator = BinaryClassificationEvaluator(
                rawPredictionCol="p",
                labelCol="y",
                metricName="areaUnderROC" if metric == "auc_roc" else "areaUnderPR",
                numBins=0,
            )
            return float(evaluator.evaluate(frame))
        if metric == "log_loss":
            p = F.least(F.greatest(F.col("p"), F.lit(LOG_LOSS_EPS)), F.lit(1 - LOG_LOSS_EPS))
            loss = -(F.col("y") * F.log(p) + (1 - F.col("y")) * F.log(1 - p))
            return _single(frame.agg(F.avg(loss).alias("v")))
        return _single(frame.agg(F.avg((F.col(PREDICTION_COL) == F.col("y")).cast("double")).alias("v")))
    error = F.col(PREDICTION_COL) - y
    expression = {
        "mae": F.avg(F.abs(error)),
        # try_divide: one labelled row, or labels all equal, give null rather than failing the step.
        "r2": 1 - F.try_divide(F.sum(error * error), F.var_pop(y) * F.count(y)),
    }.get(metric, F.sqrt(F.avg(error * error)))
    return _single(joined.agg(expression.alias("v")))


def _single(aggregated: DataFrame) -> float:
    row = aggregated.first()
    return float(row["v"]) if row is not None and row["v"] is not None else float("nan")


def _registered_test_metrics(name: str, version: int) -> dict[str, float]:
    tags = version_tags(mlflow_client(), name, version)
    out: dict[str, float] = {}
    for key, value in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                out[key.removeprefix(METRIC_TAG_PREFIX)] = float(value)
            except ValueError:
                continue
    return out


def run_monitor(ctx: StepContext) -> StepResult:
    """Monitor the configured window of predictions; append its drift (and decay) rows to the monitoring table."""
    cfg = ctx.config
    spark = ctx.spark
    predictions, _ = read_table(spark, ctx.tables.predictions, "monitor")
    now = datetime.now().astimezone()
    window = select_window(predictions, cfg.monitor.window, now)
    name = cfg.mlflow.registered_model
    features_ref, predictions_ref, column = load_reference_profile(name, window.model_version)
    inputs = scored_inputs(spark, window, cfg)
    metrics = compare(features_ref, inputs)
    metrics += [
        DriftMetric(PREDICTIONS_FEATURE, m.kind, m.metric, m.value, m.reference_rows, m.current_rows)
        for m in compare(predictions_ref, window.rows.select(column))
    ]
    rows, drifted, share = drift_rows(metrics, cfg)
    window_drifted = share > cfg.monitor.drift_share
    rows.append(
        {
            "feature": WINDOW_FEATURE,
            "kind": "window",
            "metric": "drifted_share",
            "value": share,
            "threshold": cfg.monitor.drift_share,
            "drifted": window_drifted,
            "reference_rows": features_ref.rows,
            "current_rows": window.count,
        }
    )
    performance: list[dict[str, Any]] = []
    if cfg.monitor.labels is not None:
        labels, _ = read_table(
            spark, resolve_table(cfg.monitor.labels.table, cfg.state_path), "monitor (monitor.labels.table)"
        )
        test = _registered_test_metrics(name, window.model_version)
        performance = live_performance(window, cfg, labels, test)
        rows += [{"feature": WINDOW_FEATURE, "kind": "performance", "reference_rows": None, **p} for p in performance]
    written = _write_rows(spark, ctx, window, rows, now)
    _log_to_mlflow(cfg, window, rows, drifted, share, features_ref, predictions_ref, inputs, column)
    flagged = sorted(f for f, d in drifted.items() if d and f != PREDICTIONS_FEATURE)
    decay = next((p for p in performance if p["metric"].endswith("_decay")), None)
    summary = (
        f"{window.count} predictions ({window.description}): "
        f"{len(flagged)} of {len([f for f in drifted if f != PREDICTIONS_FEATURE])} features drifted "
        f"({share:.0%}{', window drifted' if window_drifted else ''})"
        + (f": {', '.join(flagged)}" if flagged else "")
        + ("; predictions drifted" if drifted.get(PREDICTIONS_FEATURE) else "")
        + (f"; {decay['metric']} {decay['value']:+.4f}" if decay else "")
        + f" -> {ctx.tables.monitoring} v{written}"
    )
    return StepResult(
        metrics={
            "drifted_share": share,
            "window_drifted": float(window_drifted),
            "rows_monitored": float(window.count),
            "features_drifted": float(len(flagged)),
            **({"performance_decay": float(decay["value"])} if decay else {}),
        },
        tags={"window_id": window.window_id, "drifted_features": ",".join(flagged)[:5000]},
        summary=summary,
    )


def _write_rows(
    spark: SparkSession, ctx: StepContext, window: Window, rows: list[dict[str, Any]], now: datetime
) -> int:
    """Replace this window's rows in the monitoring table (a rerun on the same window replaces, never duplicates)."""
    cfg = ctx.config
    schema = (
        "window_id string, monitored_at timestamp, pipeline string, model_name string, model_version int, "
        "window string, batches string, first_scored_at timestamp, last_scored_at timestamp, "
        "feature string, kind string, metric string, value double, threshold double, drifted boolean, "
        "reference_rows long, current_rows long"
    )
    common = {
        "window_id": window.window_id,
        "monitored_at": now,
        "pipeline": cfg.name,
        MODEL_NAME_COL: cfg.mlflow.registered_model,
        MODEL_VERSION_COL: window.model_version,
        "window": window.description,
        "batches": ",".join(window.batches)[:10000],
        "first_scored_at": window.first_scored_at,
        "last_scored_at": window.last_scored_at,
    }
    columns = [c.split()[0] for c in schema.split(", ")]
    records = [tuple({**common, **r}.get(c) for c in columns) for r in rows]
    frame = spark.createDataFrame(records, schema)
    table = ctx.tables.monitoring
    assert table is not None
    return replace_rows(spark, frame, table, f"window_id = {sql_literal(window.window_id)}").version


def _log_to_mlflow(
    cfg: PipelineConfig,
    window: Window,
    rows: list[dict[str, Any]],
    drifted: dict[str, bool],
    share: float,
    features_ref: Profile,
    predictions_ref: Profile,
    inputs: DataFrame,
    column: str,
) -> None:
    if active_run_id() is None:
        return
    values = {
        f"drift.{r['feature']}.{r['metric']}": r["value"]  # log_metrics makes each a valid MLflow key
        for r in rows
        if r["kind"] in ("numeric", "categorical") and r["value"] == r["value"]
    }
    log_metrics(values)
    top = sorted(
        (f for f, d in drifted.items() if d and f != PREDICTIONS_FEATURE),
        key=lambda f: -max((r["value"] for r in rows if r["feature"] == f and r["metric"] == "psi"), default=0.0),
    )[:4]
    # The features' reference is the train split; the predictions' is the test split, as evaluate scored it.
    chosen = [
        (f, "reference (train)", features_ref.columns[f], inputs.select(f)) for f in top if f in features_ref.columns
    ]
    chosen.append(
        (f"predictions ({column})", "reference (test)", predictions_ref.columns[column], window.rows.select(column))
    )
    overlays = []
    for label, reference_label, profile, current in chosen:
        bins, shares = current_shares(profile, current)
        overlays.append((label, reference_label, bins, reference_shares(profile, len(bins)), shares))
    title = f"{cfg.name}: drift of {window.description} against its training profile"
    with tempfile.TemporaryDirectory() as tmp:
        write_drift_report(Path(tmp), title=title, rows=rows, share=share, overlays=overlays)
        log_folder(tmp, artifact_path="drift")


STEP = Step(
    name="monitor",
    run=run_monitor,
    phase="monitor",
    sections=(
        "monitor",
        # Which table the score step reads: the predictions made from it are matched to it by its table id.
        "score.table",
        "score.input",
        "contract",
        "retrain.performance_drop",
        "register.gate.metric",
        "mlflow.registered_model",
        "label",
        "features",
        "key",
    ),
    tables=lambda ctx: [ctx.tables.predictions, ctx.tables.monitoring],
    # Always runs: its window is relative to now and to the last scoring.
    cacheable=False,
)
