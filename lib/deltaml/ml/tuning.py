"""Tuning: TPE (Hyperopt's or Optuna's) proposes on the driver, trials run concurrently from driver threads.

Spark ML cannot train inside a ``SparkTrials`` task, so the search is an ask-and-tell loop: each
proposed point is trained on its own driver thread (a Spark ML fit is an ordinary set of Spark
jobs; a single-node fit is one task on an executor, see :mod:`deltaml.ml.single_node`), so the
executors share the concurrent trials. Trial ``k`` is proposed from the results of trials
``1..k - parallelism``, by a sampler seeded for trial ``k``: a thread starts the next trial as soon
as that history is complete, and with the same seed, data and parallelism the sequence of
proposed points is the same whichever trial finishes first. The engine (``tuning.engine``) only
proposes: trials, MLflow runs, budgets, early stopping and resuming are the same for both.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal, Protocol

import numpy as np

from deltaml.columns import (
    TAG_ATTEMPT_KEY,
    TAG_ERROR,
    TAG_FAMILY,
    TAG_RESUMED_FROM,
    TAG_STEP,
    TAG_TRIAL_HOST,
    TAG_TRIAL_METRIC,
    TAG_TRIAL_PID,
    TAG_TRIAL_TASK_ATTEMPT,
    TAG_TRIAL_WORKDIR,
    TRIAL_STEP,
)
from deltaml.config.search_space import build_space, params_from_sample, suggest_sample
from deltaml.errors import SessionLostError, one_line
from deltaml.io.session import session_for_threads
from deltaml.io.tracking import died_attempt_children, log_finished_run
from deltaml.tasks import loss_of

LOG = logging.getLogger(__name__)


# Metrics where larger is better; the search minimises the loss, so these are negated.


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
    # The fit run whose logged trial this is, when a resumed search took it instead of training again.
    resumed_from: str | None = None

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
    stopped: str  # "max_evals", "timeout", "no improvement in N trials" or "single trial (no search space)"
    max_evals: int = 1  # the trial budget it had


Engine = Literal["hyperopt", "optuna"]


@dataclass(frozen=True)
class SearchBudget:
    """How much searching a family gets, and which engine proposes its trials."""

    max_evals: int
    parallelism: int
    deadline: float  # time.monotonic() after which no new batch starts
    early_stop_rounds: int
    seed: int
    engine: Engine = "hyperopt"


@dataclass(frozen=True)
class TuningProgress:
    """Where a fit's search is, after a trial: what a terminal's live progress line shows.

    It rides on the trial's log record (``extra={"progress": ...}``): :mod:`deltaml.report.console`
    rewrites one line in place on a terminal, and elsewhere the record prints as its plain line.
    """

    done: int  # trials finished, all families
    total: int  # the trial budget of all families (fewer run if early stopping or the timeout ends a search)
    family: str
    family_done: int
    family_total: int
    metric: str
    best: float | None  # the best validation metric so far, all families
    best_family: str | None
    elapsed: float
    left: float | None  # estimated seconds until the last trial ends (None before the first)

    def text(self) -> str:
        """The live line, e.g. ``tuning 7/48 trials (gbt 3/12), best validation auc_roc 0.8462 (lightgbm), 45s
        elapsed, about 3m 10s left``."""
        best = (
            f"best validation {self.metric} {self.best:.4f} ({self.best_family})"
            if self.best is not None
            else "no finished trial yet"
        )
        left = f", about {duration_text(self.left)} left" if self.left is not None else ""
        return (
            f"tuning {self.done}/{self.total} trials ({self.family} {self.family_done}/{self.family_total}), "
            f"{best}, {duration_text(self.elapsed)} elapsed{left}"
        )


def duration_text(seconds: float) -> str:
    """``45s``, ``3m 10s``, ``2h 05m``."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


class TrialLogger:
    """Records every trial as a nested MLflow run under the tuning run, from any thread."""

    def __init__(self, parent_run_id: str | None, experiment_id: str | None) -> None:
        self._parent = parent_run_id
        self._experiment = experiment_id
        self._lock = threading.Lock()

    def log(self, trial: TrialOutcome, metric: str) -> None:
        """Create a finished child run with the trial's params, metrics, duration and status."""
        if self._parent is None or self._experiment is None:
            return
        tags = {
            "mlflow.parentRunId": self._parent,
            "mlflow.runName": f"{trial.family}-{trial.number:03d}",
            TAG_STEP: TRIAL_STEP,
            TAG_FAMILY: trial.family,
        }
        if trial.error:
            tags[TAG_ERROR] = trial.error[:4000]
        if trial.resumed_from:
            tags[TAG_RESUMED_FROM] = trial.resumed_from
        # A single-node trial knows where it ran (host and Python worker of its executor task).
        info = next((getattr(s, "trial_info", None) for s in getattr(trial.model, "stages", [])), None)
        if info is not None:
            tags[TAG_TRIAL_HOST] = str(info.host)
            tags[TAG_TRIAL_PID] = str(info.pid)
            tags[TAG_TRIAL_TASK_ATTEMPT] = str(info.task_attempt_id)
            tags[TAG_TRIAL_WORKDIR] = str(info.workdir)
        metrics = {f"validation_{k}": v for k, v in trial.metrics.items() if math.isfinite(v)}
        params = logged_params(trial.params)
        with self._lock:  # the tracking store is shared; one writer at a time keeps SQLite happy
            log_finished_run(
                self._experiment,
                {**tags, TAG_TRIAL_METRIC: metric},
                {**metrics, "seconds": trial.seconds},
                params,
                ok=trial.ok,
            )


def logged_params(params: dict[str, Any]) -> dict[str, str]:
    """A trial's params as MLflow keeps them (strings): what a resumed search compares its proposals with."""
    return {k: str(v)[:6000] for k, v in params.items()}


def died_attempt_trials(current_run_id: str, experiment_id: str, key: str) -> tuple[str, list[TrialOutcome]] | None:
    """The trials an earlier fit with the same cache key logged before it died (FAILED or KILLED), newest attempt.

    Returns:
        That fit run's id and its finished trials (params as logged, metrics without ``validation_``), or None.
    """
    found = died_attempt_children(current_run_id, experiment_id, TAG_ATTEMPT_KEY, key, TRIAL_STEP)
    if found is None:
        return None
    attempt, runs = found
    trials = []
    for run in runs:
        family, _, number = run.data.tags.get("mlflow.runName", "").rpartition("-")
        if not number.isdigit() or family != run.data.tags.get(TAG_FAMILY):
            continue
        metrics = {k.removeprefix("validation_"): v for k, v in run.data.metrics.items() if k.startswith("validation_")}
        seconds = run.data.metrics.get("seconds", 0.0)
        trials.append(TrialOutcome(family, int(number), dict(run.data.params), metrics, seconds, resumed_from=attempt))
    return attempt, trials


def _taken(outcome: TrialOutcome) -> TrialOutcome:
    return outcome


def search_family(
    family: str,
    search: dict[str, Any],
    fixed: dict[str, Any],
    train_trial: Callable[[dict[str, Any]], tuple[Any, dict[str, float]]],
    *,
    metric: str,
    budget: SearchBudget,
    on_trial: Callable[[TrialOutcome, TrialOutcome | None], None] = lambda trial, best: None,
    logged: dict[int, TrialOutcome] | None = None,
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
        logged: Trials of an earlier attempt at the same search that died (same config, data and seed), by
            number. A proposal equal to the logged trial of its number takes that outcome instead of training:
            the proposals are a function of the seed and the earlier outcomes, so the resumed search proposes
            what the first would have. The best trial's model is trained again if it was a logged one.

    Returns:
        Every trial, the best one (None if all failed), the wall time and why the search stopped.
    """
    started = time.monotonic()
    if not search:
        outcome = _require_metric(_run_trial(family, 1, dict(fixed), train_trial), metric)
        only = outcome if outcome.ok and metric in outcome.metrics else None
        if only is None:
            outcome.model = None
        on_trial(outcome, only)
        return FamilyResult(family, [outcome], only, time.monotonic() - started, "single trial (no search space)")
    max_evals = budget.max_evals
    proposer = _proposer(budget.engine, search, family, startup_trials(max_evals))
    rng = np.random.default_rng(budget.seed)
    # One seed per trial, drawn in trial order as trials start (the same values as drawing all
    # first): a budget of a billion trials with a one-minute timeout must not build a billion seeds.
    seeds: list[int] = []

    def seed_of(number: int) -> int:
        while len(seeds) < number:
            seeds.append(int(rng.integers(2**31 - 1)))
        return seeds[number - 1]

    lag = budget.parallelism
    done: dict[int, TrialOutcome] = {}
    outcomes: list[TrialOutcome] = []
    best: TrialOutcome | None = None
    stopped = "max_evals"
    running: dict[Future[TrialOutcome], int] = {}
    number = 1  # the next trial to start
    with ThreadPoolExecutor(
        max_workers=budget.parallelism, thread_name_prefix=f"trial-{family}", initializer=session_for_threads()
    ) as pool:
        while True:
            # Trial k is proposed from the results of trials 1..k-parallelism exactly, whatever
            # finished first, so the same seed gives the same sequence; a free thread starts the
            # next trial as soon as that history is complete (no barrier per batch).
            while (
                stopped == "max_evals"
                and number <= max_evals
                and len(running) < budget.parallelism
                and all(j in done for j in range(1, number - lag + 1))
            ):
                reason = _stop_reason(budget, outcomes[: max(0, number - lag)], metric)
                if reason:
                    stopped = reason
                    break
                sample = proposer.propose(number, max(0, number - lag), seed_of(number))
                point = {**fixed, **params_from_sample(sample, search)}
                earlier = (logged or {}).get(number)
                if earlier is not None and logged_params(earlier.params) == logged_params(point):
                    taken = replace(earlier, params=point, model=None)
                    running[pool.submit(_taken, taken)] = number
                else:
                    running[pool.submit(_run_trial, family, number, point, train_trial)] = number
                number += 1
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                outcome = _require_metric(future.result(), metric)
                done[running.pop(future)] = outcome
                ok = outcome.ok and metric in outcome.metrics
                proposer.tell(outcome.number, loss_of(metric, outcome.metrics[metric]) if ok else None)
            # Outcomes are taken in trial order: the best, early stopping and the callback do not
            # depend on which thread finished first.
            while len(outcomes) + 1 in done:
                outcome = done[len(outcomes) + 1]
                outcomes.append(outcome)
                improved = _better(outcome, best, metric)
                previous, best = best, (outcome if improved else best)
                on_trial(outcome, best)
                # Keep only the best model of the family in memory.
                if improved and previous is not None:
                    previous.model = None
                elif not improved:
                    outcome.model = None
    if best is not None and best.resumed_from is not None:  # a logged trial won: its model is trained again
        retrained = _run_trial(family, best.number, best.params, train_trial)
        if not retrained.ok:
            raise RuntimeError(f"{family}: retraining logged trial {best.number} failed: {retrained.error}")
        best.model = retrained.model
    return FamilyResult(family, outcomes, best, time.monotonic() - started, stopped, max_evals)


def _require_metric(outcome: TrialOutcome, metric: str) -> TrialOutcome:
    """A trial without a finite value of the metric (one class in validation, say) counts as failed."""
    if outcome.ok and not math.isfinite(outcome.metrics.get(metric, math.nan)):
        outcome.error = (
            f"validation {metric} is undefined on these rows (e.g. the validation split has a single class); "
            "check the split and the label"
        )
        outcome.model = None
        LOG.warning("trial %s-%03d failed: %s", outcome.family, outcome.number, outcome.error)
    return outcome


def _stop_reason(budget: SearchBudget, history: list[TrialOutcome], metric: str) -> str | None:
    """Why no further trial starts, judged on the trials a new proposal would see; None to go on."""
    if time.monotonic() >= budget.deadline:
        return "timeout"
    if budget.early_stop_rounds:
        since_best, best = 0, None
        for outcome in history:
            if _better(outcome, best, metric):
                best, since_best = outcome, 0
            else:
                since_best += 1
        if since_best >= budget.early_stop_rounds:
            return f"no improvement in {budget.early_stop_rounds} trials"
    return None


def _better(outcome: TrialOutcome, best: TrialOutcome | None, metric: str) -> bool:
    """Whether a trial beats the best so far (a failed trial never does)."""
    if not outcome.ok or metric not in outcome.metrics:
        return False
    return best is None or loss_of(metric, outcome.metrics[metric]) < loss_of(metric, best.metrics[metric])


def startup_trials(max_evals: int) -> int:
    """Random trials before TPE starts modelling: a third of the budget, between 2 and 20."""
    return max(2, min(20, max_evals // 3))


class _Proposer(Protocol):
    def propose(self, number: int, known: int, seed: int) -> dict[str, Any]:
        """Trial ``number``'s point (shaped like ``space_eval``'s), from the outcomes of trials ``1..known``."""

    def tell(self, number: int, loss: float | None) -> None:
        """Trial ``number``'s loss, or None if it failed."""


def _proposer(engine: Engine, search: dict[str, Any], family: str, startup: int) -> _Proposer:
    if engine == "optuna":
        return _OptunaProposer(search, family, startup)
    return _HyperoptProposer(search, family, startup)


class _HyperoptProposer:
    """Hyperopt's TPE through its public API: ``Domain``, ``Trials`` documents, ``tpe.suggest``, ``space_eval``."""

    def __init__(self, search: dict[str, Any], family: str, startup: int) -> None:
        from hyperopt import Domain, tpe

        self._space = build_space(search, family)
        self._domain = Domain(lambda _: 0.0, self._space)
        self._suggest = partial(tpe.suggest, n_startup_jobs=startup)
        self._docs: dict[int, dict[str, Any]] = {}

    def propose(self, number: int, known: int, seed: int) -> dict[str, Any]:
        from hyperopt import Trials, space_eval

        history = Trials()
        if known:
            history.insert_trial_docs([self._docs[j] for j in range(1, known + 1)])
            history.refresh()
        (doc,) = self._suggest([number], self._domain, history, seed)
        self._docs[number] = doc
        # A document's misc.vals holds each label's drawn value (an empty list for a label not drawn).
        drawn = {label: values[0] for label, values in doc["misc"]["vals"].items() if values}
        return dict(space_eval(self._space, drawn))

    def tell(self, number: int, loss: float | None) -> None:
        from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR, STATUS_FAIL, STATUS_OK

        doc = self._docs[number]
        if loss is None:
            doc["result"], doc["state"] = {"status": STATUS_FAIL}, JOB_STATE_ERROR
        else:
            doc["result"], doc["state"] = {"loss": loss, "status": STATUS_OK}, JOB_STATE_DONE


class _OptunaProposer:
    """Optuna's TPE through its ask-and-tell API: a study of the known trials, a seeded sampler, one ``ask``."""

    def __init__(self, search: dict[str, Any], family: str, startup: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per proposal
        self._search, self._family, self._startup = search, family, startup
        self._asked: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        self._losses: dict[int, float | None] = {}

    def propose(self, number: int, known: int, seed: int) -> dict[str, Any]:
        import optuna
        from optuna.trial import TrialState, create_trial

        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._startup)
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.add_trials(
            [
                create_trial(
                    params=self._asked[j][0],
                    distributions=self._asked[j][1],
                    value=self._losses[j],
                    state=TrialState.FAIL if self._losses[j] is None else TrialState.COMPLETE,
                )
                for j in range(1, known + 1)
            ]
        )
        trial = study.ask()
        sample = suggest_sample(trial, self._search, self._family)
        self._asked[number] = (dict(trial.params), dict(trial.distributions))
        return sample

    def tell(self, number: int, loss: float | None) -> None:
        self._losses[number] = loss


def _run_trial(
    family: str,
    number: int,
    params: dict[str, Any],
    train_trial: Callable[[dict[str, Any]], tuple[Any, dict[str, float]]],
) -> TrialOutcome:
    started = time.monotonic()
    try:
        model, metrics = train_trial(params)
    except SessionLostError:  # every later trial would fail too: the search stops
        raise
    except Exception as exc:  # a failed trial is recorded, and the search goes on
        first = one_line(str(exc), 100_000)
        LOG.warning("trial %s-%03d failed: %s: %s", family, number, type(exc).__name__, first)
        LOG.debug("trial %s-%03d failed", family, number, exc_info=True)
        return TrialOutcome(
            family, number, params, seconds=time.monotonic() - started, error=f"{type(exc).__name__}: {first}"
        )
    return TrialOutcome(family, number, params, metrics, time.monotonic() - started, model=model)
