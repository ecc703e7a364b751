"""The validate step's report: the verdict, every table rule, every row rule and a profile of each contract column."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from deltaml.report.html import _html_page, _table


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "" if value is None else str(value)


def _marked_table(header: Sequence[str], rows: Sequence[tuple[Sequence[object], bool]]) -> str:
    """A table of words (every column left-aligned), broken rules highlighted, cells as :func:`_text` writes them."""
    return _table(header, [[_text(v) for v in cells] for cells, _ in rows], [broken for _, broken in rows], text=True)


def validation_page(report: dict[str, Any]) -> str:
    """The validation report as one self-contained HTML page (the dict is what ``validation/report.json`` holds)."""
    title = f"Validation of {report['table']} v{report['table_version']}: {report['status']}"
    problems = [f"<li><strong>{html.escape(m)}</strong></li>" for m in report["failures"]]
    problems += [f"<li>{html.escape(m)}</li>" for m in report["warnings"]]
    table_rules = [
        ((r["rule"], r["expected"], r["observed"], r["status"]), r["status"] != "passed")
        for r in report.get("table_rules", [])
    ]
    row_rules = [
        (
            (
                r["rule"],
                r["action"],
                r["detail"],
                r["rows_broken"],
                r["rows_passed"],
                "; ".join(f"{e['key']}: {e['value']}" for e in r["examples"]),
            ),
            r["rows_broken"] > 0,
        )
        for r in report["rules"]
    ]
    profile = [
        (
            (c["column"], c["type"], f"{c['null_fraction']:.2%}", c["min"], c["max"], c["distinct"]),
            c["null_fraction"] >= 1.0,
        )
        for c in report.get("columns", [])
    ]
    sections = [
        f"<p>{report['rows_in']:,} rows in, {report['rows_passed']:,} passed, {report['rows_quarantined']:,} "
        f"quarantined ({report['bad_fraction']:.2%} bad; maximum {report['max_bad_fraction']:.2%}). "
        "Broken rules are highlighted.</p>",
        *([f"<ul>{''.join(problems)}</ul>"] if problems else []),
        "<h2>Table rules</h2>",
        _marked_table(["rule", "expected", "observed", "status"], table_rules),
        "<h2>Row rules</h2>",
        _marked_table(
            ["rule", "action", "broken when the value", "rows broken", "rows passed", "examples (key: value)"],
            row_rules,
        ),
        "<h2>Columns</h2>",
        "<p>Each contract column over all rows in one pass; distinct counts are approximate (within about 1%).</p>",
        _marked_table(["column", "type", "null rate", "min", "max", "distinct"], profile),
    ]
    return _html_page(title, sections, [("pipeline", str(report["pipeline"]))])
