"""What steps hand to later steps: one small frozen dataclass per producing step.

An output is JSON-able: a skipped (cached) step's output is stored on its MLflow run and
restored from there, so the steps after it see what they would have seen had it run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self


@dataclass(frozen=True)
class StepOutput:
    """Base of the typed outputs."""

    # The output lives in MLflow (a logged model, metrics, a model version), not in a Delta table: a step
    # that consumes it is keyed on the run that produced it (a Delta input is keyed on its version).
    in_mlflow: ClassVar[bool] = False
    # Fields dropped first when the output is too large to store on the run (they must have defaults).
    droppable: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        """The output as a JSON-ready mapping."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        """Rebuild an output from :meth:`to_json`'s mapping (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def registered_version(self) -> int | None:
        """The model version this output registered, if any (a cached run is stale once it is deleted)."""
        return None


@dataclass(frozen=True)
class ValidateOutput(StepOutput):
    """The clean table's version validate wrote, and its newest row time when freshness is checked."""

    clean_version: int
    freshness_newest: str | None = None


@dataclass(frozen=True)
class SplitOutput(StepOutput):
    """The split table's version split wrote."""

    split_version: int


@dataclass(frozen=True)
class FitOutput(StepOutput):
    """The fitted model (its MLflow URI), the split version it was fitted on, its classes and leaderboard."""

    in_mlflow: ClassVar[bool] = True
    droppable: ClassVar[tuple[str, ...]] = ("leaderboard",)

    model_uri: str
    split_version: int
    classes: list[str] | None = None
    leaderboard: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class EvaluateOutput(StepOutput):
    """The metrics evaluate logged (``test_*``, ``validation_*``) for the model it evaluated."""

    in_mlflow: ClassVar[bool] = True

    model_uri: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class RegisterOutput(StepOutput):
    """The model version register created, and whether the gate promoted it to @champion."""

    in_mlflow: ClassVar[bool] = True

    model_version: int
    promoted: bool

    def registered_version(self) -> int | None:
        """The version registered."""
        return self.model_version
