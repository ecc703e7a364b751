"""The ingest step: the configured source into the append-only raw (bronze) Delta table."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.columns import INGEST_BATCH_COL, INGEST_COLUMNS, INGESTED_AT_COL
from deltaml.config.schema import ContractConfig
from deltaml.errors import ContractError, StepInputError
from deltaml.io.catalog import read_source, read_table, replace_where, source_state, table_exists
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
        return df.withColumn(INGEST_BATCH_COL, F.lit(batch_id)).withColumn(
            INGESTED_AT_COL, F.lit(ingested_at).cast("timestamp")
        )

    return transform


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
    """Read the source and write it as one batch of the raw table (replacing that batch if present)."""
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
    batch_id = cfg.ingest.batch_id or default_batch_id(source.description, source.fingerprint)
    ingested_at = datetime.now().astimezone().replace(microsecond=0)
    batch = source.df.transform(add_ingest_columns(batch_id, ingested_at))
    table = ctx.tables.raw
    # Bronze keeps what arrived: a new source column is added to the table, not refused.
    written = replace_where(ctx.spark, batch, table, INGEST_BATCH_COL, [batch_id], merge_schema=True)
    return StepResult(
        metrics={"rows_written": float(written.rows_written), "raw_table_version": float(written.version)},
        tags={"source": source.description, "ingest_batch_id": batch_id, "raw_table": str(table)},
        summary=f"{written.rows_written} rows as batch {batch_id} -> {table} v{written.version}",
    )


STEP = Step(
    name="ingest",
    run=run_ingest,
    phase="train",
    sections=("source", "key", "contract", "ingest"),
    tables=lambda ctx: [ctx.tables.raw],
    # The source's files (path, size, modification time) or dataset version: new data is a new key.
    key_inputs=lambda ctx: {"source_state": source_state(ctx.spark, ctx.config.source)},
)
