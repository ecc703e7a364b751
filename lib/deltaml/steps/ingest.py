"""The ingest step: the configured source into the append-only raw (bronze) Delta table."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from deltaml.columns import (
    DROP_ACTION_COL,
    DROP_REASON_COL,
    INGEST_BATCH_COL,
    INGEST_COLUMNS,
    INGEST_ROW_HASH_COL,
    INGESTED_AT_COL,
)
from deltaml.config.schema import ContractConfig
from deltaml.errors import ContractError, StepInputError
from deltaml.io.catalog import (
    SourceData,
    Table,
    content_fingerprint,
    read_source,
    read_table,
    replace_where,
    source_state,
    table_exists,
    table_version,
)
from deltaml.quality.contracts import check_schema
from deltaml.steps.base import Step, StepContext, StepResult

LOG = logging.getLogger(__name__)


def add_ingest_columns(batch_id: str, ingested_at: datetime) -> Callable[[DataFrame], DataFrame]:
    """Return a transform that stamps every row with the ingest batch id and time.

    Args:
        batch_id: Identifies the batch; re-ingesting the same id replaces that batch.
        ingested_at: The ingest time (UTC), the same for every row of the batch.
    """

    def transform(df: DataFrame) -> DataFrame:
        clash = [c for c in INGEST_COLUMNS if c in df.columns]
        if clash:
            raise StepInputError(
                f"step 'ingest': the source already has column(s) {clash}, which deltaml reserves; "
                "rename them with source.rename"
            )
        return df.select(
            "*",
            F.lit(batch_id).alias(INGEST_BATCH_COL),
            F.lit(ingested_at).cast("timestamp").alias(INGESTED_AT_COL),
            row_hash(df.dtypes).alias(INGEST_ROW_HASH_COL),
        )

    return transform


def row_hash(dtypes: list[tuple[str, str]]) -> Column:
    """A 128-bit hash (32 hex digits) of the named columns, cast to the given types, in any column order.

    Spark's hashes skip a null, so ``(1, null)`` and ``(null, 1)`` would collide: the row's null
    mask is hashed with its values. A column the rows lack is hashed as null (see :func:`_known_rows`).
    """
    columns = [F.col(f"`{name}`").cast(kind) for name, kind in sorted(dtypes)]
    nulls = F.concat(*[F.when(c.isNull(), "1").otherwise("0") for c in columns]) if columns else F.lit("")
    halves = [F.xxhash64(nulls, *columns), F.xxhash64(F.lit("deltaml"), nulls, *columns)]
    return F.concat(*[F.lpad(F.lower(F.hex(h)), 16, "0") for h in halves])


def default_batch_id(source_description: str, fingerprint: str) -> str:
    """A batch id that is the same for the same source content, so re-ingest is idempotent."""
    return "src-" + hashlib.sha256(f"{source_description}|{fingerprint}".encode()).hexdigest()[:16]


def _check_batch_schema(ctx: StepContext, df: DataFrame, contract: ContractConfig) -> None:
    """Stop a batch whose schema breaks the contract, or clashes with the raw table, before it is written."""
    report = check_schema(df, contract, "ingest", ignore=INGEST_COLUMNS)
    for warning in report.warnings:
        LOG.warning("%s", warning)
    failures = list(report.failures)
    if table_exists(ctx.spark, ctx.tables.raw):
        stored, _ = read_table(ctx.spark, ctx.tables.raw, "ingest")
        stored_types = dict(stored.dtypes)
        failures += [
            f"step 'ingest': column '{name}' is {kind} in this batch but {stored_types[name]} in {ctx.tables.raw}; "
            "cast it at the source or write to a new raw table"
            for name, kind in df.dtypes
            if name in stored_types and stored_types[name] != kind
        ]
    if failures:
        more = f" (+{len(failures) - 1} more: {'; '.join(failures[1:])})" if len(failures) > 1 else ""
        raise ContractError(failures[0] + more)


def run_ingest(ctx: StepContext) -> StepResult:
    """Read the source and write it (``snapshot``) or its new rows (``append``) as one batch of the raw table.

    A batch id already in the raw table is replaced, so a rerun never duplicates rows; one taken out
    with ``deltaml batches drop|quarantine`` is not written again.
    """
    cfg = ctx.config
    types = None
    if cfg.contract is not None:
        renamed_from = {new: old for old, new in cfg.source.rename.items()}
        types = {renamed_from.get(c, c): spec.type for c, spec in cfg.contract.columns.items() if spec.type}
    source = read_source(ctx.spark, cfg.source, types)
    if cfg.key not in source.df.columns:
        raise StepInputError(
            f"step 'ingest': key column '{cfg.key}' is not in the source; columns are {source.df.columns} "
            "(set 'key' or add it with source.rename)"
        )
    if cfg.contract is not None:
        _check_batch_schema(ctx, source.df, cfg.contract)
    if cfg.ingest.mode == "append":
        return _ingest_new_rows(ctx, source)
    batch_id = cfg.ingest.batch_id or default_batch_id(source.description, source.fingerprint)
    return _write_batch(ctx, source, source.df, batch_id)


def _write_batch(ctx: StepContext, source: SourceData, rows: DataFrame, batch_id: str, note: str = "") -> StepResult:
    table = ctx.tables.raw
    tags = {"source": source.description, "ingest_batch_id": batch_id, "raw_table": str(table)}
    dropped = _dropped_batch(ctx, batch_id)
    if dropped is not None:
        version = table_version(ctx.spark, table) if table_exists(ctx.spark, table) else -1
        LOG.warning(
            "step 'ingest': batch %s was taken out of %s by `deltaml batches %s` (%s); not ingested again: "
            "change the source, or remove the batch's rows from %s to let it back in",
            batch_id,
            table,
            *dropped,
            ctx.tables.dropped,
        )
        return StepResult(
            metrics={"rows_written": 0.0, "raw_table_version": float(version)},
            tags=tags,
            summary=f"0 rows: batch {batch_id} was dropped ({dropped[0]}: {dropped[1]}); {table} stays at v{version}",
        )
    ingested_at = datetime.now().astimezone().replace(microsecond=0)
    batch = rows.transform(add_ingest_columns(batch_id, ingested_at))
    # Bronze keeps what arrived: a new source column is added to the table, not refused.
    written = replace_where(ctx.spark, batch, table, INGEST_BATCH_COL, [batch_id], merge_schema=True)
    return StepResult(
        metrics={"rows_written": float(written.rows_written), "raw_table_version": float(written.version)},
        tags=tags,
        summary=f"{written.rows_written}{note} rows as batch {batch_id} -> {table} v{written.version}",
    )


def _ingest_new_rows(ctx: StepContext, source: SourceData) -> StepResult:
    """``ingest.mode: append``: the source rows that are neither in the raw table nor in a dropped batch."""
    known = _known_rows(ctx, source.df.dtypes)
    if known is None:  # the first ingest: every row is new, and the source's fingerprint is theirs
        return _write_batch(ctx, source, source.df, default_batch_id(source.description, source.fingerprint))
    hashed = source.df.withColumn(INGEST_ROW_HASH_COL, row_hash(source.df.dtypes))
    new = hashed.join(known, INGEST_ROW_HASH_COL, "left_anti").drop(INGEST_ROW_HASH_COL)
    new = new.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        count = new.count()
        if count == 0:
            version = table_version(ctx.spark, ctx.tables.raw) if table_exists(ctx.spark, ctx.tables.raw) else -1
            return StepResult(
                metrics={"rows_written": 0.0, "raw_table_version": float(version)},
                tags={"source": source.description, "raw_table": str(ctx.tables.raw)},
                summary=f"no new rows in {source.description}; {ctx.tables.raw} stays at v{version}",
            )
        batch_id = default_batch_id(source.description, content_fingerprint(new))
        return _write_batch(ctx, source, new, batch_id, note=" new")
    finally:
        new.unpersist()


def _known_rows(ctx: StepContext, dtypes: list[tuple[str, str]]) -> DataFrame | None:
    """The row hashes of the raw table and of the dropped batches (None when neither table exists yet).

    Rows written before deltaml stored the hash get it computed from their columns, cast to the source's types.
    """
    frames = []
    for table in (ctx.tables.raw, ctx.tables.dropped):
        if not table_exists(ctx.spark, table):
            continue
        df, _ = read_table(ctx.spark, table, "ingest")
        present = set(df.columns)
        stored = F.col(INGEST_ROW_HASH_COL) if INGEST_ROW_HASH_COL in present else F.lit(None).cast("string")
        df = df.select("*", *[F.lit(None).cast(kind).alias(name) for name, kind in dtypes if name not in present])
        frames.append(df.select(F.coalesce(stored, row_hash(dtypes)).alias(INGEST_ROW_HASH_COL)))
    if not frames:
        return None
    known = frames[0] if len(frames) == 1 else frames[0].unionByName(frames[1])
    return known.distinct()


def _dropped_batch(ctx: StepContext, batch_id: str) -> tuple[str, str] | None:
    """How and why ``batch_id`` was taken out of the raw table (action, reason), or None if it was not."""
    table: Table = ctx.tables.dropped
    if not table_exists(ctx.spark, table):
        return None
    df, _ = read_table(ctx.spark, table, "ingest")
    row = df.where(F.col(INGEST_BATCH_COL) == batch_id).select(DROP_ACTION_COL, DROP_REASON_COL).first()
    return None if row is None else (str(row[0]), str(row[1]))


STEP = Step(
    name="ingest",
    run=run_ingest,
    phase="train",
    sections=("source", "key", "contract", "ingest"),
    tables=lambda ctx: [ctx.tables.raw, ctx.tables.dropped],
    # The source's files (path, size, modification time) or dataset version: new data is a new key.
    key_inputs=lambda ctx: {"source_state": source_state(ctx.spark, ctx.config.source)},
)
