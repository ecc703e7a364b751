"""The score step: a registered model scores what is new in a Delta table with native transform; predictions
land idempotently, one Delta commit per run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from deltaml.columns import (
    BATCH_COL,
    INGEST_BATCH_COL,
    INPUT_HASH_COL,
    MODEL_VERSION_COL,
    SCORED_AT_COL,
    SOURCE_TABLE_ID_COL,
    SOURCE_VERSION_COL,
)
from deltaml.config.schema import PipelineConfig
from deltaml.errors import StepInputError, one_line
from deltaml.io.catalog import (
    Table,
    WriteResult,
    change_data_enabled,
    changed_rows,
    read_table,
    read_table_as_of,
    replace_rows,
    retry_on_conflict,
    sql_in,
    table_exists,
    upsert_latest,
)
from deltaml.io.models import load_spark_model, registered_model_uri
from deltaml.io.registry import alias_version, find_scoring_version
from deltaml.io.tables import event_tables, scoring_input
from deltaml.io.tracking import mlflow_client
from deltaml.ml.features import bind_window_stages
from deltaml.ml.predictions import ScoredSource, ScoringModel, batch_values, input_hash, score_frame, scored_source
from deltaml.quality.contracts import check_columns
from deltaml.steps.base import Step, StepContext, StepResult

LOG = logging.getLogger(__name__)


# More batches than this in one input means the batch column is not one.
MAX_BATCHES = 10_000


@dataclass(frozen=True)
class ScoringPlan:
    """What one score run writes: the input rows to score and the predicate of the predictions they replace.

    ``rows`` None means there is nothing to score; ``reason`` says why either way.
    """

    rows: DataFrame | None
    replace: str
    reason: str
    batches: list[str] = field(default_factory=list)
    batch: Column | None = None
    previous_models: list[int] = field(default_factory=list)


def plan_scoring(
    spark: SparkSession,
    data: DataFrame,
    source: ScoredSource,
    source_version: int,
    predictions: Table,
    key: str,
    hashed: Sequence[str],
    batch_column: str | None,
    full: bool,
) -> ScoringPlan:
    """Decide which rows of ``data`` (``source`` at ``source_version``) this run scores.

    The predictions made from ``source`` are those its :meth:`ScoredSource.predicate` selects: by Delta table
    id, so a copied or moved state folder finds its own predictions (and rows written before the id was
    recorded, by path).

    ``full`` scores every row and replaces every prediction made from ``source``. Otherwise
    (incremental), with a batch column, a batch is scored when its row count or summed
    :func:`input_hash` differs from its stored predictions' (new, changed or partly scored
    batches), and replaces that batch's predictions. Without one, the rows whose key and input hash
    have no prediction yet are scored, as batch ``v<source_version>``; when the source records
    its changes (Delta change data feed), only keys changed since the last scored version are
    compared. Either way, a source version that was already scored means nothing to do, with no
    scan of the input.
    """
    stored = None
    if table_exists(spark, predictions):
        written, _ = read_table(spark, predictions, "score")
        where_source = source.predicate(written.columns)
        stored = written.where(F.expr(where_source))
    else:
        where_source = source.predicate([SOURCE_TABLE_ID_COL])
    # A full run needs neither: it replaces whatever is stored.
    last, models = _last_scored(stored) if not full else (None, [])
    if full or last is None:
        if data.isEmpty():
            raise StepInputError(f"step 'score': input table {source} v{source_version} is empty; ingest data first")
        why = "full rescoring (--full)" if full else f"first scoring of {source}"
        batch = batch_values(batch_column) if batch_column else None
        return ScoringPlan(data, where_source, why, batch=batch, previous_models=models)
    if last == source_version:
        return ScoringPlan(None, "", f"{source} v{source_version} was already scored", previous_models=models)
    assert stored is not None
    if batch_column:
        return _plan_batches(data, stored, source, source_version, key, hashed, batch_column, where_source, models)
    return _plan_rows(spark, data, stored, source, source_version, last, key, hashed, where_source, models)


def _last_scored(stored: DataFrame | None) -> tuple[int | None, list[int]]:
    """The last source version scored into the predictions and the model versions that scored them."""
    if stored is None:
        return None, []
    row = stored.agg(
        F.max(SOURCE_VERSION_COL).alias("v"), F.sort_array(F.collect_set(MODEL_VERSION_COL)).alias("m")
    ).first()
    assert row is not None
    return (None if row["v"] is None else int(row["v"])), [int(m) for m in row["m"] or []]


def _batch_fingerprints(df: DataFrame, batch: Column, hashed: Column) -> dict[str, tuple[int, int]]:
    rows = (
        df.groupBy(batch.alias("b"))
        .agg(F.count(hashed).alias("n"), F.coalesce(F.sum(hashed.cast("decimal(38,0)")), F.lit(0)).alias("h"))
        .limit(MAX_BATCHES + 1)
        .collect()
    )
    if len(rows) > MAX_BATCHES:
        raise StepInputError(
            f"step 'score': more than {MAX_BATCHES} batches; set score.batch_column to a column that groups "
            "rows into batches (an ingest id or a date), or unset it to track rows one by one"
        )
    return {r["b"]: (int(r["n"]), int(r["h"])) for r in rows}


def _plan_batches(
    data: DataFrame,
    stored: DataFrame,
    source: ScoredSource,
    source_version: int,
    key: str,
    hashed: Sequence[str],
    batch_column: str,
    where_source: str,
    models: list[int],
) -> ScoringPlan:
    batch = batch_values(batch_column)
    current = _batch_fingerprints(data, batch, input_hash(key, hashed))
    stored_hash = F.col(INPUT_HASH_COL) if INPUT_HASH_COL in stored.columns else F.lit(None).cast("long")
    scored = _batch_fingerprints(stored, F.col(BATCH_COL), stored_hash)
    dirty = sorted(b for b, fingerprint in current.items() if scored.get(b) != fingerprint)
    if not dirty:
        return ScoringPlan(
            None, "", f"all {len(current)} batches of {source} v{source_version} are scored", previous_models=models
        )
    new = sum(b not in scored for b in dirty)
    why = f"{new} new and {len(dirty) - new} changed of {len(current)} batches"
    return ScoringPlan(
        data.where(batch.isin(dirty)),
        f"{where_source} AND {sql_in(BATCH_COL, dirty)}",
        why,
        batches=dirty,
        batch=batch,
        previous_models=models,
    )


def _plan_rows(
    spark: SparkSession,
    data: DataFrame,
    stored: DataFrame,
    source: ScoredSource,
    source_version: int,
    last: int,
    key: str,
    hashed: Sequence[str],
    where_source: str,
    models: list[int],
) -> ScoringPlan:
    candidates = data
    how = f"rows of {source} v{source_version} without a prediction"
    # A pin to a version older than the last one scored has no change range to read.
    if last < source_version and change_data_enabled(spark, source.table):
        changed = changed_rows(spark, source.table, last + 1, source_version).select(key).distinct()
        try:
            changed.take(1)
            candidates = data.join(changed, key, "left_semi")
            how = f"rows changed in {source} v{last + 1}..v{source_version} without a prediction"
        except AnalysisException as exc:
            LOG.info(
                "change data of %s v%d..v%d is not readable (%s); comparing every row with the predictions",
                source,
                last + 1,
                source_version,
                one_line(exc.getMessage()),
            )
    if INPUT_HASH_COL in stored.columns:
        # Against each key's latest prediction only: a row whose values change and then change back is
        # scored again, so the newest prediction per key always matches the row's current values.
        newest_first = Window.partitionBy(key).orderBy(F.col(SCORED_AT_COL).desc(), F.col(BATCH_COL).desc())
        seen = (
            stored.withColumn("_rank", F.row_number().over(newest_first))
            .where("_rank = 1")
            .select(F.col(key), F.col(INPUT_HASH_COL).alias("_input_hash"))
        )
        candidates = candidates.withColumn("_input_hash", input_hash(key, hashed)).join(
            seen, [key, "_input_hash"], "left_anti"
        )
        candidates = candidates.drop("_input_hash")
    batch = f"v{source_version}"
    if candidates.isEmpty():
        return ScoringPlan(None, "", f"no {how}", previous_models=models)
    return ScoringPlan(
        candidates,
        f"{where_source} AND {sql_in(BATCH_COL, [batch])}",
        how,
        batches=[batch],
        previous_models=models,
    )


# Called with each plan that has rows to score, after they are scored and just before they are written, on
# every attempt. None in normal runs: a seam for tests and debugging (tests/test_scoring_e2e.py holds two runs
# here so that their writes overlap, as two `deltaml score` processes started together do).
before_write: Callable[[ScoringPlan], None] | None = None

# What to do when another run keeps committing to the predictions or the serving table.
RERUN_ADVICE = (
    "run `deltaml score` again once the other run has finished: scoring is idempotent, so it scores only "
    "what is still missing"
)


@dataclass(frozen=True)
class _Attempt:
    """One plan-and-write of the score step: the plan, what it wrote (None: nothing to score), and its number."""

    plan: ScoringPlan
    written: WriteResult | None
    number: int


def run_score(ctx: StepContext) -> StepResult:
    """Score what is new in the input table (everything with ``score.mode: full``) into the predictions table.

    The predictions of a run land in one Delta commit that replaces the batches it scored, so a
    rerun never duplicates and a killed run leaves the previous version; the next run scores the
    same rows again. With ``tables.serving`` set, the latest prediction per key is then merged there.
    When another run commits to the predictions (or serving) table while this one writes, Delta
    rejects this run's commit; it plans again from the table's new state (which may leave nothing to
    score) and retries, a few times (:func:`~deltaml.io.catalog.retry_on_conflict`).
    """
    cfg = ctx.config
    name = cfg.mlflow.registered_model
    version = find_scoring_version(name, cfg.score.model_alias, cfg.score.model_version)
    table = scoring_input(cfg)
    # A pinned score.table is read at its pin: that version is the source_version recorded with each prediction.
    pin = cfg.score.table
    data, source_version = read_table_as_of(
        ctx.spark, table, "score", pin.version if pin else None, pin.timestamp if pin else None
    )
    check_columns(data, [cfg.key, *cfg.features.columns], "score", f"input table {table}")
    batch_column = cfg.score.batch_column or (INGEST_BATCH_COL if INGEST_BATCH_COL in data.columns else None)
    if batch_column and batch_column not in data.columns:
        raise StepInputError(
            f"step 'score': score.batch_column '{batch_column}' is not a column of {table}; columns are {data.columns}"
        )
    source = scored_source(ctx.spark, table, cfg.state_path)
    loaded: list[tuple[ScoringModel, datetime]] = []

    def score_and_write(number: int) -> _Attempt:
        plan = plan_scoring(
            ctx.spark,
            data,
            source,
            source_version,
            ctx.tables.predictions,
            cfg.key,
            cfg.features.columns,
            batch_column,
            cfg.score.mode == "full",
        )
        if plan.rows is None:
            return _Attempt(plan, None, number)
        if not loaded:  # loaded only now: a run with nothing to score does not pay for it
            model = ScoringModel(name, version, load_spark_model(registered_model_uri(name, version)))
            scored_at = datetime.now().astimezone()
            as_of = scored_at if cfg.score.windows_as_of == "now" else None
            bind_window_stages(model.model, cfg.features.windows, event_tables(cfg), as_of)
            loaded.append((model, scored_at))
        scoring, scored_at = loaded[0]
        predictions = plan.rows.transform(
            score_frame(
                scoring,
                cfg.key,
                source,
                source_version,
                scored_at,
                cfg.label.task,
                batch=plan.batch,
                hashed=cfg.features.columns,
            )
        )
        if before_write is not None:
            before_write(plan)
        written = replace_rows(ctx.spark, predictions, ctx.tables.predictions, plan.replace, merge_schema=True)
        return _Attempt(plan, written, number)

    done = retry_on_conflict(score_and_write, ctx.tables.predictions, "score", RERUN_ADVICE)
    plan, written = done.plan, done.written
    metrics = {
        "source_table_version": float(source_version),
        "model_version": float(version),
        "write_attempts": float(done.number),
    }
    tags = {"model": f"{name}/{version}", "source_table": str(table), "score_mode": cfg.score.mode}
    stale = [v for v in plan.previous_models if v != version]
    # After a conflict, the plan that counts is the last one: it saw what the other run committed.
    retried = f" (planned again after another run's commit to {ctx.tables.predictions})" if done.number > 1 else ""
    if written is None:
        hint = (
            f"; rows scored by version(s) {stale} keep their predictions (`deltaml score CONF --full` rescores them)"
            if stale
            else ""
        )
        summary = f"nothing to score: {plan.reason}{retried}; {ctx.tables.predictions} unchanged{hint}"
        metrics["rows_scored"] = 0.0
    else:
        metrics.update(rows_scored=float(written.rows_written), predictions_table_version=float(written.version))
        tags["batches"] = ",".join(plan.batches)[:5000] if plan.batches else "all"
        summary = (
            f"{written.rows_written} rows of {table} v{source_version} scored by {name} v{version} "
            f"({plan.reason}){retried} -> {ctx.tables.predictions} v{written.version}"
        )
    serving = ctx.tables.serving
    if serving is not None:
        synced = retry_on_conflict(
            lambda _: sync_serving(ctx.spark, ctx.tables.predictions, serving, cfg.key), serving, "score", RERUN_ADVICE
        )
        if synced is not None:
            metrics["serving_rows_changed"] = float(synced.rows_written)
            summary += f"; {synced.rows_written} keys updated in {serving} v{synced.version}"
    return StepResult(metrics=metrics, tags=tags, summary=summary)


def sync_serving(spark: SparkSession, predictions: Table, serving: Table, key: str) -> WriteResult | None:
    """Merge the predictions made since the serving table's newest into it, one row per key.

    Reads only predictions newer than the serving table's latest ``scored_at``, so it also
    catches up after a run that was stopped between its two writes. Returns None when the
    serving table is already current.
    """
    if not table_exists(spark, predictions):
        return None
    newer, _ = read_table(spark, predictions, "score")
    if table_exists(spark, serving):
        served, _ = read_table(spark, serving, "score")
        # Compared in Spark: a timestamp collected to Python can shift in a driver's repeated DST hour.
        since = served.agg(F.max(SCORED_AT_COL).alias("_since"))
        newer = newer.join(F.broadcast(since), F.col("_since").isNull() | (F.col(SCORED_AT_COL) > F.col("_since")))
        newer = newer.drop("_since")
    latest_first = Window.partitionBy(key).orderBy(F.col(SCORED_AT_COL).desc(), F.col(BATCH_COL).desc())
    latest = newer.withColumn("_rank", F.row_number().over(latest_first)).where("_rank = 1").drop("_rank")
    if latest.isEmpty():
        return None
    return upsert_latest(spark, latest, serving, key, SCORED_AT_COL)


def _scoring_model_version(ctx: StepContext) -> dict[str, Any]:
    """The registered version that will score: a pinned ``score.model_version`` or the alias's current one."""
    cfg = ctx.config
    name, alias = cfg.mlflow.registered_model, cfg.score.model_alias
    return {"model_version": cfg.score.model_version or alias_version(mlflow_client(), name, alias)}


def _windows_now(cfg: PipelineConfig) -> str | None:
    if cfg.score.windows_as_of == "now":
        return "with score.windows_as_of now, its predictions depend on when it runs"
    return None


STEP = Step(
    name="score",
    run=run_score,
    phase="predict",
    sections=("score", "key", "features", "label", "contract", "mlflow.registered_model"),
    tables=lambda ctx: [
        scoring_input(ctx.config),
        *event_tables(ctx.loaded.pipeline),
        ctx.tables.predictions,
        ctx.tables.serving,
    ],
    key_inputs=_scoring_model_version,
    bypass_cache=_windows_now,
    headline=("rows_scored",),
)
