"""Where MLflow logs: config first, then a user's MLFLOW_TRACKING_URI, then the embedded store."""

from __future__ import annotations

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
