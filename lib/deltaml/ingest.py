"""The ingest step: the configured source into the append-only raw (bronze) Delta table."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.catalog import read_source, replace_where
from deltaml.context import StepContext, StepResult
from deltaml.errors import StepInputError

LOG = logging.getLogger(__name__)

INGEST_BATCH_COL = "_ingest_batch_id"
INGESTED_AT_COL = "_ingested_at"
INGEST_COLUMNS = (INGEST_BATCH_COL, INGESTED_AT_COL)


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


def run_ingest(ctx: StepContext) -> StepResult:
    """Read the source and write it as one batch of the raw table (replacing that batch if present)."""
    cfg = ctx.config
    source = read_source(ctx.spark, cfg.source)
    if cfg.key not in source.df.columns:
        raise StepInputError(
            f"step 'ingest': key column '{cfg.key}' is not in the source; columns are {source.df.columns} "
            "(set 'key' or add it with source.rename)"
        )
    batch_id = cfg.ingest.batch_id or default_batch_id(source.description, source.fingerprint)
    ingested_at = datetime.now().astimezone().replace(microsecond=0)
    batch = source.df.transform(add_ingest_columns(batch_id, ingested_at))
    table = ctx.tables.raw
    written = replace_where(ctx.spark, batch, table, INGEST_BATCH_COL, [batch_id])
    return StepResult(
        metrics={"rows_written": float(written.rows_written), "raw_table_version": float(written.version)},
        tags={"source": source.description, "ingest_batch_id": batch_id, "raw_table": str(table)},
        summary=f"{written.rows_written} rows as batch {batch_id} -> {table} v{written.version}",
    )
