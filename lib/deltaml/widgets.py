"""Databricks widgets to a typed config: notebooks pass their widgets here and hold no logic."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from deltaml.config.loader import LoadedConfig, load_config
from deltaml.pipeline.retraining import RetrainDecision, retrain
from deltaml.pipeline.runner import PipelineOutcome, run_pipeline, scoring_steps


class Widgets(Protocol):
    """The part of ``dbutils.widgets`` deltaml reads."""

    def get(self, name: str) -> str:
        """The widget's current value."""
        ...


def config_from_widgets(widgets: Widgets) -> LoadedConfig:
    """Load the config named by the ``conf`` widget with the ``env`` overlay and ``overrides``.

    ``overrides`` holds ``key=value`` pairs separated by newlines or semicolons, exactly as
    ``--set`` takes them on the command line.
    """
    overrides = [item.strip() for item in re.split(r"[;\n]", widgets.get("overrides")) if item.strip()]
    env = widgets.get("env").strip() or None
    return load_config(widgets.get("conf"), env=env, overrides=overrides)


def run_from_widgets(widgets: Widgets, steps: Sequence[str] | None = None) -> PipelineOutcome:
    """Run the pipeline (or ``steps``) configured by the notebook's widgets, on the active session."""
    return run_pipeline(config_from_widgets(widgets), steps=steps)


def score_from_widgets(widgets: Widgets) -> PipelineOutcome:
    """What ``deltaml score`` runs: ingest and validate what the source gained, then score what is new."""
    loaded = config_from_widgets(widgets)
    return run_pipeline(loaded, steps=scoring_steps(loaded.pipeline), force={"score"})


def retrain_from_widgets(widgets: Widgets) -> RetrainDecision:
    """Evaluate the retraining policy configured by the widgets (``dry_run`` = ``true`` trains nothing)."""
    dry_run = widgets.get("dry_run").strip().lower() in ("true", "yes", "1")
    return retrain(config_from_widgets(widgets), dry_run=dry_run)
