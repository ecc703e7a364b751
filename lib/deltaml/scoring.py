"""The score step: a registered model scores a Delta table with native transform; predictions land idempotently."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import mlflow.spark
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.catalog import distinct_values, read_table, replace_where
from deltaml.context import StepContext, StepResult, event_tables
from deltaml.errors import StepInputError
from deltaml.features import bind_window_stages
from deltaml.ingest import INGEST_BATCH_COL
from deltaml.models import PREDICTED_LABEL_COL, positive_probability
from deltaml.train import check_columns

LOG = logging.getLogger(__name__)

BATCH_COL = "batch_id"


@dataclass(frozen=True)
class ScoringModel:
    """A registered model version loaded for scoring."""

    name: str
    version: int
    model: PipelineModel


def load_scoring_model(name: str, alias: str, version: int | None) -> ScoringModel:
    """Load ``models:/name/version`` if pinned, else ``models:/name@alias``, as a Spark PipelineModel.

    Raises:
        StepInputError: The model, alias or version does not exist in the registry.
    """
    client = MlflowClient()
    try:
        found = (
            client.get_model_version(name, str(version)) if version else client.get_model_version_by_alias(name, alias)
        )
    except MlflowException as exc:
        wanted = f"version {version}" if version else f"alias @{alias}"
        raise StepInputError(
            f"step 'score': registered model '{name}' has no {wanted} ({exc.message.splitlines()[0]}); "
            "train and register a model first (`deltaml run CONF`)"
        ) from None
    model = mlflow.spark.load_model(f"models:/{name}/{found.version}")
    return ScoringModel(name, int(found.version), model)


def score_frame(
    scoring: ScoringModel,
    key: str,
    source_table: str,
    source_version: int,
    scored_at: datetime,
    task: str = "binary",
) -> Callable[[DataFrame], DataFrame]:
    """Return a transform that scores rows and keeps the key, the scores and lineage columns.

    The output has ``key``, the scores, ``model_name``, ``model_version``, ``source_table``,
    ``source_version``, ``batch_id`` and ``scored_at``. ``batch_id`` is the row's ingest batch where the input has one,
    else ``v<source_version>``. The scores: binary: ``probability`` (of the positive class) and
    ``prediction`` (0/1 at the model's threshold); multiclass: ``prediction`` (class index),
    ``predicted_label`` and ``probability`` (of the predicted class); regression: ``prediction``.
    """
    if task == "multiclass":
        scores = [
            F.array_max(vector_to_array(F.col("probability"))).alias("probability"),
            F.col("prediction"),
            F.col(PREDICTED_LABEL_COL),
        ]
    elif task == "regression":
        scores = [F.col("prediction")]
    else:
        scores = [positive_probability().alias("probability"), F.col("prediction")]

    def transform(df: DataFrame) -> DataFrame:
        batch = F.col(INGEST_BATCH_COL) if INGEST_BATCH_COL in df.columns else F.lit(f"v{source_version}")
        scored = scoring.model.transform(df.withColumn("_batch", batch))
        return scored.select(
            F.col(key),
            *scores,
            F.lit(scoring.name).alias("model_name"),
            F.lit(scoring.version).alias("model_version"),
            F.lit(source_table).alias("source_table"),
            F.lit(source_version).cast("long").alias("source_version"),
            F.col("_batch").alias(BATCH_COL),
            F.lit(scored_at).cast("timestamp").alias("scored_at"),
        )

    return transform


def run_score(ctx: StepContext) -> StepResult:
    """Score the configured input table and replace its batches in the predictions table."""
    cfg = ctx.config
    scoring = load_scoring_model(cfg.mlflow.registered_model, cfg.score.model_alias, cfg.score.model_version)
    choice = cfg.score.input or ("clean" if cfg.contract is not None else "raw")
    table = {"raw": ctx.tables.raw, "clean": ctx.tables.clean, "split": ctx.tables.split}[choice]
    data, source_version = read_table(ctx.spark, table, "score")
    check_columns(data, [cfg.key, *cfg.features.columns], "score", f"input table {table}")
    scored_at = datetime.now().astimezone().replace(microsecond=0)
    as_of = scored_at if cfg.score.windows_as_of == "now" else None
    bind_window_stages(scoring.model, cfg.features.windows, event_tables(cfg), as_of)
    predictions = data.transform(score_frame(scoring, cfg.key, str(table), source_version, scored_at, cfg.label.task))
    batches = distinct_values(data, INGEST_BATCH_COL) if INGEST_BATCH_COL in data.columns else [f"v{source_version}"]
    if not batches:
        raise StepInputError(f"step 'score': input table {table} v{source_version} is empty; ingest data first")
    written = replace_where(ctx.spark, predictions, ctx.tables.predictions, BATCH_COL, batches)
    return StepResult(
        metrics={
            "rows_scored": float(written.rows_written),
            "source_table_version": float(source_version),
            "predictions_table_version": float(written.version),
            "model_version": float(scoring.version),
        },
        tags={"model": f"{scoring.name}/{scoring.version}", "source_table": str(table), "batches": ",".join(batches)},
        summary=(
            f"{written.rows_written} rows of {table} v{source_version} scored by {scoring.name} "
            f"v{scoring.version} -> {ctx.tables.predictions} v{written.version}"
        ),
    )
