"""Lineage: every Delta read and write of a step, with its version, and the manifest each MLflow run carries.

:mod:`deltaml.catalog` reports each read (the version read) and each write (the version it
committed) to the recording that :func:`recording` opens around a step; the runner logs them as
the step run's ``lineage.json`` and gathers them, with the effective config, its hash, the seed,
package versions and the git sha, into the pipeline run's ``manifest.json``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

MANIFEST_ARTIFACT = "manifest.json"
STEP_LINEAGE_ARTIFACT = "lineage.json"


@dataclass(frozen=True)
class TableAccess:
    """One Delta table read at a version, or written to produce one.

    ``as_of`` marks a read of a version the caller chose (a pin, a recorded version) rather than the
    latest: that read stays valid when the table moves on.
    """

    table: str
    version: int
    kind: Literal["read", "write"]
    as_of: bool = field(default=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The access as ``lineage.json`` lists it."""
        return {"table": self.table, "version": self.version, "kind": self.kind}


_CURRENT: ContextVar[list[TableAccess] | None] = ContextVar("deltaml_lineage", default=None)
_PINS: ContextVar[dict[str, int] | None] = ContextVar("deltaml_pins", default=None)


@contextmanager
def pinned_versions(pins: dict[str, int]) -> Iterator[None]:
    """Within this context, a read of a table named here (``str(table)``) without a version reads the pinned one."""
    token = _PINS.set(dict(pins))
    try:
        yield
    finally:
        _PINS.reset(token)


def pinned(table: str) -> int | None:
    """The version :func:`pinned_versions` pins ``table`` to, if any."""
    pins = _PINS.get()
    return None if pins is None else pins.get(table)


@contextmanager
def recording() -> Iterator[list[TableAccess]]:
    """Collect the reads and writes made in this context (this thread; worker threads are not followed)."""
    accesses: list[TableAccess] = []
    token = _CURRENT.set(accesses)
    try:
        yield accesses
    finally:
        _CURRENT.reset(token)


def record(table: str, version: int, kind: Literal["read", "write"], as_of: bool = False) -> None:
    """Note a read or a write in the current recording (once per table, version and kind); no-op outside one."""
    accesses = _CURRENT.get()
    access = TableAccess(table, int(version), kind, as_of)
    if accesses is not None and access not in accesses:
        accesses.append(access)


def step_lineage(accesses: list[TableAccess]) -> dict[str, list[dict[str, Any]]]:
    """A step's inputs and outputs as JSON-ready lists (reading back a version the step wrote is not an input)."""
    written = {(a.table, a.version) for a in accesses if a.kind == "write"}
    return {
        "inputs": [a.as_dict() for a in accesses if a.kind == "read" and (a.table, a.version) not in written],
        "outputs": [a.as_dict() for a in accesses if a.kind == "write"],
    }


def build_manifest(
    steps: dict[str, list[TableAccess]],
    *,
    config_hash: str,
    effective_config: dict[str, Any],
    seed: int,
    packages: dict[str, str],
    git_sha: str,
    state_path: str = "",
) -> dict[str, Any]:
    """The pipeline run's manifest: per step its tables and versions, and what produced them."""
    return {
        "version": 1,
        "config_hash": config_hash,
        "state_path": state_path,
        "seed": seed,
        "git_sha": git_sha,
        "packages": packages,
        "steps": {name: step_lineage(accesses) for name, accesses in steps.items()},
        "config": effective_config,
    }


def model_lineage(client: Any, name: str, version: int) -> dict[str, Any]:
    """The manifest of the pipeline run that trained a registered model version.

    Args:
        client: An ``mlflow.tracking.MlflowClient`` bound to the registry.
        name: The registered model.
        version: Its version.

    Raises:
        StepInputError: The version does not exist, or its run carries no manifest (trained before deltaml wrote one).
    """
    import json
    import tempfile
    from pathlib import Path

    from mlflow.exceptions import MlflowException

    from deltaml.errors import StepInputError

    try:
        found = client.get_model_version(name, str(version))
        fit_run = client.get_run(found.run_id)
        pipeline_run = fit_run.data.tags.get("mlflow.parentRunId", found.run_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(pipeline_run, MANIFEST_ARTIFACT, tmp)
            manifest: dict[str, Any] = json.loads(Path(path).read_text())
    except (MlflowException, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StepInputError(
            f"lineage: {name} version {version} has no manifest ({first[:200]}); versions trained before deltaml "
            "recorded manifests have only their lineage tags (`mlflow` UI, model version tags)"
        ) from None
    return {"model": name, "version": version, "pipeline_run": pipeline_run, **manifest}


def render_lineage(lineage: dict[str, Any]) -> str:
    """A model version's lineage as text: what it was trained on, by what, and then its config."""
    import yaml

    lines = [
        f"{lineage['model']} version {lineage['version']}: trained by pipeline run {lineage['pipeline_run']}",
        f"  config hash {lineage['config_hash']}, seed {lineage['seed']}, git sha {lineage['git_sha'] or 'unknown'}",
        "  packages: " + ", ".join(f"{k} {v}" for k, v in sorted(lineage["packages"].items())),
    ]
    for step, tables in lineage["steps"].items():
        reads = ", ".join(f"{t['table']} v{t['version']}" for t in tables["inputs"]) or "-"
        writes = ", ".join(f"{t['table']} v{t['version']}" for t in tables["outputs"]) or "-"
        lines.append(f"  {step}: read {reads}; wrote {writes}")
    lines.append("config:")
    lines += ["  " + line for line in yaml.safe_dump(lineage["config"], sort_keys=False).splitlines()]
    return "\n".join(lines)
