"""Whole ingest batches: list them, and take a rejected one out of the raw table (``deltaml batches``).

A batch that breaks the contract stays in the raw table and fails every later validate. ``drop``
moves its rows to the dropped-batches table (``tables.dropped``, with when, why and how) and
deletes them from the raw, clean and quarantine tables; ``quarantine`` does the same but puts the
rows in the quarantine table too, each with the violation ``batch.quarantined``, where the other bad
rows are looked at. Ingest does not bring a dropped batch back (its id, or in ``append`` mode its
rows). Each action is an MLflow run of the pipeline's experiment (step ``batches``) with the
versions it wrote, so lineage shows it.

The dropped table is written first and the raw table last: a failure halfway leaves the batch in the
raw table, and rerunning the command finishes the move (each write replaces the batch's rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from deltaml.columns import (
    BATCH_QUARANTINED,
    DROP_ACTION_COL,
    DROP_REASON_COL,
    DROPPED_AT_COL,
    INGEST_BATCH_COL,
    INGESTED_AT_COL,
    QUARANTINED_AT_COL,
    STEP_LINEAGE_ARTIFACT,
    TAG_PIPELINE,
    TAG_PREFIX,
    TAG_STEP,
    VIOLATIONS_COL,
)
from deltaml.config.loader import LoadedConfig
from deltaml.errors import StepInputError
from deltaml.io.catalog import Table, WriteResult, read_table, replace_where, table_exists
from deltaml.io.recording import recording, step_lineage
from deltaml.io.tables import Tables, resolve_tables
from deltaml.io.tracking import configure_tracking, log_dict, log_metrics, set_tags, tracked_run

Action = Literal["drop", "quarantine"]
BATCHES_STEP = "batches"


@dataclass(frozen=True)
class BatchInfo:
    """One batch: where its rows are now."""

    batch_id: str
    ingested_at: datetime | None
    raw_rows: int
    clean_rows: int
    quarantined_rows: int
    dropped: str = ""  # "drop: <reason> (<when>)" for a batch taken out of the raw table


def list_batches(spark: SparkSession, tables: Tables) -> list[BatchInfo]:
    """Every batch of the raw table and every dropped one, oldest first."""
    raw = _counts(spark, tables.raw, F.min(INGESTED_AT_COL).alias("at"))
    clean = _counts(spark, tables.clean)
    quarantined = _counts(spark, tables.quarantine)
    found = [
        BatchInfo(batch, at, rows, clean.get(batch, (0, None))[0], quarantined.get(batch, (0, None))[0])
        for batch, (rows, at) in raw.items()
    ]
    if table_exists(spark, tables.dropped):
        df, _ = read_table(spark, tables.dropped, BATCHES_STEP)
        rows = (
            df.groupBy(INGEST_BATCH_COL)
            .agg(
                F.count(F.lit(1)).alias("n"),
                F.min(INGESTED_AT_COL).alias("at"),
                F.max(DROPPED_AT_COL).alias("when"),
                F.max(DROP_ACTION_COL).alias("action"),
                F.max(DROP_REASON_COL).alias("reason"),
            )
            .collect()
        )
        found += [
            BatchInfo(
                str(r[INGEST_BATCH_COL]),
                r["at"],
                0,
                0,
                quarantined.get(str(r[INGEST_BATCH_COL]), (0, None))[0],
                f"{r['action']}: {r['reason']} ({r['when']:%Y-%m-%d %H:%M}, {r['n']} rows)",
            )
            for r in rows
            if str(r[INGEST_BATCH_COL]) not in raw
        ]
    return sorted(found, key=lambda b: (b.ingested_at is None, b.ingested_at or datetime.min, b.batch_id))


def _counts(spark: SparkSession, table: Table, *extra: Column) -> dict[str, tuple[int, datetime | None]]:
    if not table_exists(spark, table):
        return {}
    df, _ = read_table(spark, table, BATCHES_STEP)
    if INGEST_BATCH_COL not in df.columns:
        return {}
    rows = df.groupBy(INGEST_BATCH_COL).agg(F.count(F.lit(1)).alias("n"), *extra).collect()
    return {str(r[INGEST_BATCH_COL]): (int(r["n"]), r["at"] if extra else None) for r in rows}


def format_batches(batches: list[BatchInfo]) -> str:
    """The batches as a plain-text table, for the console."""
    header = ("batch", "ingested", "raw", "clean", "quarantined", "dropped")
    lines = [
        (
            b.batch_id,
            f"{b.ingested_at:%Y-%m-%d %H:%M:%S}" if b.ingested_at else "",
            str(b.raw_rows),
            str(b.clean_rows),
            str(b.quarantined_rows),
            b.dropped,
        )
        for b in batches
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *lines]
    )


def take_out_batch(spark: SparkSession, loaded: LoadedConfig, batch_id: str, action: Action, reason: str) -> str:
    """Move one batch out of the raw table (``drop``), or into the quarantine table (``quarantine``).

    Returns:
        A one-line summary of what moved where.

    Raises:
        StepInputError: The raw table does not hold that batch (the message lists what it holds), or the reason is
            empty.
    """
    cfg = loaded.pipeline
    if not reason.strip():
        raise StepInputError(f"deltaml batches {action}: --reason is empty; say why the batch goes (it is recorded)")
    tables = resolve_tables(cfg)
    raw, _ = read_table(spark, tables.raw, BATCHES_STEP)
    if INGEST_BATCH_COL not in raw.columns:
        raise StepInputError(f"deltaml batches {action}: {tables.raw} has no {INGEST_BATCH_COL} column")
    rows = raw.where(F.col(INGEST_BATCH_COL) == batch_id)
    count = rows.count()
    if count == 0:
        known = sorted({b.batch_id for b in list_batches(spark, tables) if b.raw_rows})
        raise StepInputError(
            f"deltaml batches {action}: batch '{batch_id}' is not in {tables.raw}; it holds "
            f"{', '.join(known[:20]) or 'no batches'}{' ...' if len(known) > 20 else ''} "
            "(`deltaml batches list CONF` shows them all)"
        )
    now = datetime.now().astimezone().replace(microsecond=0)
    configure_tracking(cfg)
    with (
        tracked_run(
            run_name=f"batches {action} {batch_id}",
            tags={TAG_PIPELINE: cfg.name, TAG_STEP: BATCHES_STEP},
        ),
        recording() as accesses,
    ):
        stamped = rows.select(
            "*",
            F.lit(now).cast("timestamp").alias(DROPPED_AT_COL),
            F.lit(reason).alias(DROP_REASON_COL),
            F.lit(action).alias(DROP_ACTION_COL),
        )
        versions: dict[str, WriteResult | None] = {
            "dropped": replace_where(spark, stamped, tables.dropped, INGEST_BATCH_COL, [batch_id], True)
        }
        if action == "quarantine":
            bad = rows.select(
                "*",
                F.array(F.lit(BATCH_QUARANTINED)).alias(VIOLATIONS_COL),
                F.lit(now).cast("timestamp").alias(QUARANTINED_AT_COL),
            )
            versions["quarantine"] = replace_where(spark, bad, tables.quarantine, INGEST_BATCH_COL, [batch_id], True)
        else:
            versions["quarantine"] = _delete_batch(spark, tables.quarantine, batch_id)
        versions["clean"] = _delete_batch(spark, tables.clean, batch_id)
        versions["raw"] = _delete_batch(spark, tables.raw, batch_id)
        written = {name: result for name, result in versions.items() if result is not None}
        set_tags(
            {f"{TAG_PREFIX}batch_id": batch_id, f"{TAG_PREFIX}batch_action": action, f"{TAG_PREFIX}reason": reason}
        )
        log_metrics(
            {"rows": float(count), **{f"{name}_table_version": float(w.version) for name, w in written.items()}}
        )
        log_dict(step_lineage(accesses), STEP_LINEAGE_ARTIFACT)
    where = ", ".join(f"{getattr(tables, name)} v{w.version}" for name, w in written.items())
    goes = "quarantined" if action == "quarantine" else "dropped"
    return f"batch {batch_id}: {count} rows {goes} ({reason}); wrote {where}"


def _delete_batch(spark: SparkSession, table: Table, batch_id: str) -> WriteResult | None:
    """Delete the batch's rows from ``table`` in one commit (None when the table holds none of them)."""
    if not table_exists(spark, table):
        return None
    df, _ = read_table(spark, table, BATCHES_STEP)
    if INGEST_BATCH_COL not in df.columns or df.where(F.col(INGEST_BATCH_COL) == batch_id).isEmpty():
        return None
    return replace_where(spark, df.limit(0), table, INGEST_BATCH_COL, [batch_id])
