"""A state folder that was moved or copied (a restore from backup, a renamed checkout) keeps working.

Delta tables store their data files relative to the table, so they move freely. The embedded MLflow
store (``<state>/mlflow.db``) does not: it records every artifact location (experiments, runs, model
versions, logged models) as an absolute ``file://`` URI under ``<state>/mlartifacts``. After a move
those point at a folder that is gone, so loading a registered model fails; after a copy they point at
the original, so the copy would read and write another folder's artifacts.

When such a store is opened, its locations are pointed at the ``mlartifacts`` folder beside it, in
one SQLite transaction, and the move is recorded on each experiment (:data:`MOVES_TAG`). Paths in
records (manifests, the training table a version was fitted on) are history and stay as written;
:func:`relocated` reads them through the recorded moves.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import urllib.parse
from contextlib import closing
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

LOG = logging.getLogger(__name__)

ARTIFACTS = "mlartifacts"
MOVES_TAG = "deltaml.state_moves"

# Where MLflow's database schema keeps an artifact location (logged_models from MLflow 3 on).
_LOCATIONS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)

Moves = list[tuple[str, str]]


def _state_of(artifact_root: str) -> str:
    """The state folder of an ``file://.../mlartifacts`` root."""
    return str(Path(urllib.parse.unquote(urllib.parse.urlparse(artifact_root).path)).parent)


def _was_a_state_folder(folder: Path) -> bool:
    """Whether artifacts recorded under ``folder/mlartifacts`` came with this store: the folder is gone (moved)
    or holds a store of its own (copied). A folder that is there without one keeps artifacts for another
    store (a ``sqlite:`` tracking URI outside the state folder), which are left where they are."""
    return not folder.exists() or (folder / "mlflow.db").is_file()


def follow_moved_store(uri: str) -> int:
    """Point a moved or copied embedded store's artifact locations at the ``mlartifacts`` beside it.

    Only a SQLite store with an ``mlartifacts`` folder beside it is touched, and only locations under
    another folder's ``mlartifacts`` (what deltaml created for the embedded store). Idempotent, so
    two processes opening the store at once both leave it right.

    Returns:
        How many locations were changed (0 when the store is where it was created).
    """
    if not uri.startswith("sqlite:///"):
        return 0
    database = Path(uri.removeprefix("sqlite:///"))
    here = database.parent / ARTIFACTS
    if not (database.is_file() and here.is_dir()):
        return 0
    new = here.resolve().as_uri()
    changed = 0
    with closing(sqlite3.connect(database, timeout=60)) as connection, connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        olds = {
            location.rstrip("/")
            for (location,) in connection.execute("SELECT artifact_location FROM experiments")
            if location
            and location.startswith("file://")
            and location.rstrip("/").endswith("/" + ARTIFACTS)
            and location.rstrip("/") != new
            and _was_a_state_folder(Path(_state_of(location.rstrip("/"))))
        }
        for old in sorted(olds):
            moved = (_state_of(old), _state_of(new))
            for table, column in _LOCATIONS:
                if table not in tables:
                    continue
                cursor = connection.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                    f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                    (new, len(old) + 1, old, len(old) + 1, old + "/"),
                )
                changed += cursor.rowcount
            _record_move(connection, moved)
            LOG.info(
                "the state folder was moved or copied from %s to %s: MLflow's artifact locations now point into %s",
                *moved,
                here,
            )
    return changed


def _record_move(connection: sqlite3.Connection, moved: tuple[str, str]) -> None:
    """Append the move to every experiment's :data:`MOVES_TAG` (a JSON list of [from, to] pairs)."""
    for (experiment_id,) in connection.execute("SELECT experiment_id FROM experiments").fetchall():
        row = connection.execute(
            "SELECT value FROM experiment_tags WHERE experiment_id = ? AND key = ?", (experiment_id, MOVES_TAG)
        ).fetchone()
        moves = [*json.loads(row[0]), list(moved)] if row else [list(moved)]
        connection.execute(
            "DELETE FROM experiment_tags WHERE experiment_id = ? AND key = ?", (experiment_id, MOVES_TAG)
        )
        connection.execute(
            "INSERT INTO experiment_tags (key, value, experiment_id) VALUES (?, ?, ?)",
            (MOVES_TAG, json.dumps(moves), experiment_id),
        )


def state_moves(client: MlflowClient, experiment_id: str) -> Moves:
    """The moves of the experiment's state folder, oldest first (none for a store that never moved)."""
    text = client.get_experiment(experiment_id).tags.get(MOVES_TAG)
    return [(str(old), str(new)) for old, new in json.loads(text)] if text else []


def relocated(value: Any, moves: Moves) -> Any:
    """A recorded value with every path under a moved state folder rewritten to where it is now.

    Strings in dicts and lists too (a manifest); each move applies in turn, so a path recorded
    before two moves follows both.
    """
    if isinstance(value, dict):
        return {k: relocated(v, moves) for k, v in value.items()}
    if isinstance(value, list):
        return [relocated(v, moves) for v in value]
    if isinstance(value, str):
        for old, new in moves:
            if value == old or value.startswith(old + "/"):
                value = new + value[len(old) :]
    return value
