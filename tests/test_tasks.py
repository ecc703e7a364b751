"""The task and metric registry: the lists each part of deltaml takes from it, and metric directions."""

from __future__ import annotations

import pytest

from deltaml.tasks import TASKS, gate_metrics, improvement, live_metrics, loss_of, metric, tuning_metrics


def test_what_tuning_the_gate_and_monitoring_may_use_per_task() -> None:
    assert {t: tuning_metrics(t) for t in TASKS} == {
        "binary": ("auc_roc", "auc_pr", "accuracy", "log_loss"),
        "multiclass": ("f1", "accuracy", "log_loss"),
        "regression": ("rmse", "mae", "r2"),
    }
    # Weighted F1 is a ratio of per-class counts: no per-row bootstrap for the gate.
    assert gate_metrics("multiclass") == ("accuracy", "log_loss")
    # A multiclass predictions table keeps predicted labels, not probabilities.
    assert live_metrics("multiclass") == ("accuracy",)
    assert live_metrics("binary") == gate_metrics("binary") == tuning_metrics("binary")


def test_directions_make_losses_and_improvements_agree() -> None:
    assert loss_of("auc_roc", 0.8) == -0.8 and loss_of("rmse", 3.0) == 3.0
    assert improvement("auc_roc", 0.85, 0.80) == pytest.approx(0.05)
    assert improvement("log_loss", 0.30, 0.35) == pytest.approx(0.05)  # lower is better: 0.30 improves
    assert improvement("r2", 0.5, 0.6) == pytest.approx(-0.1)
    for name in ("auc_roc", "auc_pr", "f1", "accuracy", "r2"):
        assert metric(name).larger_is_better
    for name in ("log_loss", "rmse", "mae"):
        assert not metric(name).larger_is_better


def test_an_unknown_metric_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown metric 'auc'; metrics: auc_roc, auc_pr, f1"):
        metric("auc")
