"""The tuning loop: reproducible TPE proposals, concurrent trials, failures, budgets and nested MLflow runs."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from deltaml.columns import TAG_ATTEMPT_KEY
from deltaml.errors import SessionLostError
from deltaml.ml.tuning import SearchBudget, TrialLogger, TrialOutcome, died_attempt_trials, search_family
from deltaml.steps.fit import _log_leaderboard, leaderboard_rows

SPACE = {"regParam": {"loguniform": [1e-5, 1.0]}, "maxIter": {"quniform": [10, 50, 10]}}


# Both engines pass every test of the search loop: only their proposals differ.
ENGINES = ["hyperopt", "optuna"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _budget(engine: str, **changes: Any) -> SearchBudget:
    values: dict[str, Any] = {
        "max_evals": 12,
        "parallelism": 2,
        "deadline": time.monotonic() + 600,
        "early_stop_rounds": 0,
        "seed": 3,
        "engine": engine,
    }
    return SearchBudget(**{**values, **changes})


def _bowl(params: dict[str, Any]) -> tuple[str, dict[str, float]]:
    """A validation 'AUC' that peaks at regParam = 1e-2, whatever maxIter is."""
    return "model", {"auc_roc": 1.0 - (math.log10(params["regParam"]) + 2) ** 2 / 100}


def test_same_seed_proposes_the_same_trials_and_finds_the_peak(engine: str) -> None:
    first = search_family("lr", SPACE, {"tol": 1e-6}, _bowl, metric="auc_roc", budget=_budget(engine, max_evals=30))
    again = search_family("lr", SPACE, {"tol": 1e-6}, _bowl, metric="auc_roc", budget=_budget(engine, max_evals=30))
    other = search_family(
        "lr", SPACE, {"tol": 1e-6}, _bowl, metric="auc_roc", budget=_budget(engine, max_evals=30, seed=4)
    )

    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert [t.params for t in first.trials] != [t.params for t in other.trials]
    assert len(first.trials) == 30 and first.stopped == "max_evals"
    assert all(t.params["tol"] == 1e-6 and isinstance(t.params["maxIter"], int) for t in first.trials)
    assert first.best is not None and first.best.model == "model"
    assert abs(math.log10(first.best.params["regParam"]) + 2) < 0.5
    # Only the best trial keeps its model in memory.
    assert sum(t.model is not None for t in first.trials) == 1


def test_finishing_order_does_not_change_the_proposals_and_a_free_thread_does_not_wait(engine: str) -> None:
    jitter = random.Random(5)
    lock = threading.Lock()

    def uneven(params: dict[str, Any]) -> tuple[str, dict[str, float]]:
        with lock:
            pause = jitter.uniform(0.0, 0.05)
        time.sleep(pause)
        return _bowl(params)

    calm = search_family("lr", SPACE, {}, _bowl, metric="auc_roc", budget=_budget(engine, max_evals=12))
    shaken = search_family("lr", SPACE, {}, uneven, metric="auc_roc", budget=_budget(engine, max_evals=12))
    assert [t.params for t in calm.trials] == [t.params for t in shaken.trials]

    started: dict[int, float] = {}
    finished: dict[int, float] = {}

    def second_is_slow(params: dict[str, Any]) -> tuple[None, dict[str, float]]:
        with lock:
            number = len(started) + 1
            started[number] = time.monotonic()
        time.sleep(0.6 if number == 2 else 0.05)
        finished[number] = time.monotonic()
        return None, {"auc_roc": 0.5}

    search_family("lr", SPACE, {}, second_is_slow, metric="auc_roc", budget=_budget(engine, max_evals=4))
    # Trial 3 needs only trial 1's result, so it starts while trial 2 is still running.
    assert started[3] < finished[2]


def test_trials_run_concurrently_up_to_the_parallelism(engine: str) -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def slow(params: dict[str, Any]) -> tuple[None, dict[str, float]]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.2)
        with lock:
            running -= 1
        return None, {"auc_roc": 0.5}

    result = search_family("lr", SPACE, {}, slow, metric="auc_roc", budget=_budget(engine, max_evals=6, parallelism=3))
    assert len(result.trials) == 6
    assert peak == 3


def test_a_failed_trial_is_recorded_and_the_search_goes_on(engine: str) -> None:
    calls = 0

    def flaky(params: dict[str, Any]) -> tuple[None, dict[str, float]]:
        nonlocal calls
        calls += 1
        if params["regParam"] > 0.01:
            raise ValueError("diverged\nsecond line")
        return None, {"auc_roc": 0.7}

    result = search_family("lr", SPACE, {}, flaky, metric="auc_roc", budget=_budget(engine, max_evals=10))
    failed = [t for t in result.trials if not t.ok]
    assert len(result.trials) == calls == 10
    assert failed and all(t.error == "ValueError: diverged" for t in failed)
    assert result.best is not None and result.best.ok


def test_early_stopping_and_deadline_end_the_search(engine: str) -> None:
    flat = search_family(
        "lr",
        SPACE,
        {},
        lambda p: (None, {"auc_roc": 0.5}),
        metric="auc_roc",
        budget=_budget(engine, early_stop_rounds=3),
    )
    # The first trial is the best. Trial k is proposed from trials 1..k-2 (parallelism 2): trial 5
    # still starts (trials 2 and 3 gave no improvement), trial 6 would follow three without one.
    assert len(flat.trials) == 5 and flat.stopped == "no improvement in 3 trials"

    def sleepy(params: dict[str, Any]) -> tuple[None, dict[str, float]]:
        time.sleep(0.3)
        return None, {"auc_roc": 0.5}

    late = search_family(
        "lr",
        SPACE,
        {},
        sleepy,
        metric="auc_roc",
        budget=_budget(engine, deadline=time.monotonic() + 0.5, parallelism=1),
    )
    assert late.stopped == "timeout" and 1 <= len(late.trials) < 12


def test_the_leaderboard_says_how_many_trials_of_the_budget_ran(caplog: pytest.LogCaptureFixture, engine: str) -> None:
    """Before, a search cut by the timeout or early stopping showed "3 trial(s)", as if 3 were the budget."""

    def sleepy(params: dict[str, Any]) -> tuple[None, dict[str, float]]:
        time.sleep(0.3)
        return None, {"auc_roc": 0.5}

    late = search_family(
        "lr",
        SPACE,
        {},
        sleepy,
        metric="auc_roc",
        budget=_budget(engine, deadline=time.monotonic() + 0.5, parallelism=1),
    )
    whole = search_family("gbt", SPACE, {}, _bowl, metric="auc_roc", budget=_budget(engine, max_evals=4))
    assert (late.max_evals, whole.max_evals, len(whole.trials)) == (12, 4, 4)
    with caplog.at_level(logging.INFO, logger="deltaml.steps.fit"):
        _log_leaderboard([late, whole], "auc_roc")
    lines = caplog.text
    assert f"{len(late.trials)} of 12 trials (timeout)" in lines, lines
    assert "gbt" in lines and "4 trial(s)" in lines and "of 4" not in lines, lines
    assert [row["max_evals"] for row in leaderboard_rows([late, whole], "auc_roc")] == [4, 12]
    # A family whose search the timeout cut before its first trial: nothing failed (before: "every trial failed").
    never = search_family(
        "lightgbm", SPACE, {}, _bowl, metric="auc_roc", budget=_budget(engine, deadline=time.monotonic() - 1)
    )
    assert (never.trials, never.stopped) == ([], "timeout")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deltaml.steps.fit"):
        _log_leaderboard([whole, never], "auc_roc")
    assert "lightgbm               no trial ran (timeout)" in caplog.text and "failed" not in caplog.text


def test_a_huge_trial_budget_builds_nothing_per_possible_trial(engine: str) -> None:
    # Seeds for every possible trial were built up front: 3 million took 15 s and 117 MB, and with
    # max_evals 1e9 the timeout never applied (~38 GB). Now memory follows the trials run, not the budget.
    tracemalloc.start()
    try:
        cut = search_family(
            "lr",
            SPACE,
            {},
            _bowl,
            metric="auc_roc",
            budget=_budget(engine, max_evals=10_000_000, deadline=time.monotonic() + 1.0, parallelism=1),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert cut.stopped == "timeout" and len(cut.trials) >= 1
    assert peak < 50 * 1024**2, f"peak {peak / 1024**2:.0f} MB"


def test_log_loss_is_minimised_and_an_empty_space_is_one_trial(engine: str) -> None:
    result = search_family(
        "lr",
        {"regParam": {"uniform": [0.0, 1.0]}},
        {},
        lambda p: (None, {"log_loss": abs(p["regParam"] - 0.3)}),
        metric="log_loss",
        budget=_budget(engine, max_evals=20),
    )
    assert result.best is not None and abs(result.best.params["regParam"] - 0.3) < 0.1
    single = search_family("lr", {}, {"regParam": 0.1}, _bowl, metric="auc_roc", budget=_budget(engine))
    assert [t.params for t in single.trials] == [{"regParam": 0.1}]


def test_every_trial_is_a_nested_mlflow_run(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.set_experiment("tuning-test")
    with mlflow.start_run() as parent:
        logger = TrialLogger(parent.info.run_id, experiment.experiment_id)
        logger.log(TrialOutcome("gbt", 1, {"maxDepth": 3}, {"auc_roc": 0.81}, seconds=1.5), "auc_roc")
        logger.log(TrialOutcome("gbt", 2, {"maxDepth": 9}, seconds=0.2, error="ValueError: boom"), "auc_roc")
    runs = MlflowClient().search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        order_by=["attributes.run_name"],
    )
    assert [r.info.run_name for r in runs] == ["gbt-001", "gbt-002"]
    assert [r.info.status for r in runs] == ["FINISHED", "FAILED"]
    assert runs[0].data.params == {"maxDepth": "3"}
    assert runs[0].data.metrics == pytest.approx({"validation_auc_roc": 0.81, "seconds": 1.5})
    assert runs[1].data.tags["deltaml.error"] == "ValueError: boom"


def test_a_search_that_died_resumes_from_its_logged_trials(tmp_path: Path, engine: str) -> None:
    """Before, a fit that died after minutes of trials started its search again from trial 1."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.set_experiment("resume-test")
    whole = search_family("lr", SPACE, {}, _bowl, metric="auc_roc", budget=_budget(engine, max_evals=10, seed=7))
    calls: list[dict[str, Any]] = []

    def dies_at_the_sixth(params: dict[str, Any]) -> tuple[str, dict[str, float]]:
        calls.append(params)
        if len(calls) == 6:
            raise SessionLostError("the JVM is gone")
        return _bowl(params)

    def logged_search(train: Any) -> tuple[str, Any]:
        with mlflow.start_run(tags={TAG_ATTEMPT_KEY: "key-1"}) as run:
            logger = TrialLogger(run.info.run_id, experiment.experiment_id)
            found = died_attempt_trials(run.info.run_id, experiment.experiment_id, "key-1")
            logged = {t.number: t for t in found[1]} if found else None
            result = search_family(
                "lr",
                SPACE,
                {},
                train,
                metric="auc_roc",
                budget=_budget(engine, max_evals=10, seed=7),
                on_trial=lambda trial, best: logger.log(trial, "auc_roc"),
                logged=logged,
            )
            return run.info.run_id, result

    with pytest.raises(SessionLostError):
        logged_search(dies_at_the_sixth)
    died = MlflowClient().search_runs([experiment.experiment_id], filter_string="attributes.status = 'FAILED'")
    assert len(died) == 1
    first_run = died[0].info.run_id
    calls.clear()

    def counted(params: dict[str, Any]) -> tuple[str, dict[str, float]]:
        calls.append(params)
        return _bowl(params)

    second_run, resumed = logged_search(counted)

    # The same ten trials as a search that never died, only the ones not logged were trained (and the best again
    # if it was a logged one), and the logged ones say where they came from.
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    assert [t.metrics for t in resumed.trials] == [t.metrics for t in whole.trials]
    taken = [t for t in resumed.trials if t.resumed_from == first_run]
    assert [t.number for t in taken] == [1, 2, 3, 4, 5]  # trial 6 died; trials are logged in order
    assert len(calls) == 10 - len(taken) + (1 if resumed.best in taken else 0)
    assert resumed.best is not None and resumed.best.model == "model"
    children = MlflowClient().search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{second_run}'"
    )
    assert len(children) == 10
    assert sum(c.data.tags.get("deltaml.resumed_from") == first_run for c in children) == len(taken)


def test_every_metric_has_a_direction() -> None:
    from deltaml.tasks import TASKS, loss_of, tuning_metrics

    lower = {"log_loss", "rmse", "mae"}
    for task in TASKS:
        for metric in tuning_metrics(task):
            assert loss_of(metric, 1.0) == (1.0 if metric in lower else -1.0), metric


def test_a_trial_without_a_finite_metric_is_a_failed_trial(engine: str) -> None:
    def one_class(params: dict[str, Any]) -> tuple[str, dict[str, float]]:
        # What a validation split with a single class gives: no AUC, or NaN.
        return "model", ({"rows": 10.0} if params["regParam"] > 0.01 else {"rows": 10.0, "auc_roc": math.nan})

    result = search_family("lr", SPACE, {}, one_class, metric="auc_roc", budget=_budget(engine, max_evals=4))
    assert result.best is None and len(result.trials) == 4
    assert all(t.error and t.error.startswith("validation auc_roc is undefined on these rows") for t in result.trials)
    assert all(t.model is None for t in result.trials)
