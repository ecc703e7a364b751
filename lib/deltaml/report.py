"""The evaluation report of a binary classifier: curves, confusion matrix, calibration, importances, threshold.

Everything that reads the scored rows runs in Spark over all of them, and only aggregates of
bounded size reach the driver: :func:`score_histogram` collects at most a few rows per bin, and
:func:`confusion_matrix` one row. The curves, the AUC, the calibration and the threshold choice
are then pure numpy over that histogram, so they cost no further Spark job.

Binning. Bin ``i`` of ``bins`` holds the rows with ``i / bins <= p < (i + 1) / bins`` (the last
bin also holds ``p == 1``), where ``p`` is first clipped into ``[0, 1]``. The edges are compared
as Python computes ``i / bins``, so at an edge threshold ``t = k / bins`` the rows the histogram
predicts positive (bins ``k`` and up) are exactly the rows with ``p >= t``: the confusion matrix
read from the histogram at a bin edge equals :func:`confusion_matrix` at that threshold.

Errors. Problems with the data (a missing column, a null or NaN probability, a label that is not
0.0/1.0, a histogram without both classes where a curve needs them) raise
:class:`~deltaml.errors.StepInputError`; problems with the arguments raise ``ValueError``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from deltaml.config import CostConfig
from deltaml.errors import StepInputError

LOG = logging.getLogger(__name__)

DEFAULT_BINS = 1000
MAX_BINS = 1_000_000
ThresholdRule = Literal["fixed", "max_f1", "min_cost"]
THRESHOLD_RULES: tuple[str, ...] = ("fixed", "max_f1", "min_cost")
PLOT_FILES = ("roc.png", "pr.png", "confusion_matrix.png", "calibration.png", "feature_importance.png")
# Two costs within this relative distance count as a tie (they differ only by float rounding).
_COST_TIE_RTOL = 1e-12
_CONFUSION_KEYS = ("tp", "fp", "tn", "fn")


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


def feature_importances(model_stage: Any, names: Sequence[str]) -> list[tuple[str, float]]:
    """Per-feature weights of a fitted Spark ML classifier, largest absolute value first.

    Logistic regression and linear SVC give their coefficients (a two-class multinomial logistic
    regression gives ``coef[1] - coef[0]``, the log-odds coefficient of the positive class);
    random forests and GBTs give ``featureImportances``. Other models (e.g. a multilayer
    perceptron) have no such weights and give ``[]``. A ``PipelineModel`` uses its last stage.
    Equal absolute values keep the order of ``names``.

    Args:
        model_stage: The fitted model stage (or the fitted pipeline that ends in it).
        names: One name per slot of the model's feature vector (see ``deltaml.features.feature_names``).

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

    if isinstance(model_stage, PipelineModel):
        if not model_stage.stages:
            return []
        model_stage = model_stage.stages[-1]
    if isinstance(model_stage, LogisticRegressionModel):
        if model_stage.numClasses > 2:
            return []
        if model_stage.coefficientMatrix.numRows == 2:  # family="multinomial" on two classes
            matrix = model_stage.coefficientMatrix.toArray()
            values = matrix[1] - matrix[0]
        else:
            values = model_stage.coefficients.toArray()
    elif isinstance(model_stage, LinearSVCModel):
        values = model_stage.coefficients.toArray()
    elif isinstance(model_stage, RandomForestClassificationModel | GBTClassificationModel):
        values = model_stage.featureImportances.toArray()
    else:
        return []
    names = list(names)
    if len(values) != len(names):
        raise ValueError(
            f"feature_importances: {type(model_stage).__name__} has {len(values)} weights but {len(names)} "
            "names were given; take the names from the same fitted pipeline (deltaml.features.feature_names)"
        )
    pairs = [(name, float(value)) for name, value in zip(names, values, strict=True)]
    return sorted(pairs, key=lambda pair: -abs(pair[1]))


def write_report(
    out_dir: Path,
    *,
    title: str,
    metrics: dict[str, float],
    histogram: ScoreHistogram,
    confusion: dict[str, int],
    threshold: float,
    calibration: list[CalibrationPoint],
    importances: list[tuple[str, float]],
    leaderboard: list[dict[str, object]] | None = None,
    top_features: int = 25,
) -> list[Path]:
    """Write the report's plots, ``metrics.json`` and one self-contained ``report.html`` into ``out_dir``.

    Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, so the process-wide
    backend and pyplot's figure registry are untouched. ``feature_importance.png`` is written only
    when ``importances`` is not empty (a stale one in ``out_dir`` is removed). The HTML embeds
    every PNG as a base64 data URI and escapes all text. In ``metrics.json`` a non-finite number
    becomes ``null``. Log the folder with ``mlflow.log_artifacts(out_dir)``.

    Args:
        out_dir: The folder to write into; created if missing. Files of the same names are replaced.
        title: The report's title.
        metrics: Metric name -> value, shown as a table.
        histogram: The score histogram of the evaluated rows (for the ROC and PR curves).
        confusion: ``tp``, ``fp``, ``tn``, ``fn`` at ``threshold`` (from :func:`confusion_matrix`).
        threshold: The decision threshold.
        calibration: Points from :func:`calibration_points`.
        importances: ``(name, value)`` pairs from :func:`feature_importances`, sorted.
        leaderboard: Optional rows of the tuning leaderboard (one dict per candidate).
        top_features: How many features the importance plot and table show.

    Returns:
        The written files: the PNGs, ``metrics.json`` and ``report.html``.

    Raises:
        ValueError: ``confusion`` lacks one of ``tp``, ``fp``, ``tn``, ``fn``, or ``top_features < 1``.
        StepInputError: The histogram lacks positives or negatives.
    """
    missing = [key for key in _CONFUSION_KEYS if key not in confusion]
    if missing:
        raise ValueError(f"confusion lacks {missing}; pass the dict confusion_matrix() returns")
    if top_features < 1:
        raise ValueError(f"top_features must be at least 1, got {top_features}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    top = importances[:top_features]
    plots: dict[str, bytes] = {
        "roc.png": _png(_plot_roc(histogram, confusion)),
        "pr.png": _png(_plot_pr(histogram, confusion)),
        "confusion_matrix.png": _png(_plot_confusion(confusion, threshold)),
        "calibration.png": _png(_plot_calibration(calibration)),
    }
    if top:
        plots["feature_importance.png"] = _png(_plot_importances(top))
    else:
        (out_dir / "feature_importance.png").unlink(missing_ok=True)
    written: list[Path] = []
    for name, data in plots.items():
        path = out_dir / name
        path.write_bytes(data)
        written.append(path)
    document = {
        "title": title,
        "threshold": threshold,
        "metrics": metrics,
        "confusion_matrix": {key: int(confusion[key]) for key in _CONFUSION_KEYS},
        "calibration": [asdict(point) for point in calibration],
        "feature_importances": [[name, value] for name, value in importances],
        "leaderboard": leaderboard,
        "histogram_bins": histogram.bins,
    }
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n")
    written.append(metrics_path)
    html_path = out_dir / "report.html"
    html_path.write_text(
        _render_html(title, metrics, histogram, confusion, threshold, calibration, top, leaderboard, plots),
        encoding="utf-8",
    )
    written.append(html_path)
    LOG.info("wrote the evaluation report (%d files) to %s", len(written), out_dir)
    return written


def _check_scored_columns(scored: DataFrame, label_col: str, prob_col: str, where: str) -> None:
    missing = [c for c in (label_col, prob_col) if c not in scored.columns]
    if missing:
        raise StepInputError(
            f"{where}: the scored rows lack column(s) {missing}; present: {scored.columns} "
            "(pass label_col= and prob_col= to name the label and probability columns)"
        )


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


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


# ---- plots -------------------------------------------------------------------------------


def _new_axes(width: float = 5.0, height: float = 4.5) -> tuple[Figure, Axes]:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    figure.clear()
    return buffer.getvalue()


def _rate(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _plot_roc(h: ScoreHistogram, confusion: dict[str, int]) -> Figure:
    fpr, tpr = roc_points(h)
    figure, ax = _new_axes()
    ax.plot(fpr, tpr, color="tab:blue", label=f"ROC (binned AUC {auc(h):.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance")
    point = (
        _rate(confusion["fp"], confusion["fp"] + confusion["tn"]),
        _rate(confusion["tp"], confusion["tp"] + confusion["fn"]),
    )
    ax.plot(*point, "o", color="tab:red", label="chosen threshold")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _plot_pr(h: ScoreHistogram, confusion: dict[str, int]) -> Figure:
    recall, precision = pr_points(h)
    figure, ax = _new_axes()
    ax.plot(recall, precision, color="tab:blue", drawstyle="steps-post", label="precision-recall")
    prevalence = h.total_positives / h.rows
    ax.axhline(prevalence, color="grey", linestyle="--", linewidth=1, label=f"positive rate {prevalence:.3f}")
    point = (
        _rate(confusion["tp"], confusion["tp"] + confusion["fn"]),
        _rate(confusion["tp"], confusion["tp"] + confusion["fp"]),
    )
    ax.plot(*point, "o", color="tab:red", label="chosen threshold")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left")
    figure.tight_layout()
    return figure


def _plot_confusion(confusion: dict[str, int], threshold: float) -> Figure:
    cells = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]], dtype=np.float64)
    figure, ax = _new_axes(4.5, 4.0)
    ax.imshow(cells, cmap="Blues")
    brightest = cells.max() if cells.max() > 0 else 1.0
    for (i, j), count in np.ndenumerate(cells):
        color = "white" if count > brightest / 2 else "black"
        ax.text(j, i, f"{int(count):,}", ha="center", va="center", color=color, fontsize=12)
    ax.set_xticks([0, 1], ["predicted 0", "predicted 1"])
    ax.set_yticks([0, 1], ["actual 0", "actual 1"])
    ax.set_title(f"Confusion matrix at p >= {threshold:.4g}")
    figure.tight_layout()
    return figure


def _plot_calibration(calibration: list[CalibrationPoint]) -> Figure:
    figure, ax = _new_axes()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    if calibration:
        ax.plot(
            [c.mean_predicted for c in calibration],
            [c.observed_rate for c in calibration],
            "o-",
            color="tab:blue",
            label="model",
        )
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        title="Calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    figure.tight_layout()
    return figure


def _plot_importances(top: list[tuple[str, float]]) -> Figure:
    names = [name for name, _ in top][::-1]
    values = [value for _, value in top][::-1]
    figure, ax = _new_axes(7.0, max(2.5, 0.3 * len(top) + 1.2))
    colors = ["tab:blue" if v >= 0 else "tab:red" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    # parse_math=False: a feature name with '$' must not be read as mathtext.
    ax.set_yticks(range(len(names)), names, parse_math=False, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="weight (coefficient or importance)", title=f"Top {len(top)} features")
    figure.tight_layout()
    return figure


# ---- HTML ----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { color: #555; font-size: 0.9em; }
"""

_CAPTIONS = {
    "roc.png": "ROC curve (binned)",
    "pr.png": "Precision-recall curve (binned)",
    "confusion_matrix.png": "Confusion matrix",
    "calibration.png": "Calibration",
    "feature_importance.png": "Feature importance",
}


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return html.escape(f"{float(value):.6g}")
    return html.escape(str(value))


def _bin_label(point: CalibrationPoint) -> str:
    closing = "]" if point.upper >= 1.0 else ")"
    return f"[{point.lower:.3g}, {point.upper:.3g}{closing}"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(
        f'<th class="name">{html.escape(h)}</th>' if i == 0 else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="name">{_cell(v)}</td>' if i == 0 else f"<td>{_cell(v)}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _render_html(
    title: str,
    metrics: dict[str, float],
    histogram: ScoreHistogram,
    confusion: dict[str, int],
    threshold: float,
    calibration: list[CalibrationPoint],
    top: list[tuple[str, float]],
    leaderboard: list[dict[str, object]] | None,
    plots: dict[str, bytes],
) -> str:
    tp, fp, tn, fn = (int(confusion[k]) for k in _CONFUSION_KEYS)
    precision, recall = _rate(tp, tp + fp), _rate(tp, tp + fn)
    f1 = _rate(2 * tp, 2 * tp + fp + fn)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Metrics</h2>",
        _table(["metric", "value"], sorted(metrics.items())),
        "<h2>Decision threshold</h2>",
        f"<p>Predict positive when p &gt;= <strong>{html.escape(f'{threshold:.6g}')}</strong>.</p>",
        _table(["", "predicted 0", "predicted 1"], [["actual 0", tn, fp], ["actual 1", fn, tp]]),
        _table(["at the threshold", "value"], [["precision", precision], ["recall", recall], ["F1", f1]]),
    ]
    if leaderboard:
        columns: list[str] = []
        for entry in leaderboard:
            columns += [str(key) for key in entry if str(key) not in columns]
        rows = [[entry.get(c, "") for c in columns] for entry in leaderboard]
        parts += ["<h2>Leaderboard</h2>", _table(columns, rows)]
    parts.append("<h2>Plots</h2>")
    parts.append(
        f"<p>ROC and precision-recall curves come from a histogram of {histogram.bins} equal-width bins of p "
        f"over {histogram.rows:,} rows; scores within one bin count as tied.</p>"
    )
    parts.append('<div class="plots">')
    for name, data in plots.items():
        caption = html.escape(_CAPTIONS.get(name, name))
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    parts.append("</div>")
    if calibration:
        parts += [
            "<h2>Calibration</h2>",
            _table(
                ["p bin", "rows", "mean predicted", "observed rate"],
                [[_bin_label(c), c.rows, c.mean_predicted, c.observed_rate] for c in calibration],
            ),
        ]
    if top:
        parts += [f"<h2>Top {len(top)} features</h2>", _table(["feature", "weight"], top)]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
