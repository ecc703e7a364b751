"""``deltaml reproduce RUN_ID``: train again from a past run's manifest and compare the metrics.

The manifest (:mod:`deltaml.pipeline.lineage`) holds the effective config and every table each step read
with its version. Reproducing re-runs fit and evaluate with that config, every table they read
pinned to the recorded version by Delta time travel (the split table is usually overwritten since),
and compares the test metrics with the original evaluate run's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from pyspark.sql import SparkSession

from deltaml.columns import MANIFEST_ARTIFACT, TAG_CACHED_FROM, TAG_PIPELINE, TAG_REPRODUCES, TAG_STEP
from deltaml.config.loader import REDACTED_NOTE, LoadedConfig
from deltaml.config.schema import PipelineConfig
from deltaml.errors import StepInputError, one_line
from deltaml.io.catalog import read_table_as_of, recorded_table
from deltaml.io.moved_state import relocated, state_moves
from deltaml.io.recording import pinned_versions
from deltaml.io.session import get_spark
from deltaml.io.tables import resolve_tables
from deltaml.io.tracking import child_runs, client_for, load_run_json
from deltaml.steps.outputs import EvaluateOutput

LOG = logging.getLogger(__name__)


REPRODUCED_STEPS = ("fit", "evaluate")


@dataclass(frozen=True)
class Reproduction:
    """The original and reproduced test metrics of a training run."""

    original_run: str
    reproduced_run: str
    original: dict[str, float]
    reproduced: dict[str, float]
    tolerance: float

    @property
    def differences(self) -> dict[str, float]:
        """Absolute difference per test metric both runs have (one deltaml may log a metric the other does not)."""
        names = sorted(set(self.original) & set(self.reproduced))
        return {n: abs(self.original[n] - self.reproduced[n]) for n in names}

    @property
    def matches(self) -> bool:
        """Every shared test metric within the tolerance (NaN never is), and at least one shared."""
        return bool(self.differences) and all(d <= self.tolerance for d in self.differences.values())

    def render(self) -> str:
        """A table of the metrics and the verdict."""
        lines = [f"{'metric':<26}{'original':>20}{'reproduced':>20}{'difference':>14}"]
        for name, diff in self.differences.items():
            lines.append(f"{name:<26}{self.original[name]:>20.12g}{self.reproduced[name]:>20.12g}{diff:>14.3g}")
        for name in sorted(set(self.original) ^ set(self.reproduced)):
            side = "original" if name in self.original else "reproduced"
            lines.append(f"{name:<26} only in the {side} run, not compared")
        identical = bool(self.differences) and all(d == 0 for d in self.differences.values())
        verdict = "identical" if identical else ("match" if self.matches else "DIFFER")
        lines.append(
            f"{verdict}: run {self.reproduced_run} reproduces {self.original_run} "
            f"(tolerance {self.tolerance:g} on every test metric)"
        )
        return "\n".join(lines)


def pipeline_run(client: MlflowClient, run_id: str) -> Run:
    """The pipeline (parent) run of ``run_id``, which may itself be the pipeline run or one of its steps."""
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise StepInputError(f"reproduce: no MLflow run {run_id} ({one_line(exc, 200)})") from None
    parent = run.data.tags.get("mlflow.parentRunId")
    if run.data.tags.get(TAG_STEP) != "pipeline" and parent:
        return pipeline_run(client, parent)
    return run


def load_manifest(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """The manifest a pipeline run logged.

    Raises:
        StepInputError: The run has none (it predates manifests, or is not a deltaml pipeline run).
    """
    try:
        manifest: dict[str, Any] = load_run_json(client, run_id, MANIFEST_ARTIFACT)
    except (MlflowException, OSError) as exc:
        raise StepInputError(
            f"reproduce: run {run_id} has no {MANIFEST_ARTIFACT} ({one_line(exc, 160)}); "
            "only runs of deltaml 0.1 or later with a fit step can be reproduced"
        ) from None
    return manifest


def evaluate_metrics(client: MlflowClient, pipeline_run_id: str) -> tuple[str, dict[str, float]]:
    """The test metrics of a pipeline run's evaluate step (the run it reused, if it skipped evaluate)."""
    runs = child_runs(client, pipeline_run_id, "evaluate")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if not finished:
        raise StepInputError(
            f"reproduce: pipeline run {pipeline_run_id} has no finished evaluate step, so there are no metrics to "
            "compare; reproduce a run that trained and evaluated a model"
        )
    run = finished[0]
    reused = run.data.tags.get(TAG_CACHED_FROM)
    if reused:
        run = client.get_run(reused)
    return run.info.run_id, {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}


def reproduction_config(manifest: dict[str, Any], tracking_uri: str) -> LoadedConfig:
    """The recorded config, tracked to the current store, with its state folder where the run had it.

    Raises:
        StepInputError: A value training needs came from an environment variable, so the manifest
            has only its template.
    """
    data = json.loads(json.dumps(manifest["config"]))
    hidden = [k for k in _redacted(data) if not k.startswith(("mlflow.tracking_uri", "source."))]
    if hidden:
        raise StepInputError(
            f"reproduce: the recorded config has {', '.join(hidden)} from environment variables, which are not "
            "recorded; reproduce needs their values in the config itself"
        )
    data.setdefault("mlflow", {})["tracking_uri"] = tracking_uri
    if manifest.get("state_path"):
        data["state_dir"] = manifest["state_path"]
    try:
        pipeline = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise StepInputError(
            f"reproduce: the recorded config no longer validates with this deltaml ({exc.errors()[0]['msg']}); "
            "reproduce with the deltaml version the manifest names"
        ) from None
    return LoadedConfig(
        pipeline=pipeline, effective=manifest["config"], config_hash=manifest["config_hash"], source_files=[]
    )


def _redacted(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose recorded value is a redacted ``${VAR}`` template."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _redacted(value, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [k for i, value in enumerate(node) for k in _redacted(value, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if isinstance(node, str) and REDACTED_NOTE in node else []


def reproduce(
    run_id: str, tracking_uri: str, tolerance: float = 1e-6, spark: SparkSession | None = None
) -> Reproduction:
    """Re-run fit and evaluate of a past pipeline run on the table versions it read; compare the test metrics.

    Args:
        run_id: The pipeline run, or any of its step runs.
        tracking_uri: The MLflow store that holds it (the reproduction is logged there too).
        tolerance: The largest absolute difference per test metric that still counts as a match.
        spark: A session to use (built from the recorded config by default).

    Raises:
        StepInputError: No such run, no manifest, no fit step, or a recorded table version is gone (vacuumed).
    """
    from deltaml.pipeline.runner import run_pipeline

    client = client_for(tracking_uri)
    parent = pipeline_run(client, run_id)
    # Paths under a state folder that has moved since are read where the folder is now.
    manifest = relocated(load_manifest(client, parent.info.run_id), state_moves(client, parent.info.experiment_id))
    missing = [s for s in REPRODUCED_STEPS if s not in manifest.get("steps", {})]
    if missing:
        raise StepInputError(
            f"reproduce: run {parent.info.run_id} did not run {', '.join(missing)}; "
            "reproduce a run that trained and evaluated a model"
        )
    original_run, original = evaluate_metrics(client, parent.info.run_id)
    pins: dict[str, int] = {}
    for step in REPRODUCED_STEPS:
        for table in manifest["steps"][step]["inputs"]:
            pins.setdefault(table["table"], int(table["version"]))
    loaded = reproduction_config(manifest, tracking_uri)
    split = str(resolve_tables(loaded.pipeline).split)
    if split not in pins:
        raise StepInputError(
            f"reproduce: the recorded config resolves the split table to {split}, but run {parent.info.run_id} "
            f"trained on {', '.join(pins)}; run reproduce where the run's relative state_dir resolves the same"
        )
    spark = spark or get_spark(loaded.pipeline)
    for table, version in pins.items():  # a vacuumed version is one line now, not a failure mid-fit
        read_table_as_of(spark, recorded_table(table), "reproduce", version=version)
    LOG.info(
        "reproducing run %s: fit and evaluate on %s",
        parent.info.run_id,
        ", ".join(f"{t} v{v}" for t, v in pins.items()),
    )
    with pinned_versions(pins):
        outcome = run_pipeline(
            loaded,
            steps=list(REPRODUCED_STEPS),
            spark=spark,
            force=True,
            tags={TAG_PIPELINE: f"{loaded.pipeline.name}.reproduce", TAG_REPRODUCES: parent.info.run_id},
        )
    evaluated = outcome.output(EvaluateOutput)
    reproduced = {k: v for k, v in (evaluated.metrics if evaluated else {}).items() if k.startswith("test_")}
    LOG.info("original evaluate run %s, reproduced in pipeline run %s", original_run, outcome.run_id)
    return Reproduction(parent.info.run_id, outcome.run_id, original, reproduced, tolerance)
