"""Statistics behind the reports, computed in Spark: histograms, ROC/PR, calibration, confusion, thresholds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pyspark.sql import Column, DataFrame, Row
from pyspark.sql import functions as F

from deltaml.config.schema import CostConfig
from deltaml.errors import StepInputError

DEFAULT_BINS = 1000


MAX_BINS = 1_000_000


ThresholdRule = Literal["fixed", "max_f1", "min_cost"]
THRESHOLD_RULES: tuple[str, ...] = ("fixed", "max_f1", "min_cost")


# Two costs within this relative distance count as a tie (they differ only by float rounding).
_COST_TIE_RTOL = 1e-12


_CONFUSION_KEYS = ("tp", "fp", "tn", "fn")


MAX_CLASSES = 1000


MAX_RESIDUAL_BINS = 10_000


MAX_GRID_BINS = 500


RESIDUAL_QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True, eq=False)
class ScoreHistogram:
    """Counts of the scored rows per bin of equal width on ``[0, 1]``, per label.

    Attributes:
        positives: Rows with label 1.0 per bin (``int64``, length ``bins``).
        negatives: Rows with label 0.0 per bin (``int64``, length ``bins``).
        prob_sums: Sum of the clipped probability over all rows of each bin (``float64``).
    """

    positives: npt.NDArray[np.int64]
    negatives: npt.NDArray[np.int64]
    prob_sums: npt.NDArray[np.float64]

    @property
    def bins(self) -> int:
        """The number of bins."""
        return len(self.positives)

    @property
    def total_positives(self) -> int:
        """All rows with label 1.0 (exact)."""
        return int(self.positives.sum())

    @property
    def total_negatives(self) -> int:
        """All rows with label 0.0 (exact)."""
        return int(self.negatives.sum())

    @property
    def rows(self) -> int:
        """All rows (exact)."""
        return self.total_positives + self.total_negatives

    @property
    def edges(self) -> npt.NDArray[np.float64]:
        """The ``bins + 1`` bin edges ``k / bins``, from 0.0 to 1.0."""
        return np.arange(self.bins + 1, dtype=np.float64) / self.bins


@dataclass(frozen=True)
class CalibrationPoint:
    """One bin of the reliability diagram: mean predicted probability vs observed positive rate."""

    lower: float
    upper: float
    rows: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True, eq=False)
class ResidualHistogram:
    """Counts of the residuals ``pred - y`` of all scored rows per bin of equal width, and their summary.

    Bin ``i`` holds ``edges[i] <= r < edges[i + 1]`` (the last bin also ``r == edges[-1]``), as
    ``numpy.histogram`` bins.

    Attributes:
        edges: The ``bins + 1`` bin edges (``float64``) from the smallest to the largest residual.
        counts: Rows per bin (``int64``, length ``bins``).
        mean: The mean residual: the bias, positive when the model over-predicts on average.
        quantiles: Residual quantiles by probability (e.g. ``0.5`` -> the median residual), from
            Spark's ``percentile_approx``: a residual of the data, on small data the one
            ``numpy.quantile(r, q, method="inverted_cdf")`` gives, with a rank error of at most
            0.01% of the rows on large data.
    """

    edges: npt.NDArray[np.float64]
    counts: npt.NDArray[np.int64]
    mean: float
    quantiles: dict[float, float]

    @property
    def bins(self) -> int:
        """The number of bins."""
        return len(self.counts)

    @property
    def rows(self) -> int:
        """All rows (exact)."""
        return int(self.counts.sum())


@dataclass(frozen=True)
class PredictedVsActualGrid:
    """A 2-D histogram of (actual, predicted) over all scored rows, on one axis range shared by both.

    Attributes:
        lo: The lower end of both axes: the smallest actual or predicted value.
        hi: The upper end of both axes: the largest actual or predicted value (``lo`` and ``hi``
            are widened by 0.5 when all values are equal).
        bins: Bins of equal width per axis.
        counts: ``counts[i][j]`` rows have the actual value in bin ``i`` and the prediction in bin ``j``.
    """

    lo: float
    hi: float
    bins: int
    counts: list[list[int]]

    @property
    def edges(self) -> npt.NDArray[np.float64]:
        """The ``bins + 1`` bin edges of either axis, ``numpy.linspace(lo, hi, bins + 1)``."""
        return np.linspace(self.lo, self.hi, self.bins + 1)

    @property
    def rows(self) -> int:
        """All rows (exact)."""
        return sum(sum(row) for row in self.counts)


@dataclass(frozen=True)
class LiftRow:
    """One group of a lift and gains table: the rows ranked by score, highest first, cut into equal groups.

    Attributes:
        group: 1 for the highest-scored rows.
        rows: Rows in the group (a bin cut by a group edge is shared pro rata: its rows are tied).
        positives: Positives among them (pro rata likewise).
        score_high: The highest p in the group (the upper edge of its highest bin).
        score_low: The lowest p in the group (the lower edge of its lowest bin).
        positive_rate: ``positives / rows``.
        lift: ``positive_rate`` over the rate of all rows.
        gain: The share of all positives in this group and the ones above it (the gains curve).
        cumulative_lift: ``gain`` over the share of rows so far.
    """

    group: int
    rows: float
    positives: float
    score_high: float
    score_low: float
    positive_rate: float
    lift: float
    gain: float
    cumulative_lift: float


def lift_table(h: ScoreHistogram, groups: int = 10) -> list[LiftRow]:
    """The lift and gains table (deciles by default) read from a score histogram: no further Spark job.

    Args:
        h: A histogram from :func:`score_histogram`.
        groups: How many equal groups of rows (10: deciles).

    Returns:
        One row per group, highest scores first; empty when there are no rows or no positives.

    Raises:
        ValueError: ``groups`` is not an integer from 2 to 100.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or not 2 <= groups <= 100:
        raise ValueError(f"groups must be an integer from 2 to 100, got {groups!r}")
    total, positives = h.rows, h.total_positives
    if not total or not positives:
        return []
    # Bins from the highest score down; cumulative rows and positives at each bin's lower edge.
    rows_desc = (h.positives + h.negatives)[::-1].astype(np.float64)
    cum_rows = np.concatenate([[0.0], np.cumsum(rows_desc)])
    cum_pos = np.concatenate([[0.0], np.cumsum(h.positives[::-1].astype(np.float64))])
    edges = np.linspace(0, total, groups + 1)
    # Within a bin, rows are tied: positives are shared in proportion to the rows taken.
    taken = np.interp(edges, cum_rows, cum_pos)
    bins, rate = h.bins, positives / total
    out = []
    for g in range(groups):
        start, end = edges[g], edges[g + 1]
        first = int(np.searchsorted(cum_rows, start, side="right")) - 1  # the bin (descending) holding the start
        last = max(first, int(np.searchsorted(cum_rows, end, side="left")) - 1)
        rows, found = end - start, taken[g + 1] - taken[g]
        group_rate = found / rows if rows else 0.0
        out.append(
            LiftRow(
                group=g + 1,
                rows=float(rows),
                positives=float(found),
                score_high=float((bins - first) / bins),
                score_low=float((bins - 1 - min(last, bins - 1)) / bins),
                positive_rate=float(group_rate),
                lift=float(group_rate / rate),
                gain=float(taken[g + 1] / positives),
                cumulative_lift=float((taken[g + 1] / positives) / (end / total)),
            )
        )
    return out


def score_histogram(
    scored: DataFrame, bins: int = DEFAULT_BINS, label_col: str = "y", prob_col: str = "p"
) -> ScoreHistogram:
    """Count the scored rows per probability bin and label, in one Spark aggregation over all rows.

    At most ``3 * bins + 3`` grouped rows reach the driver, whatever the size of ``scored``.

    Args:
        scored: Rows with a 0.0/1.0 label and a probability of the positive class.
        bins: Bins of equal width on ``[0, 1]``; probabilities outside are clipped into it.
        label_col: The 0.0/1.0 label column.
        prob_col: The probability-of-positive column.

    Returns:
        Positives, negatives and the sum of ``p`` per bin.

    Raises:
        ValueError: ``bins`` is not an integer in ``[2, 1_000_000]``.
        StepInputError: A column is missing, or rows have a null/NaN probability or a label
            other than 0.0/1.0 (the message counts them).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an integer from 2 to {MAX_BINS}, got {bins!r}")
    _check_scored_columns(scored, label_col, prob_col, "score_histogram")
    valid_p, clipped, label = _prepared_columns(label_col, prob_col)
    raw = F.least(F.floor(clipped * F.lit(bins)), F.lit(bins - 1)).cast("int")
    # floor(p * bins) can be one off after rounding; correct it against the edges i / bins.
    exact_bin = (
        F.when(clipped < raw / F.lit(bins), raw - 1)
        .when((raw + 1 < bins) & (clipped >= (raw + 1) / F.lit(bins)), raw + 1)
        .otherwise(raw)
    )
    grouped = (
        scored.select(
            F.when(valid_p, exact_bin).alias("bin"),
            label.alias("label"),
            F.when(valid_p, clipped).alias("p"),
        )
        .groupBy("bin", "label")
        .agg(F.count(F.lit(1)).alias("rows"), F.sum("p").alias("p_sum"))
        .collect()
    )
    positives = np.zeros(bins, dtype=np.int64)
    negatives = np.zeros(bins, dtype=np.int64)
    prob_sums = np.zeros(bins, dtype=np.float64)
    invalid = 0
    for row in grouped:
        if row["bin"] is None or row["label"] is None:
            invalid += int(row["rows"])
            continue
        target = positives if row["label"] == 1 else negatives
        target[row["bin"]] += int(row["rows"])
        prob_sums[row["bin"]] += float(row["p_sum"])
    if invalid:
        total = invalid + int(positives.sum() + negatives.sum())
        raise StepInputError(
            f"score_histogram: {invalid} of {total} rows have a null or NaN probability in '{prob_col}' "
            f"or a label in '{label_col}' that is not 0.0 or 1.0; drop or fix them before evaluating"
        )
    return ScoreHistogram(positives=positives, negatives=negatives, prob_sums=prob_sums)


def roc_points(h: ScoreHistogram) -> tuple[list[float], list[float]]:
    """The ROC curve of the histogram, from a threshold above every score down to 0.

    Args:
        h: A histogram from :func:`score_histogram`.

    Returns:
        ``(fpr, tpr)``, ``bins + 1`` points each, from ``(0, 0)`` to ``(1, 1)``; point ``j``
        predicts positive the rows with ``p >= (bins - j) / bins`` (point 0: none).

    Raises:
        StepInputError: The histogram lacks positives or negatives.
    """
    _require_both_classes(h, "roc_points")
    tp, fp = _predicted_positive_counts(h)
    fpr = (fp[::-1] / h.total_negatives).tolist()
    tpr = (tp[::-1] / h.total_positives).tolist()
    return fpr, tpr


def pr_points(h: ScoreHistogram) -> tuple[list[float], list[float]]:
    """The precision-recall curve of the histogram, from a threshold above every score down to 0.

    The first point is ``(recall 0, precision 1)`` by convention (as scikit-learn draws it);
    thresholds that predict no row positive add no point, since their precision is undefined.
    The last point is ``(1, positive rate)``.

    Args:
        h: A histogram from :func:`score_histogram`.

    Returns:
        ``(recall, precision)`` lists of equal length.

    Raises:
        StepInputError: The histogram lacks positives or negatives.
    """
    _require_both_classes(h, "pr_points")
    tp, fp = _predicted_positive_counts(h)
    tp, fp = tp[::-1], fp[::-1]
    predicted = tp + fp
    keep = predicted > 0
    recall = [0.0, *(tp[keep] / h.total_positives).tolist()]
    precision = [1.0, *(tp[keep] / predicted[keep]).tolist()]
    return recall, precision


def auc(h: ScoreHistogram) -> float:
    """Area under the ROC curve by the trapezoid rule over the histogram's bins.

    This is binned: rows in one bin count as tied scores (a positive-negative pair in the same
    bin scores one half), so it equals the exact AUC of the probabilities rounded down to the bin
    edges. The error is at most half the share of positive-negative pairs that share a bin; with
    1000 bins it is within about 1e-3 of the exact AUC for typical data.

    Args:
        h: A histogram from :func:`score_histogram`.

    Returns:
        The approximate ROC AUC in ``[0, 1]``.

    Raises:
        StepInputError: The histogram lacks positives or negatives.
    """
    fpr, tpr = roc_points(h)
    x, y = np.asarray(fpr), np.asarray(tpr)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def calibration_points(h: ScoreHistogram, n: int = 10) -> list[CalibrationPoint]:
    """The reliability diagram: per bin of width ``1 / n``, mean predicted ``p`` vs observed positive rate.

    The mean of ``p`` comes from the per-bin sums Spark computed, so it is exact (not the bin middle).

    Args:
        h: A histogram from :func:`score_histogram`; its ``bins`` must be a multiple of ``n``.
        n: The number of calibration bins (10: deciles of width 0.1).

    Returns:
        One point per non-empty calibration bin, in increasing order of ``p``.

    Raises:
        ValueError: ``n`` is not a positive divisor of the histogram's bins.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or h.bins % n:
        raise ValueError(f"n must be a positive divisor of the histogram's {h.bins} bins, got {n!r}")
    width = h.bins // n
    positives = h.positives.reshape(n, width).sum(axis=1)
    rows = positives + h.negatives.reshape(n, width).sum(axis=1)
    sums = h.prob_sums.reshape(n, width).sum(axis=1)
    return [
        CalibrationPoint(
            lower=i / n,
            upper=(i + 1) / n,
            rows=int(rows[i]),
            mean_predicted=float(sums[i] / rows[i]),
            observed_rate=float(positives[i] / rows[i]),
        )
        for i in range(n)
        if rows[i] > 0
    ]


def confusion_matrix(scored: DataFrame, threshold: float, label_col: str = "y", prob_col: str = "p") -> dict[str, int]:
    """The exact confusion matrix at ``threshold`` (``p >= threshold`` predicts positive), in one Spark job.

    ``p`` is clipped into ``[0, 1]`` first, as in :func:`score_histogram`.

    Args:
        scored: Rows with a 0.0/1.0 label and a probability of the positive class.
        threshold: The decision threshold in ``[0, 1]``.
        label_col: The 0.0/1.0 label column.
        prob_col: The probability-of-positive column.

    Returns:
        ``tp``, ``fp``, ``tn`` and ``fn`` counts.

    Raises:
        ValueError: ``threshold`` is not a number in ``[0, 1]``.
        StepInputError: A column is missing, or rows have a null/NaN probability or a label
            other than 0.0/1.0.
    """
    if not isinstance(threshold, int | float) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    _check_scored_columns(scored, label_col, prob_col, "confusion_matrix")
    valid_p, clipped, label = _prepared_columns(label_col, prob_col)
    valid = valid_p & label.isNotNull()
    predicted = clipped >= F.lit(float(threshold))

    def count(condition: Column) -> Column:
        return F.count(F.when(condition, F.lit(1)))

    row = scored.agg(
        count(valid & (label == 1) & predicted).alias("tp"),
        count(valid & (label == 0) & predicted).alias("fp"),
        count(valid & (label == 0) & ~predicted).alias("tn"),
        count(valid & (label == 1) & ~predicted).alias("fn"),
        count(~valid).alias("invalid"),
    ).first()
    if row is None:  # an aggregation without grouping always returns one row
        raise StepInputError("confusion_matrix: the aggregation returned no row")
    if row["invalid"]:
        total = sum(int(row[k]) for k in (*_CONFUSION_KEYS, "invalid"))
        raise StepInputError(
            f"confusion_matrix: {row['invalid']} of {total} rows have a null or NaN probability in "
            f"'{prob_col}' or a label in '{label_col}' that is not 0.0 or 1.0; drop or fix them before evaluating"
        )
    return {key: int(row[key]) for key in _CONFUSION_KEYS}


def choose_threshold(
    h: ScoreHistogram,
    rule: ThresholdRule | str,
    cost: CostConfig | None = None,
    fixed: float = 0.5,
) -> float:
    """Choose the decision threshold (``p >= t`` predicts positive) from the histogram.

    ``fixed`` returns ``fixed``. ``max_f1`` maximises F1 and ``min_cost`` minimises
    ``cost.false_positive * FP + cost.false_negative * FN``, both over the bin edges strictly
    inside ``(0, 1)``, where the histogram's counts are exact.

    Ties: among the edges with the best F1 (equal exactly) or the lowest cost (equal within a
    relative 1e-12), the edge closest to 0.5 wins, and of two equally close the lower one. So a
    run of empty bins, where every edge gives the same confusion matrix, resolves toward 0.5.

    Args:
        h: A histogram from :func:`score_histogram`, normally of the validation split.
        rule: ``fixed``, ``max_f1`` or ``min_cost``.
        cost: The error costs; required by ``min_cost``.
        fixed: The threshold ``fixed`` returns, in ``(0, 1)``.

    Returns:
        The threshold.

    Raises:
        ValueError: An unknown rule, ``min_cost`` without ``cost``, or ``fixed`` outside ``(0, 1)``.
        StepInputError: ``max_f1`` on a histogram without positives, or a data rule on an
            empty histogram.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; use one of {list(THRESHOLD_RULES)}")
    if rule == "fixed":
        if not isinstance(fixed, int | float) or not 0.0 < float(fixed) < 1.0:
            raise ValueError(f"fixed threshold must be in (0, 1), got {fixed!r}")
        return float(fixed)
    if h.rows == 0:
        raise StepInputError(f"choose_threshold: rule '{rule}' needs scored rows, the histogram is empty")
    tp_at, fp_at = _predicted_positive_counts(h)
    edges = np.arange(1, h.bins)  # candidate thresholds edges / bins, strictly inside (0, 1)
    tp = tp_at[edges].astype(np.float64)
    fp = fp_at[edges].astype(np.float64)
    fn = h.total_positives - tp
    if rule == "max_f1":
        if h.total_positives == 0:
            raise StepInputError("choose_threshold: rule 'max_f1' needs positive rows, the histogram has none")
        f1 = 2.0 * tp / (2.0 * tp + fp + fn)  # the denominator is >= 2 * positives > 0
        tied = edges[f1 == f1.max()]
    else:
        if cost is None:
            raise ValueError("choose_threshold: rule 'min_cost' needs cost=CostConfig(false_positive=..., ...)")
        total = cost.false_positive * fp + cost.false_negative * fn
        best = float(total.min())
        tied = edges[total <= best + _COST_TIE_RTOL * max(1.0, abs(best))]
    # |k / bins - 0.5| in integers; argmin returns the first (lowest) of equally close edges.
    chosen = int(tied[np.argmin(np.abs(2 * tied - h.bins))])
    return chosen / h.bins


def importance_kind(model_stage: Any) -> str:
    """What :func:`feature_importances` gives for this model: the report's axis label and table header."""
    name = type(model_stage.stages[-1] if hasattr(model_stage, "stages") else model_stage).__name__
    if name.startswith(("RandomForest", "GBT")):
        return "split importance: Spark's featureImportances, the share of the trees' gain from the feature"
    if name == "LogisticRegressionModel":
        return "coefficient: the change in log-odds per unit of the feature (as the model sees it)"
    if name.startswith(("LinearSVC", "LinearRegression")):
        return "coefficient: the model's weight of the feature (as the model sees it)"
    return ""


def feature_importances(model_stage: Any, names: Sequence[str]) -> list[tuple[str, float]]:
    """Per-feature weights of a fitted Spark ML classifier or regressor, largest absolute value first.

    Logistic regression and linear SVC give their coefficients (a two-class multinomial logistic
    regression gives ``coef[1] - coef[0]``, the log-odds coefficient of the positive class); a
    logistic regression over more than two classes has one coefficient per class and feature and
    gives, per feature, the largest absolute coefficient over the classes (so its weights are
    never negative). Linear regression gives its coefficients; random forests and GBTs, classifiers
    and regressors, give ``featureImportances``. Other models (e.g. a multilayer perceptron) have
    no such weights and give ``[]``. A ``PipelineModel`` uses its last stage. Equal absolute values
    keep the order of ``names``.

    Args:
        model_stage: The fitted model stage (or the fitted pipeline that ends in it).
        names: One name per slot of the model's feature vector (see ``deltaml.ml.features.feature_names``).

    Returns:
        ``(name, value)`` pairs sorted by ``abs(value)``, descending.

    Raises:
        ValueError: The model has a different number of weights than ``names``.
    """
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import (
        GBTClassificationModel,
        LinearSVCModel,
        LogisticRegressionModel,
        RandomForestClassificationModel,
    )
    from pyspark.ml.regression import GBTRegressionModel, LinearRegressionModel, RandomForestRegressionModel

    if isinstance(model_stage, PipelineModel):
        if not model_stage.stages:
            return []
        model_stage = model_stage.stages[-1]
    if isinstance(model_stage, LogisticRegressionModel):
        if model_stage.numClasses > 2:  # one row of coefficients per class
            values = np.abs(model_stage.coefficientMatrix.toArray()).max(axis=0)
        elif model_stage.coefficientMatrix.numRows == 2:  # family="multinomial" on two classes
            matrix = model_stage.coefficientMatrix.toArray()
            values = matrix[1] - matrix[0]
        else:
            values = model_stage.coefficients.toArray()
    elif isinstance(model_stage, LinearSVCModel | LinearRegressionModel):
        values = model_stage.coefficients.toArray()
    elif isinstance(
        model_stage,
        RandomForestClassificationModel | GBTClassificationModel | RandomForestRegressionModel | GBTRegressionModel,
    ):
        values = model_stage.featureImportances.toArray()
    else:
        return []
    names = list(names)
    if len(values) != len(names):
        raise ValueError(
            f"feature_importances: {type(model_stage).__name__} has {len(values)} weights but {len(names)} "
            "names were given; take the names from the same fitted pipeline (deltaml.ml.features.feature_names)"
        )
    pairs = [(name, float(value)) for name, value in zip(names, values, strict=True)]
    return sorted(pairs, key=lambda pair: -abs(pair[1]))


def multiclass_confusion(
    scored: DataFrame, num_classes: int, label_col: str = "y", pred_col: str = "pred"
) -> list[list[int]]:
    """The exact ``k x k`` confusion matrix of class indices, in one Spark aggregation over all rows.

    At most ``k * k + 1`` grouped rows reach the driver, whatever the size of ``scored``.

    Args:
        scored: Rows with the true and the predicted class index (``0.0 .. k - 1``, as Spark ML's
            ``StringIndexer`` and classifiers write them).
        num_classes: The number of classes ``k``.
        label_col: The true class index column.
        pred_col: The predicted class index column.

    Returns:
        ``counts[i][j]``: the rows of true class ``i`` predicted as class ``j``.

    Raises:
        ValueError: ``num_classes`` is not an integer in ``[2, 1000]``.
        StepInputError: A column is missing, or rows have a null, NaN or non-integer index or one
            outside ``[0, k)`` (the message counts them).
    """
    _check_int("num_classes", num_classes, 2, MAX_CLASSES)
    _check_scored_columns(scored, label_col, pred_col, "multiclass_confusion", "pred_col", "prediction")
    actual, predicted = F.col(label_col).try_cast("double"), F.col(pred_col).try_cast("double")
    valid = _class_index_is_valid(actual, num_classes) & _class_index_is_valid(predicted, num_classes)
    grouped = (
        scored.select(
            F.when(valid, actual.cast("int")).alias("actual"),
            F.when(valid, predicted.cast("int")).alias("predicted"),
        )
        .groupBy("actual", "predicted")
        .agg(F.count(F.lit(1)).alias("rows"))
        .collect()
    )
    counts = [[0] * num_classes for _ in range(num_classes)]
    invalid = 0
    for row in grouped:
        if row["actual"] is None:
            invalid += int(row["rows"])
        else:
            counts[row["actual"]][row["predicted"]] += int(row["rows"])
    if invalid:
        total = invalid + sum(sum(row) for row in counts)
        raise StepInputError(
            f"multiclass_confusion: {invalid} of {total} rows have a null, NaN or non-integer class index or one "
            f"outside [0, {num_classes}) in '{label_col}' or '{pred_col}'; drop or fix them before evaluating"
        )
    return counts


def per_class_metrics(confusion: list[list[int]], labels: Sequence[str]) -> list[dict[str, float | str | int]]:
    """Precision, recall, F1 and support of each class, from the confusion matrix (no Spark job).

    A ratio whose denominator is 0 (a class never predicted, or without rows) is 0.0, as
    scikit-learn's ``precision_recall_fscore_support(..., zero_division=0)`` gives it.

    Args:
        confusion: ``k x k`` counts from :func:`multiclass_confusion` (row: true class).
        labels: The ``k`` class labels, in class index order.

    Returns:
        One dict per class, in index order: ``label``, ``precision``, ``recall``, ``f1``, ``support``
        (the rows of that class).

    Raises:
        ValueError: ``confusion`` is not a ``k x k`` matrix of non-negative integers with
            ``k = len(labels)``.
    """
    cells = _confusion_cells(confusion, labels)
    true_positives = np.diag(cells)
    support = cells.sum(axis=1)
    predicted = cells.sum(axis=0)
    return [
        {
            "label": str(label),
            "precision": _ratio(true_positives[i], predicted[i]),
            "recall": _ratio(true_positives[i], support[i]),
            "f1": _ratio(2 * true_positives[i], support[i] + predicted[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    ]


def residual_histogram(
    scored: DataFrame, bins: int = 40, label_col: str = "y", pred_col: str = "pred"
) -> ResidualHistogram:
    """Count the residuals ``pred - y`` of all rows per bin of equal width, in two Spark jobs.

    The first job finds the rows, the smallest, largest and mean residual and the quantiles
    :data:`RESIDUAL_QUANTILES`; the second counts the rows per bin (at most ``bins`` grouped rows
    reach the driver). Cache ``scored`` if it is expensive to compute.

    Args:
        scored: Rows with a numeric label and a numeric prediction.
        bins: Bins of equal width from the smallest to the largest residual.
        label_col: The actual value column.
        pred_col: The predicted value column.

    Returns:
        The bin edges and counts, the mean residual and the residual quantiles.

    Raises:
        ValueError: ``bins`` is not an integer in ``[1, 10_000]``.
        StepInputError: A column is missing, rows have a null, NaN or infinite value (the message
            counts them), or there are no rows.
    """
    _check_int("bins", bins, 1, MAX_RESIDUAL_BINS)
    _check_scored_columns(scored, label_col, pred_col, "residual_histogram", "pred_col", "prediction")
    actual, predicted = F.col(label_col).try_cast("double"), F.col(pred_col).try_cast("double")
    raw_residual = predicted - actual
    valid = _is_finite(actual) & _is_finite(predicted) & _is_finite(raw_residual)
    residual = F.when(valid, raw_residual)
    summary = _single_row(
        scored.agg(
            F.count(residual).alias("rows"),
            F.count(F.when(~valid, F.lit(1))).alias("invalid"),
            F.min(residual).alias("lo"),
            F.max(residual).alias("hi"),
            F.avg(residual).alias("mean"),
            F.percentile_approx(residual, list(RESIDUAL_QUANTILES)).alias("quantiles"),
        ),
        "residual_histogram",
    )
    _require_valid_rows(summary, "residual_histogram", label_col, pred_col)
    edges = _equal_width_edges(float(summary["lo"]), float(summary["hi"]), bins)
    grouped = (
        scored.where(valid)
        .select(_bin_index(raw_residual, edges).alias("bin"))
        .groupBy("bin")
        .agg(F.count(F.lit(1)).alias("rows"))
        .collect()
    )
    counts = np.zeros(bins, dtype=np.int64)
    for row in grouped:
        counts[row["bin"]] += int(row["rows"])
    return ResidualHistogram(
        edges=edges,
        counts=counts,
        mean=float(summary["mean"]),
        quantiles={q: float(v) for q, v in zip(RESIDUAL_QUANTILES, summary["quantiles"], strict=True)},
    )


def predicted_vs_actual(
    scored: DataFrame, bins: int = 30, label_col: str = "y", pred_col: str = "pred"
) -> PredictedVsActualGrid:
    """A 2-D histogram of (actual, predicted) over all rows, in two Spark jobs.

    The first job finds the shared axis range (the smallest and the largest value of either
    column), the second counts the rows per pair of bins, grouped in Spark: at most ``bins ** 2``
    grouped rows reach the driver, and the plot shows every row, not a sample. Cache ``scored`` if
    it is expensive to compute.

    Args:
        scored: Rows with a numeric label and a numeric prediction.
        bins: Bins of equal width per axis.
        label_col: The actual value column.
        pred_col: The predicted value column.

    Returns:
        The grid: ``counts[i][j]`` rows have the actual value in bin ``i`` and the prediction in
        bin ``j``, as ``numpy.histogram2d(actual, predicted, bins, range=[(lo, hi)] * 2)`` counts.

    Raises:
        ValueError: ``bins`` is not an integer in ``[1, 500]``.
        StepInputError: A column is missing, rows have a null, NaN or infinite value (the message
            counts them), or there are no rows.
    """
    _check_int("bins", bins, 1, MAX_GRID_BINS)
    _check_scored_columns(scored, label_col, pred_col, "predicted_vs_actual", "pred_col", "prediction")
    actual, predicted = F.col(label_col).try_cast("double"), F.col(pred_col).try_cast("double")
    valid = _is_finite(actual) & _is_finite(predicted)
    summary = _single_row(
        scored.agg(
            F.count(F.when(valid, F.lit(1))).alias("rows"),
            F.count(F.when(~valid, F.lit(1))).alias("invalid"),
            F.least(F.min(F.when(valid, actual)), F.min(F.when(valid, predicted))).alias("lo"),
            F.greatest(F.max(F.when(valid, actual)), F.max(F.when(valid, predicted))).alias("hi"),
        ),
        "predicted_vs_actual",
    )
    _require_valid_rows(summary, "predicted_vs_actual", label_col, pred_col)
    edges = _equal_width_edges(float(summary["lo"]), float(summary["hi"]), bins)
    grouped = (
        scored.where(valid)
        .select(_bin_index(actual, edges).alias("actual"), _bin_index(predicted, edges).alias("predicted"))
        .groupBy("actual", "predicted")
        .agg(F.count(F.lit(1)).alias("rows"))
        .collect()
    )
    counts = [[0] * bins for _ in range(bins)]
    for row in grouped:
        counts[row["actual"]][row["predicted"]] += int(row["rows"])
    return PredictedVsActualGrid(lo=float(edges[0]), hi=float(edges[-1]), bins=bins, counts=counts)


def _check_scored_columns(
    scored: DataFrame,
    label_col: str,
    prob_col: str,
    where: str,
    value_arg: str = "prob_col",
    value_name: str = "probability",
) -> None:
    missing = [c for c in (label_col, prob_col) if c not in scored.columns]
    if missing:
        raise StepInputError(
            f"{where}: the scored rows lack column(s) {missing}; present: {scored.columns} "
            f"(pass label_col= and {value_arg}= to name the label and {value_name} columns)"
        )


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _is_finite(column: Column) -> Column:
    """Not null, not NaN and not infinite (never null itself)."""
    return column.isNotNull() & ~F.isnan(column) & (F.abs(column) < F.lit(math.inf))


def _class_index_is_valid(column: Column, num_classes: int) -> Column:
    """A whole number in ``[0, num_classes)``; ``x % 1.0`` is NaN for NaN and infinities, so no cast can fail."""
    return (
        column.isNotNull()
        & (column >= F.lit(0.0))
        & (column < F.lit(float(num_classes)))
        & (column % F.lit(1.0) == F.lit(0.0))
    )


def _single_row(aggregated: DataFrame, where: str) -> Row:
    row = aggregated.first()
    if row is None:  # an aggregation without grouping always returns one row
        raise StepInputError(f"{where}: the aggregation returned no row")
    return row


def _require_valid_rows(summary: Row, where: str, label_col: str, pred_col: str) -> None:
    """Refuse a summary (``rows``, ``invalid``) that counts unusable rows, or no row at all."""
    if summary["invalid"]:
        total = int(summary["invalid"]) + int(summary["rows"])
        raise StepInputError(
            f"{where}: {summary['invalid']} of {total} rows have a null, NaN or infinite value in '{label_col}' or "
            f"'{pred_col}' (or their difference overflows); drop or fix them before evaluating"
        )
    if not summary["rows"]:
        raise StepInputError(f"{where}: there are no scored rows to evaluate")


def _equal_width_edges(lo: float, hi: float, bins: int) -> npt.NDArray[np.float64]:
    """``numpy.histogram``'s edges: ``bins`` equal widths from lo to hi, widened by 0.5 each side if lo == hi."""
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    if not np.all(np.isfinite(edges)):
        raise StepInputError(f"the values range from {lo!r} to {hi!r}, too wide to split into bins of equal width")
    return edges


def _bin_index(value: Column, edges: npt.NDArray[np.float64]) -> Column:
    """The bin of a value in ``[edges[0], edges[-1]]``: ``edges[i] <= v < edges[i + 1]``, the last bin closed.

    ``floor((v - lo) * bins / (hi - lo))`` can be one off after rounding; it is corrected against
    the very edges numpy uses, as ``numpy.histogram`` corrects it.
    """
    bins = len(edges) - 1
    lo, hi = float(edges[0]), float(edges[-1])
    scaled = F.floor((value - F.lit(lo)) * F.lit(bins / (hi - lo)))
    raw = F.least(F.greatest(scaled, F.lit(0)), F.lit(bins - 1)).cast("int")
    edge = F.array(*[F.lit(float(e)) for e in edges])
    lower, upper = F.element_at(edge, raw + 1), F.element_at(edge, raw + 2)  # element_at counts from 1
    return F.when(value < lower, raw - 1).when((raw + 1 < bins) & (value >= upper), raw + 1).otherwise(raw)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _confusion_cells(confusion: list[list[int]], labels: Sequence[str]) -> npt.NDArray[np.int64]:
    k = len(labels)
    shape_ok = k >= 1 and len(confusion) == k and all(len(row) == k for row in confusion)
    values_ok = shape_ok and all(
        isinstance(count, int | np.integer) and not isinstance(count, bool) and count >= 0
        for row in confusion
        for count in row
    )
    if not values_ok:
        shape = f"{len(confusion)} rows of lengths {sorted({len(row) for row in confusion})}"
        raise ValueError(
            f"confusion must be a {k} x {k} matrix of non-negative integers (one row and column per label), "
            f"got {shape}; pass the matrix multiclass_confusion() returns and the labels in class index order"
        )
    return np.array(confusion, dtype=np.int64)


def _prepared_columns(label_col: str, prob_col: str) -> tuple[Column, Column, Column]:
    """(probability is usable, probability clipped into [0, 1], label as 1/0 or null when not 0.0/1.0)."""
    p = F.col(prob_col).cast("double")
    valid_p = p.isNotNull() & ~F.isnan(p)
    clipped = F.least(F.greatest(p, F.lit(0.0)), F.lit(1.0))
    y = F.col(label_col).cast("double")
    label = F.when(y == 1.0, F.lit(1)).when(y == 0.0, F.lit(0))
    return valid_p, clipped, label


def _predicted_positive_counts(h: ScoreHistogram) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """TP and FP when ``p >= k / bins`` predicts positive, for ``k = 0 .. bins`` (index ``k``)."""
    zero = np.zeros(1, dtype=np.int64)
    tp = np.concatenate([np.cumsum(h.positives[::-1])[::-1], zero])
    fp = np.concatenate([np.cumsum(h.negatives[::-1])[::-1], zero])
    return tp, fp


def _require_both_classes(h: ScoreHistogram, where: str) -> None:
    if h.total_positives == 0 or h.total_negatives == 0:
        raise StepInputError(
            f"{where}: needs rows of both classes, got {h.total_positives} positive and "
            f"{h.total_negatives} negative rows"
        )
