"""The report's figures, drawn with matplotlib's object API (no global state) into PNG bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from deltaml.report.statistics import (
    CalibrationPoint,
    PredictedVsActualGrid,
    ResidualHistogram,
    ScoreHistogram,
    auc,
    pr_points,
    roc_points,
)

# Confusion heatmaps print each cell's value up to this many classes; beyond, the colours alone.
_MAX_ANNOTATED_CLASSES = 20


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


def _plot_importances(top: list[tuple[str, float]], kind: str = "") -> Figure:
    names = [name for name, _ in top][::-1]
    values = [value for _, value in top][::-1]
    figure, ax = _new_axes(7.0, max(2.5, 0.3 * len(top) + 1.2))
    colors = ["tab:blue" if v >= 0 else "tab:red" for v in values]
    ax.barh(range(len(values)), values, color=colors)
    # parse_math=False: a feature name with '$' must not be read as mathtext.
    ax.set_yticks(range(len(names)), names, parse_math=False, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel=kind or "weight (coefficient or importance)", title=f"Top {len(top)} features")
    figure.tight_layout()
    return figure


def _plot_multiclass_confusion(cells: npt.NDArray[np.float64], labels: list[str], *, normalized: bool) -> Figure:
    k = len(labels)
    side = min(20.0, max(4.5, 0.45 * k + 2.5))
    figure, ax = _new_axes(side + 1.0, side)
    image = ax.imshow(cells, cmap="Blues", vmin=0.0, vmax=1.0 if normalized else None)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class" if normalized else "rows")
    if k <= _MAX_ANNOTATED_CLASSES:
        brightest = 1.0 if normalized else max(float(np.nanmax(cells)), 1.0)
        for (i, j), value in np.ndenumerate(cells):
            if math.isnan(value):
                continue  # a class without rows: its normalised row is undefined and left blank
            text = f"{value:.2f}" if normalized else f"{int(value):,}"
            color = "white" if value > brightest / 2 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9 if k > 8 else 11)
    # parse_math=False: a class label with '$' must not be read as mathtext.
    ax.set_xticks(range(k), labels, parse_math=False, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), labels, parse_math=False)
    title = "Confusion matrix, rows normalised (recall)" if normalized else "Confusion matrix"
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    figure.tight_layout()
    return figure


def _plot_residuals(residuals: ResidualHistogram) -> Figure:
    figure, ax = _new_axes(6.0, 4.5)
    ax.stairs(residuals.counts, residuals.edges, fill=True, color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", linewidth=0.8, label="no error")
    ax.axvline(residuals.mean, color="tab:red", linestyle="--", linewidth=1, label=f"mean {residuals.mean:.4g}")
    ax.set(
        xlabel="residual (prediction - actual)",
        ylabel="rows",
        title=f"Residuals of {residuals.rows:,} rows ({residuals.bins} bins)",
    )
    ax.legend(loc="upper right")
    figure.tight_layout()
    return figure


def _plot_predicted_vs_actual(grid: PredictedVsActualGrid) -> Figure:
    # counts[i][j] is (actual bin i, predicted bin j); pcolormesh wants rows along y (predicted).
    counts = np.asarray(grid.counts, dtype=np.float64).reshape(grid.bins, grid.bins).T
    edges = grid.edges
    figure, ax = _new_axes(6.0, 5.0)
    mesh = ax.pcolormesh(
        edges,
        edges,
        np.ma.masked_equal(counts, 0.0),  # empty cells stay blank: log(0) has no colour
        cmap="viridis",
        norm=LogNorm(vmin=1.0, vmax=max(2.0, float(counts.max()))),
    )
    figure.colorbar(mesh, ax=ax, label="rows (log scale)")
    ax.plot([grid.lo, grid.hi], [grid.lo, grid.hi], color="tab:red", linestyle="--", linewidth=1, label="y = x")
    ax.set(
        xlabel="actual",
        ylabel="predicted",
        title=f"Predicted vs actual, {grid.rows:,} rows",
        xlim=(grid.lo, grid.hi),
        ylim=(grid.lo, grid.hi),
        aspect="equal",
    )
    ax.legend(loc="upper left")
    figure.tight_layout()
    return figure


def _plot_drift_bars(psi: dict[str, float], drifted: set[str], threshold: float | None = None) -> Figure:
    names = sorted(psi, key=lambda n: psi[n])
    figure, axes = _new_axes(7.0, max(3.0, 0.28 * len(names) + 1.0))
    colours = ["#c0392b" if n in drifted else "#7f8c8d" for n in names]
    axes.barh(range(len(names)), [psi[n] for n in names], color=colours)
    axes.set_yticks(range(len(names)), labels=names, fontsize=8)
    if threshold is not None:
        # The limit is drawn and always in view: a PSI far below it must look small, not fill the width.
        axes.axvline(threshold, color="#c0392b", linestyle="--", linewidth=1, label=f"limit {threshold:g}")
        axes.set_xlim(0, max([threshold * 1.25, *(v * 1.05 for v in psi.values())]))
        axes.legend(fontsize=8, loc="lower right")
    axes.set_xlabel("PSI against the training profile (red: drifted on some metric)")
    figure.tight_layout()
    return figure


def _plot_overlay(
    name: str,
    bins: Sequence[str],
    reference: Sequence[float],
    current: Sequence[float],
    reference_label: str = "reference (train)",
) -> Figure:
    figure, axes = _new_axes(6.0, 3.8)
    positions = np.arange(len(bins))
    axes.bar(positions - 0.2, reference, width=0.4, label=reference_label, color="#2980b9")
    axes.bar(positions + 0.2, current, width=0.4, label="current", color="#e67e22")
    axes.set_xticks(positions, labels=[str(b)[:18] for b in bins], rotation=60, ha="right", fontsize=7)
    axes.set_ylabel("share of rows")
    axes.set_title(name, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure
