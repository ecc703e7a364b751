"""deltaml on a Spark standalone cluster with a real MLflow server: the same results as a local run, and faults.

The cluster (one master, two workers of 1 core and 2 GB) and the ``mlflow server`` come from
:mod:`tests.cluster`. Jobs are submitted as a user would, with ``spark-submit --master
spark://...``, the package as a .zip on ``--py-files``, set-up's Delta jars on ``--jars`` and
the ``cluster`` overlay (tables under ``DELTAML_WAREHOUSE``, MLflow at ``MLFLOW_TRACKING_URI``).
The tests share the cluster, the server and the warehouse and run in file order: the first
trains the model that the scoring fault test scores. Killed workers are replaced before the
next test.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from deltaml.cli import main
from tests.cluster import (
    MlflowServer,
    StandaloneCluster,
    Submission,
    build_package_zip,
    cluster_fixture,  # noqa: F401  (the module-scoped `cluster` fixture)
    executor_losses,
    get_json,
    mlflow_server_fixture,  # noqa: F401  (the module-scoped `mlflow_server` fixture)
    spark_submit,
)
from tests.conftest import ROOT, telco_config_dict, write_config

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

KEY = "customer_id"
MODEL = "telco_churn"
EXPERIMENT = "deltaml-telco-churn"
# One Spark ML family and one single-node family, whose trials are one-task jobs on the executors.
FAMILIES = ("hist_gradient_boosting", "logistic_regression")
# Steps of the fault runs: training from the split table on, so each fault costs one fit, not a whole pipeline.
TRAINING_STEPS = ("fit", "evaluate", "register", "score")
# Two 1-core executors: 4 shuffle partitions instead of the overlay's 16, and Delta's log replay in 2
# partitions instead of 50 (both are tiny here); spark-submit's --conf wins over the overlay.
SUBMIT_CONF = {"spark.sql.shuffle.partitions": "4", "spark.databricks.delta.snapshotPartitions": "2"}
# Registered test metrics of the cluster run and of the local run may differ by this much at most.
# Both runs see the same rows in the same splits (the split is a hash of key and seed), but not in
# the same partitions (4 shuffle partitions on the cluster, 2 locally), so Spark's sums (the
# logistic regression's gradients, the AUC's counts) add in another order; measured differences
# are far below this (see the README, "On a standalone cluster").
METRIC_TOLERANCE = 1e-6


@dataclass
class Deployment:
    """The cluster, the server, the package and one config, shared by the tests of this module."""

    cluster: StandaloneCluster
    server: MlflowServer
    root: Path
    package: Path
    conf: Path

    @property
    def warehouse(self) -> Path:
        """DELTAML_WAREHOUSE: the cluster overlay puts every table below it."""
        return self.root / "warehouse"

    def environment(self, **extra: str) -> dict[str, str]:
        """What a user exports before spark-submit (see the README), plus ``extra``."""
        return {
            **self.cluster.environment(),
            "PYSPARK_PYTHON": sys.executable,
            "MLFLOW_TRACKING_URI": self.server.url,
            "DELTAML_WAREHOUSE": str(self.warehouse),
            "DELTAML_STATE_DIR": str(self.root / "state"),
            **extra,
        }

    def submit(self, job: str, *args: str, name: str, **env: str) -> Submission:
        """spark-submit ``jobs/<job>`` with this module's config and the cluster overlay."""
        return spark_submit(
            self.cluster,
            job,
            [str(self.conf), "--env", "cluster", *args],
            package=self.package,
            log=self.root / "logs" / f"{name}.log",
            env=self.environment(**env),
            conf=SUBMIT_CONF,
        )

    def client(self) -> MlflowClient:
        """A client of the MLflow server (tracking and registry)."""
        return MlflowClient(tracking_uri=self.server.url, registry_uri=self.server.url)


def small_config() -> dict[str, Any]:
    """The Telco config with two families, four trials each, two at a time."""
    data = telco_config_dict()
    data["model"]["candidates"] = [c for c in data["model"]["candidates"] if c["family"] in FAMILIES]
    assert sorted(c["family"] for c in data["model"]["candidates"]) == sorted(FAMILIES)
    data["tuning"].update(max_evals=4, parallelism=2)
    return data


@pytest.fixture(scope="module")
def deployment(
    cluster: StandaloneCluster, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    """The config (beside a copy of the real cluster overlay, where the loader looks) and the package .zip."""
    root = tmp_path_factory.mktemp("deployment")
    conf_dir = root / "conf"
    (conf_dir / "env").mkdir(parents=True)
    shutil.copy(ROOT / "conf" / "env" / "cluster.yml", conf_dir / "env" / "cluster.yml")
    conf = write_config(conf_dir / "telco_churn.yml", small_config())
    return Deployment(cluster, mlflow_server, root, build_package_zip(root / "deltaml.zip"), conf)


# -- helpers --------------------------------------------------------------------------------------------------


def _finished(job: Submission, timeout: float = 600.0) -> float:
    """Wait for a job that must succeed; returns its duration in seconds."""
    code = job.wait(timeout)
    assert code == 0, f"exit {code}:\n{job.output()[-6000:]}"
    return job.seconds


def _key_counts(spark: SparkSession, path: Path) -> tuple[int, int]:
    """Rows and distinct keys of a Delta table."""
    df = spark.read.format("delta").load(str(path))
    return df.count(), df.select(KEY).distinct().count()


def _assert_one_prediction_per_key(spark: SparkSession, warehouse: Path) -> int:
    """Every key of the scored table (silver clean) has exactly one prediction; returns the count."""
    inputs, input_keys = _key_counts(spark, warehouse / "silver" / "telco_churn_clean")
    assert inputs == input_keys == 7043
    rows, keys = _key_counts(spark, warehouse / "gold" / "telco_churn_predictions")
    assert (rows, keys) == (input_keys, input_keys)
    return rows


def _runs_since(client: MlflowClient, since_ms: int) -> list[Run]:
    """The pipeline and step runs (not trials) started since ``since_ms``."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"attributes.start_time >= {since_ms} and tags.`deltaml.step` != 'trial'",
        max_results=1000,
    )
    return list(runs)


def _steps(runs: list[Run]) -> dict[str, str]:
    return {r.data.tags["deltaml.step"]: r.info.status for r in runs}


def _latest(client: MlflowClient, step: str) -> Run:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`deltaml.step` = '{step}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs, f"no finished {step} run"
    return runs[0]


def _trial_results(client: MlflowClient) -> dict[tuple[str, str, str], float]:
    """(family, run name, params) -> validation AUC-ROC of every trial in the store."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`deltaml.step` = 'trial'")
    return {
        (t.data.tags["deltaml.family"], t.info.run_name, repr(sorted(t.data.params.items()))): t.data.metrics[
            "validation_auc_roc"
        ]
        for t in trials
    }


def _step_args(steps: tuple[str, ...]) -> list[str]:
    """Run these steps even though nothing changed (step caching would reuse them): the tests are about their runs."""
    return [*(arg for step in steps for arg in ("--step", step)), "--force"]


def _versions(client: MlflowClient) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


def _kill_worker_when(
    deployment: Deployment, job: Submission, running: Callable[[list[str]], bool], timeout: float = 180.0
) -> dict[str, Any]:
    """When an executor runs a task while ``running(job descriptions)`` holds, SIGKILL its worker's process tree.

    Polls the driver's REST API every 50 ms. Returns the worker killed, its executor and pids,
    and what the driver was running at that moment.
    """
    deadline = time.monotonic() + timeout
    base = f"http://127.0.0.1:{job.ui_port}/api/v1/applications"
    while time.monotonic() < deadline:
        if job.popen.poll() is not None:
            raise AssertionError(f"the job ended before a worker could be killed:\n{job.output()[-4000:]}")
        try:
            app = get_json(base, timeout=2)[0]["id"]
            jobs = get_json(f"{base}/{app}/jobs?status=running", timeout=2)
            executors = get_json(f"{base}/{app}/executors", timeout=2)
        except (OSError, ValueError, IndexError, KeyError):
            time.sleep(0.05)
            continue
        descriptions = [str(j.get("description") or j.get("name", "")) for j in jobs]
        busy = [e["id"] for e in executors if e["id"] != "driver" and e.get("activeTasks", 0) > 0]
        if busy and running(descriptions):
            executor = busy[0]
            worker = next(
                name
                for name in deployment.cluster.workers
                if (deployment.cluster.root / name / "work" / app / executor).is_dir()
            )
            pids = deployment.cluster.kill_worker(worker)
            return {
                "worker": worker,
                "executor": executor,
                "pids": pids,
                "jobs": descriptions,
                "at_seconds": round(job.seconds, 1),
            }
        time.sleep(0.05)
    raise AssertionError(f"no busy executor within {timeout:.0f}s:\n{job.output()[-4000:]}")


# -- tests ------------------------------------------------------------------------------------------------------


def test_pipeline_and_scoring_on_the_cluster_match_a_local_run(
    deployment: Deployment, spark: SparkSession, tmp_path: Path
) -> None:
    train = deployment.submit("run_pipeline.py", name="pipeline")
    train_seconds = _finished(train)
    assert "using spark-submit's session (master spark://127.0.0.1:" in train.output()
    client = deployment.client()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    assert sorted(r.info.status for r in _runs_since(client, 0)) == ["FINISHED"] * 8  # pipeline + 7 steps

    # Single-node trials ran in the executors' Python workers on both workers.
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    trials = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`deltaml.step` = 'trial' and tags.`deltaml.family` = 'hist_gradient_boosting'",
    )
    assert len(trials) == 4
    where = sorted(
        (
            str(deployment.cluster.worker_of(t.data.tags["deltaml.trial_workdir"])),
            Path(t.data.tags["deltaml.trial_workdir"]).name,  # the executor id
            t.data.tags["deltaml.trial_pid"],
        )
        for t in trials
    )
    print("single-node trials (worker, executor, Python worker pid):", where)
    assert {w for w, _, _ in where} == {"worker-1", "worker-2"}
    assert len({e for _, e, _ in where}) == 2

    score = deployment.submit("score.py", "--full", name="score")
    score_seconds = _finished(score)
    cluster_predictions = _assert_one_prediction_per_key(spark, deployment.warehouse)

    # The same config in-process on local[2] with an embedded store: the same model and test metrics.
    local = small_config()
    local["state_dir"] = str(tmp_path / "state")
    started = time.monotonic()
    assert main(["run", str(write_config(tmp_path / "telco_churn.yml", local))]) == 0
    local_seconds = time.monotonic() - started
    local_client = MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    local_champion = local_client.get_model_version_by_alias(MODEL, "champion")
    cluster_metrics = {k: v for k, v in _latest(client, "evaluate").data.metrics.items() if k.startswith("test_")}
    local_metrics = {k: v for k, v in _latest(local_client, "evaluate").data.metrics.items() if k.startswith("test_")}
    differences = {k: abs(cluster_metrics[k] - local_metrics[k]) for k in sorted(local_metrics)}
    winners = [_latest(c, "fit").data.tags["deltaml.winner_family"] for c in (client, local_client)]
    print(f"durations: pipeline {train_seconds:.0f}s, score {score_seconds:.0f}s, local pipeline {local_seconds:.0f}s")
    print("winner (cluster, local):", winners, "cluster test metrics:", cluster_metrics)
    print("|cluster - local| per test metric:", differences)
    assert winners[0] == winners[1]
    assert sorted(cluster_metrics) == sorted(local_metrics) and "test_auc_roc" in local_metrics
    assert all(d <= METRIC_TOLERANCE for d in differences.values()), differences
    for tag in ("metric.test_auc_roc", "metric.test_auc_pr", "metric.test_log_loss", "metric.test_accuracy"):
        assert local_champion.tags[tag] == champion.tags[tag], tag  # as registered: 6 decimals
    # Every trial of both families, Spark ML and single-node, found the same params and validation metric.
    cluster_trials, local_trials = _trial_results(client), _trial_results(local_client)
    assert sorted(cluster_trials) == sorted(local_trials) and len(cluster_trials) == 8
    trial_differences = {
        family: max(abs(v - local_trials[(f, n, p)]) for (f, n, p), v in cluster_trials.items() if f == family)
        for family in FAMILIES
    }
    print("largest |cluster - local| validation auc_roc of a trial, per family:", trial_differences)
    assert all(d <= METRIC_TOLERANCE for d in trial_differences.values()), trial_differences
    local_predictions, _ = _key_counts(spark, tmp_path / "state" / "warehouse" / "gold" / "telco_churn_predictions")
    assert local_predictions == cluster_predictions


def test_scoring_completes_when_a_worker_dies_mid_job(deployment: Deployment, spark: SparkSession) -> None:
    since = int(time.time() * 1000)
    job = deployment.submit("score.py", "--full", name="score-worker-loss")
    job.wait_for_output("[score] started", timeout=240)
    # Killed while the predictions are being computed and written (the job Spark names "save at ...").
    killed = _kill_worker_when(deployment, job, lambda jobs: any(d.startswith("save at") for d in jobs))
    print("killed mid-score:", killed)
    try:
        seconds = _finished(job)
        losses = executor_losses(job.events())
        print(f"score with a worker lost: {seconds:.0f}s;", losses)
        assert killed["executor"] in losses["removed"]
        assert "[score] done" in job.output()
        _assert_one_prediction_per_key(spark, deployment.warehouse)
        # `deltaml score` ingests and validates what the source gained first (here nothing: both reused).
        assert _steps(_runs_since(deployment.client(), since)) == {
            "pipeline": "FINISHED",
            "ingest": "FINISHED",
            "validate": "FINISHED",
            "score": "FINISHED",
        }
    finally:
        deployment.cluster.replace_worker(killed["worker"])


def test_training_completes_when_a_worker_dies_mid_fit(deployment: Deployment, spark: SparkSession) -> None:
    client = deployment.client()
    before = _versions(client)
    since = int(time.time() * 1000)
    job = deployment.submit("run_pipeline.py", *_step_args(TRAINING_STEPS), name="training-worker-loss")
    job.wait_for_output("[fit] started", timeout=300)
    # Killed while a single-node trial (a one-task job on an executor, "deltaml FAMILY trial: PARAMS") runs.
    killed = _kill_worker_when(deployment, job, lambda jobs: any(" trial: " in d for d in jobs))
    print("killed mid-fit:", killed)
    try:
        seconds = _finished(job)
        losses = executor_losses(job.events())
        print(f"training with a worker lost: {seconds:.0f}s;", losses)
        assert killed["executor"] in losses["removed"]
        runs = _runs_since(client, since)
        assert _steps(runs) == dict.fromkeys(("pipeline", *TRAINING_STEPS), "FINISHED")
        assert _versions(client) == [*before, before[-1] + 1]
        trials = client.search_runs(
            [runs[0].info.experiment_id],
            filter_string=f"attributes.start_time >= {since} and tags.`deltaml.step` = 'trial'",
        )
        assert len(trials) == 8 and {t.info.status for t in trials} == {"FINISHED"}
        assert all(math.isfinite(t.data.metrics["validation_auc_roc"]) for t in trials)
        print(
            "single-node trials (run, worker):",
            sorted(
                (t.info.run_name, deployment.cluster.worker_of(t.data.tags["deltaml.trial_workdir"]))
                for t in trials
                if t.data.tags["deltaml.family"] == "hist_gradient_boosting"
            ),
        )
        _assert_one_prediction_per_key(spark, deployment.warehouse)
    finally:
        deployment.cluster.replace_worker(killed["worker"])


def test_losing_the_mlflow_server_fails_the_run_cleanly_and_a_rerun_succeeds(deployment: Deployment) -> None:
    client = deployment.client()
    versions = _versions(client)
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    # MLflow's client retries a refused request 7 times with exponential backoff (about 4 minutes);
    # a short retry budget makes the failure show in seconds.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    since = int(time.time() * 1000)
    job = deployment.submit("run_pipeline.py", *_step_args(TRAINING_STEPS), name="training-mlflow-loss", **quick)
    job.wait_for_output("[fit] started", timeout=300)
    deployment.server.stop()
    stopped_at = job.seconds
    code = job.wait(600)
    errors = [line for line in job.output().splitlines() if line.startswith("deltaml: error:")]
    print(f"server stopped at {stopped_at:.0f}s; exit {code} at {job.seconds:.0f}s:", errors)
    assert code != 0
    assert len(errors) == 1, job.output()[-6000:]
    assert "Traceback" not in job.output()
    assert errors[0].startswith("deltaml: error: step 'fit' failed: MlflowException: API request to ")

    deployment.server.start()  # the same port, store and artifact folder
    # The failed attempt's runs could not be marked FAILED while the server was down: they stay RUNNING.
    attempt = _steps(_runs_since(client, since))
    print("runs of the failed attempt after the restart:", attempt)
    assert attempt == {"pipeline": "RUNNING", "fit": "RUNNING"}
    assert _versions(client) == versions
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion
    since = int(time.time() * 1000)
    rerun = deployment.submit("run_pipeline.py", *_step_args(TRAINING_STEPS), name="training-after-mlflow-restart")
    print(f"rerun after the restart: {_finished(rerun):.0f}s")
    assert _steps(_runs_since(client, since)) == dict.fromkeys(("pipeline", *TRAINING_STEPS), "FINISHED")
    assert _versions(client) == [*versions, versions[-1] + 1]
