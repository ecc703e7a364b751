"""Where MLflow logs: config first, then a user's MLFLOW_TRACKING_URI, then the embedded store."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from deltaml.config.loader import load_config
from deltaml.config.schema import PipelineConfig
from deltaml.io.tracking import configure_tracking, resolve_tracking_uri
from tests.conftest import TELCO_CONF


def _config(state: Path, *overrides: str) -> PipelineConfig:
    return load_config(TELCO_CONF, overrides=[f"state_dir={state}", *overrides]).pipeline


def test_precedence_config_then_environment_then_embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(_config(tmp_path)) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(_config(tmp_path)) == "http://127.0.0.1:5999"
    explicit = _config(tmp_path, "mlflow.tracking_uri=sqlite:////elsewhere/m.db")
    assert resolve_tracking_uri(explicit) == "sqlite:////elsewhere/m.db"


def test_a_users_environment_uri_stays_in_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_uri = f"sqlite:///{tmp_path / 'user' / 'mlflow.db'}"
    (tmp_path / "user").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", user_uri)
    configure_tracking(_config(tmp_path / "a"))
    configure_tracking(_config(tmp_path / "b"))
    assert mlflow.get_tracking_uri() == user_uri
    assert resolve_tracking_uri(_config(tmp_path / "c")) == user_uri


def test_a_config_uri_does_not_leak_into_the_next_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    explicit = f"sqlite:///{tmp_path / 'explicit.db'}"
    configure_tracking(_config(tmp_path / "a", f"mlflow.tracking_uri={explicit}"))
    assert mlflow.get_tracking_uri() == explicit
    configure_tracking(_config(tmp_path / "b"))
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"


def test_a_second_pipeline_gets_its_own_embedded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = _config(tmp_path / "a"), _config(tmp_path / "b")
    configure_tracking(first)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    configure_tracking(second)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    experiment = mlflow.get_experiment_by_name("deltaml-telco-churn")
    assert experiment is not None
    assert experiment.artifact_location == (tmp_path / "b" / "mlartifacts").as_uri()


KILLED_MID_RUN = """
import sys, time
import mlflow
from deltaml.io.tracking import tracked_run
mlflow.set_tracking_uri(sys.argv[1])
mlflow.set_experiment("killed")
with tracked_run(run_name="pipeline") as parent:
    with tracked_run(run_name="fit", nested=True) as child:
        print(parent.info.run_id, child.info.run_id, flush=True)
        time.sleep(600)
"""


def test_runs_of_a_killed_process_are_closed_as_killed_by_the_next_run(tmp_path: Path) -> None:
    """kill -9 leaves a run RUNNING for ever; the next run on the host marks it and its children KILLED."""
    import signal
    import socket
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from deltaml.columns import TAG_PROCESS
    from deltaml.io.tracking import close_runs_of_dead_processes, this_process

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    child = subprocess.Popen([sys.executable, "-c", KILLED_MID_RUN, uri], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    parent_id, fit_id = child.stdout.readline().split()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("killed")
    assert experiment is not None
    # Still alive: this process's run; unknowable: another host's run. Neither may be touched.
    mine = client.create_run(experiment.experiment_id, tags={TAG_PROCESS: this_process()})
    other_host = client.create_run(experiment.experiment_id, tags={TAG_PROCESS: "elsewhere:1:1"})
    assert client.get_run(parent_id).info.status == "RUNNING"
    assert client.get_run(fit_id).info.status == "RUNNING"

    closed = close_runs_of_dead_processes(client, experiment.experiment_id)

    assert sorted(closed) == sorted([parent_id, fit_id])
    assert client.get_run(parent_id).info.status == "KILLED"
    assert client.get_run(fit_id).info.status == "KILLED"
    assert client.get_run(parent_id).data.tags[TAG_PROCESS].startswith(f"{socket.gethostname()}:{child.pid}:")
    assert client.get_run(mine.info.run_id).info.status == "RUNNING"
    assert client.get_run(other_host.info.run_id).info.status == "RUNNING"
    assert close_runs_of_dead_processes(client, experiment.experiment_id) == []
