"""MLflow set-up and run bookkeeping: one parent run per pipeline run, one child run per step."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import logging
import logging.config
import os
import posixpath
import re
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset import Dataset
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric, Param, Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.tracking.fluent import ActiveRun
from pyspark.sql import SparkSession

from deltaml.columns import TAG_CACHED_FROM, TAG_PIPELINE, TAG_PROCESS, TAG_STEP
from deltaml.config.schema import PipelineConfig
from deltaml.errors import StepFailedError, StepInputError, one_line, without_credentials
from deltaml.io.catalog import full_table_name, recorded_table, table_schema
from deltaml.io.moved_state import follow_moved_store
from deltaml.io.recording import TableAccess, step_lineage

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


@contextmanager
def _store_setup_keeps_logging() -> Iterator[None]:
    """Keep the process's logging as it is while MLflow creates or upgrades a database store.

    MLflow 3.0's database migrations (Databricks Runtime 17.3 LTS ships 3.0.1) call alembic's
    ``logging.config.fileConfig``, which replaces the root logger's handlers (the CLI's, a test
    runner's) and prints alembic's INFO lines on stderr; later MLflow versions no longer do.
    """
    original = logging.config.fileConfig
    logging.config.fileConfig = lambda *args, **kwargs: None
    # Their INFO lines ("Creating initial MLflow database tables...", each migration) say nothing to a user.
    quiet = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logging.config.fileConfig = original
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _is_database(uri: str) -> bool:
    return uri.startswith(("sqlite:", "postgresql", "mysql", "mssql"))


def _open_database_stores(client: MlflowClient, uri: str) -> None:
    """Create or upgrade a database store now: the tracking tables, then (a separate store) the registry's.

    A moved or copied embedded store then has its artifact locations pointed at its new folder.
    """
    client.search_experiments(max_results=1)
    client.search_registered_models(max_results=1)
    follow_moved_store(uri)


def client_for(uri: str) -> MlflowClient:
    """A client bound to ``uri`` (tracking, and registry unless it is Databricks'), its store ready.

    Bound to the URI rather than through ``mlflow.set_tracking_uri``, it leaves the process's MLflow
    settings alone.
    """
    with _store_setup_keeps_logging():  # MLflow 3.0 opens the store in the constructor, later ones on first use
        client = MlflowClient(tracking_uri=uri, registry_uri=None if uri.startswith("databricks") else uri)
        if _is_database(uri):
            _open_database_stores(client, uri)
    return client


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
    if without_credentials(uri) != uri:
        # MLflow prints "View run ... at: <tracking URI>/..." for every run it ends, credentials included.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    mlflow.set_tracking_uri(uri)
    if not uri.startswith("databricks"):
        # On Databricks the registry defaults to Unity Catalog; setting it would pick the legacy one.
        mlflow.set_registry_uri(uri)
    if not from_environment:
        _URIS_WE_SET.add(uri)
    with _store_setup_keeps_logging():  # the store is created or upgraded by the client or its first call
        client = MlflowClient()
        if _is_database(uri):
            _open_database_stores(client, uri)
        experiment = client.get_experiment_by_name(config.mlflow.experiment)
    if experiment is None:
        artifact_location = None
        if uri.startswith("sqlite:") or uri.startswith("file:"):
            artifact_location = (config.state_path / "mlartifacts").as_uri()
        experiment_id = client.create_experiment(config.mlflow.experiment, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    LOG.info("MLflow tracking at %s, experiment %s", without_credentials(uri), config.mlflow.experiment)
    return str(experiment_id)


def check_tracking_server(config: PipelineConfig, timeout: float = 5.0) -> None:
    """Fail in seconds when an HTTP tracking server does not answer, before anything slow starts.

    MLflow's own client retries for minutes; this asks the server's ``/health`` once. Other stores
    (SQLite, files, ``databricks``) are left to MLflow.

    Raises:
        StepFailedError: The server did not answer ``/health`` with 200 within ``timeout`` seconds.
    """
    check_tracking_uri(resolve_tracking_uri(config), timeout)


def check_tracking_uri(
    uri: str, timeout: float = 5.0, fix: str = "start it, or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI"
) -> None:
    """:func:`check_tracking_server` for a URI given some other way (``--tracking-uri``); ``fix`` ends the message.

    Raises:
        StepFailedError: The server did not answer ``/health`` with 200 within ``timeout`` seconds.
    """
    if not uri.startswith(("http://", "https://")):
        return
    shown = without_credentials(uri)
    # urllib does not read user:password@ in a URL (it takes it for the host name): send it as basic auth.
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)).rstrip("/") + "/health")
    if parts.username is not None:
        user_password = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(user_password.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except (OSError, ValueError) as exc:  # refused, unresolvable, timed out, an HTTP error status
        reason = getattr(exc, "reason", None) or exc
        raise StepFailedError(
            f"MLflow tracking server {shown} did not answer ({without_credentials(one_line(str(reason), 200))}); {fix}"
        ) from None
    if status != 200:
        raise StepFailedError(
            f"MLflow tracking server {shown} answered /health with HTTP {status}; is it an MLflow server?"
        )


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


def finished_step_runs(
    client: MlflowClient,
    experiment_id: str,
    pipeline: str,
    step: str,
    tags: dict[str, str] | None = None,
    max_results: int = 5,
) -> list[Run]:
    """The finished runs of a pipeline's step, newest first, optionally with more tags equal to given values."""
    wanted = {TAG_PIPELINE: pipeline, TAG_STEP: step, **(tags or {})}
    conditions = [f"tags.`{key}` = '{value}'" for key, value in wanted.items()]
    return list(
        client.search_runs(
            experiment_ids=[experiment_id],
            filter_string=" and ".join([*conditions, "attributes.status = 'FINISHED'"]),
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        )
    )


def child_runs(client: MlflowClient, parent_run_id: str, step: str) -> list[Run]:
    """The runs of ``step`` nested under a pipeline run, whatever their status."""
    experiment = client.get_run(parent_run_id).info.experiment_id
    return list(
        client.search_runs(
            [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{TAG_STEP}` = '{step}'"
        )
    )


def latest_step_run(config: PipelineConfig, step: str) -> Run:
    """The most recent finished child run of ``step`` for this pipeline (for a skipped step, the run it reused).

    Raises:
        StepInputError: No such run exists yet.
    """
    experiment = mlflow.get_experiment_by_name(config.mlflow.experiment)
    runs = (
        finished_step_runs(MlflowClient(), experiment.experiment_id, config.name, step, max_results=1)
        if experiment
        else []
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
        # MLflow 3.0 returns None here (later versions the local path); the file is at the same place.
        local = client.download_artifacts(run_id, artifact, tmp) or str(Path(tmp) / artifact)
        return json.loads(Path(local).read_text())


@contextmanager
def tracked_run(**kwargs: Any) -> Iterator[ActiveRun]:
    """``mlflow.start_run``, except that failing to mark the run FAILED never hides the error that failed it.

    With the tracking server gone, ending the run fails as well; that second error would replace
    the first (and its one-line message) as the one the command reports.
    """
    if not kwargs.get("run_id"):
        kwargs["tags"] = {**(kwargs.get("tags") or {}), TAG_PROCESS: this_process()}
    run = mlflow.start_run(**kwargs)

    def still_active() -> bool:
        active = mlflow.active_run()
        return active is not None and active.info.run_id == run.info.run_id

    try:
        yield run
    except BaseException:
        try:
            if still_active():
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        except Exception as exc:  # MLflow pops the run from its stack before it calls the server
            LOG.warning("could not mark MLflow run %s FAILED: %s", run.info.run_id, one_line(exc, 300))
        raise
    if still_active():
        mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def _process_start(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot (Linux); '' where /proc does not say."""
    try:
        # Field 22 of /proc/PID/stat, counted after the command name (which may hold spaces) in parentheses.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def this_process() -> str:
    """``host:pid:start``: which process opened a run, so a later one can tell whether it still lives."""
    return f"{socket.gethostname()}:{os.getpid()}:{_process_start(os.getpid())}"


def _process_gone(process: str) -> bool:
    """Whether the ``host:pid:start`` process of this host has ended (a reused pid has another start)."""
    _, pid_text, start = process.rsplit(":", 2)
    pid = int(pid_text)
    if start:
        return _process_start(pid) != start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def close_runs_of_dead_processes(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs opened on this host by a process that is gone, and their RUNNING children.

    A run killed with ``kill -9`` (or whose driver was lost) never ends its MLflow runs: they stay
    RUNNING for ever, in the UI and to anything that waits for them. Runs of other hosts are left
    alone (their processes cannot be seen from here). Returns the ids marked.
    """
    host = socket.gethostname()
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    dead = {
        run.info.run_id
        for run in running
        if (process := run.data.tags.get(TAG_PROCESS, "")).startswith(f"{host}:")
        and process.count(":") >= 2
        and _process_gone(process)
    }
    grew = True
    while grew:  # children (a step's run under the pipeline's) of a dead run died with it
        children = {
            run.info.run_id
            for run in running
            if run.info.run_id not in dead and run.data.tags.get("mlflow.parentRunId") in dead
        }
        grew = bool(children)
        dead |= children
    for run_id in sorted(dead):
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    if dead:
        LOG.info("marked %d MLflow run(s) KILLED: the process that opened them on %s is gone", len(dead), host)
    return sorted(dead)


# -- the active run: what steps log (the runner opens a run per step) ------------------------------------------


def mlflow_client() -> MlflowClient:
    """A client of the tracking and registry URIs configured for this process."""
    return MlflowClient()


def active_run_info() -> tuple[str, str] | None:
    """The run being logged to and its experiment: ``(run_id, experiment_id)``, or None outside a run."""
    run = mlflow.active_run()
    return (run.info.run_id, run.info.experiment_id) if run is not None else None


def log_dict_to(run_id: str, data: Any, artifact_file: str) -> None:
    """Log a JSON artifact to a given run (not necessarily the active one)."""
    MlflowClient().log_dict(run_id, data, artifact_file)


def log_text_to(run_id: str, text: str, artifact_file: str) -> None:
    """Log a text artifact to a given run (not necessarily the active one), replacing a file of that name."""
    MlflowClient().log_text(run_id, text, artifact_file)


def died_attempt_children(
    current_run_id: str, experiment_id: str, tag: str, value: str, step: str
) -> tuple[str, list[Run]] | None:
    """The newest other run tagged ``tag=value`` that ended FAILED or KILLED, and its FINISHED ``step`` children."""
    client = MlflowClient()
    died = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tag}` = '{value}' and attributes.status != 'FINISHED' "
        "and attributes.status != 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    attempt = next((r.info.run_id for r in died if r.info.run_id != current_run_id), None)
    if attempt is None:
        return None
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{attempt}' and tags.`{TAG_STEP}` = '{step}' "
        "and attributes.status = 'FINISHED'",
        max_results=10_000,
    )
    return attempt, children


def get_run_tags(run_id: str) -> dict[str, str]:
    """The tags of a run as the store has them now (the active run's object does not see tags set after its start)."""
    return dict(MlflowClient().get_run(run_id).data.tags)


def active_run_id() -> str | None:
    """The id of the run being logged to, or None outside a run."""
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


# What MLflow accepts in a metric, param or tag key (mlflow.utils.validation): word characters, / . - space :
_MLFLOW_KEY_CHAR = re.compile(r"[/\w.\- :]")


def mlflow_key(name: str) -> str:
    """``name`` as an MLflow metric, param or tag key: each character MLflow refuses becomes ``_x<hex>_``.

    Column names reach keys (``contract.columns.prix_€.type``, ``drift.<feature>.psi``); MLflow
    refuses ``€``, ``(``, ``,`` and more, which stopped every run at its first param. The code point
    keeps two names that differ only there apart. A key that is not its own normalised path (``a//b``,
    ``x/../y``) has its slashes encoded too.
    """
    key = "".join(c if _MLFLOW_KEY_CHAR.fullmatch(c) else f"_x{ord(c):x}_" for c in name)
    normal = posixpath.normpath(key) if key else key
    if normal != key or normal == "." or normal.startswith(("..", "/")):
        key = key.replace("/", "_x2f_")
        key = f"_{key}" if key.startswith(".") else key  # '..', '.': not a path either
    return key


def log_metrics(metrics: dict[str, float]) -> None:
    """Log metrics to the active run (keys through :func:`mlflow_key`)."""
    mlflow.log_metrics({mlflow_key(k): v for k, v in metrics.items()})


def log_params(params: dict[str, Any]) -> None:
    """Log params to the active run (keys through :func:`mlflow_key`)."""
    mlflow.log_params({mlflow_key(k): v for k, v in params.items()})


def set_tags(tags: dict[str, Any]) -> None:
    """Set tags of the active run (keys through :func:`mlflow_key`)."""
    mlflow.set_tags({mlflow_key(k): v for k, v in tags.items()})


def log_dict(data: Any, artifact_file: str) -> None:
    """Log a JSON (or YAML, by extension) artifact to the active run."""
    mlflow.log_dict(data, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    """Log a text artifact to the active run."""
    mlflow.log_text(text, artifact_file)


def log_file(local_path: str, artifact_path: str | None = None) -> None:
    """Log one local file to the active run."""
    mlflow.log_artifact(local_path, artifact_path)


def log_folder(local_dir: str, artifact_path: str | None = None) -> str:
    """Log a local folder's files to the active run; return where they are (the artifact URI)."""
    mlflow.log_artifacts(local_dir, artifact_path)
    return str(mlflow.get_artifact_uri(artifact_path))


def artifact_text(run_id: str, path: str) -> str | None:
    """A text artifact of a run (a report's HTML, say); None when the run has no such file."""
    try:
        return str(mlflow.artifacts.load_text(f"runs:/{run_id}/{path}"))
    except (MlflowException, OSError):
        return None


def load_run_table(run_id: str, artifact_file: str) -> Any:
    """A table logged with :func:`log_table`, as a pandas DataFrame (None when the run has none)."""
    try:
        return mlflow.load_table(artifact_file, run_ids=[run_id])
    except (MlflowException, OSError):
        return None


def log_table(data: Any, artifact_file: str) -> None:
    """Log a table (a pandas DataFrame or a dict of columns) the MLflow UI shows as a table."""
    mlflow.log_table(data, artifact_file)


def log_finished_run(
    experiment_id: str,
    tags: dict[str, str],
    metrics: dict[str, float],
    params: dict[str, str],
    ok: bool,
) -> str:
    """Create a run that is already finished (a tuning trial): its tags, metrics and params in one call.

    Safe from any thread (it uses the client API, not the fluent run stack). Returns its id.
    """
    client = MlflowClient()
    run = client.create_run(experiment_id, tags=tags)
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in sorted(params.items())],
    )
    client.set_terminated(run.info.run_id, "FINISHED" if ok else "FAILED")
    return str(run.info.run_id)


def log_datasets(spark: SparkSession, accesses: list[TableAccess], context: str | None = None) -> None:
    """Log each Delta table a step read, at the version it read, as a dataset input of the active MLflow run.

    Each dataset is MLflow's Delta source (the path or the table name, and the version), the table's
    schema at that version, and a digest of ``table@vN``: the table is never read. (MLflow's own Spark
    dataset, ``mlflow.data.load_delta``, would be profiled when logged, with a Spark job over all its
    rows.) A table whose dataset cannot be logged costs one warning, never the step.

    Args:
        spark: The session the tables were read with.
        accesses: The step's recording (see :func:`recording`); only its inputs are logged.
        context: The inputs' context (``mlflow.data.context``); by default the run's step name
            (its ``deltaml.step`` tag).
    """
    inputs = step_lineage(accesses)["inputs"]
    active = mlflow.active_run()
    if not inputs or active is None:
        if inputs:
            LOG.warning("lineage: no active MLflow run; %d input table(s) not logged as datasets", len(inputs))
        return
    context = context or active.data.tags.get(TAG_STEP)
    for access in inputs:
        try:
            mlflow.log_input(_delta_dataset(spark, access["table"], access["version"]), context=context)
        except Exception as exc:  # MLflow, Spark or the network: the step's result stands without it
            LOG.warning(
                "lineage: %s v%d not logged as an MLflow dataset: %s: %s",
                access["table"],
                access["version"],
                type(exc).__name__,
                one_line(exc, 300),  # for a Py4J error, the root of the Java cause chain
            )


def _delta_dataset(spark: SparkSession, table: str, version: int) -> Dataset:
    """An MLflow dataset that names a Delta table at a version, with its schema, without reading it."""
    where = recorded_table(table)
    if where.is_path:
        source = DeltaTableSource(path=where.ref, delta_table_version=version)
    else:
        # In full: MLflow takes the first part of a shorter name for a Unity Catalog and asks Databricks for it.
        source = DeltaTableSource(delta_table_name=full_table_name(spark, where), delta_table_version=version)
    struct = table_schema(spark, where, version)
    schema = None
    # MLflow infers a map column's fields from the data; inferred from an empty frame it gives up (schema "any").
    if '"type":"map"' not in struct.json():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its hint on integer columns is about pandas inputs
            schema = infer_signature(spark.createDataFrame([], struct)).inputs
    name = f"{where.ref.rstrip('/').rsplit('/', 1)[-1] if where.is_path else where.ref}@v{version}"
    digest = hashlib.sha256(f"{table}@v{version}".encode()).hexdigest()[:16]
    # Dataset is not an ABC: MetaDataset leaves profile abstract, and it is None.
    return MetaDataset(source, name=name, digest=digest, schema=schema)  # type: ignore[abstract]
