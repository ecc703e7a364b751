"""The pipeline's own Delta tables, resolved against its state folder."""

from __future__ import annotations

from dataclasses import dataclass

from deltaml.config.schema import PipelineConfig
from deltaml.io.catalog import Table, resolve_table


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
    dropped: Table
    serving: Table | None = None


def resolve_tables(cfg: PipelineConfig) -> Tables:
    """The pipeline's tables, resolved against its state dir."""
    refs = cfg.tables
    assert refs.clean is not None and refs.quarantine is not None and refs.quality is not None
    assert refs.monitoring is not None and refs.retraining is not None and refs.dropped is not None
    return Tables(
        raw=resolve_table(refs.raw, cfg.state_path),
        split=resolve_table(refs.split, cfg.state_path),
        predictions=resolve_table(refs.predictions, cfg.state_path),
        clean=resolve_table(refs.clean, cfg.state_path),
        quarantine=resolve_table(refs.quarantine, cfg.state_path),
        quality=resolve_table(refs.quality, cfg.state_path),
        monitoring=resolve_table(refs.monitoring, cfg.state_path),
        retraining=resolve_table(refs.retraining, cfg.state_path),
        dropped=resolve_table(refs.dropped, cfg.state_path),
        serving=resolve_table(refs.serving, cfg.state_path) if refs.serving is not None else None,
    )


def event_tables(cfg: PipelineConfig) -> list[Table]:
    """The event table of each window feature group: this pipeline's ``raw``/``clean`` table, or its own."""
    tables = resolve_tables(cfg)
    return [
        getattr(tables, w.events) if isinstance(w.events, str) else resolve_table(w.events, cfg.state_path)
        for w in cfg.features.windows
    ]


def scoring_input(cfg: PipelineConfig) -> Table:
    """The table the score step reads: ``score.table``, else ``score.input`` (clean with a contract, else raw)."""
    if cfg.score.table is not None:
        return resolve_table(cfg.score.table, cfg.state_path)
    choice = cfg.score.input or ("clean" if cfg.contract is not None else "raw")
    tables = resolve_tables(cfg)
    table: Table = {"raw": tables.raw, "clean": tables.clean, "split": tables.split}[choice]
    return table
