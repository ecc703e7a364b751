"""The report's HTML: one self-contained page with tables and inline figures."""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from deltaml.report.effects import EffectRow
from deltaml.report.plots import _rate
from deltaml.report.statistics import _CONFUSION_KEYS, CalibrationPoint, LiftRow, ScoreHistogram


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


# ---- HTML ----------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figcaption { color: #555; font-size: 0.9em; }
td.pass { background: #e6f4ea; } td.fail, tr.fail td { background: #fce8e6; font-weight: 600; }
"""


_CAPTIONS = {
    "roc.png": "ROC curve (binned)",
    "pr.png": "Precision-recall curve (binned)",
    "confusion_matrix.png": "Confusion matrix",
    "calibration.png": "Calibration",
    "feature_importance.png": "Feature importance",
    "confusion_matrix_normalized.png": "Confusion matrix, rows normalised (the diagonal is the recall)",
    "residuals.png": "Residuals (prediction - actual)",
    "predicted_vs_actual.png": "Predicted vs actual (all rows, log colour scale)",
}


def _cell(value: object) -> str:
    if isinstance(value, float | np.floating):
        return html.escape(f"{float(value):.6g}")
    return html.escape(str(value))


def _bin_label(point: CalibrationPoint) -> str:
    closing = "]" if point.upper >= 1.0 else ")"
    return f"[{point.lower:.3g}, {point.upper:.3g}{closing}"


def _metrics_table(metrics: dict[str, float]) -> str:
    """Validation beside test, one row per metric under its readable name (``AUC-ROC``), 4 decimals."""
    from deltaml.tasks import METRICS

    labels = {m.name: m.label for m in METRICS}
    splits = ("validation", "test")
    names: list[str] = []
    values: dict[tuple[str, str], float] = {}
    others: list[tuple[str, float]] = []
    for key, value in metrics.items():
        split, _, name = key.partition("_")
        if split not in splits or not name:
            others.append((key, value))
            continue
        if name not in names:
            names.append(name)
        values[(split, name)] = value
    order = [m.name for m in METRICS]
    names.sort(key=lambda n: (order.index(n) if n in order else len(order), n))

    def shown(name: str, split: str) -> str:
        if (split, name) not in values:
            return ""
        value = values[(split, name)]
        if name == "rows" and float(value).is_integer():
            return f"{int(value):,}"
        return "n/a" if value != value else f"{value:.4f}"  # NaN: undefined on these rows

    rows = [[labels.get(n, n.replace("_", " ")), *(shown(n, s) for s in splits)] for n in names]
    rows += [[k.replace("_", " "), "", f"{v:.6g}"] for k, v in sorted(others)]
    return _table(["metric", *splits], rows)


def _header_table(header: Sequence[tuple[str, str]], first: str = "") -> list[str]:
    """``(name, value)`` rows as a two-column table (the report's header, the gate's comparison); ``first`` is a
    class for the first value (the gate's decision: ``pass`` or ``fail``)."""
    if not header:
        return []
    mark = f' class="{first}"' if first else ""
    body = "".join(
        f'<tr><th class="name">{html.escape(name)}</th><td{mark if i == 0 else ""}>{html.escape(value)}</td></tr>'
        for i, (name, value) in enumerate(header)
    )
    return [f'<table class="header"><tbody>{body}</tbody></table>']


def _table(
    header: Sequence[str], rows: Sequence[Sequence[object]], broken: Sequence[bool] = (), text: bool = False
) -> str:
    """A table: the first column left-aligned (``text``: every column, for tables of words); the rows whose
    ``broken`` is true are highlighted (``tr class="fail"``)."""
    name, fail = ' class="name"', ' class="fail"'

    def cell(tag: str, i: int) -> str:
        return f"<{tag}{name if text or i == 0 else ''}>"

    head = "".join(f"{cell('th', i)}{html.escape(h)}</th>" for i, h in enumerate(header))
    body = "".join(
        f"<tr{fail if i < len(broken) and broken[i] else ''}>"
        + "".join(f"{cell('td', j)}{_cell(v)}</td>" for j, v in enumerate(row))
        + "</tr>"
        for i, row in enumerate(rows)
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
    lift: list[LiftRow] | None = None,
    header: Sequence[tuple[str, str]] = (),
    importance_kind: str = "",
    effects: Sequence[EffectRow] = (),
) -> str:
    tp, fp, tn, fn = (int(confusion[k]) for k in _CONFUSION_KEYS)
    precision, recall = _rate(tp, tp + fp), _rate(tp, tp + fn)
    f1 = _rate(2 * tp, 2 * tp + fp + fn)
    parts = [
        *_page_head(title, header),
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        *_gate_placeholder(),
        "<h2>Decision threshold</h2>",
        f"<p>Predict positive when p &gt;= <strong>{html.escape(f'{threshold:.6g}')}</strong>.</p>",
        _table(["", "predicted 0", "predicted 1"], [["actual 0", tn, fp], ["actual 1", fn, tp]]),
        _table(["at the threshold", "value"], [["precision", precision], ["recall", recall], ["F1", f1]]),
        *_lift_section(lift or []),
        *_leaderboard_section(leaderboard),
    ]
    parts.append("<h2>Plots</h2>")
    parts.append(
        f"<p>ROC and precision-recall curves come from a histogram of {histogram.bins} equal-width bins of p "
        f"over {histogram.rows:,} rows; scores within one bin count as tied.</p>"
    )
    parts += _figures_section(plots)
    if calibration:
        parts += [
            "<h2>Calibration</h2>",
            _table(
                ["p bin", "rows", "mean predicted", "observed rate"],
                [[_bin_label(c), c.rows, c.mean_predicted, c.observed_rate] for c in calibration],
            ),
        ]
    parts += _importance_section(top, importance_kind)
    parts += _effects_section(effects, "binary")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _lift_section(lift: list[LiftRow]) -> list[str]:
    """The lift and gains table: who to contact first, and how many of the positives that finds."""
    if not lift:
        return []
    rows = [
        [
            f"{row.group} (top {row.group * 100 // len(lift)}%)",
            f"{row.score_low:.3f} to {row.score_high:.3f}",
            round(row.rows),
            round(row.positives),
            f"{row.positive_rate:.1%}",
            f"{row.lift:.2f}",
            f"{row.gain:.1%}",
            f"{row.cumulative_lift:.2f}",
        ]
        for row in lift
    ]
    header = ["group", "p range", "rows", "positives", "positive rate", "lift", "positives found", "cumulative lift"]
    return [
        f"<h2>Lift and gains by {'decile' if len(lift) == 10 else 'group'}</h2>",
        "<p>The rows ranked by predicted probability, highest first, in groups of equal size. Lift is a group's "
        "positive rate over the rate of all rows; positives found is the share of all positives in the groups "
        "so far (the gains curve).</p>",
        _table(header, rows),
    ]


# The evaluation report is written before the register step decides; register fills the part between these.
GATE_START = "<!-- deltaml:gate -->"
GATE_END = "<!-- /deltaml:gate -->"


def _gate_placeholder() -> list[str]:
    """Where the champion-vs-challenger comparison goes once the register step has decided."""
    return [
        "<h2>Champion vs challenger</h2>",
        GATE_START,
        "<p>Not decided yet: the register step compares this model with the current @champion on the same "
        "test rows and writes its decision here.</p>",
        GATE_END,
    ]


def gate_comparison(rows: Sequence[tuple[str, str]], promoted: bool) -> str:
    """The champion-vs-challenger table (``(name, value)`` rows); the first row, the decision, is highlighted."""
    return "".join(_header_table(rows, first="pass" if promoted else "fail"))


def with_gate_comparison(page: str, comparison: str) -> str:
    """``page`` with its gate part replaced by ``comparison`` (appended when the page has no gate part)."""
    start, end = page.find(GATE_START), page.find(GATE_END)
    if start < 0 or end < start:
        section = f"<h2>Champion vs challenger</h2>\n{GATE_START}\n{comparison}\n{GATE_END}\n</body>"
        return page.replace("</body>", section, 1)
    return f"{page[: start + len(GATE_START)]}\n{comparison}\n{page[end:]}"


def _page_head(title: str, header: Sequence[tuple[str, str]] = ()) -> list[str]:
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *_header_table(header),
    ]


def _html_page(title: str, sections: list[str], header: Sequence[tuple[str, str]] = ()) -> str:
    return "\n".join([*_page_head(title, header), *sections, "</body></html>"]) + "\n"


# The leaderboard's columns in this order whatever order its rows arrive in (a fit restored from an earlier
# run's record lists them sorted); the validation metric goes after the family, other columns before params.
_LEADERBOARD_FIRST = ("rank", "family")
_LEADERBOARD_LAST = ("trials", "max_evals", "failed", "seconds", "stopped", "params")


def _leaderboard_section(leaderboard: list[dict[str, object]] | None) -> list[str]:
    if not leaderboard:
        return []
    seen: list[str] = []
    for entry in leaderboard:
        seen += [str(key) for key in entry if str(key) not in seen]
    middle = sorted(c for c in seen if c not in _LEADERBOARD_FIRST + _LEADERBOARD_LAST)
    middle.sort(key=lambda c: not c.startswith("validation_"))
    columns = [c for c in _LEADERBOARD_FIRST if c in seen] + middle + [c for c in _LEADERBOARD_LAST if c in seen]
    rows = [[_params_text(e.get(c, "")) if c == "params" else e.get(c, "") for c in columns] for e in leaderboard]
    return ["<h2>Leaderboard</h2>", _table(columns, rows)]


def _params_text(params: object) -> str:
    """A trial's params as ``name=value`` pairs (numbers to 4 significant digits), not a JSON blob."""
    if isinstance(params, str):
        text = params
        try:
            params = json.loads(text) if text.strip() else {}
        except ValueError:
            return text
    if not isinstance(params, dict):
        return str(params)
    shown = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))
    return ", ".join(shown)


def _figures_section(plots: dict[str, bytes]) -> list[str]:
    parts = ['<div class="plots">']
    for name, data in plots.items():
        caption = html.escape(_CAPTIONS.get(name, name))
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    parts.append("</div>")
    return parts


_EFFECT_COLUMNS = {
    "binary": ("mean predicted p", "positive rate"),
    "multiclass": ("accuracy", ""),
    "regression": ("mean prediction", "mean actual"),
}


def _effects_section(effects: Sequence[EffectRow], task: str) -> list[str]:
    """How the predictions vary with each top feature: one table, a feature's groups together."""
    if not effects:
        return []
    predicted, actual = _EFFECT_COLUMNS[task]
    header = ["feature", "value", "rows", predicted, *([actual] if actual else [])]
    rows = [
        [
            e.feature,
            e.level,
            e.rows,
            f"{e.predicted:.4g}",
            *([f"{e.actual:.4g}" if e.actual is not None else ""] if actual else []),
        ]
        for e in effects
    ]
    shown = len({e.feature for e in effects})
    return [
        f"<h2>How the predictions vary with the top {shown} features</h2>",
        "<p>The test rows grouped by each feature (numeric features by quintile, categorical ones by level), "
        f"with the group's mean prediction{' beside its actual' if actual else ''}: where the model follows the "
        "data and where it is off. Features move together in real rows, so this is the model on the data as it "
        "is, not the effect of one feature alone.</p>",
        _table(header, rows),
    ]


def _importance_section(top: list[tuple[str, float]], kind: str = "") -> list[str]:
    if not top:
        return []
    about = [f"<p>{html.escape(kind[:1].upper() + kind[1:])}.</p>"] if kind else []
    return [f"<h2>Top {len(top)} features</h2>", *about, _table(["feature", kind.split(":")[0] or "weight"], top)]
