"""Hyperopt tuning of Spark ML families: TPE proposes on the driver, trials run concurrently as Spark jobs.

Spark ML cannot train inside a ``SparkTrials`` task, so the search is an ask-and-tell loop over
Hyperopt's own ``Trials``: TPE suggests up to ``parallelism`` points, each point is trained on
its own driver thread (each fit is an ordinary set of Spark jobs, so the executors share the
concurrent trials), the results are told back, and TPE suggests the next batch. With the same
seed, data and parallelism the sequence of proposed points is the same.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, STATUS_FAIL, STATUS_OK, Trials, tpe
from hyperopt.base import Domain, spec_from_misc
from hyperopt.fmin import space_eval
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from deltaml.search_space import build_space, params_from_sample

LOG = logging.getLogger(__name__)

# Metrics where larger is better; the search minimises the loss, so these are negated.
_HIGHER_IS_BETTER = {"auc_roc", "auc_pr", "accuracy"}


def loss_of(metric: str, value: float) -> float:
    """The loss Hyperopt minimises for a metric value."""
    return -value if metric in _HIGHER_IS_BETTER else value


@dataclass
class TrialOutcome:
    """One trial: the params tried, the validation metrics, and the fitted model if it succeeded."""

    family: str
    number: int
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    model: Any = None

    @property
    def ok(self) -> bool:
        """Whether the trial finished with a metric."""
        return self.error is None


@dataclass
class FamilyResult:
    """All trials of one family and its best one."""

    family: str
    trials: list[TrialOutcome]
    best: TrialOutcome | None
    seconds: float
    stopped: str


@dataclass(frozen=True)
class SearchBudget:
    """How much searching a family gets."""

    max_evals: int
    parallelism: int
    deadline: float  # time.monotonic() after which no new batch starts
    early_stop_rounds: int
    seed: int


class TrialLogger:
    """Records every trial as a nested MLflow run under the tuning run, from any thread."""

    def __init__(self, parent_run_id: str | None, experiment_id: str | None) -> None:
        self._client = MlflowClient() if parent_run_id else None
        self._parent = parent_run_id
        self._experiment = experiment_id
        self._lock = threading.Lock()

    def log(self, trial: TrialOutcome, metric: str) -> None:
        """Create a finished child run with the trial's params, metrics, duration and status."""
        if self._client is None or self._parent is None or self._experiment is None:
            return
        tags = {
            "mlflow.parentRunId": self._parent,
            "mlflow.runName": f"{trial.family}-{trial.number:03d}",
            "deltaml.step": "trial",
            "deltaml.family": trial.family,
        }
        if trial.error:
            tags["deltaml.error"] = trial.error[:4000]
        with self._lock:  # the tracking store is shared; one writer at a time keeps SQLite happy
            run = self._client.create_run(self._experiment, tags=tags)
            now = int(time.time() * 1000)
            self._client.log_batch(
                run.info.run_id,
                metrics=[
                    *(Metric(f"validation_{k}", v, now, 0) for k, v in trial.metrics.items() if math.isfinite(v)),
                    Metric("seconds", trial.seconds, now, 0),
                ],
                params=[Param(k, str(v)[:6000]) for k, v in sorted(trial.params.items())],
                tags=[RunTag("deltaml.trial_metric", metric)],
            )
            self._client.set_terminated(run.info.run_id, "FINISHED" if trial.ok else "FAILED")


def search_family(
    family: str,
    search: dict[str, Any],
    fixed: dict[str, Any],
    train_trial: Callable[[dict[str, Any]], tuple[Any, dict[str, float]]],
    *,
    metric: str,
    budget: SearchBudget,
    on_trial: Callable[[TrialOutcome, TrialOutcome | None], None] = lambda trial, best: None,
) -> FamilyResult:
    """Tune one family: TPE proposals, ``budget.parallelism`` trials at a time on driver threads.

    Args:
        family: The family name (labels the search space and the trials).
        search: The family's search space as written in YAML (may be empty: one trial of ``fixed``).
        fixed: Params every trial uses; a searched param of the same name wins.
        train_trial: Fits a model with the given params and returns it with its validation metrics.
            Called from several threads at once; an exception fails only that trial.
        metric: The validation metric to optimise (a key of what ``train_trial`` returns).
        budget: Trial count, concurrency, deadline, early stopping and seed.
        on_trial: Called after every trial with the trial and the family's best so far.

    Returns:
        Every trial, the best one (None if all failed), the wall time and why the search stopped.
    """
    started = time.monotonic()
    if not search:
        outcome = _run_trial(family, 1, dict(fixed), train_trial)
        only = outcome if outcome.ok and metric in outcome.metrics else None
        if only is None:
            outcome.model = None
        on_trial(outcome, only)
        return FamilyResult(family, [outcome], only, time.monotonic() - started, "single trial (no search space)")
    max_evals = budget.max_evals
    space = build_space(search, family)
    domain = Domain(lambda _: 0.0, space)
    trials = Trials()
    rng = np.random.default_rng(budget.seed)
    # TPE starts modelling after a third of the budget (between 2 and 20 random trials first).
    suggest = partial(tpe.suggest, n_startup_jobs=max(2, min(20, max_evals // 3)))
    outcomes: list[TrialOutcome] = []
    best: TrialOutcome | None = None
    since_best = 0
    stopped = "max_evals"
    with ThreadPoolExecutor(max_workers=budget.parallelism, thread_name_prefix=f"trial-{family}") as pool:
        while len(outcomes) < max_evals:
            if time.monotonic() >= budget.deadline:
                stopped = "timeout"
                break
            if budget.early_stop_rounds and since_best >= budget.early_stop_rounds:
                stopped = f"no improvement in {budget.early_stop_rounds} trials"
                break
            batch = min(budget.parallelism, max_evals - len(outcomes))
            docs = []
            for _ in range(batch):
                # One suggestion per call: TPE proposes the best point for the next id given what is known.
                new_ids = trials.new_trial_ids(1)
                docs.extend(suggest(new_ids, domain, trials, int(rng.integers(2**31 - 1))))
            points = [
                {**fixed, **params_from_sample(space_eval(space, spec_from_misc(d["misc"])), search)} for d in docs
            ]
            numbers = range(len(outcomes) + 1, len(outcomes) + 1 + len(points))
            futures = [pool.submit(_run_trial, family, n, p, train_trial) for n, p in zip(numbers, points, strict=True)]
            for doc, future in zip(docs, futures, strict=True):
                outcome = future.result()
                outcomes.append(outcome)
                if outcome.ok and metric in outcome.metrics:
                    doc["result"] = {"loss": loss_of(metric, outcome.metrics[metric]), "status": STATUS_OK}
                    doc["state"] = JOB_STATE_DONE
                else:
                    doc["result"] = {"status": STATUS_FAIL}
                    doc["state"] = JOB_STATE_ERROR
                improved = (
                    outcome.ok
                    and metric in outcome.metrics
                    and (
                        best is None or loss_of(metric, outcome.metrics[metric]) < loss_of(metric, best.metrics[metric])
                    )
                )
                if improved:
                    if best is not None:
                        best.model = None  # keep only the best model of the family in memory
                    best = outcome
                    since_best = 0
                else:
                    outcome.model = None
                    since_best += 1
                on_trial(outcome, best)
            trials.insert_trial_docs(docs)
            trials.refresh()
    return FamilyResult(family, outcomes, best, time.monotonic() - started, stopped)


def _run_trial(
    family: str,
    number: int,
    params: dict[str, Any],
    train_trial: Callable[[dict[str, Any]], tuple[Any, dict[str, float]]],
) -> TrialOutcome:
    started = time.monotonic()
    try:
        model, metrics = train_trial(params)
    except Exception as exc:  # a failed trial is recorded, and the search goes on
        first = (str(exc).strip().splitlines() or [""])[0]
        LOG.warning("trial %s-%03d failed: %s: %s", family, number, type(exc).__name__, first)
        return TrialOutcome(
            family, number, params, seconds=time.monotonic() - started, error=f"{type(exc).__name__}: {first}"
        )
    return TrialOutcome(family, number, params, metrics, time.monotonic() - started, model=model)
