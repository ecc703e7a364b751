"""Step caching: a step whose config, code and input versions match a finished earlier run is skipped.

A step's *key* hashes what is known before it runs: its config sections, the resolved paths of
the tables it uses, deltaml's code, and what else it depends on outside Delta (the source files'
listing for ingest, the run that produced the MLflow model or metrics it consumes, the model
version that scores). A finished run of the step with the same key is reused when

- every Delta table it read is still at the version it read (new data in a source table is a new
  version, so exactly the steps downstream of it run again), and
- every Delta table it wrote is still at the version it wrote: nobody has written since, so what
  the next step reads is what that run produced.

The run records both lists (from :mod:`deltaml.io.recording`) and the outputs later steps take from it
in the ``deltaml.cache`` tag. The step's *fingerprint* is the key plus the versions it read.
Because a re-run step produces a new run (and new table versions), the steps after it never
match their old runs; a run killed midway therefore resumes at its first unfinished step.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib.resources.abc import Traversable
from typing import Any

from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from deltaml._version import __version__
from deltaml.columns import TAG_KEY, TAG_RECORD
from deltaml.errors import one_line
from deltaml.io.catalog import table_commits
from deltaml.io.recording import TableAccess
from deltaml.io.registry import version_exists
from deltaml.io.tracking import finished_step_runs
from deltaml.steps.base import Step, StepContext
from deltaml.steps.outputs import StepOutput

LOG = logging.getLogger(__name__)


MAX_TAG = 8000  # MLflow's limit on a tag value


MAX_COMMITS = 50  # history read back to the recorded version; a table further ahead counts as changed


# Delta operations that change no rows: a table moved on only by these still holds what a run read or wrote.
MAINTENANCE = frozenset(
    {"OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES", "UNSET TBLPROPERTIES", "UPGRADE PROTOCOL"}
)


@dataclass(frozen=True)
class CacheRecord:
    """What a finished step run read and wrote, and the outputs a later step takes from it."""

    inputs: list[TableAccess]
    outputs: list[TableAccess]
    restore: dict[str, Any] = field(default_factory=dict)
    registered: int | None = None  # the model version the step registered, if it did
    # Keys of ``restore`` that may be dropped when the record would exceed MLflow's tag limit.
    droppable: tuple[str, ...] = ()
    # Per table checked for staleness: the commit time of the version read or written, so a table
    # deleted and recreated (its versions start again at 0) is not mistaken for the one recorded.
    committed: dict[str, str] = field(default_factory=dict)

    def to_tag(self) -> str:
        """The record as a JSON tag value (its droppable outputs are left out if it would exceed MLflow's limit)."""
        data = {
            "inputs": [[a.table, a.version, a.as_of] for a in self.inputs],
            "outputs": [[a.table, a.version] for a in self.outputs],
            "restore": self.restore,
            "registered": self.registered,
            "committed": self.committed,
        }
        text = json.dumps(data, sort_keys=True, default=str)
        if len(text) > MAX_TAG:
            data["restore"] = {k: v for k, v in self.restore.items() if k not in self.droppable}
            text = json.dumps(data, sort_keys=True, default=str)
        return text

    @classmethod
    def from_tag(cls, text: str) -> CacheRecord:
        """Parse :meth:`to_tag`'s output."""
        data = json.loads(text)
        return cls(
            inputs=[TableAccess(t, int(v), "read", bool(rest and rest[0])) for t, v, *rest in data["inputs"]],
            outputs=[TableAccess(t, int(v), "write") for t, v in data["outputs"]],
            restore=data.get("restore") or {},
            registered=data.get("registered"),
            committed=data.get("committed") or {},
        )

    @property
    def accesses(self) -> list[TableAccess]:
        """The record as the lineage accesses it came from."""
        return [*self.inputs, *self.outputs]

    def checked(self) -> dict[str, tuple[str, int]]:
        """The tables whose versions must not have moved: table -> ("input"|"output", version)."""
        written = {a.table for a in self.outputs}
        checked: dict[str, tuple[str, int]] = {}
        for access in self.inputs:
            # A version the step chose to read (a pin) stays what it read whatever the table's latest is;
            # a table the step also wrote is checked as an output.
            if access.table not in written and not access.as_of:
                checked[access.table] = ("input", max(access.version, checked.get(access.table, ("", -1))[1]))
        for access in self.outputs:
            checked[access.table] = ("output", max(access.version, checked.get(access.table, ("", -1))[1]))
        return checked


@dataclass(frozen=True)
class Reusable:
    """An earlier run whose outputs a step can reuse."""

    run_id: str
    record: CacheRecord
    metrics: dict[str, float]


@cache
def code_version() -> str:
    """deltaml's version and a digest of its source, so an edited (editable) install is a different code."""
    digest = hashlib.sha256(__version__.encode())
    try:
        for name, source in _package_sources(importlib.resources.files("deltaml"), ""):
            digest.update(name.encode() + b"\0" + source)
    except OSError as exc:  # a packaging that hides its sources: the version alone
        LOG.debug("deltaml sources unreadable for the cache key: %s", exc)
    return f"{__version__}+{digest.hexdigest()[:12]}"


def _package_sources(folder: Traversable, prefix: str) -> Iterator[tuple[str, bytes]]:
    """Every ``.py`` file under ``folder`` (its subpackages too), by relative path, in a stable order."""
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.is_dir() and entry.name != "__pycache__":
            yield from _package_sources(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".py"):
            yield f"{prefix}{entry.name}", entry.read_bytes()


def step_tables(ctx: StepContext, step: Step) -> list[str]:
    """The resolved tables a step reads or writes by configuration (a moved table is a different step)."""
    return [str(table) for table in step.tables(ctx) if table is not None]


def step_key(ctx: StepContext, step: Step, extra: dict[str, Any]) -> str:
    """The hash of everything a step depends on that is known before it runs (see the module doc).

    The config is taken with ``${VAR}`` values resolved (the logged effective config shows only their
    templates), so a changed environment variable is a changed step; only the hash is kept.
    """
    resolved = ctx.loaded.pipeline.model_dump(mode="json", by_alias=True)
    sections = {path: _lookup(resolved, path) for path in step.sections}
    payload = {
        "step": step.name,
        "config": sections,
        "tables": step_tables(ctx, step),
        "code": code_version(),
        **extra,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def fingerprint(key: str, inputs: list[TableAccess]) -> str:
    """The key plus the Delta versions read: equal fingerprints mean the same step on the same data."""
    read = sorted(f"{a.table}@{a.version}" for a in inputs)
    return hashlib.sha256(json.dumps([key, read]).encode()).hexdigest()[:32]


def _lookup(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def find_reusable(
    spark: SparkSession, client: MlflowClient, experiment_id: str, pipeline: str, name: str, key: str, model: str
) -> tuple[Reusable | None, str]:
    """The newest finished run of the step with this key whose inputs and outputs are unchanged.

    Returns:
        The run (or None) and, when a run with this key exists but is stale, why (for the log).
    """
    runs = finished_step_runs(client, experiment_id, pipeline, name, {TAG_KEY: key})
    if not runs:
        return None, ""  # a first run, or a changed config or code: nothing to say per step
    reason = ""
    for run in runs:
        record = CacheRecord.from_tag(run.data.tags[TAG_RECORD])
        reason = _changed(spark, client, record, model)
        if not reason:
            metrics = {k: v for k, v in run.data.metrics.items() if k != "seconds"}
            return Reusable(run.info.run_id, record, metrics), ""
    return None, reason


def _changed(spark: SparkSession, client: MlflowClient, record: CacheRecord, model: str) -> str:
    """Why a recorded run's outputs cannot be reused ("" when they can).

    A table may have moved on only by commits that change no data (OPTIMIZE, VACUUM, table properties).
    """
    for table, (kind, version) in record.checked().items():
        commits = table_commits(spark, table, version, MAX_COMMITS)
        was = f"was read at {version}" if kind == "input" else f"not the version {version} that run wrote"
        if commits is None:
            return f"{kind} {table} no longer exists"
        latest = commits[0][0]
        recorded = next((c for c in commits if c[0] == version), None)
        if recorded is None:
            return f"{kind} {table} is at version {latest}, {was}"
        if table in record.committed and recorded[1] != record.committed[table]:
            return f"{kind} {table} was recreated since that run (its version {version} is another commit)"
        changes = [c for c in commits if c[0] > version and c[2] not in MAINTENANCE]
        if changes:
            return f"{kind} {table} is at version {latest}, {was}"
    # A registered version that was deleted is gone; a manual promote or rollback since is the user's
    # choice and does not make the same model worth registering again.
    if record.registered is not None and not version_exists(client, model, record.registered):
        return f"{model} version {record.registered}, which that run registered, no longer exists"
    return ""


def commit_times(spark: SparkSession, record: CacheRecord) -> dict[str, str]:
    """The commit time of each checked table's recorded version (tables that moved on meanwhile are left out).

    Failing to read a history costs a warning: that table is then checked by its version alone.
    """
    times = {}
    for table, (_, version) in record.checked().items():
        try:
            commits = table_commits(spark, table, version, MAX_COMMITS)
        except Exception as exc:  # a missing time only weakens the check to versions
            LOG.warning("no commit time for %s v%d: %s", table, version, one_line(exc, 200))
            continue
        found = next((c for c in commits or [] if c[0] == version), None)
        if found is not None:
            times[table] = found[1]
    return times


def record_of(accesses: list[TableAccess], output: StepOutput | None) -> CacheRecord:
    """What to store for a finished step: its lineage and the typed output later steps take from it."""
    written = {(a.table, a.version) for a in accesses if a.kind == "write"}
    return CacheRecord(
        inputs=[a for a in accesses if a.kind == "read" and (a.table, a.version) not in written],
        outputs=[a for a in accesses if a.kind == "write"],
        restore=output.to_json() if output is not None else {},
        registered=output.registered_version() if output is not None else None,
        droppable=output.droppable if output is not None else (),
    )
