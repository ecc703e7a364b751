"""MLflow set-up and run bookkeeping: one parent run per pipeline run, one child run per step."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from deltaml.columns import TAG_CACHED_FROM, TAG_PIPELINE, TAG_STEP
from deltaml.config.schema import PipelineConfig
from deltaml.errors import StepInputError

LOG = logging.getLogger(__name__)


TRACKED_PACKAGES = ("deltaml", "pyspark", "delta-spark", "mlflow", "hyperopt", "pandas", "pyarrow")


class DeltaTableSource(DeltaDatasetSource):
    """MLflow's Delta table dataset source, except that version 0 is recorded too (MLflow drops a falsy version)."""

    def to_dict(self) -> dict[Any, Any]:
        """The source as MLflow stores it, always with ``delta_table_version``."""
        return {**super().to_dict(), "delta_table_version": self.delta_table_version}


# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; the URIs deltaml set are remembered so
# that a second pipeline in the same process (a notebook, a test run) does not mistake the
# first one's store for a user's choice.
_URIS_WE_SET: set[str] = set()


def resolve_tracking_uri(config: PipelineConfig) -> str:
    """``mlflow.tracking_uri`` from the config, else ``MLFLOW_TRACKING_URI``, else SQLite in the state dir."""
    if config.mlflow.tracking_uri:
        return config.mlflow.tracking_uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env and from_env not in _URIS_WE_SET:
        return from_env
    return f"sqlite:///{config.state_path / 'mlflow.db'}"


def configure_tracking(config: PipelineConfig) -> str:
    """Point MLflow tracking and registry at the pipeline's store and select its experiment.

    With the embedded store, artifacts go to ``<state_dir>/mlartifacts`` rather than to
    ``./mlruns`` in whatever folder the command ran from.

    Returns:
        The experiment id.
    """
    uri = resolve_tracking_uri(config)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from_environment = not config.mlflow.tracking_uri and os.environ.get("MLFLOW_TRACKING_URI") == uri
    mlflow.set_tracking_uri(uri)
    if not uri.startswith("databricks"):
        # On Databricks the registry defaults to Unity Catalog; setting it would pick the legacy one.
        mlflow.set_registry_uri(uri)
    if not from_environment:
        _URIS_WE_SET.add(uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    if experiment is None:
        artifact_location = None
        if uri.startswith("sqlite:") or uri.startswith("file:"):
            artifact_location = (config.state_path / "mlartifacts").as_uri()
        experiment_id = client.create_experiment(config.mlflow.experiment, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    LOG.info("MLflow tracking at %s, experiment %s", _without_credentials(uri), config.mlflow.experiment)
    return str(experiment_id)


def _without_credentials(uri: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://***@host``, for logs."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def git_sha() -> str:
    """The commit of the working tree the command runs in, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a run's results."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def latest_step_run(config: PipelineConfig, step: str) -> Run:
    """The most recent finished child run of ``step`` for this pipeline (for a skipped step, the run it reused).

    Raises:
        StepInputError: No such run exists yet.
    """
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    runs = MlflowClient().search_runs(
        experiment_ids=[experiment.experiment_id] if experiment else [],
        filter_string=(
            f"tags.`{TAG_PIPELINE}` = '{config.name}' and tags.`{TAG_STEP}` = '{step}' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if experiment is None or not runs:
        raise StepInputError(
            f"no finished '{step}' run of pipeline '{config.name}' in experiment {config.mlflow.experiment}; "
            f"run `deltaml run CONF --step {step}` (or the whole pipeline) first"
        )
    reused = runs[0].data.tags.get(TAG_CACHED_FROM)
    return MlflowClient().get_run(reused) if reused else runs[0]


def load_run_json(client: MlflowClient, run_id: str, artifact: str) -> Any:
    """A JSON artifact of a run (the manifest, the reference profile), downloaded to a temporary folder.

    Raises:
        MlflowException: The run or the artifact does not exist, or the store cannot be reached.
        OSError: The download left no readable file.
    """
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, artifact, tmp)).read_text())
