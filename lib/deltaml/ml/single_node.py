"""Single-node model families (scikit-learn, LightGBM): tuning trials fitted on executors, and their Spark stage.

Spark ML estimators are distributed; a single-node estimator fits in one Python process on
numpy arrays. For tuning, :func:`ship_data` collects the train and validation vectors once
(sampled down to ``max_rows``) and broadcasts them; every :func:`executor_trial` is then a
one-task Spark job whose task reads the broadcast (unpickled once per Python worker, never
re-sent per trial), fits the estimator with native threads capped to the task's cores,
computes the validation metrics and returns the pickled estimator. Concurrent trials on
driver threads are concurrent tasks on the executors' cores.

Over Spark Connect (serverless, standard access mode) there are no broadcasts and no RDDs: the
same sampled arrays go to the server once as a cached DataFrame, and each trial is a one-task
``mapInArrow`` over it that rebuilds the arrays in its Python worker, fits and returns one row
(the pickled result). The rows, their order and the fit are the same, so are the metrics.

A fitted estimator becomes a :class:`SingleNodeModel`, an ordinary Spark ML ``Transformer``
whose params hold the pickled estimator (base64), so it saves and loads with the
``PipelineModel`` and scores with ``PipelineModel.transform`` (an Arrow ``pandas_udf``).
Saved models record ``deltaml.single_node.SingleNodeModel`` (the module lived there before the
layering; ``deltaml/single_node.py`` re-exports it): keep that path importable.

Executors' Python workers import this module (the trial tasks and the scoring UDF), so it imports
only the ground layer (column names, metric clipping, exceptions).
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import logging
import math
import os
import pickle
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml.base import Transformer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasFeaturesCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.functions import pandas_udf
from pyspark.sql.types import ArrayType, BinaryType, DoubleType, StructField, StructType

from deltaml.errors import SetupError, StepFailedError, StepInputError, one_line
from deltaml.tasks import LOG_LOSS_EPS, TASKS

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark import Broadcast
from deltaml.columns import FEATURES_COL, LABEL_COL, PREDICTION_COL, PROBABILITY_COL, RAW_PREDICTION_COL, WEIGHT_COL

LOG = logging.getLogger(__name__)


SINGLE_NODE_FAMILIES = frozenset({"hist_gradient_boosting", "lightgbm"})

# The packages a logged model of each family needs where it is loaded (LightGBM's estimators are
# scikit-learn estimators).
FAMILY_PACKAGES: dict[str, tuple[str, ...]] = {
    "hist_gradient_boosting": ("scikit-learn",),
    "lightgbm": ("scikit-learn", "lightgbm"),
}


# Spark UI: every trial job is in this group (``sc.cancelJobGroup`` stops running trials).
TRIAL_JOB_GROUP = "deltaml-single-node-trials"


# Params Hyperopt may give as floats (31.0) that the estimators need as ints.
_INTEGER_PARAMS: dict[str, frozenset[str]] = {
    "hist_gradient_boosting": frozenset(
        {"max_iter", "max_leaf_nodes", "max_depth", "min_samples_leaf", "max_bins", "n_iter_no_change", "random_state"}
    ),
    "lightgbm": frozenset(
        {"n_estimators", "num_leaves", "max_depth", "min_child_samples", "subsample_for_bin", "subsample_freq"}
        | {"n_jobs", "random_state"}
    ),
}


_JOB_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")


# Extra rows drawn by Spark's Bernoulli sample so that at least max_rows come back (6 sigma).
_SAMPLE_MARGIN_SIGMAS = 6.0


_OUTPUT_COL = "__single_node_output"


# -- estimators ---------------------------------------------------------------------------------------------------


def single_node_estimator(family: str, task: str, params: dict[str, Any], *, seed: int) -> Any:
    """The unfitted scikit-learn-API estimator of a single-node family.

    ``hist_gradient_boosting`` is scikit-learn's ``HistGradientBoostingClassifier`` (binary,
    multiclass) or ``HistGradientBoostingRegressor``; ``lightgbm`` is LightGBM's
    ``LGBMClassifier``/``LGBMRegressor`` with ``n_jobs=1`` and ``verbose=-1`` unless set.
    Whole-number floats of integer params (``max_iter=100.0``) become ints. Building is
    cheap and has no side effects, so it also validates a config's params.

    Args:
        family: One of :data:`SINGLE_NODE_FAMILIES`.
        task: ``binary``, ``multiclass`` or ``regression``.
        params: Constructor arguments in the library's own names (``learning_rate``, ``max_iter``).
        seed: ``random_state``, unless ``params`` sets it.

    Returns:
        The estimator.

    Raises:
        StepInputError: An unknown family, task or param, or a non-whole value for an integer param.
        SetupError: ``lightgbm`` is asked for but not installed.
    """
    if family not in SINGLE_NODE_FAMILIES:
        raise StepInputError(
            f"step 'fit': unknown single-node family {family!r}; use one of {sorted(SINGLE_NODE_FAMILIES)}"
        )
    if task not in TASKS:
        raise StepInputError(f"step 'fit': unknown task {task!r} for {family}; use one of {list(TASKS)}")
    regression = task == "regression"
    defaults: dict[str, Any] = {"random_state": seed}
    if family == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        estimator: Any = HistGradientBoostingRegressor() if regression else HistGradientBoostingClassifier()
    else:
        try:
            import lightgbm
        except ImportError:
            raise SetupError(
                "model family 'lightgbm' needs the lightgbm package; install it (pip install lightgbm) "
                "or use hist_gradient_boosting"
            ) from None
        estimator = lightgbm.LGBMRegressor() if regression else lightgbm.LGBMClassifier()
        defaults.update(n_jobs=1, verbose=-1)
    problem = _param_problem(family, estimator, params)
    if problem:
        raise StepInputError(f"step 'fit': {problem}")
    values = {**defaults, **params}
    for name in _INTEGER_PARAMS[family] & set(values):
        values[name] = _as_int(family, name, values[name])
    return estimator.set_params(**values)


def single_node_param_problem(family: str, task: str, names: Collection[str]) -> str | None:
    """What is wrong with the param names a config gives a single-node family, or None.

    The check :func:`single_node_estimator` makes, with no params set: ``check-config`` runs it.

    Raises:
        SetupError: ``lightgbm`` is asked for but not installed.
    """
    return _param_problem(family, single_node_estimator(family, task, {}, seed=0), names)


def _param_problem(family: str, estimator: Any, names: Collection[str]) -> str | None:
    valid = sorted(estimator.get_params())
    unknown = sorted(set(names) - set(valid))
    if family == "lightgbm" and unknown:
        keywords = _lightgbm_parameters()
        unknown = [] if keywords is None else [name for name in unknown if name not in keywords]
    if not unknown:
        return None
    also = " and LightGBM's own parameters (or their aliases), which it takes as keywords" * (family == "lightgbm")
    return f"{unknown} are not params of {type(estimator).__name__} ({family}); valid: {valid}{also}"


def _lightgbm_parameters() -> set[str] | None:
    """LightGBM's parameter names and aliases (``verbose``, ``min_data_in_leaf``, ...); None if it has no table.

    Its scikit-learn estimators take them as keyword arguments and pass them to the booster, but
    ``get_params`` lists only the constructor's. The names come from LightGBM's own table (4.x);
    without it every keyword is accepted, and LightGBM warns about one it does not know.
    """
    import lightgbm.basic

    try:
        aliases = lightgbm.basic._ConfigAliases._get_all_param_aliases()
    except AttributeError:  # pragma: no cover - a LightGBM without the table
        return None
    return {name for canonical, names in aliases.items() for name in (canonical, *names)}


def _as_int(family: str, name: str, value: Any) -> Any:
    """A whole-number float (or numpy number) as an int; other values unchanged (the estimator checks them)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return value
    if not math.isfinite(value) or float(value) != round(float(value)):
        raise StepInputError(f"step 'fit': {family} param {name} must be a whole number, got {value!r}")
    return round(float(value))


def _fit_estimator(
    estimator: Any,
    task: str,
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray | None,
    categorical: Sequence[int] = (),
    validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> Any:
    """Fit on numpy arrays; class labels become ints so ``classes_`` are the class indices.

    The ``categorical`` columns hold category ranks (0 the most frequent level): the estimator
    splits them as categories. HistGradientBoosting takes at most ``max_bins`` levels, so ranks
    beyond that join the last one (the rarest levels, grouped); LightGBM takes them all.

    With ``validation`` rows, early stopping that the params turn on watches them instead of a
    slice carved from the train rows: HistGradientBoosting's ``early_stopping`` (``X_val``, from
    scikit-learn 1.7), LightGBM's ``early_stopping_round`` or an alias (``eval_set``).
    """
    target = y if task == "regression" else y.astype(np.int64)
    kwargs: dict[str, Any] = {} if weights is None else {"sample_weight": weights}
    hist = _is_hist_gradient_boosting(estimator)
    if categorical:
        if hist:
            estimator.set_params(categorical_features=list(categorical))
            x = _capped_categories(x, list(categorical), int(estimator.max_bins) - 1)
        else:
            kwargs["categorical_feature"] = list(categorical)
    if validation is not None and len(validation[1]) and _stops_early(estimator, len(x)):
        x_val, y_val = validation
        seen = np.unique(target)
        if task != "regression":  # a class the train rows lack cannot be scored while fitting: leave its rows out
            y_val = y_val.astype(np.int64)
            kept = np.isin(y_val, seen)
            x_val, y_val = x_val[kept], y_val[kept]
        accepts = inspect.signature(estimator.fit).parameters
        if not hist:
            # LightGBM 4.7 deprecates eval_set for eval_X and eval_y, which its classifier does not encode.
            if "eval_X" in accepts:
                encoded = y_val if task == "regression" else np.searchsorted(seen, y_val)
                kwargs.update(eval_X=(x_val,), eval_y=(encoded,))
            else:
                kwargs["eval_set"] = [(x_val, y_val)]
        elif "X_val" in accepts:  # scikit-learn 1.7 and later; before, it carves its own from train
            kwargs.update(X_val=_capped_categories(x_val, list(categorical), int(estimator.max_bins) - 1), y_val=y_val)
    return estimator.fit(x, target, **kwargs)


# LightGBM's early-stopping parameter and its aliases.
_LIGHTGBM_EARLY_STOPPING = ("early_stopping_round", "early_stopping_rounds", "early_stopping", "n_iter_no_change")


def fixed_rounds(model: SingleNodeModel, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with early stopping replaced by the rounds ``model`` stopped at, for a refit without validation rows.

    A refit on train + validation has no held-out rows to stop on; it fits as many boosting
    rounds as the tuned model kept (HistGradientBoosting's ``n_iter_``, LightGBM's ``best_iteration_``).
    """
    estimator = model.estimator()
    fixed = dict(params)
    if _is_hist_gradient_boosting(estimator):
        # Also without early stopping in the trial: a refit on more rows would turn `auto` on.
        fixed.update(max_iter=int(estimator.n_iter_), early_stopping=False)
        return fixed
    best = int(getattr(estimator, "best_iteration_", 0) or 0)
    if any(name in fixed for name in _LIGHTGBM_EARLY_STOPPING):
        for name in _LIGHTGBM_EARLY_STOPPING:
            fixed.pop(name, None)
        if best > 0:
            for name in _lightgbm_aliases("num_iterations"):  # LightGBM prefers an alias over n_estimators
                fixed.pop(name, None)
            fixed["n_estimators"] = best
    return fixed


def _lightgbm_aliases(name: str) -> set[str]:
    """LightGBM's aliases of one of its parameters (the name itself included)."""
    import lightgbm.basic

    try:
        return {name, *lightgbm.basic._ConfigAliases.get(name)}
    except AttributeError:  # pragma: no cover - a LightGBM without the table
        return {name, "n_estimators"}


def _stops_early(estimator: Any, rows: int) -> bool:
    """Whether the estimator's params turn early stopping on (HistGradientBoosting's ``auto``: above 10,000 rows)."""
    params = estimator.get_params()
    if _is_hist_gradient_boosting(estimator):
        setting = params.get("early_stopping", "auto")
        return bool(setting is True or (setting == "auto" and rows > 10_000))
    rounds = [params.get(name) for name in _LIGHTGBM_EARLY_STOPPING]
    return any(isinstance(r, int | float) and not isinstance(r, bool) and r > 0 for r in rounds)


def _is_hist_gradient_boosting(estimator: Any) -> bool:
    return type(estimator).__name__.startswith("HistGradientBoosting")


def _capped_categories(x: np.ndarray, columns: list[int], cap: int) -> np.ndarray:
    """``x`` with the ranks in ``columns`` above ``cap`` set to ``cap`` (a copy, only when one is above)."""
    if not columns or not len(x) or not np.any(x[:, columns] > cap):
        return x
    capped = x.copy()
    capped[:, columns] = np.minimum(capped[:, columns], cap)
    return capped


def _model_input(estimator: Any, x: np.ndarray) -> np.ndarray:
    """``x`` as the estimator was fitted on it: category ranks capped as in :func:`_fit_estimator`."""
    mask = getattr(estimator, "is_categorical_", None) if _is_hist_gradient_boosting(estimator) else None
    if mask is None:
        return x
    return _capped_categories(x, [int(i) for i in np.flatnonzero(mask)], int(estimator.max_bins) - 1)


def _model_output(estimator: Any, task: str, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Regression: the predictions. Classification: ``(rows, num_classes)`` probabilities, slot i = class i.

    A class the estimator never saw (absent from its train sample) gets probability 0.
    """
    x = _model_input(estimator, x)
    if task == "regression":
        return np.asarray(estimator.predict(x), dtype=np.float64) if len(x) else np.zeros(0)
    probabilities = np.zeros((len(x), num_classes), dtype=np.float64)
    if len(x):
        classes = np.asarray(estimator.classes_).astype(np.int64)
        probabilities[:, classes] = estimator.predict_proba(x)
    return probabilities


def validation_metrics(task: str, y: np.ndarray, output: np.ndarray, *, num_classes: int) -> dict[str, float]:
    """deltaml's metrics of a task, computed with scikit-learn on numpy arrays.

    Binary: ``auc_roc``, ``auc_pr`` (as Spark computes it, see :func:`area_under_pr`), ``log_loss``,
    ``accuracy``; multiclass:
    ``accuracy``, ``f1`` (support-weighted, as Spark's ``f1``), ``log_loss``; regression: ``rmse``,
    ``mae``, ``r2``; all with ``rows``. The prediction of a classifier is the most probable class.
    A metric that is undefined on these rows (AUC with one class present) is left out.

    Args:
        task: ``binary``, ``multiclass`` or ``regression``.
        y: The labels (class indices for classification).
        output: Predictions (regression) or ``(rows, num_classes)`` probabilities.
        num_classes: Number of classes (ignored for regression).

    Returns:
        Metric name -> value; only ``rows`` when there are no rows.
    """
    from sklearn import metrics as skm

    rows = float(len(y))
    if not rows:
        return {"rows": 0.0}
    if task == "regression":
        return {
            "rows": rows,
            "rmse": float(skm.root_mean_squared_error(y, output)),
            "mae": float(skm.mean_absolute_error(y, output)),
            "r2": float(skm.r2_score(y, output)),
        }
    labels = y.astype(np.int64)
    predicted = output.argmax(axis=1)
    # Log-loss as deltaml's Spark metrics compute it: the true class's probability, clipped at
    # 1e-15 (and, for a binary label, at 1 - 1e-15), unnormalised.
    true_class = output[np.arange(len(labels)), labels]
    clipped = (
        np.clip(true_class, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
        if task == "binary"
        else np.maximum(true_class, LOG_LOSS_EPS)
    )
    result = {
        "rows": rows,
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        "log_loss": float(-np.mean(np.log(clipped))),
    }
    if task == "multiclass":
        result["f1"] = float(skm.f1_score(labels, predicted, average="weighted", zero_division=0.0))
    elif len(np.unique(labels)) == 2:
        result["auc_roc"] = float(skm.roc_auc_score(labels, output[:, 1]))
        result["auc_pr"] = area_under_pr(labels, output[:, 1])
    return result


def area_under_pr(labels: np.ndarray, scores: np.ndarray) -> float:
    """The area under the precision-recall curve as Spark's ``BinaryClassificationMetrics`` computes it.

    One curve point per distinct score (thresholds descending), trapezoids between points, and
    the curve starts at (recall 0, precision of the first point). Unlike scikit-learn's average
    precision (a step sum), this matches the AUC-PR of deltaml's Spark evaluations exactly.
    """
    order = np.argsort(-scores, kind="stable")
    ranked, positive = scores[order], labels[order] == 1
    last_of_score = np.r_[ranked[1:] != ranked[:-1], True]
    tp = np.cumsum(positive)[last_of_score].astype(np.float64)
    fp = np.cumsum(~positive)[last_of_score].astype(np.float64)
    if not tp[-1]:
        return float("nan")
    recall, precision = tp / tp[-1], tp / (tp + fp)
    recall = np.r_[0.0, recall]
    precision = np.r_[precision[0], precision]
    return float(np.sum((recall[1:] - recall[:-1]) * (precision[1:] + precision[:-1]) / 2))


def _check_labels(task: str, num_classes: int, label_max: float, integral: bool, what: str) -> int:
    """The number of classes (0 for regression), after checking the labels are class indices below it."""
    if task == "regression":
        return 0
    expected = 2 if task == "binary" else num_classes
    if task == "binary" and num_classes != 2:
        raise StepInputError(f"step 'fit': a binary task has 2 classes, got num_classes={num_classes}")
    if expected < 2:
        raise StepInputError(f"step 'fit': a multiclass task needs num_classes >= 2, got {num_classes}")
    if not integral or label_max >= expected:
        raise StepInputError(
            f"step 'fit': {what} labels must be class indices 0..{expected - 1} for a {task} task; "
            f"found {'non-integer labels' if not integral else f'label {label_max:g}'}"
        )
    return expected


# -- shipping the data ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingArrays:
    """What the broadcast holds: train and validation rows as numpy arrays (labels as float64)."""

    token: str
    x_train: np.ndarray
    y_train: np.ndarray
    w_train: np.ndarray | None
    x_validation: np.ndarray
    y_validation: np.ndarray
    categorical: tuple[int, ...] = ()


@dataclass
class ShippedData:
    """The train and validation arrays, broadcast once to the executors for every trial of a search.

    Attributes:
        broadcast: The Spark broadcast of one :class:`TrainingArrays` (a classic session).
        token: Identifies these arrays (the trial tasks report whether their worker had them already).
        train_rows: Train rows shipped (after sampling).
        validation_rows: Validation rows shipped (after sampling).
        num_features: Size of the feature vectors.
        sampled: Whether train or validation was sampled down to ``max_rows``.
        weighted: Whether train rows carry ``_weight``.
        label_max: The largest label, train and validation.
        integral_labels: Whether every label is a whole number.
        nbytes: Size of the arrays in bytes.
        frame: Over Spark Connect, the same arrays as a cached DataFrame (:func:`_arrays_frame`).
        destroyed: Whether :meth:`destroy` released the data.
        features_col: The vector column the rows came from; the trials' models read it.
        categorical: The feature slots that hold category ranks.
    """

    broadcast: Broadcast[TrainingArrays] | None
    token: str
    train_rows: int
    validation_rows: int
    num_features: int
    sampled: bool
    weighted: bool
    label_max: float
    integral_labels: bool
    nbytes: int
    frame: DataFrame | None = None
    destroyed: bool = False
    features_col: str = FEATURES_COL
    categorical: tuple[int, ...] = ()

    def unpersist(self, blocking: bool = False) -> None:
        """Drop the executors' copies; a later trial ships the data to them again."""
        if self.broadcast is not None:
            self.broadcast.unpersist(blocking)

    def destroy(self, blocking: bool = False) -> None:
        """Release the data everywhere, driver included; no trial can use it afterwards."""
        if not self.destroyed:
            if self.broadcast is not None:
                self.broadcast.destroy(blocking)
            if self.frame is not None:
                self.frame.unpersist(blocking)
            self.destroyed = True


def ship_data(
    spark: SparkSession,
    train_df: DataFrame,
    validation_df: DataFrame,
    *,
    max_rows: int,
    seed: int,
    features_col: str = FEATURES_COL,
    categorical: Sequence[int] = (),
) -> ShippedData:
    """Collect train and validation vectors to the driver, at most ``max_rows`` each, and broadcast them once.

    Each DataFrame needs ``features`` (a dense or sparse vector) and ``_label`` (double); train's
    ``_weight`` is shipped when present. A DataFrame with more than ``max_rows`` rows is sampled
    without replacement (seeded): Spark draws a little more than ``max_rows`` and the driver keeps
    exactly ``max_rows``, so the driver never holds much more than the sample.

    Args:
        spark: The session whose executors run the trials.
        train_df: The rows to fit on.
        validation_df: The rows the trial metrics are computed on.
        max_rows: Most rows shipped of each DataFrame.
        seed: Seed of the sampling.
        features_col: The vector column to ship instead of ``features``.
        categorical: Slots of that vector that hold category ranks, split as categories.

    Returns:
        The broadcast data and its sizes.

    Raises:
        StepInputError: A column is missing or null, vectors differ in size, or train is empty.
    """
    if max_rows < 1:
        raise StepInputError(f"step 'tune': max_rows must be >= 1, got {max_rows}")
    with _spark_job(spark, "deltaml: collect train and validation rows for single-node trials"):
        x_train, y_train, w_train, train_total = _collect_arrays(
            train_df, "train", max_rows=max_rows, seed=seed, features_col=features_col
        )
        if not len(y_train):
            raise StepInputError("step 'tune': the train rows for a single-node family are empty")
        x_val, y_val, _, validation_total = _collect_arrays(
            validation_df, "validation", max_rows=max_rows, seed=seed + 1, with_weights=False, features_col=features_col
        )
    if len(y_val) and x_val.shape[1] != x_train.shape[1]:
        raise StepInputError(
            f"step 'tune': validation vectors have {x_val.shape[1]} features, train vectors {x_train.shape[1]}"
        )
    labels = np.concatenate([y_train, y_val])
    categorical = tuple(int(i) for i in categorical)
    if any(not 0 <= i < x_train.shape[1] for i in categorical):
        raise StepInputError(f"step 'tune': categorical slots {list(categorical)} outside {x_train.shape[1]} features")
    arrays = TrainingArrays(uuid.uuid4().hex, x_train, y_train, w_train, x_val, y_val, categorical)
    nbytes = sum(a.nbytes for a in (x_train, y_train, x_val, y_val) if a is not None)
    nbytes += 0 if w_train is None else w_train.nbytes
    started = time.perf_counter()
    broadcast, frame = None, None
    if _is_connect(spark):
        frame = _arrays_frame(spark, arrays)
    else:
        broadcast = spark.sparkContext.broadcast(arrays)
    LOG.info(
        "shipped %d train and %d validation rows x %d features (%.1f MB) to the executors in %.1f s",
        len(y_train),
        len(y_val),
        x_train.shape[1],
        nbytes / 1e6,
        time.perf_counter() - started,
    )
    return ShippedData(
        broadcast=broadcast,
        token=arrays.token,
        train_rows=len(y_train),
        validation_rows=len(y_val),
        num_features=x_train.shape[1],
        sampled=train_total > len(y_train) or validation_total > len(y_val),
        weighted=w_train is not None,
        label_max=float(labels.max()),
        integral_labels=bool(np.all(labels == np.round(labels))),
        nbytes=nbytes,
        frame=frame,
        features_col=features_col,
        categorical=categorical,
    )


def _collect_arrays(
    df: DataFrame,
    what: str,
    *,
    max_rows: int,
    seed: int,
    with_weights: bool = True,
    features_col: str = FEATURES_COL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
    """Features, labels and (optional) weights of at most ``max_rows`` rows, and the DataFrame's row count."""
    missing = [c for c in (features_col, LABEL_COL) if c not in df.columns]
    if missing:
        raise StepInputError(f"step 'tune': {what} rows lack column(s) {missing}; present: {df.columns}")
    weighted = with_weights and WEIGHT_COL in df.columns
    columns = [vector_to_array(F.col(features_col)).alias("x"), F.col(LABEL_COL).cast("double").alias("y")]
    if weighted:
        columns.append(F.col(WEIGHT_COL).cast("double").alias("w"))
    total = df.count()
    source = df
    if total > max_rows:
        wanted = max_rows + _SAMPLE_MARGIN_SIGMAS * math.sqrt(max_rows) + 100
        source = df.sample(withReplacement=False, fraction=min(1.0, wanted / total), seed=seed)
    table = source.select(*columns).toArrow()
    x = arrow_matrix(table.column("x"), what)
    y = _vector(table.column("y"), what, LABEL_COL)
    w = _vector(table.column("w"), what, WEIGHT_COL) if weighted else None
    if len(y) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(y), size=max_rows, replace=False))
        x, y, w = x[keep], y[keep], None if w is None else w[keep]
    if len(y) < total:
        LOG.info("single-node %s rows: sampled %d of %d (max_rows %d)", what, len(y), total, max_rows)
    return x, y, w, total


def arrow_matrix(column: pa.ChunkedArray, what: str) -> np.ndarray:
    """A ``(rows, width)`` float64 matrix from an Arrow list<double> column (vectors as arrays)."""
    values = column.combine_chunks()
    if values.null_count:
        raise StepInputError(f"step 'tune': {values.null_count} {what} row(s) have a null {FEATURES_COL!r} vector")
    if not len(values):
        return np.zeros((0, 0), dtype=np.float64)
    lengths = values.value_lengths().to_numpy(zero_copy_only=False)
    if np.any(lengths != lengths[0]):
        raise StepInputError(
            f"step 'tune': {what} {FEATURES_COL!r} vectors differ in size ({lengths.min()} to {lengths.max()})"
        )
    flat: np.ndarray = values.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return flat.reshape(len(values), int(lengths[0]))


def _vector(column: pa.ChunkedArray, what: str, name: str) -> np.ndarray:
    if column.null_count:
        raise StepInputError(f"step 'tune': {column.null_count} {what} row(s) have a null {name!r}")
    vector: np.ndarray = column.to_numpy().astype(np.float64, copy=False)
    return vector


# -- trials on executors ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialTaskInfo:
    """Where and how long a trial ran: what a Python task can honestly know about itself.

    Attributes:
        host: The executor's host name.
        pid: The Python worker's process id.
        stage_id: The Spark stage of the trial's job.
        task_attempt_id: Spark's unique id of the task attempt.
        attempt_number: How many times the task was retried before this attempt.
        cpus: Cores Spark gave the task; native threads are capped to this.
        data_seconds: Time to get the broadcast arrays (unpickling them, the first time in a worker).
        data_reused: Whether this worker already held the arrays from an earlier trial.
        fit_seconds: Time to fit the estimator.
        seconds: The whole task, fit and validation metrics included.
        workdir: The Python worker's working directory, which tells executors on one host apart
            (on a standalone worker ``<work dir>/<app id>/<executor id>``, on YARN the container's folder).
    """

    host: str
    pid: int
    stage_id: int
    task_attempt_id: int
    attempt_number: int
    cpus: int
    data_seconds: float
    data_reused: bool
    fit_seconds: float
    seconds: float
    workdir: str = ""


@dataclass(frozen=True)
class _TaskSuccess:
    model: bytes
    metrics: dict[str, float]
    info: TrialTaskInfo


@dataclass(frozen=True)
class _TaskFailure:
    error_type: str
    message: str
    traceback: str
    host: str
    pid: int


# In each Python worker: the id of the arrays object last seen for a broadcast token.
_WORKER_DATA: dict[str, int] = {}


def executor_trial(
    spark: SparkSession,
    shipped: ShippedData,
    family: str,
    task: str,
    params: dict[str, Any],
    *,
    seed: int,
    num_classes: int = 2,
) -> tuple[SingleNodeModel, dict[str, float]]:
    """Fit one trial's estimator on an executor, as a one-task Spark job, and return its stage and metrics.

    The task reads the broadcast arrays, fits with native threads capped to the task's cores,
    scores the validation rows and sends back the pickled estimator. Only the params and the
    broadcast's handle travel with the task. Safe to call from several driver threads at once:
    each call is its own job (group :data:`TRIAL_JOB_GROUP`, described by family and params in
    the Spark UI) and its own task on a free core.

    Args:
        spark: The session the data was shipped with.
        shipped: The broadcast train and validation arrays.
        family: One of :data:`SINGLE_NODE_FAMILIES`.
        task: ``binary``, ``multiclass`` or ``regression``.
        params: The estimator's constructor arguments.
        seed: ``random_state`` unless ``params`` sets it.
        num_classes: Classes of a multiclass label (the probability vector's size), 2 for binary.

    Returns:
        The fitted :class:`SingleNodeModel` (with ``trial_info`` set) and its validation metrics
        (see :func:`validation_metrics`).

    Raises:
        StepInputError: Bad family, task or params, labels that are not class indices, or destroyed
            data (no job runs).
        StepFailedError: The fit failed in the task (the message is the original error's first
            line, e.g. scikit-learn's rejection of a param value) or the Spark job failed.
    """
    single_node_estimator(family, task, params, seed=seed)  # bad params fail here, on the driver
    if shipped.destroyed:
        raise StepInputError(f"{family} trial: the shipped data was destroyed; ship the data again (ship_data)")
    classes = _check_labels(task, num_classes, shipped.label_max, shipped.integral_labels, "shipped")
    described = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    try:
        with _spark_job(spark, f"deltaml {family} trial: {described}", group=TRIAL_JOB_GROUP):
            if shipped.frame is not None:
                result = _connect_trial(shipped, family, task, dict(params), seed, classes)
            else:
                assert shipped.broadcast is not None
                args = (shipped.broadcast, shipped.token, family, task, dict(params), seed, classes)
                sc = spark.sparkContext
                result = sc.parallelize([0], 1).mapPartitions(partial(_trial_partition, *args)).collect()[0]
    except Exception as exc:
        raise StepFailedError(f"{family} trial: the Spark job failed: {_spark_error(exc)}") from exc
    if isinstance(result, _TaskFailure):
        LOG.debug("%s trial failed on %s (pid %d):\n%s", family, result.host, result.pid, result.traceback)
        raise StepFailedError(f"{result.error_type}: {result.message} ({family} trial on {result.host})")
    info = result.info
    LOG.debug(
        "%s trial fitted in %.2f s on %s pid %d (%d cpu, data %s in %.2f s)",
        family,
        info.fit_seconds,
        info.host,
        info.pid,
        info.cpus,
        "reused" if info.data_reused else "loaded",
        info.data_seconds,
    )
    model = SingleNodeModel(
        family=family,
        task=task,
        numClasses=classes,
        modelBytes=_encode(result.model),
        featuresCol=shipped.features_col,
    )
    model.trial_info = info
    return model, result.metrics


def _trial_partition(
    data: Broadcast[TrainingArrays],
    token: str,
    family: str,
    task: str,
    params: dict[str, Any],
    seed: int,
    num_classes: int,
    rows: Iterable[Any],
) -> Iterator[_TaskSuccess | _TaskFailure]:
    """The trial task (runs on an executor): one result, success or the error, never an exception."""
    for _ in rows:  # read the (one-element) input to its end, or Spark closes this worker instead of reusing it
        pass
    yield _run_trial_task(data, token, family, task, params, seed, num_classes)


def _run_trial_task(
    data: Broadcast[TrainingArrays] | _Held,
    token: str,
    family: str,
    task: str,
    params: dict[str, Any],
    seed: int,
    num_classes: int,
) -> _TaskSuccess | _TaskFailure:
    from pyspark import TaskContext

    started = time.perf_counter()
    context = TaskContext.get()
    cpus = max(1, context.cpus() if context is not None else int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        arrays = data.value
        data_seconds = time.perf_counter() - started
        reused = _WORKER_DATA.get(token) == id(arrays)
        _WORKER_DATA[token] = id(arrays)
        estimator = single_node_estimator(family, task, params, seed=seed)
        with _thread_limit(cpus):
            fit_started = time.perf_counter()
            _fit_estimator(
                estimator,
                task,
                arrays.x_train,
                arrays.y_train,
                arrays.w_train,
                arrays.categorical,
                validation=(arrays.x_validation, arrays.y_validation),
            )
            fit_seconds = time.perf_counter() - fit_started
            output = _model_output(estimator, task, arrays.x_validation, num_classes)
        metrics = validation_metrics(task, arrays.y_validation, output, num_classes=num_classes)
        model = pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # sent back as a value, so the driver raises it and Spark does not retry
        return _TaskFailure(
            type(exc).__name__, one_line(str(exc), 100_000), traceback.format_exc(), socket.gethostname(), os.getpid()
        )
    info = TrialTaskInfo(
        host=socket.gethostname(),
        pid=os.getpid(),
        stage_id=context.stageId() if context is not None else -1,
        task_attempt_id=context.taskAttemptId() if context is not None else -1,
        attempt_number=context.attemptNumber() if context is not None else 0,
        cpus=cpus,
        data_seconds=data_seconds,
        data_reused=reused,
        fit_seconds=fit_seconds,
        seconds=time.perf_counter() - started,
        workdir=os.getcwd(),
    )
    return _TaskSuccess(model, metrics, info)


@dataclass(frozen=True)
class _Held:
    """Arrays a Connect trial task rebuilt itself, read like a broadcast (``.value``)."""

    value: TrainingArrays


_PART_TRAIN, _PART_VALIDATION = 0, 1


def _is_connect(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _arrays_frame(spark: SparkSession, arrays: TrainingArrays) -> DataFrame:
    """The arrays as one cached DataFrame on the Connect server: part, row number, x, y, w (train then validation).

    Sent once (pyspark caches a large local relation on the server as an artifact) and cached, so
    every trial reads it from the server's memory instead of the client sending it again.
    """
    import pyarrow as pa

    def part(code: int, x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> pa.Table:
        width = x.shape[1] if x.ndim == 2 else 0
        return pa.table(
            {
                "part": pa.array(np.full(len(y), code, dtype=np.int8)),
                "i": pa.array(np.arange(len(y), dtype=np.int64)),
                "x": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x).ravel()), width).cast(
                    pa.list_(pa.float64())
                ),
                "y": pa.array(y),
                "w": pa.array(w if w is not None else np.ones(len(y))),
            }
        )

    table = pa.concat_tables(
        [
            part(_PART_TRAIN, arrays.x_train, arrays.y_train, arrays.w_train),
            part(_PART_VALIDATION, arrays.x_validation, arrays.y_validation, None),
        ]
    )
    frame = spark.createDataFrame(table.to_pandas()).coalesce(1).cache()
    frame.count()
    return frame


_TRIAL_RESULT_SCHEMA = StructType([StructField("result", BinaryType(), False)])


def _connect_trial(
    shipped: ShippedData, family: str, task: str, params: dict[str, Any], seed: int, num_classes: int
) -> _TaskSuccess | _TaskFailure:
    """One trial as a one-task ``mapInArrow`` over the cached arrays (no RDD, no broadcast): its pickled result."""
    token, weighted, categorical = shipped.token, shipped.weighted, shipped.categorical
    assert shipped.frame is not None

    def trial(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        table = pa.Table.from_batches(list(batches))
        order = np.lexsort((table.column("i").to_numpy(), table.column("part").to_numpy()))
        table = table.take(pa.array(order))
        is_train = table.column("part").to_numpy() == _PART_TRAIN
        x = arrow_matrix(table.column("x"), "shipped")
        y = _vector(table.column("y"), "shipped", LABEL_COL)
        w = _vector(table.column("w"), "shipped", WEIGHT_COL)
        arrays = TrainingArrays(
            token,
            x[is_train],
            y[is_train],
            w[is_train] if weighted else None,
            x[~is_train],
            y[~is_train],
            categorical,
        )
        result = _run_trial_task(_Held(arrays), token, family, task, params, seed, num_classes)
        yield pa.RecordBatch.from_pydict({"result": [pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)]})

    row = shipped.frame.mapInArrow(trial, _TRIAL_RESULT_SCHEMA).first()
    assert row is not None
    result: _TaskSuccess | _TaskFailure = pickle.loads(row["result"])
    return result


def fit_single_node(
    spark: SparkSession,
    train_df: DataFrame,
    family: str,
    task: str,
    params: dict[str, Any],
    *,
    seed: int,
    num_classes: int = 2,
    max_rows: int,
    features_col: str = FEATURES_COL,
    categorical: Sequence[int] = (),
) -> SingleNodeModel:
    """Fit a single-node family on the driver (the final refit): collect at most ``max_rows`` rows and fit.

    The fit uses the driver's cores. ``_weight`` is used when ``train_df`` has it.

    Args:
        spark: The session that collects the rows.
        train_df: ``features`` and ``_label`` (and optionally ``_weight``) rows.
        family: One of :data:`SINGLE_NODE_FAMILIES`.
        task: ``binary``, ``multiclass`` or ``regression``.
        params: The estimator's constructor arguments.
        seed: ``random_state`` unless ``params`` sets it, and the sampling seed.
        num_classes: Classes of a multiclass label, 2 for binary.
        max_rows: Most train rows used (a seeded sample without replacement beyond that).
        features_col: The vector column to fit on (and the stage reads) instead of ``features``.
        categorical: Slots of that vector that hold category ranks.

    Returns:
        The fitted stage.

    Raises:
        StepInputError: Bad family, task, params, columns or labels, or no rows.
        StepFailedError: The estimator's fit failed.
    """
    estimator = single_node_estimator(family, task, params, seed=seed)
    with _spark_job(spark, f"deltaml {family} final fit: collect the train rows"):
        x, y, w, _ = _collect_arrays(train_df, "train", max_rows=max_rows, seed=seed, features_col=features_col)
    if not len(y):
        raise StepInputError("step 'fit': the train rows for a single-node family are empty")
    integral = bool(np.all(y == np.round(y)))
    classes = _check_labels(task, num_classes, float(y.max()), integral, "train")
    started = time.perf_counter()
    try:
        _fit_estimator(estimator, task, x, y, w, categorical)
    except Exception as exc:
        raise StepFailedError(
            f"{type(exc).__name__}: {one_line(str(exc), 100_000)} ({family} fit on the driver)"
        ) from exc
    LOG.info("fitted %s on %d rows x %d features in %.1f s", family, len(y), x.shape[1], time.perf_counter() - started)
    blob = pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)
    return SingleNodeModel(
        family=family, task=task, numClasses=classes, modelBytes=_encode(blob), featuresCol=features_col
    )


@contextmanager
def _spark_job(spark: SparkSession, description: str, group: str | None = None) -> Iterator[None]:
    """Describe (and group) the Spark jobs this thread starts inside the block, then restore the thread's own.

    Job properties are per thread (PySpark pins each Python thread to a JVM thread), so concurrent
    trials each describe their own job. Over Spark Connect there is no SparkContext: the jobs carry
    the group as an operation tag instead (``spark.interruptTag`` stops them).
    """
    if _is_connect(spark):
        if group is not None:
            spark.addTag(group)
        try:
            yield
        finally:
            if group is not None:
                spark.removeTag(group)
        return
    sc = spark.sparkContext
    previous = {key: sc.getLocalProperty(key) for key in _JOB_PROPERTIES}
    sc.setLocalProperty("spark.job.description", description[:500])
    if group is not None:
        sc.setLocalProperty("spark.jobGroup.id", group)
        sc.setLocalProperty("spark.job.interruptOnCancel", "true")
    try:
        yield
    finally:
        for key, value in previous.items():
            sc.setLocalProperty(key, value)  # type: ignore[arg-type]  # None removes the property


def _spark_error(exc: Exception) -> str:
    """One line saying why a Spark job failed: the Python error of a task, or the root of the JVM's cause chain."""
    return one_line(exc, 100_000)


def _encode(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


# -- the Spark ML stage -----------------------------------------------------------------------------------------


def _thread_limit(cpus: int) -> Any:
    """A context capping the OpenMP and BLAS threads of this process to ``cpus``.

    Built on each use: it applies to the native libraries loaded at that moment (scikit-learn's and
    LightGBM's OpenMP runtimes are different libraries, loaded when first imported).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=cpus)


# Unpickled estimators of this Python process, by the hash of their bytes (a few models at most).
_ESTIMATORS: dict[str, Any] = {}


_ESTIMATORS_LOCK = threading.Lock()


_MAX_CACHED_ESTIMATORS = 4


def _cached_estimator(digest: str, encoded: str) -> Any:
    with _ESTIMATORS_LOCK:
        estimator = _ESTIMATORS.get(digest)
        if estimator is None:
            estimator = pickle.loads(base64.b64decode(encoded))
            while len(_ESTIMATORS) >= _MAX_CACHED_ESTIMATORS:
                _ESTIMATORS.pop(next(iter(_ESTIMATORS)))
            _ESTIMATORS[digest] = estimator
        return estimator


def _predict_batch(digest: str, encoded: str, task: str, num_classes: int, vectors: pd.Series) -> np.ndarray:
    """Model output of one Arrow batch of feature arrays (see :func:`_model_output`)."""
    from pyspark import TaskContext

    estimator = _cached_estimator(digest, encoded)
    x = np.stack(vectors.to_numpy()) if len(vectors) else np.zeros((0, 0))
    context = TaskContext.get()
    with _thread_limit(max(1, context.cpus()) if context is not None else 1):
        return _model_output(estimator, task, x, num_classes)


_CLASS_OUTPUT = StructType(
    [StructField(PROBABILITY_COL, ArrayType(DoubleType(), False)), StructField(PREDICTION_COL, DoubleType())]
)


class SingleNodeModel(Transformer, HasFeaturesCol, DefaultParamsReadable["SingleNodeModel"], DefaultParamsWritable):
    """A fitted single-node estimator (scikit-learn API) as a Spark ML stage, scored with an Arrow pandas UDF.

    Classification adds ``probability`` (a vector of ``numClasses`` slots, slot i = class i),
    ``rawPrediction`` (the same vector) and ``prediction`` (the most probable class index, as a
    double); regression adds ``prediction``. Each Python worker unpickles the estimator once.

    Params:
        family: The family that built it (``hist_gradient_boosting``, ``lightgbm``).
        task: ``binary``, ``multiclass`` or ``regression``.
        numClasses: Size of the probability vector (0 for regression).
        modelBytes: The pickled fitted estimator, base64-encoded, so the default params writer
            saves it in the stage's metadata.
        featuresCol: The vector column read (default ``features``).
    """

    _input_kwargs: dict[str, Any]
    trial_info: TrialTaskInfo | None = None  # set by executor_trial; not saved

    family: Param[str] = Param(Params._dummy(), "family", "single-node model family", TypeConverters.toString)
    task: Param[str] = Param(
        Params._dummy(), "task", "binary, multiclass or regression", typeConverter=TypeConverters.toString
    )
    numClasses: Param[int] = Param(
        Params._dummy(), "numClasses", "size of the probability vector (0: regression)", TypeConverters.toInt
    )
    modelBytes: Param[str] = Param(
        Params._dummy(), "modelBytes", "base64 of the pickled fitted estimator", TypeConverters.toString
    )

    @keyword_only
    def __init__(
        self,
        *,
        family: str = "hist_gradient_boosting",
        task: str = "binary",
        numClasses: int = 2,
        modelBytes: str = "",
        featuresCol: str = FEATURES_COL,
    ) -> None:
        """Create the stage; see the class docstring for the arguments."""
        super().__init__()
        self._setDefault(family="hist_gradient_boosting", task="binary", numClasses=2, modelBytes="")
        self._setDefault(featuresCol=FEATURES_COL)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        family: str = "hist_gradient_boosting",
        task: str = "binary",
        numClasses: int = 2,
        modelBytes: str = "",
        featuresCol: str = FEATURES_COL,
    ) -> Self:
        """Sets params for this SingleNodeModel; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def getFamily(self) -> str:
        """Gets the value of :py:attr:`family`."""
        return self.getOrDefault(self.family)

    def getTask(self) -> str:
        """Gets the value of :py:attr:`task`."""
        return self.getOrDefault(self.task)

    def getNumClasses(self) -> int:
        """Gets the value of :py:attr:`numClasses`."""
        return self.getOrDefault(self.numClasses)

    def getModelBytes(self) -> str:
        """Gets the value of :py:attr:`modelBytes`."""
        return self.getOrDefault(self.modelBytes)

    def estimator(self) -> Any:
        """The fitted scikit-learn-API estimator (unpickled once per process)."""
        encoded = self._checked_model_bytes()
        return _cached_estimator(hashlib.sha256(encoded.encode("ascii")).hexdigest(), encoded)

    def _checked_model_bytes(self) -> str:
        encoded = self.getModelBytes()
        if not encoded:
            raise StepInputError("SingleNodeModel: modelBytes is empty; build the stage with executor_trial or fit")
        if self.getTask() not in TASKS:
            raise StepInputError(f"SingleNodeModel: task must be one of {list(TASKS)}, got {self.getTask()!r}")
        return encoded

    def _transform(self, dataset: DataFrame) -> DataFrame:
        encoded = self._checked_model_bytes()
        ship_package_to_executors(dataset.sparkSession)
        features_col = self.getFeaturesCol()
        if features_col not in dataset.columns:
            raise StepInputError(f"SingleNodeModel: column {features_col!r} not found; present: {dataset.columns}")
        digest = hashlib.sha256(encoded.encode("ascii")).hexdigest()
        task, classes = self.getTask(), self.getNumClasses()
        features = vector_to_array(F.col(features_col))
        if task == "regression":

            @pandas_udf(DoubleType())  # type: ignore[call-overload, untyped-decorator]
            def predict(vectors: pd.Series) -> pd.Series:
                return pd.Series(_predict_batch(digest, encoded, task, classes, vectors))

            return dataset.withColumn(PREDICTION_COL, predict(features))

        @pandas_udf(_CLASS_OUTPUT)  # type: ignore[call-overload, untyped-decorator]
        def predict_classes(vectors: pd.Series) -> pd.DataFrame:
            probabilities = _predict_batch(digest, encoded, task, classes, vectors)
            return pd.DataFrame(
                {
                    PROBABILITY_COL: list(probabilities),
                    PREDICTION_COL: probabilities.argmax(axis=1).astype(np.float64),
                }
            )

        vector = array_to_vector(F.col(f"{_OUTPUT_COL}.{PROBABILITY_COL}"))
        return (
            dataset.withColumn(_OUTPUT_COL, predict_classes(features))
            .withColumns(
                {
                    PROBABILITY_COL: vector,
                    RAW_PREDICTION_COL: vector,
                    PREDICTION_COL: F.col(f"{_OUTPUT_COL}.{PREDICTION_COL}"),
                }
            )
            .drop(_OUTPUT_COL)
        )


# Spark applications (classic) or Connect sessions whose executors were sent this package's code, and the one
# archive of it this process built (ship_package_to_executors).
_SHIPPED_TO: set[str] = set()
_SHIP_LOCK = threading.Lock()
_ARCHIVE: list[str] = []


def ship_package_to_executors(spark: SparkSession) -> bool:
    """Make deltaml importable in the executors' Python workers when only the driver has it; True if sent.

    The scoring UDF runs this module in the workers. A model loaded through MLflow carries
    deltaml's code (``code_paths``), but MLflow puts it on the driver's ``sys.path`` only: where
    the workers' Python lacks deltaml (a fresh environment with the model's requirements, another
    team's cluster), scoring would fail with ``No module named 'deltaml'``. So when this package
    was imported from a model's code folder, a zip of it goes to the executors once per session
    (``addPyFile``, or ``addArtifacts(pyfile=True)`` over Spark Connect). An installed package, or
    one from a ``--py-files`` archive, is left alone: where it came from, the executors have it too.
    """
    import shutil
    import tempfile
    from pathlib import Path

    package = Path(__file__).resolve().parents[1]  # this file is deltaml/ml/single_node.py
    # MLflow puts a model's code_paths in <model>/code, beside its MLmodel file, and that folder on sys.path.
    if not (package.is_dir() and (package.parent.parent / "MLmodel").is_file()):
        return False
    connect = _is_connect(spark)
    # Every session of one Spark application shares its executors (and its file server, which refuses a
    # second deltaml.zip from another path); a Connect session has its own artifacts.
    target = f"connect:{getattr(spark, 'session_id', '')}" if connect else f"app:{spark.sparkContext.applicationId}"
    with _SHIP_LOCK:
        if target in _SHIPPED_TO:
            return False
        if not _ARCHIVE:
            scratch = Path(tempfile.mkdtemp(prefix="deltaml-code-"))
            _ARCHIVE.append(shutil.make_archive(str(scratch / "deltaml"), "zip", package.parent, package.name))
        if connect:
            spark.addArtifacts(_ARCHIVE[0], pyfile=True)
        else:
            spark.sparkContext.addPyFile(_ARCHIVE[0])
        _SHIPPED_TO.add(target)
    LOG.info("deltaml is not installed here (loaded from %s): sent its code to the executors", package)
    return True


_PERMUTATION_SCORING = {"binary": "roc_auc", "multiclass": "accuracy", "regression": "r2"}
# Fewer rows than this give importances too noisy to rank features by.
_MIN_PERMUTATION_ROWS = 500


def permutation_importances(
    model: SingleNodeModel,
    scored: DataFrame,
    *,
    max_rows: int = 5000,
    repeats: int = 3,
    seed: int = 0,
    max_seconds: float | None = None,
) -> list[float]:
    """Permutation importance of each feature slot: the drop in score when the slot is shuffled.

    Single-node estimators such as HistGradientBoosting have no built-in importances, so this
    uses scikit-learn's ``permutation_importance`` on the driver, on a seeded sample of at most
    ``max_rows`` rows of ``scored`` (which needs ``features`` and ``_label``). The score is
    AUC-ROC (binary), accuracy (multiclass) or R² (regression). The estimator runs on one thread:
    its OpenMP threads, uncapped, fought the driver's JVM for the cores (a 48,000-row table's
    evaluate step took 2,742 s, and 52-138 s with one thread). With ``max_seconds``, one scoring of
    the sample is timed first and the sample shrunk so the ``slots x repeats`` scorings fit.

    Returns:
        The mean importance per slot, in slot order.

    Raises:
        StepInputError: Even 500 rows would not fit ``max_seconds``.
    """
    from sklearn.inspection import permutation_importance
    from sklearn.metrics import get_scorer

    x, y, _, _ = _collect_arrays(
        scored, "evaluation", max_rows=max_rows, seed=seed, with_weights=False, features_col=model.getFeaturesCol()
    )
    if not len(y):
        return []
    task = model.getTask()
    if task != "regression" and len(np.unique(y)) < 2:
        return []
    estimator = model.estimator()
    x = _model_input(estimator, x)
    scoring = _PERMUTATION_SCORING[task]
    with _thread_limit(1):
        if max_seconds is not None:
            started = time.monotonic()
            get_scorer(scoring)(estimator, x, y)
            needed = (time.monotonic() - started) * repeats * x.shape[1]
            if needed > max_seconds:
                rows = int(len(y) * max_seconds / needed)
                if rows < _MIN_PERMUTATION_ROWS:
                    raise StepInputError(
                        f"permutation importances of {x.shape[1]} slots x {repeats} repeats would take about "
                        f"{needed:.0f} s on {len(y)} rows, above evaluate.importances.max_seconds {max_seconds:g}; "
                        "raise it, lower evaluate.importances.repeats, or set evaluate.importances.enabled: false"
                    )
                keep = np.sort(np.random.default_rng(seed).choice(len(y), size=rows, replace=False))
                LOG.info(
                    "permutation importances: %d rows would take about %.0f s, above evaluate.importances.max_seconds "
                    "%g; using %d of them",
                    len(y),
                    needed,
                    max_seconds,
                    rows,
                )
                x, y = x[keep], y[keep]
        started = time.monotonic()
        result = permutation_importance(
            estimator, x, y, scoring=scoring, n_repeats=repeats, random_state=seed, n_jobs=1
        )
    LOG.info(
        "permutation importances: %d slots x %d repeats on %d rows in %.1f s (evaluate.importances)",
        x.shape[1],
        repeats,
        len(y),
        time.monotonic() - started,
    )
    return [float(v) for v in result.importances_mean]
