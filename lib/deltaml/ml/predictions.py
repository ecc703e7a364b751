"""Scoring a frame with a fitted model: the prediction columns and the input hash of each row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from deltaml.columns import (
    BATCH_COL,
    INGEST_BATCH_COL,
    INPUT_HASH_COL,
    MODEL_NAME_COL,
    MODEL_VERSION_COL,
    PREDICTED_LABEL_COL,
    PREDICTION_COL,
    PROBABILITY_COL,
    SCORED_AT_COL,
    SOURCE_TABLE_COL,
    SOURCE_VERSION_COL,
)
from deltaml.ml.models import positive_probability


@dataclass(frozen=True)
class ScoringModel:
    """A registered model version loaded for scoring."""

    name: str
    version: int
    model: PipelineModel


def score_frame(
    scoring: ScoringModel,
    key: str,
    source_table: str,
    source_version: int,
    scored_at: datetime,
    task: str = "binary",
    batch: Column | None = None,
    hashed: Sequence[str] = (),
) -> Callable[[DataFrame], DataFrame]:
    """Return a transform that scores rows and keeps the key, the scores and lineage columns.

    The output has ``key``, the scores, ``model_name``, ``model_version``, ``source_table``,
    ``source_version``, ``batch_id``, ``scored_at`` and ``input_hash`` (of ``key`` and ``hashed``, see
    :func:`input_hash`). ``batch_id`` is ``batch`` (a column of the input) where given, else the ingest batch
    where the input has one, else ``v<source_version>``. The scores: binary: ``probability`` (of the positive class) and
    ``prediction`` (0/1 at the model's threshold); multiclass: ``prediction`` (class index),
    ``predicted_label`` and ``probability`` (of the predicted class); regression: ``prediction``.
    """
    if task == "multiclass":
        scores = [
            F.array_max(vector_to_array(F.col(PROBABILITY_COL))).alias(PROBABILITY_COL),
            F.col(PREDICTION_COL),
            F.col(PREDICTED_LABEL_COL),
        ]
    elif task == "regression":
        scores = [F.col(PREDICTION_COL)]
    else:
        scores = [positive_probability().alias(PROBABILITY_COL), F.col(PREDICTION_COL)]

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
            F.lit(source_table).alias(SOURCE_TABLE_COL),
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
