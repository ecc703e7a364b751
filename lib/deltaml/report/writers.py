"""The evaluation reports of binary, multiclass and regression models: plots, tables, importances, threshold.

Everything that reads the scored rows runs in Spark over all of them, and only aggregates of
bounded size reach the driver: :func:`score_histogram` collects at most a few rows per bin, and
:func:`confusion_matrix` one row. The curves, the AUC, the calibration and the threshold choice
are then pure numpy over that histogram, so they cost no further Spark job. Multiclass and
regression reports work the same way: :func:`multiclass_confusion` collects at most ``k * k + 1``
rows, :func:`residual_histogram` and :func:`predicted_vs_actual` two Spark jobs each (the range,
then the counts per bin), so their plots show every row, not a sample.

Binning. Bin ``i`` of ``bins`` holds the rows with ``i / bins <= p < (i + 1) / bins`` (the last
bin also holds ``p == 1``), where ``p`` is first clipped into ``[0, 1]``. The edges are compared
as Python computes ``i / bins``, so at an edge threshold ``t = k / bins`` the rows the histogram
predicts positive (bins ``k`` and up) are exactly the rows with ``p >= t``: the confusion matrix
read from the histogram at a bin edge equals :func:`confusion_matrix` at that threshold.

Regression bins have equal width between the smallest and the largest value and are closed as
``numpy.histogram`` closes them: bin ``i`` holds ``edges[i] <= v < edges[i + 1]``, the last bin
also ``v == edges[-1]``, with ``edges = numpy.linspace(lo, hi, bins + 1)`` (``lo`` and ``hi``
widened by 0.5 when equal). Spark compares each value with those very edges, so its counts equal
numpy's on the same values.

Errors. Problems with the data (a missing column, a null or NaN probability, a label that is not
0.0/1.0, a class index out of range, a histogram without both classes where a curve needs them)
raise :class:`~deltaml.errors.StepInputError`; problems with the arguments raise ``ValueError``.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from deltaml.report.effects import EffectRow
from deltaml.report.html import (
    _effects_section,
    _figures_section,
    _gate_placeholder,
    _html_page,
    _importance_section,
    _jsonable,
    _leaderboard_section,
    _metrics_table,
    _render_html,
    _table,
)
from deltaml.report.plots import (
    _plot_calibration,
    _plot_confusion,
    _plot_drift_bars,
    _plot_importances,
    _plot_multiclass_confusion,
    _plot_overlay,
    _plot_pr,
    _plot_predicted_vs_actual,
    _plot_residuals,
    _plot_roc,
    _png,
)
from deltaml.report.statistics import (
    _CONFUSION_KEYS,
    CalibrationPoint,
    PredictedVsActualGrid,
    ResidualHistogram,
    ScoreHistogram,
    _confusion_cells,
    lift_table,
    per_class_metrics,
)

LOG = logging.getLogger(__name__)


PLOT_FILES = ("roc.png", "pr.png", "confusion_matrix.png", "calibration.png", "feature_importance.png")


MULTICLASS_PLOT_FILES = ("confusion_matrix.png", "confusion_matrix_normalized.png", "feature_importance.png")


REGRESSION_PLOT_FILES = ("residuals.png", "predicted_vs_actual.png", "feature_importance.png")


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
    header: Sequence[tuple[str, str]] = (),
    importance_kind: str = "",
    effects: Sequence[EffectRow] = (),
) -> list[Path]:
    """Write the report's plots, ``metrics.json`` and one self-contained ``report.html`` into ``out_dir``.

    Plots are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, so the process-wide
    backend and pyplot's figure registry are untouched. ``feature_importance.png`` is written only
    when ``importances`` is not empty (a stale one in ``out_dir`` is removed). The HTML embeds
    every PNG as a base64 data URI and escapes all text. In ``metrics.json`` a non-finite number
    becomes ``null``. Log the folder with ``log_folder(out_dir)``.

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
        header: What the report is about (``(name, value)`` pairs: model, runs, data, date, config), under the title.
        importance_kind: What the importances are (coefficients, split gains, permutation drops), for the axis.
        effects: How the predictions vary with the top features (:func:`deltaml.report.effects.feature_effects`).

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
    _add_importance_plot(plots, top, out_dir, importance_kind)
    lift = lift_table(histogram)
    document = {
        "title": title,
        "header": dict(header),
        "threshold": threshold,
        "lift": [asdict(row) for row in lift],
        "metrics": metrics,
        "confusion_matrix": {key: int(confusion[key]) for key in _CONFUSION_KEYS},
        "calibration": [asdict(point) for point in calibration],
        "feature_importances": [[name, value] for name, value in importances],
        "importance_kind": importance_kind,
        "feature_effects": [asdict(row) for row in effects],
        "leaderboard": leaderboard,
        "histogram_bins": histogram.bins,
    }
    page = _render_html(
        title,
        metrics,
        histogram,
        confusion,
        threshold,
        calibration,
        top,
        leaderboard,
        plots,
        lift,
        header,
        importance_kind,
        effects,
    )
    return _write_report_files(out_dir, plots, document, page, "binary")


def write_multiclass_report(
    out_dir: Path,
    *,
    title: str,
    metrics: dict[str, float],
    labels: Sequence[str],
    confusion: list[list[int]],
    importances: list[tuple[str, float]],
    leaderboard: list[dict[str, object]] | None = None,
    top_features: int = 25,
    header: Sequence[tuple[str, str]] = (),
    importance_kind: str = "",
    effects: Sequence[EffectRow] = (),
) -> list[Path]:
    """Write a multiclass classifier's plots, ``metrics.json`` and one self-contained ``report.html``.

    ``confusion_matrix.png`` shows the counts (row: true class, column: predicted class) and
    ``confusion_matrix_normalized.png`` each row divided by its class's rows (the diagonal is the
    recall). ``feature_importance.png`` is written only when ``importances`` is not empty (a stale
    one in ``out_dir`` is removed). The HTML and ``metrics.json`` also hold the per-class
    precision, recall, F1 and support (:func:`per_class_metrics`). Plots, HTML and JSON follow
    :func:`write_report`: Agg canvas, PNGs as data URIs, all text escaped, non-finite numbers as
    ``null``.

    Args:
        out_dir: The folder to write into; created if missing. Files of the same names are replaced.
        title: The report's title.
        metrics: Metric name -> value, shown as a table.
        labels: The class labels, in class index order.
        confusion: ``k x k`` counts from :func:`multiclass_confusion`, ``k = len(labels)``.
        importances: ``(name, value)`` pairs from :func:`feature_importances`, sorted.
        leaderboard: Optional rows of the tuning leaderboard (one dict per candidate).
        top_features: How many features the importance plot and table show.
        header: What the report is about (``(name, value)`` pairs: model, runs, data, date, config), under the title.
        importance_kind: What the importances are (coefficients, split gains, permutation drops), for the axis.
        effects: How the predictions vary with the top features (:func:`deltaml.report.effects.feature_effects`).

    Returns:
        The written files: the PNGs, ``metrics.json`` and ``report.html``.

    Raises:
        ValueError: ``confusion`` is not ``k x k`` non-negative integers, or ``top_features < 1``.
    """
    per_class = per_class_metrics(confusion, labels)
    if top_features < 1:
        raise ValueError(f"top_features must be at least 1, got {top_features}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [str(label) for label in labels]
    cells = _confusion_cells(confusion, labels).astype(np.float64)
    support = cells.sum(axis=1, keepdims=True)
    normalized = np.divide(cells, support, out=np.full_like(cells, np.nan), where=support > 0)
    top = importances[:top_features]
    plots: dict[str, bytes] = {
        "confusion_matrix.png": _png(_plot_multiclass_confusion(cells, names, normalized=False)),
        "confusion_matrix_normalized.png": _png(_plot_multiclass_confusion(normalized, names, normalized=True)),
    }
    _add_importance_plot(plots, top, out_dir, importance_kind)
    document = {
        "title": title,
        "header": dict(header),
        "task": "multiclass",
        "metrics": metrics,
        "labels": names,
        "confusion_matrix": [[int(count) for count in row] for row in confusion],
        "per_class": per_class,
        "feature_importances": [[name, value] for name, value in importances],
        "importance_kind": importance_kind,
        "feature_effects": [asdict(row) for row in effects],
        "leaderboard": leaderboard,
    }
    rows = [[name, *(int(count) for count in row)] for name, row in zip(names, confusion, strict=True)]
    sections = [
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        *_gate_placeholder(),
        "<h2>Per class</h2>",
        _table(
            ["class", "precision", "recall", "F1", "support"],
            [[m["label"], m["precision"], m["recall"], m["f1"], m["support"]] for m in per_class],
        ),
        "<h2>Confusion matrix</h2>",
        "<p>Rows: the true class; columns: the predicted class.</p>",
        _table(["actual \\ predicted", *names], rows),
        *_leaderboard_section(leaderboard),
        "<h2>Plots</h2>",
        f"<p>Computed in Spark over all {int(cells.sum()):,} rows.</p>",
        *_figures_section(plots),
        *_importance_section(top, importance_kind),
        *_effects_section(effects, "multiclass"),
    ]
    return _write_report_files(out_dir, plots, document, _html_page(title, sections, header), "multiclass")


def write_regression_report(
    out_dir: Path,
    *,
    title: str,
    metrics: dict[str, float],
    residuals: ResidualHistogram,
    grid: PredictedVsActualGrid,
    importances: list[tuple[str, float]],
    leaderboard: list[dict[str, object]] | None = None,
    top_features: int = 25,
    header: Sequence[tuple[str, str]] = (),
    importance_kind: str = "",
    effects: Sequence[EffectRow] = (),
) -> list[Path]:
    """Write a regressor's plots, ``metrics.json`` and one self-contained ``report.html`` into ``out_dir``.

    ``residuals.png`` is the histogram of ``prediction - actual``; ``predicted_vs_actual.png`` the
    2-D histogram of all rows with a logarithmic colour scale (empty cells blank) and the line
    ``y = x`` of perfect predictions. ``feature_importance.png`` is written only when
    ``importances`` is not empty (a stale one in ``out_dir`` is removed). Plots, HTML and JSON
    follow :func:`write_report`: Agg canvas, PNGs as data URIs, all text escaped, non-finite
    numbers as ``null``.

    Args:
        out_dir: The folder to write into; created if missing. Files of the same names are replaced.
        title: The report's title.
        metrics: Metric name -> value, shown as a table.
        residuals: From :func:`residual_histogram`.
        grid: From :func:`predicted_vs_actual`.
        importances: ``(name, value)`` pairs from :func:`feature_importances`, sorted.
        leaderboard: Optional rows of the tuning leaderboard (one dict per candidate).
        top_features: How many features the importance plot and table show.
        header: What the report is about (``(name, value)`` pairs: model, runs, data, date, config), under the title.
        importance_kind: What the importances are (coefficients, split gains, permutation drops), for the axis.
        effects: How the predictions vary with the top features (:func:`deltaml.report.effects.feature_effects`).

    Returns:
        The written files: the PNGs, ``metrics.json`` and ``report.html``.

    Raises:
        ValueError: ``top_features < 1``.
    """
    if top_features < 1:
        raise ValueError(f"top_features must be at least 1, got {top_features}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    top = importances[:top_features]
    plots: dict[str, bytes] = {
        "residuals.png": _png(_plot_residuals(residuals)),
        "predicted_vs_actual.png": _png(_plot_predicted_vs_actual(grid)),
    }
    _add_importance_plot(plots, top, out_dir, importance_kind)
    document = {
        "title": title,
        "header": dict(header),
        "task": "regression",
        "metrics": metrics,
        "residuals": {
            "rows": residuals.rows,
            "mean": residuals.mean,
            "quantiles": residuals.quantiles,
            "edges": residuals.edges.tolist(),
            "counts": residuals.counts.tolist(),
        },
        "predicted_vs_actual": asdict(grid),
        "feature_importances": [[name, value] for name, value in importances],
        "importance_kind": importance_kind,
        "feature_effects": [asdict(row) for row in effects],
        "leaderboard": leaderboard,
    }
    summary: list[list[object]] = [["rows", residuals.rows], ["mean (bias)", residuals.mean]]
    summary += [[f"quantile {q:g}", value] for q, value in residuals.quantiles.items()]
    sections = [
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        *_gate_placeholder(),
        "<h2>Residuals (prediction - actual)</h2>",
        _table(["residual", "value"], summary),
        *_leaderboard_section(leaderboard),
        "<h2>Plots</h2>",
        f"<p>Computed in Spark over all {residuals.rows:,} rows: the residuals in {residuals.bins} bins, "
        f"predicted vs actual in {grid.bins} x {grid.bins} bins.</p>",
        *_figures_section(plots),
        *_importance_section(top, importance_kind),
        *_effects_section(effects, "regression"),
    ]
    return _write_report_files(out_dir, plots, document, _html_page(title, sections, header), "regression")


def _add_importance_plot(plots: dict[str, bytes], top: list[tuple[str, float]], out_dir: Path, kind: str) -> None:
    """Add ``feature_importance.png`` when there are importances; else remove a stale one from ``out_dir``."""
    if top:
        plots["feature_importance.png"] = _png(_plot_importances(top, kind))
    else:
        (out_dir / "feature_importance.png").unlink(missing_ok=True)


def _drift_table(rows: Sequence[dict[str, Any]]) -> str:
    """The monitor's long rows as one row per feature with a column per metric."""
    metrics: list[str] = []
    by_feature: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in rows:
        metric = str(row["metric"])
        if metric not in metrics:
            metrics.append(metric)
        by_feature.setdefault((str(row["feature"]), str(row["kind"])), {})[metric] = row

    def cell(row: dict[str, Any] | None) -> str:
        if row is None:
            return ""
        value = row["value"]
        text = f"{value:.4g}" if isinstance(value, float | int) and value == value else str(value)
        return f"{text} (limit {row['threshold']:g})" if row["drifted"] and row["threshold"] is not None else text

    drifted = {key for key, cells in by_feature.items() if any(r["drifted"] for r in cells.values())}
    ordered = sorted(by_feature, key=lambda key: (key not in drifted, key[0]))
    table = [
        [name, kind, "yes" if key in drifted else "", *(cell(by_feature[key].get(m)) for m in metrics)]
        for key in ordered
        for name, kind in [key]
    ]
    return _table(["feature", "kind", "drifted", *metrics], table)


def _write_report_files(
    out_dir: Path, plots: dict[str, bytes], document: dict[str, Any], page: str, kind: str
) -> list[Path]:
    """Write the PNGs, ``metrics.json`` (non-finite numbers as null) and ``report.html``; return their paths."""
    written: list[Path] = []
    for name, data in plots.items():
        path = out_dir / name
        path.write_bytes(data)
        written.append(path)
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(_jsonable(document), indent=2, allow_nan=False) + "\n")
    written.append(metrics_path)
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    written.append(html_path)
    LOG.debug("wrote the %s evaluation report (%d files) to %s", kind, len(written), out_dir)
    return written


# ---- drift report --------------------------------------------------------------------------

# (name, reference label, bin labels, reference shares, current shares)
Overlay = tuple[str, str, Sequence[str], Sequence[float], Sequence[float]]


def write_drift_report(
    out_dir: Path, *, title: str, rows: Sequence[dict[str, Any]], share: float, overlays: Sequence[Overlay]
) -> list[Path]:
    """Write the monitor step's report: a drift bar chart, reference-vs-current overlays, the metric table.

    Args:
        out_dir: The folder to write into; created if missing.
        title: The report's title.
        rows: The monitor's rows (``feature``, ``kind``, ``metric``, ``value``, ``threshold``, ``drifted``).
        share: The drifted share of the features.
        overlays: ``(name, reference label, bin labels, reference shares, current shares)`` for the top
            drifted features (their reference is the train split) and the predictions (the test split).

    Returns:
        The written files: the PNGs, ``metrics.json`` and ``report.html``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    features = [r for r in rows if r["kind"] in ("numeric", "categorical")]
    drifted = {r["feature"] for r in features if r["drifted"]}
    psi = {r["feature"]: float(r["value"]) for r in features if r["metric"] == "psi"}
    limits = {float(r["threshold"]) for r in features if r["metric"] == "psi" and r["threshold"] is not None}
    limit = min(limits) if limits else None
    plots: dict[str, bytes] = {"drift_psi.png": _png(_plot_drift_bars(psi, drifted, limit))}
    for i, (name, reference_label, bins, reference, current) in enumerate(overlays):
        plots[f"overlay_{i + 1}.png"] = _png(_plot_overlay(name, bins, reference, current, reference_label))
    sections = [
        f"<p>Drifted share of features: <strong>{share:.0%}</strong>; drifted: "
        f"{html.escape(', '.join(sorted(drifted)) or 'none')}.</p>",
        "<h2>Plots</h2>",
        *_figures_section(plots),
        "<h2>Metrics</h2>",
        "<p>One row per feature, drifted first; a value past its limit is marked with its limit.</p>",
        _drift_table(rows),
    ]
    document = {"title": title, "drifted_share": share, "rows": list(rows)}
    return _write_report_files(out_dir, plots, document, _html_page(title, sections), "drift")
