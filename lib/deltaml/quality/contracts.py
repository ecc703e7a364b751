"""Data contracts: schema drift, row rules and table rules checked in Spark, with a verdict per rule."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deltaml.columns import (
    CORRUPT_RECORD,
    VIOLATIONS_COL,
    WARNINGS_COL,
)
from deltaml.config.schema import Action, ContractConfig
from deltaml.errors import StepInputError

CORRUPT_RECORD_COL = CORRUPT_RECORD


_FLOATING = (T.DoubleType, T.FloatType)


_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


@dataclass(frozen=True)
class RowRule:
    """One row-level rule: its id (``column.kind``), what it checks, what a break costs, and the test."""

    rule_id: str
    column: str
    kind: str
    action: Action
    broken: Column
    detail: str


@dataclass
class SchemaReport:
    """Schema drift of a DataFrame against a contract, and the DataFrame with coercions applied."""

    df: DataFrame
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    coerced: dict[str, tuple[str, str]] = field(default_factory=dict)


def check_schema(df: DataFrame, contract: ContractConfig, step: str, ignore: tuple[str, ...] = ()) -> SchemaReport:
    """Compare ``df``'s schema with the contract and apply ``schema_policy``.

    Args:
        df: The data to check.
        contract: The contract; its ``columns`` name the expected columns and types.
        step: The step name, for messages.
        ignore: Columns deltaml adds itself (ingest columns), never reported as new.

    Returns:
        The report: ``failures`` and ``warnings`` as one-line messages naming column, expected
        and found; ``df`` with type-mismatched columns cast where the policy is ``coerce``.
    """
    policy = contract.schema_policy
    report = SchemaReport(df)
    present = dict(df.dtypes)
    uncastable: set[str] = set()  # their type failure says it all: no rule of theirs is checked
    for column, spec in contract.columns.items():
        if column not in present:
            message = (
                f"step '{step}': column '{column}' is missing (the contract expects it; present: {sorted(present)})"
            )
            (report.failures if policy.missing_column == "fail" else report.warnings).append(message)
            continue
        if spec.type is None or present[column] == spec.type:
            continue
        message = f"step '{step}': column '{column}' has type {present[column]}, the contract says {spec.type}"
        if policy.type_mismatch == "fail":
            report.failures.append(message + " (fix the source or set schema_policy.type_mismatch: coerce)")
        elif policy.type_mismatch == "warn":
            report.warnings.append(message)
        elif not _castable(df, column, spec.type):
            uncastable.add(column)
            report.failures.append(
                f"step '{step}': column '{column}' has type {present[column]}, which cannot be cast to the "
                f"contract's {spec.type}; fix the source, or change contract.columns.{column}.type"
            )
        else:
            report.coerced[column] = (present[column], spec.type)
            report.warnings.append(message + "; coerced, values that do not convert break rule " + f"{column}.type")
    extra = sorted(set(present) - set(contract.columns) - set(ignore) - {CORRUPT_RECORD_COL})
    if extra and contract.columns and policy.extra_column != "ignore":
        message = f"step '{step}': column(s) {extra} are not in the contract (add them to contract.columns)"
        (report.failures if policy.extra_column == "fail" else report.warnings).append(message)
    report.failures += _rule_type_problems(df, contract, step, report.coerced, uncastable)
    for column, (_, target) in report.coerced.items():
        report.df = report.df.withColumn(f"_original_{column}", F.col(column)).withColumn(
            column, F.expr(f"try_cast(`{column}` AS {target})")
        )
    return report


def _castable(df: DataFrame, column: str, target: str) -> bool:
    """Whether Spark can cast the column to ``target`` at all (a struct cannot become a double); no data is read."""
    with _expected_analysis_error():
        try:
            df.select(F.expr(f"try_cast(`{column}` AS {target})")).schema  # noqa: B018 - analyse the plan now
        except AnalysisException:
            return False
    return True


@contextmanager
def _expected_analysis_error() -> Iterator[None]:
    """pyspark logs each analysis error with its query context at ERROR; one that is handled here is no news."""
    from pyspark.logger import PySparkLogger

    loggers = [PySparkLogger.getLogger(name) for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger")]
    saved = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in zip(loggers, saved, strict=True):
            logger.disabled = disabled


def _rule_type_problems(
    df: DataFrame, contract: ContractConfig, step: str, coerced: dict[str, tuple[str, str]], skip: set[str]
) -> list[str]:
    """Rules that cannot apply to the columns as they are: a typo in a rule's column, a range on text."""
    types = {f.name: f.dataType for f in df.schema.fields}
    problems = []
    if contract.unique is not None:
        absent = [c for c in contract.unique.columns if c not in types]
        if absent:
            problems.append(f"step '{step}': contract.unique names column(s) {absent}, which the data does not have")
    if contract.freshness is not None:
        column = contract.freshness.column
        if column not in types:
            problems.append(f"step '{step}': contract.freshness names column '{column}', which the data does not have")
        elif not isinstance(types[column], T.TimestampType | T.TimestampNTZType | T.DateType):
            problems.append(
                f"step '{step}': contract.freshness column '{column}' is {types[column].simpleString()}; "
                "it must be a timestamp or a date"
            )
    for column, spec in contract.columns.items():
        ranged = spec.min is not None or spec.max is not None
        numeric = column in coerced or (column in types and isinstance(types[column], _NUMERIC))
        if ranged and column in types and not numeric and column not in skip:
            problems.append(
                f"step '{step}': contract.columns.{column} has min/max but the column is "
                f"{types[column].simpleString()}; give it a numeric type"
            )
    return problems


def row_rules(df: DataFrame, contract: ContractConfig, coerced: dict[str, tuple[str, str]]) -> list[RowRule]:
    """The row rules of the contract for the columns ``df`` has, as Spark boolean expressions (True = broken)."""
    types = {f.name: f.dataType for f in df.schema.fields}
    rules: list[RowRule] = []
    if CORRUPT_RECORD_COL in types:
        rules.append(
            RowRule(
                "row.malformed",
                CORRUPT_RECORD_COL,
                "malformed",
                "quarantine",
                F.col(CORRUPT_RECORD_COL).isNotNull(),
                "the source line could not be parsed",
            )
        )
    for column, spec in contract.columns.items():
        if column not in types:
            continue
        col = F.col(f"`{column}`")
        dtype = types[column]
        checks: list[tuple[str, Column, str]] = []
        if column in coerced:
            checks.append(("type", F.col(f"_original_{column}").isNotNull() & col.isNull(), f"not a {spec.type}"))
        if not spec.nullable:
            # A value that did not convert breaks the type rule, not this one.
            original = F.col(f"_original_{column}") if column in coerced else col
            checks.append(("not_null", original.isNull(), "is null"))
        if spec.finite and isinstance(dtype, _FLOATING):
            infinite = F.isnan(col) | col.isin(float("inf"), float("-inf"))
            checks.append(("finite", col.isNotNull() & infinite, "is NaN or infinite"))
        # NaN and infinities are the finite rule's to report, not the range's.
        ranged = (
            ~(F.isnan(col) | col.isin(float("inf"), float("-inf"))) if isinstance(dtype, _FLOATING) else F.lit(True)
        )
        if spec.min is not None and isinstance(dtype, _NUMERIC):
            checks.append(("min", ranged & (col < F.lit(spec.min)), f"is below {spec.min:g}"))
        if spec.max is not None and isinstance(dtype, _NUMERIC):
            checks.append(("max", ranged & (col > F.lit(spec.max)), f"is above {spec.max:g}"))
        if spec.allowed is not None:
            checks.append(("allowed", col.isNotNull() & ~col.isin(*spec.allowed), f"is not one of {spec.allowed}"))
        if spec.regex is not None:
            checks.append(("regex", col.isNotNull() & ~col.cast("string").rlike(spec.regex), f"!~ {spec.regex}"))
        rules.extend(
            RowRule(f"{column}.{kind}", column, kind, spec.action_for(kind), broken, detail)
            for kind, broken, detail in checks
        )
    if contract.unique is not None and all(c in types for c in contract.unique.columns):
        window = Window.partitionBy(*[F.col(f"`{c}`") for c in contract.unique.columns])
        rules.append(
            RowRule(
                f"{'+'.join(contract.unique.columns)}.unique",
                ",".join(contract.unique.columns),
                "unique",
                contract.unique.action,
                F.count(F.lit(1)).over(window) > 1,
                "the key occurs more than once",
            )
        )
    return rules


def annotate(df: DataFrame, rules: list[RowRule]) -> DataFrame:
    """Add ``_violations`` (quarantine and fail rules broken) and ``_warnings`` (warn rules broken) arrays."""

    def names(selected: list[RowRule]) -> Column:
        if not selected:
            return F.array().cast("array<string>")
        flagged = F.array(*[F.when(r.broken, F.lit(r.rule_id)) for r in selected])
        return F.filter(flagged, lambda x: x.isNotNull())

    blocking = [r for r in rules if r.action != "warn"]
    warning = [r for r in rules if r.action == "warn"]
    return df.withColumn(VIOLATIONS_COL, names(blocking)).withColumn(WARNINGS_COL, names(warning))


# The types summarize() takes min, max and an approximate distinct count of (by simpleString, without parameters).
_ORDERED_TYPES = frozenset(
    {"tinyint", "smallint", "int", "bigint", "float", "double", "decimal", "string", "varchar", "char", "boolean"}
    | {"date", "timestamp", "timestamp_ntz"}
)


def summarize(annotated: DataFrame, rules: list[RowRule], contract: ContractConfig, label: str) -> dict[str, Any]:
    """One aggregation pass: rows, bad rows, breaks per rule and the inputs of the table rules.

    Args:
        annotated: Output of :func:`annotate`.
        rules: The row rules that annotated it.
        contract: The contract (table rules).
        label: The label column, for ``labels_present``.

    Returns:
        A small dict: ``rows``, ``bad_rows``, ``breaks`` per rule id, ``non_null`` per contract
        column, ``newest`` freshness value, ``label_counts`` per expected label value, and
        ``profile``: per contract column its ``min``, ``max`` (None for types without an order)
        and approximate ``distinct`` count (HyperLogLog++, within about 1%), in the same pass.
    """
    aggregations: list[Column] = [
        F.count(F.lit(1)).alias("rows"),
        F.sum((F.size(VIOLATIONS_COL) > 0).cast("long")).alias("bad_rows"),
    ]
    for i, rule in enumerate(rules):
        aggregations.append(
            F.sum(
                F.array_contains(F.col(VIOLATIONS_COL if rule.action != "warn" else WARNINGS_COL), rule.rule_id).cast(
                    "long"
                )
            ).alias(f"r{i}")
        )
    columns = [c for c in contract.columns if c in annotated.columns]
    types = dict(annotated.dtypes)
    # min, max and distinct for the types that have an order (not arrays, maps, structs, binary, variant, geometry).
    ordered = [c for c in columns if types[c].split("(")[0] in _ORDERED_TYPES]
    for i, column in enumerate(columns):
        aggregations.append(F.count(F.col(f"`{column}`")).alias(f"nn{i}"))
        if column in ordered:
            values = F.col(f"`{column}`")
            aggregations += [F.min(values).alias(f"lo{i}"), F.max(values).alias(f"hi{i}")]
            aggregations.append(F.approx_count_distinct(values, rsd=0.01).alias(f"nd{i}"))
    if contract.freshness is not None and contract.freshness.column in annotated.columns:
        aggregations.append(F.max(F.col(f"`{contract.freshness.column}`")).alias("newest"))
    labels = contract.labels_present if label in annotated.columns else None
    for i, value in enumerate(labels or []):
        aggregations.append(F.sum((F.col(f"`{label}`") == F.lit(value)).cast("long")).alias(f"l{i}"))
    row = annotated.agg(*aggregations).first()
    assert row is not None
    return {
        "rows": int(row["rows"]),
        "bad_rows": int(row["bad_rows"] or 0),
        "breaks": {rule.rule_id: int(row[f"r{i}"] or 0) for i, rule in enumerate(rules)},
        "non_null": {column: int(row[f"nn{i}"]) for i, column in enumerate(columns)},
        "newest": row["newest"] if "newest" in row.asDict() else None,
        "label_counts": {str(v): int(row[f"l{i}"] or 0) for i, v in enumerate(labels or [])},
        "profile": {
            column: {
                "type": types[column],
                "min": row[f"lo{i}"] if column in ordered else None,
                "max": row[f"hi{i}"] if column in ordered else None,
                # HyperLogLog can overshoot: never more distinct values than values (a key reads as unique).
                "distinct": min(int(row[f"nd{i}"]), int(row[f"nn{i}"])) if column in ordered else None,
            }
            for i, column in enumerate(columns)
        },
    }


def table_failures(
    summary: dict[str, Any], contract: ContractConfig, step: str, now: datetime
) -> tuple[list[str], list[str]]:
    """Table-level verdicts as one-line messages: ``(failures, warnings)``.

    ``now`` is a naive local datetime, as Spark returns timestamps to Python.
    """
    failures: list[str] = []
    warnings: list[str] = []
    rows = summary["rows"]
    if contract.min_rows is not None and rows < contract.min_rows:
        failures.append(f"step '{step}': the table has {rows} rows, the contract needs at least {contract.min_rows}")
    if rows == 0 and contract.min_rows is None:
        failures.append(f"step '{step}': the table is empty; ingest data first")
    for column, non_null in summary["non_null"].items():
        if rows > 0 and non_null == 0:
            failures.append(
                f"step '{step}': column '{column}' is null in all {rows} rows (check the source or its parsing)"
            )
    absent = [value for value, count in summary["label_counts"].items() if count == 0]
    if absent and rows > 0:
        failures.append(
            f"step '{step}': label value(s) {absent} do not occur; the contract expects {contract.labels_present}"
        )
    if contract.freshness is not None:
        message = stale_message(contract, summary["newest"], step, now)
        if message:
            (failures if contract.freshness.action == "fail" else warnings).append(message)
    return failures, warnings


def stale_message(contract: ContractConfig, newest: datetime | None, step: str, now: datetime) -> str:
    """Why the freshness rule is broken at ``now`` ("" when it holds); ``newest`` is the column's newest value."""
    assert contract.freshness is not None
    if newest is None:
        return f"step '{step}': freshness column '{contract.freshness.column}' has no values"
    age = now - newest
    if age <= timedelta(hours=contract.freshness.max_age_hours):
        return ""
    return (
        f"step '{step}': the newest '{contract.freshness.column}' is {newest:%Y-%m-%d %H:%M}, "
        f"{age.total_seconds() / 3600:.1f} h old; the contract allows {contract.freshness.max_age_hours:g} h"
    )


def check_columns(df: DataFrame, columns: list[str], step: str, where: str) -> None:
    """Fail with one line if ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StepInputError(
            f"step '{step}': {where} has no column(s) {missing}; present: {df.columns} "
            "(fix the features section or the source)"
        )
