"""Databricks widgets to a typed config: notebooks pass their widgets here and hold no logic."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from deltaml.columns import TAG_PREFIX
from deltaml.config.loader import LoadedConfig, load_config
from deltaml.io.catalog import read_table
from deltaml.io.session import get_spark
from deltaml.io.tables import resolve_tables
from deltaml.io.tracking import artifact_text, get_run_tags, load_run_table
from deltaml.pipeline.retraining import RetrainDecision, retrain
from deltaml.pipeline.runner import PipelineOutcome, run_pipeline, scoring_steps
from deltaml.steps.outputs import EvaluateOutput, FitOutput, RegisterOutput

# The sample of predictions a notebook displays.
PREDICTION_SAMPLE_ROWS = 20


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


@dataclass
class TrainingResults:
    """What the train notebook shows after a run, and what it hands to the job's later tasks.

    Attributes:
        summary: One line: the run, the winner, the test metric, the version and the gate's decision.
        report_html: The evaluation report (self-contained HTML: ``displayHTML`` shows it), if evaluate ran.
        leaderboard: Every family's best trial (pandas), if fit ran or was reused.
        predictions: A sample of the predictions table (a Spark DataFrame for ``display``), if it exists.
        task_values: For ``dbutils.jobs.taskValues.set``: ``run_id``, ``model_version``, ``promoted``,
            ``decision`` (``promoted`` or ``kept``), ``gate_reason`` and the test metrics, as a job's later
            tasks read them.
    """

    summary: str
    report_html: str | None = None
    leaderboard: Any = None
    predictions: Any = None
    task_values: dict[str, Any] = field(default_factory=dict)


def training_results(loaded: LoadedConfig, outcome: PipelineOutcome) -> TrainingResults:
    """Gather what a notebook shows of a training run: report, leaderboard, predictions, task values."""
    cfg = loaded.pipeline
    values: dict[str, Any] = {"run_id": outcome.run_id}
    parts = [f"MLflow run {outcome.run_id}"]
    fitted = outcome.output(FitOutput)
    leaderboard = None
    if fitted is not None and fitted.leaderboard:
        import pandas as pd

        leaderboard = pd.DataFrame(fitted.leaderboard)
    elif "fit" in outcome.run_ids:
        leaderboard = load_run_table(outcome.run_ids["fit"], "leaderboard.json")
    if leaderboard is not None and len(leaderboard):
        values["winner_family"] = str(leaderboard.iloc[0]["family"])
        parts.append(f"winner {values['winner_family']}")
    evaluated = outcome.output(EvaluateOutput)
    if evaluated is not None:
        tests = {k: round(v, 6) for k, v in sorted(evaluated.metrics.items()) if k.startswith("test_")}
        values.update(tests)
        metric = f"test_{cfg.gate_metric}"
        if metric in tests:
            parts.append(f"{metric} {tests[metric]:.4f}")
    registered = outcome.output(RegisterOutput)
    if registered is not None:
        values.update(model_version=registered.model_version, promoted=registered.promoted)
        # From the register run's tags: a register step reused from an earlier run has no summary in this one.
        tags = get_run_tags(outcome.run_ids["register"]) if "register" in outcome.run_ids else {}
        values["decision"] = tags.get(f"{TAG_PREFIX}gate_decision", "")
        values["gate_reason"] = tags.get(f"{TAG_PREFIX}gate_reason", "")
        parts.append(f"{cfg.mlflow.registered_model} version {registered.model_version}")
        parts.append("promoted to @champion" if registered.promoted else "not promoted")
    report = artifact_text(outcome.run_ids["evaluate"], "report/report.html") if "evaluate" in outcome.run_ids else None
    predictions = None
    if "score" in outcome.run_ids:  # the session the run used (get_spark returns the active one)
        predictions = read_table(get_spark(cfg), resolve_tables(cfg).predictions, "notebook")[0]
        predictions = predictions.limit(PREDICTION_SAMPLE_ROWS)
    return TrainingResults(", ".join(parts), report, leaderboard, predictions, values)
