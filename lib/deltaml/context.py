"""What one pipeline run carries from step to step: the session, the config, resolved tables, results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from deltaml.catalog import Table, resolve_table
from deltaml.config import LoadedConfig, PipelineConfig

# The pipeline's steps, in the order they run. ``deltaml run`` runs all but monitor unless asked
# (``--step monitor``, ``deltaml monitor``): monitoring is scheduled on its own, after scoring.
STEP_NAMES = ("ingest", "validate", "split", "fit", "evaluate", "register", "score", "monitor")
DEFAULT_STEPS = STEP_NAMES[:-1]


@dataclass(frozen=True)
class Tables:
    """The pipeline's Delta tables, resolved against the state dir."""

    raw: Table
    split: Table
    predictions: Table
    clean: Table
    quarantine: Table
    quality: Table
    monitoring: Table
    retraining: Table
    serving: Table | None = None


def resolve_tables(cfg: PipelineConfig) -> Tables:
    """The pipeline's tables, resolved against its state dir."""
    refs = cfg.tables
    assert refs.clean is not None and refs.quarantine is not None and refs.quality is not None
    assert refs.monitoring is not None and refs.retraining is not None
    return Tables(
        raw=resolve_table(refs.raw, cfg.state_path),
        split=resolve_table(refs.split, cfg.state_path),
        predictions=resolve_table(refs.predictions, cfg.state_path),
        clean=resolve_table(refs.clean, cfg.state_path),
        quarantine=resolve_table(refs.quarantine, cfg.state_path),
        quality=resolve_table(refs.quality, cfg.state_path),
        monitoring=resolve_table(refs.monitoring, cfg.state_path),
        retraining=resolve_table(refs.retraining, cfg.state_path),
        serving=resolve_table(refs.serving, cfg.state_path) if refs.serving is not None else None,
    )


def event_tables(cfg: PipelineConfig) -> list[Table]:
    """The event table of each window feature group: this pipeline's ``raw``/``clean`` table, or its own."""
    tables = resolve_tables(cfg)
    return [
        getattr(tables, w.events) if isinstance(w.events, str) else resolve_table(w.events, cfg.state_path)
        for w in cfg.features.windows
    ]


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
