"""The lineage hook: which Delta tables a step read and wrote, at which versions, and pinned reads.

The catalog reports every read and write here; the runner collects them per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    pass


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
    if accesses is None:
        return
    access = TableAccess(table, int(version), kind, as_of)
    for i, seen in enumerate(accesses):
        if seen == access:
            if seen.as_of and not as_of:  # also read as the latest: a newer version makes it stale
                accesses[i] = access
            return
    accesses.append(access)


def step_lineage(accesses: list[TableAccess]) -> dict[str, list[dict[str, Any]]]:
    """A step's inputs and outputs as JSON-ready lists (reading back a version the step wrote is not an input)."""
    written = {(a.table, a.version) for a in accesses if a.kind == "write"}
    return {
        "inputs": [a.as_dict() for a in accesses if a.kind == "read" and (a.table, a.version) not in written],
        "outputs": [a.as_dict() for a in accesses if a.kind == "write"],
    }
