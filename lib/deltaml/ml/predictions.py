"""Scoring a frame with a fitted model: the prediction columns, the input hash of each row, and which input
table a prediction was made from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pyspark.ml import PipelineModel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from deltaml.columns import (
    BATCH_COL,
    INGEST_BATCH_COL,
    INPUT_HASH_COL,
    MODEL_NAME_COL,
    MODEL_VERSION_COL,
    SCORED_AT_COL,
    SOURCE_TABLE_COL,
    SOURCE_TABLE_ID_COL,
    SOURCE_VERSION_COL,
)
from deltaml.io.catalog import Table, sql_literal, table_id
from deltaml.io.flavor import score_columns


@dataclass(frozen=True)
class ScoringModel:
    """A registered model version loaded for scoring."""

    name: str
    version: int
    model: PipelineModel


@dataclass(frozen=True)
class ScoredSource:
    """The table a score run reads, as its predictions record it: ``source_table`` (the path or name it was read at,
    for people) and ``source_table_id`` (its Delta table id).

    Predictions are matched to their input by the id, which the table keeps when its folder is copied or
    moved (a state folder restored from a backup, a renamed checkout), so such a move neither rescores nor
    duplicates anything. Rows written before deltaml recorded the id match by path: the same path, or, for a
    table inside the state folder, the same path below it (``moved_suffix``, e.g. ``/warehouse/silver/clean``).
    """

    table: Table
    table_id: str
    moved_suffix: str | None = None

    def __str__(self) -> str:
        return str(self.table)

    def predicate(self, columns: Sequence[str]) -> str:
        """A SQL predicate true for the predictions made from this table, in a predictions table with ``columns``.

        The same text filters the stored predictions and bounds what a write replaces (``replaceWhere``).
        """
        by_path = f"`{SOURCE_TABLE_COL}` = {sql_literal(str(self.table))}"
        if self.moved_suffix is not None:
            by_path = f"({by_path} OR endswith(`{SOURCE_TABLE_COL}`, {sql_literal(self.moved_suffix)}))"
        if SOURCE_TABLE_ID_COL not in columns:
            return by_path
        by_id = f"`{SOURCE_TABLE_ID_COL}` = {sql_literal(self.table_id)}"
        return f"({by_id} OR (`{SOURCE_TABLE_ID_COL}` IS NULL AND {by_path}))"


def scored_source(spark: SparkSession, table: Table, state_path: Path) -> ScoredSource:
    """The identity of an existing input table; a path inside ``state_path`` also matches older rows by its part
    below the state folder."""
    suffix = None
    if table.is_path and Path(table.ref).is_relative_to(state_path):
        suffix = "/" + Path(table.ref).relative_to(state_path).as_posix()
    return ScoredSource(table, table_id(spark, table), suffix)


def score_frame(
    scoring: ScoringModel,
    key: str,
    source: ScoredSource,
    source_version: int,
    scored_at: datetime,
    task: str = "binary",
    batch: Column | None = None,
    hashed: Sequence[str] = (),
) -> Callable[[DataFrame], DataFrame]:
    """Return a transform that scores rows and keeps the key, the scores and lineage columns.

    The output has ``key``, the scores, ``model_name``, ``model_version``, ``source_table`` and
    ``source_table_id`` (see :class:`ScoredSource`), ``source_version``, ``batch_id``, ``scored_at`` and
    ``input_hash`` (of ``key`` and ``hashed``, see :func:`input_hash`). ``batch_id`` is ``batch`` (a column of
    the input) where given, else the ingest batch where the input has one, else ``v<source_version>``. The
    scores: binary: ``probability`` (of the positive class) and ``prediction`` (0/1 at the model's threshold);
    multiclass: ``prediction`` (class index), ``predicted_label`` and ``probability`` (of the predicted class);
    regression: ``prediction``.
    """
    scores = score_columns(task)

    def transform(df: DataFrame) -> DataFrame:
        if batch is not None:
            batch_value = batch
        elif INGEST_BATCH_COL in df.columns:
            batch_value = F.col(INGEST_BATCH_COL)
        else:
            batch_value = F.lit(f"v{source_version}")
        stamped = df.withColumn("_batch", batch_value.cast("string")).withColumn("_input_hash", input_hash(key, hashed))
        scored = scoring.model.transform(stamped)
        return scored.select(
            F.col(key),
            *scores,
            F.lit(scoring.name).alias(MODEL_NAME_COL),
            F.lit(scoring.version).alias(MODEL_VERSION_COL),
            F.lit(str(source.table)).alias(SOURCE_TABLE_COL),
            F.lit(source.table_id).alias(SOURCE_TABLE_ID_COL),
            F.lit(source_version).cast("long").alias(SOURCE_VERSION_COL),
            F.col("_batch").alias(BATCH_COL),
            F.lit(scored_at).cast("timestamp").alias(SCORED_AT_COL),
            F.col("_input_hash").alias(INPUT_HASH_COL),
        )

    return transform


def input_hash(key: str, columns: Sequence[str]) -> Column:
    """A 64-bit hash of a row's key and ``columns`` (in name order, so reordering the config changes nothing).

    Each column's null flag is hashed too: xxhash64 skips null values, so without the flags
    ``(a=null, b=5)`` and ``(a=5, b=null)`` would hash alike.
    """
    names = sorted({key, *columns})
    return F.xxhash64(*[F.col(f"`{c}`") for c in names], *[F.isnull(F.col(f"`{c}`")) for c in names])


def batch_values(column: str) -> Column:
    """A batch column as the string stored in ``batch_id`` (null batches become ``"null"``)."""
    return F.coalesce(F.col(f"`{column}`").cast("string"), F.lit("null"))
