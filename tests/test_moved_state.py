"""A moved or copied embedded MLflow store follows its folder; a store whose artifacts live elsewhere is left alone."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from deltaml.io.moved_state import MOVES_TAG, follow_moved_store, relocated, state_moves


def _store(folder: Path, artifacts: Path) -> tuple[str, str]:
    """An MLflow SQLite store in ``folder`` with one experiment whose artifacts go to ``artifacts``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mlartifacts").mkdir(exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment = MlflowClient(tracking_uri=uri).create_experiment("e", artifact_location=artifacts.as_uri())
    return uri, experiment


def test_a_copied_store_points_its_artifacts_into_the_copy_and_records_the_move(tmp_path: Path) -> None:
    original = tmp_path / "original"
    _, experiment = _store(original, original / "mlartifacts")
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    uri = f"sqlite:///{copy / 'mlflow.db'}"

    assert follow_moved_store(uri) > 0
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(experiment).artifact_location == (copy / "mlartifacts").as_uri()
    assert state_moves(client, experiment) == [(str(original), str(copy))]
    assert follow_moved_store(uri) == 0  # idempotent
    assert relocated({"t": [f"{original}/warehouse/x", "other"]}, state_moves(client, experiment)) == {
        "t": [f"{copy}/warehouse/x", "other"]
    }


def test_a_store_whose_artifacts_live_in_another_folder_is_left_alone(tmp_path: Path) -> None:
    # MLFLOW_TRACKING_URI=sqlite:///elsewhere/mlflow.db beside an mlflow server's ./mlartifacts, while deltaml
    # keeps this pipeline's artifacts in its state folder (which has no store of its own).
    state = tmp_path / "state"
    (state / "mlartifacts").mkdir(parents=True)
    uri, experiment = _store(tmp_path / "elsewhere", state / "mlartifacts")

    assert follow_moved_store(uri) == 0
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment(experiment).artifact_location == (state / "mlartifacts").as_uri()
    assert MOVES_TAG not in client.get_experiment(experiment).tags
