"""The pipeline's steps, one module each, in the order they run.

Each module declares its step once (``STEP``, a :class:`deltaml.steps.base.Step`); everything the
runner, the cache and the command line know about steps comes from :data:`STEPS`. Adding a step
means adding its module, its output type in :mod:`deltaml.steps.outputs` if a later step consumes
it, and its place in :data:`STEPS`.
"""

from __future__ import annotations

from deltaml.steps import evaluate, fit, ingest, monitor, register, score, split, validate
from deltaml.steps.base import Step

STEPS: tuple[Step, ...] = (
    ingest.STEP,
    validate.STEP,
    split.STEP,
    fit.STEP,
    evaluate.STEP,
    register.STEP,
    score.STEP,
    monitor.STEP,
)
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
# What ``deltaml run`` runs without ``--step``: training and scoring; monitoring is scheduled on its own.
DEFAULT_STEPS: tuple[str, ...] = tuple(step.name for step in STEPS if step.phase != "monitor")


def step_named(name: str) -> Step:
    """The declaration of the step called ``name``.

    Raises:
        KeyError: No step has that name.
    """
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(f"no step named {name!r}; steps: {', '.join(STEP_NAMES)}")
