"""The three learning tasks and the metrics that measure them: one registry for every layer.

Ground layer (imports nothing from deltaml): the config checks names against it, tuning and the
gate take each metric's direction from it, executor-side code its log-loss clipping. How a metric
is computed lives with its data: in Spark in :mod:`deltaml.ml.metrics`, in numpy for single-node
trials in :mod:`deltaml.ml.single_node`, per row for the gate in :mod:`deltaml.quality.gate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = ("binary", "multiclass", "regression")

# Predicted probabilities are clipped to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS] before the logarithm, as
# scikit-learn did and Spark's evaluator does (its ``eps``), so one confident mistake stays finite.
LOG_LOSS_EPS = 1e-15


@dataclass(frozen=True)
class Metric:
    """One metric: its name in configs and MLflow, how people write it, which tasks it measures.

    Attributes:
        name: The key in configs and MLflow (``test_<name>``).
        label: How a report or a log line writes it.
        tasks: The tasks it measures.
        larger_is_better: Its direction; tuning minimises the loss :func:`loss_of` derives from it.
        per_row: An average of per-row terms (or a ranking), so the gate's paired bootstrap can
            compare two models on the same rows; weighted F1 (a ratio of per-class counts) is not.
        needs_probabilities: Computed from predicted probabilities, not from predicted labels alone.
    """

    name: str
    label: str
    tasks: tuple[Task, ...]
    larger_is_better: bool
    per_row: bool = True
    needs_probabilities: bool = False


# In order of preference: a task's first metric is its default for tuning, the gate and monitoring.
METRICS: tuple[Metric, ...] = (
    Metric("auc_roc", "AUC-ROC", ("binary",), larger_is_better=True, needs_probabilities=True),
    Metric("auc_pr", "AUC-PR", ("binary",), larger_is_better=True, needs_probabilities=True),
    Metric("f1", "F1 (weighted)", ("multiclass",), larger_is_better=True, per_row=False),
    Metric("accuracy", "accuracy", ("binary", "multiclass"), larger_is_better=True),
    Metric("log_loss", "log-loss", ("binary", "multiclass"), larger_is_better=False, needs_probabilities=True),
    Metric("rmse", "RMSE", ("regression",), larger_is_better=False),
    Metric("mae", "MAE", ("regression",), larger_is_better=False),
    Metric("r2", "R²", ("regression",), larger_is_better=True),
)
_BY_NAME = {m.name: m for m in METRICS}


def metric(name: str) -> Metric:
    """The metric called ``name``.

    Raises:
        KeyError: No metric has that name (the message lists those that do).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; metrics: {', '.join(_BY_NAME)}") from None


def tuning_metrics(task: str) -> tuple[str, ...]:
    """The metrics tuning can optimise for a task, the default first."""
    return tuple(m.name for m in METRICS if task in m.tasks)


def gate_metrics(task: str) -> tuple[str, ...]:
    """The metrics the champion/challenger gate can compare for a task, the default first."""
    return tuple(m.name for m in METRICS if task in m.tasks and m.per_row)


def live_metrics(task: str) -> tuple[str, ...]:
    """The metrics monitoring can compute from the predictions table once labels land, the default first.

    A multiclass predictions table keeps the predicted label, not the class probabilities.
    """
    return tuple(
        m.name
        for m in METRICS
        if task in m.tasks and m.per_row and not (task == "multiclass" and m.needs_probabilities)
    )


def loss_of(name: str, value: float) -> float:
    """The value as a loss to minimise: negated when larger is better."""
    return -value if metric(name).larger_is_better else value


def improvement(name: str, new: float, old: float) -> float:
    """How much better ``new`` is than ``old`` (positive: better), whatever the metric's direction."""
    return new - old if metric(name).larger_is_better else old - new
