"""What a config's Spark SQL text may say, checked when the config loads: no Spark session, no data.

Derived ``sql`` features and the source's ``derive``/``filter`` are row-level expressions: they see
one row and produce one value. They are parsed with sqlglot's Spark dialect, so a typo fails
``check-config`` in a second instead of the fit minutes later, and the parse tree says which
columns an expression reads (case-insensitively, as Spark resolves them), which the label-leakage
check needs. Subqueries, table reads, aggregates, windows and the JVM reflection functions are
refused: they read other rows or other tables, or run arbitrary code in the driver's JVM.

Table names reach SQL statements, so they are checked here as identifiers too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import sqlglot
from sqlglot import expressions as exp
from sqlglot.errors import ParseError, TokenError

# Functions that call into the JVM (``java_method('java.lang.System', 'exit', 0)`` stops the driver)
# or read files; none computes a feature from a row.
FORBIDDEN_FUNCTIONS = frozenset({"java_method", "reflect", "try_reflect", "read_files", "input_file_name"})

_PLAIN = r"[A-Za-z_][A-Za-z0-9_]*"
_QUOTED = r"`(?:[^`]|``)+`"
_TABLE_NAME = re.compile(rf"^(?:{_PLAIN}|{_QUOTED})(?:\.(?:{_PLAIN}|{_QUOTED})){{0,2}}$")


def parse_row_expression(text: str, what: str) -> exp.Expr:
    """Parse one Spark SQL row-level expression; ``ValueError`` naming ``what`` if it is not one.

    Args:
        text: The expression, e.g. ``monthly_charges * 12``.
        what: How the error names it, e.g. ``derived feature 'yearly'``.
    """
    try:
        tree: exp.Expr = sqlglot.parse_one(text, read="spark")
    except (ParseError, TokenError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{what}: {text!r} is not a valid Spark SQL expression ({reason})") from None
    if isinstance(tree, exp.Alias):
        raise ValueError(f"{what}: {text!r} names its result with AS; give the expression only")
    if not isinstance(tree, exp.Condition | exp.Func | exp.Query | exp.Subquery):
        raise ValueError(f"{what}: {text!r} is a statement, not an expression; give one row-level expression")
    for node in tree.walk():
        if isinstance(node, exp.Query | exp.Subquery | exp.Table):
            raise ValueError(f"{what}: {text!r} reads a table or a subquery; an expression may use only its row")
        if isinstance(node, exp.Window | exp.AggFunc):
            raise ValueError(
                f"{what}: {text!r} aggregates over rows ({node.sql(dialect='spark')[:60]}); an expression sees one "
                "row (use a window feature for aggregates over events)"
            )
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in FORBIDDEN_FUNCTIONS:
                raise ValueError(f"{what}: {text!r} calls {name}(), which runs JVM code or reads files; not allowed")
    return tree


def columns_read(tree: exp.Expr) -> list[str]:
    """The columns an expression reads, in order, once each (a struct field ``s.f`` reads ``s``).

    Lambda parameters (``x`` in ``transform(a, x -> x + 1)``) are not columns and are left out.
    """
    found: list[str] = []
    for column in tree.find_all(exp.Column):
        parts = [part.name for part in column.parts]
        if parts and parts[0] not in found:
            found.append(parts[0])
    return found


def check_row_expression(
    text: str,
    what: str,
    *,
    forbidden: Iterable[str] = (),
    allowed: Iterable[str] | None = None,
    why_forbidden: str = "",
) -> None:
    """Raise ``ValueError`` unless ``text`` is a row-level expression reading only what it may.

    Args:
        text: The Spark SQL expression.
        what: How the error names it.
        forbidden: Columns it may not read, matched case-insensitively (Spark resolves names that way).
        allowed: If given, the only columns it may read (case-insensitively).
        why_forbidden: The reason appended to the error for a forbidden column.
    """
    tree = parse_row_expression(text, what)
    read = columns_read(tree)
    banned = {name.lower() for name in forbidden}
    hit = [name for name in read if name.lower() in banned]
    if hit:
        raise ValueError(f"{what}: {text!r} reads {hit[0]!r}{why_forbidden}")
    if allowed is not None:
        listed = {name.lower() for name in allowed}
        extra = [name for name in read if name.lower() not in listed]
        if extra:
            raise ValueError(
                f"{what}: {text!r} reads {extra} which its 'columns' does not list; add them to 'columns' "
                "(scoring reads and fingerprints exactly the listed columns)"
            )


def check_table_name(name: str, what: str) -> None:
    """Raise ``ValueError`` unless ``name`` is 1 to 3 dot-separated identifiers, each plain or back-quoted."""
    if not _TABLE_NAME.match(name):
        raise ValueError(
            f"{what}: {name!r} is not a table name; give 1 to 3 dot-separated parts (catalog.schema.table), "
            "each letters, digits and underscores, or back-quoted like `my table`"
        )
