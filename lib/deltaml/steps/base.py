"""What one pipeline run carries from step to step: the session, the config, resolved tables, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mlflow
import mlflow.spark
from pyspark.ml import PipelineModel
from pyspark.sql import SparkSession

from deltaml.columns import MODEL_ARTIFACT
from deltaml.config.loader import LoadedConfig
from deltaml.config.schema import PipelineConfig
from deltaml.io.catalog import Table
from deltaml.io.tables import Tables, resolve_tables

# The pipeline's steps, in the order they run. ``deltaml run`` runs all but monitor unless asked
# (``--step monitor``, ``deltaml monitor``): monitoring is scheduled on its own, after scoring.
STEP_NAMES = ("ingest", "validate", "split", "fit", "evaluate", "register", "score", "monitor")


DEFAULT_STEPS = STEP_NAMES[:-1]


@dataclass
class StepResult:
    """What a step reports: metrics and tags for its MLflow run, and outputs for later steps."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


@dataclass
class StepContext:
    """Shared state of one pipeline run. ``outputs`` holds what earlier steps of this run produced."""

    spark: SparkSession
    loaded: LoadedConfig
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> PipelineConfig:
        """The validated pipeline config."""
        return self.loaded.pipeline

    @property
    def tables(self) -> Tables:
        """The resolved tables of this pipeline."""
        return resolve_tables(self.config)

    @property
    def training_source(self) -> Table:
        """The table the split step reads: the contract's clean table, or raw without a contract."""
        return self.tables.clean if self.config.contract is not None else self.tables.raw


def load_fitted_model(ctx: StepContext) -> tuple[PipelineModel, str]:
    """The model fitted earlier in this run (or reused from the fit run it skipped to), else the latest fit run's."""
    if "model" in ctx.outputs:
        return ctx.outputs["model"], ctx.outputs["model_uri"]
    from deltaml.io.tracking import latest_step_run

    if "model_uri" in ctx.outputs:
        uri = ctx.outputs["model_uri"]
    else:
        run = latest_step_run(ctx.config, "fit")
        uri = run.data.tags.get("deltaml.model_uri") or f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}"
    model = mlflow.spark.load_model(uri)
    ctx.outputs.update(model=model, model_uri=uri)
    return model, uri
