"""The validate step: the raw table against its contract; good rows to clean, bad rows to quarantine."""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from deltaml.columns import (
    INGEST_BATCH_COL,
    INGEST_COLUMNS,
    QUARANTINED_AT_COL,
    REPORT_HTML,
    REPORT_JSON,
    VIOLATIONS_COL,
    WARNINGS_COL,
)
from deltaml.config.schema import ContractConfig
from deltaml.errors import ContractError
from deltaml.io.catalog import append_rows, distinct_values, read_table, replace_where
from deltaml.io.tracking import active_run_id, log_dict, log_metrics, log_text
from deltaml.quality.contracts import (
    CORRUPT_RECORD_COL,
    RowRule,
    annotate,
    check_schema,
    row_rules,
    stale_message,
    summarize,
    table_failures,
)
from deltaml.report.validation import validation_page
from deltaml.steps.base import Step, StepContext, StepResult
from deltaml.steps.outputs import ValidateOutput

LOG = logging.getLogger(__name__)


EXAMPLES_PER_RULE = 5


def run_validate(ctx: StepContext) -> StepResult:
    """Check the raw table against the contract and split it into clean and quarantined rows.

    Nothing is written when the contract fails (schema drift set to fail, a table rule, a
    ``fail`` row rule, or more bad rows than ``max_bad_fraction``): the run stops with one
    line and the report in MLflow, and every table keeps its previous version.

    Raises:
        ContractError: The contract failed, or the row accounting did not add up.
    """
    cfg = ctx.config
    contract = cfg.contract
    if contract is None:
        raise ContractError(
            "step 'validate': the config has no 'contract' section; add one or run without --step validate"
        )
    raw, raw_version = read_table(ctx.spark, ctx.tables.raw, "validate")
    schema = check_schema(raw, contract, "validate", ignore=INGEST_COLUMNS)
    rules = row_rules(schema.df, contract, schema.coerced)
    annotated = annotate(schema.df, rules).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _validate(
            ctx, contract, raw, raw_version, schema.failures, schema.warnings, rules, annotated, schema.coerced
        )
    finally:
        annotated.unpersist()


def _validate(
    ctx: StepContext,
    contract: ContractConfig,
    raw: DataFrame,
    raw_version: int,
    schema_failures: list[str],
    schema_warnings: list[str],
    rules: list[RowRule],
    annotated: DataFrame,
    coerced: dict[str, tuple[str, str]],
) -> StepResult:
    cfg = ctx.config
    checked_at = datetime.now().replace(microsecond=0)
    summary = summarize(annotated, rules, contract, cfg.label.column)
    failures = list(schema_failures)
    table_fail, table_warn = table_failures(summary, contract, "validate", checked_at)
    failures += table_fail
    rows, bad = summary["rows"], summary["bad_rows"]
    for rule in rules:
        if rule.action == "fail" and summary["breaks"][rule.rule_id]:
            failures.append(
                f"step 'validate': rule {rule.rule_id} ({rule.column} {rule.detail}) broken by "
                f"{summary['breaks'][rule.rule_id]} rows and its action is fail"
            )
    fraction = bad / rows if rows else 0.0
    worst = sorted(
        ((n, r.rule_id) for r in rules if r.action != "warn" and (n := summary["breaks"][r.rule_id])), reverse=True
    )
    broken = ", ".join(f"{rid} {n}" for n, rid in worst[:5])
    # A small bad batch hides in a large table: each batch must keep under the limit on its own.
    per_batch = fraction <= contract.max_bad_fraction and bad and INGEST_BATCH_COL in annotated.columns
    over = _batches_over(annotated, contract.max_bad_fraction) if per_batch else []
    too_many_bad = fraction > contract.max_bad_fraction or bool(over)
    if fraction > contract.max_bad_fraction:
        failures.append(
            f"step 'validate': {bad} of {rows} rows ({fraction:.1%}) broke the contract, above max_bad_fraction "
            f"{contract.max_bad_fraction:.1%} ({broken}); fix the source or raise contract.max_bad_fraction"
        )
    for batch, batch_rows, batch_bad in over:
        failures.append(
            f"step 'validate': batch {batch}: {batch_bad} of {batch_rows} rows ({batch_bad / batch_rows:.1%}) "
            f"broke the contract, above max_bad_fraction {contract.max_bad_fraction:.1%} (the whole table: "
            f"{bad} of {rows}, {fraction:.1%}; {broken}); fix the source or raise contract.max_bad_fraction"
        )
    examples = _examples(annotated, rules, cfg.key) if (bad or any(summary["breaks"].values())) else {}
    report = _report(ctx, contract, summary, rules, examples, failures, schema_warnings + table_warn, raw_version)
    report["table_rules"] = _table_rules(
        summary, contract, (schema_failures, schema_warnings), too_many_bad, checked_at
    )
    log_dict(report, REPORT_JSON)
    log_text(validation_page(report), REPORT_HTML)
    log_metrics({"rows_in": float(rows), "rows_bad": float(bad), "bad_fraction": fraction})
    for warning in schema_warnings + table_warn:
        LOG.warning("%s", warning)
    if failures:
        more = f" (+{len(failures) - 1} more, see {REPORT_JSON} in MLflow)" if len(failures) > 1 else ""
        raise ContractError(failures[0] + more)

    batches = distinct_values(raw, INGEST_BATCH_COL) if INGEST_BATCH_COL in raw.columns else [f"v{raw_version}"]
    is_bad = F.size(VIOLATIONS_COL) > 0
    originals = [F.col(f"_original_{c}").alias(c) if c in coerced else F.col(f"`{c}`") for c in raw.columns]
    quarantined = annotated.where(is_bad).select(
        *originals, F.col(VIOLATIONS_COL), F.lit(checked_at).cast("timestamp").alias(QUARANTINED_AT_COL)
    )
    helper_columns = {VIOLATIONS_COL, WARNINGS_COL, CORRUPT_RECORD_COL, *(f"_original_{c}" for c in coerced)}
    clean = annotated.where(~is_bad).select(*[F.col(f"`{c}`") for c in annotated.columns if c not in helper_columns])
    # A column bronze gained (extra_column: warn) is carried on, not refused by Delta.
    quarantine_write = replace_where(
        ctx.spark, quarantined, ctx.tables.quarantine, INGEST_BATCH_COL, batches, merge_schema=True
    )
    clean_write = replace_where(ctx.spark, clean, ctx.tables.clean, INGEST_BATCH_COL, batches, merge_schema=True)
    if clean_write.rows_written + quarantine_write.rows_written != rows:
        raise ContractError(
            f"step 'validate': row accounting failed: {rows} rows in, {clean_write.rows_written} clean + "
            f"{quarantine_write.rows_written} quarantined written; rerun the step (its writes replace the batch)"
        )
    append_rows(ctx.spark, _quality_rows(ctx, report, checked_at), ctx.tables.quality)
    newest = summary["newest"].isoformat() if contract.freshness is not None and summary["newest"] else None
    return StepResult(
        output=ValidateOutput(clean_version=clean_write.version, freshness_newest=newest),  # rechecked on reuse
        metrics={
            "rows_clean": float(clean_write.rows_written),
            "rows_quarantined": float(quarantine_write.rows_written),
            "raw_table_version": float(raw_version),
            "clean_table_version": float(clean_write.version),
            "quarantine_table_version": float(quarantine_write.version),
        },
        tags={"clean_table": str(ctx.tables.clean), "quarantine_table": str(ctx.tables.quarantine)},
        summary=(
            f"{rows} rows: {clean_write.rows_written} clean -> {ctx.tables.clean} v{clean_write.version}, "
            f"{quarantine_write.rows_written} quarantined -> {ctx.tables.quarantine} v{quarantine_write.version}"
            + _warnings_clause(schema_warnings + table_warn)
        ),
    )


def _batches_over(annotated: DataFrame, limit: float) -> list[tuple[str, int, int]]:
    """``(batch id, rows, bad rows)`` of each ingest batch whose bad share is above ``limit``, most bad rows first.

    Filtered in Spark: only the batches that fail reach the driver, however many batches the table has.
    """
    counts = (
        annotated.groupBy(F.col(INGEST_BATCH_COL).alias("batch"))
        .agg(F.count(F.lit(1)).alias("rows"), F.sum((F.size(VIOLATIONS_COL) > 0).cast("long")).alias("bad"))
        .where(F.col("bad") > F.col("rows") * F.lit(limit))
        .collect()
    )
    return sorted(((str(r["batch"]), int(r["rows"]), int(r["bad"])) for r in counts), key=lambda t: (-t[2], t[0]))


def _warnings_clause(warnings: list[str], shown: int = 3) -> str:
    """The summary's warnings, each named (the first few; the report lists them all)."""
    if not warnings:
        return ""
    named = " | ".join(w.removeprefix("step 'validate': ") for w in warnings[:shown])
    more = f" (+{len(warnings) - shown} more in {REPORT_JSON})" if len(warnings) > shown else ""
    return f"; {len(warnings)} warning{'s' * (len(warnings) > 1)}: {named}{more}"


def _examples(annotated: DataFrame, rules: list[RowRule], key: str) -> dict[str, list[dict[str, Any]]]:
    """Up to five failing values per rule: one job over the broken rows, a handful of rows collected."""
    if not rules:
        return {}
    value: Column = F.lit(None).cast("string")
    for rule in rules:
        source = F.col(f"`{rule.column}`") if rule.kind != "unique" else F.lit(None)
        if rule.column in annotated.columns or rule.kind == "unique":
            value = F.when(F.col("_rule") == rule.rule_id, source.cast("string")).otherwise(value)
    key_col = F.col(f"`{key}`").cast("string") if key in annotated.columns else F.lit(None).cast("string")
    exploded = annotated.where((F.size(VIOLATIONS_COL) > 0) | (F.size(WARNINGS_COL) > 0)).select(
        F.explode(F.concat(VIOLATIONS_COL, WARNINGS_COL)).alias("_rule"), key_col.alias("key"), F.col("*")
    )
    ranked = exploded.select("_rule", "key", value.alias("value")).withColumn(
        "_n", F.row_number().over(Window.partitionBy("_rule").orderBy("key"))
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for row in ranked.where(F.col("_n") <= EXAMPLES_PER_RULE).collect():
        found.setdefault(row["_rule"], []).append({"key": row["key"], "value": row["value"]})
    return found


def _report(
    ctx: StepContext,
    contract: ContractConfig,
    summary: dict[str, Any],
    rules: list[RowRule],
    examples: dict[str, list[dict[str, Any]]],
    failures: list[str],
    warnings: list[str],
    raw_version: int,
) -> dict[str, Any]:
    rows, bad = summary["rows"], summary["bad_rows"]
    return {
        "pipeline": ctx.config.name,
        "table": str(ctx.tables.raw),
        "table_version": raw_version,
        "status": "failed" if failures else "passed",
        "rows_in": rows,
        "rows_passed": rows - bad,
        "rows_quarantined": 0 if failures else bad,
        "rows_bad": bad,
        "bad_fraction": bad / rows if rows else 0.0,
        "max_bad_fraction": contract.max_bad_fraction,
        "failures": failures,
        "warnings": warnings,
        "columns": [
            {
                "column": column,
                "type": found["type"],
                "null_fraction": 1 - summary["non_null"][column] / rows if rows else 0.0,
                "min": _plain(found["min"]),
                "max": _plain(found["max"]),
                "distinct": found["distinct"],
            }
            for column, found in summary["profile"].items()
        ],
        "rules": [
            {
                "rule": r.rule_id,
                "column": r.column,
                "kind": r.kind,
                "action": r.action,
                "detail": r.detail,
                "rows_broken": summary["breaks"][r.rule_id],
                "rows_passed": rows - summary["breaks"][r.rule_id],
                "examples": examples.get(r.rule_id, []),
            }
            for r in rules
        ],
    }


def _table_rules(
    summary: dict[str, Any],
    contract: ContractConfig,
    schema: tuple[list[str], list[str]],
    too_many_bad: bool,
    now: datetime,
) -> list[dict[str, str]]:
    """Every table-level rule with what it expects, what the table has and its status, broken or not.

    ``schema`` is the schema check's failures and warnings; ``too_many_bad`` whether the table or a batch
    broke ``max_bad_fraction``; ``now`` the time freshness is judged at (as :func:`table_failures` judged it).
    """
    rows, bad = summary["rows"], summary["bad_rows"]

    def status(failed: bool, warned: bool = False) -> str:
        return "failed" if failed else "warned" if warned else "passed"

    policy = contract.schema_policy
    found = [
        {
            "rule": "schema",
            "expected": f"missing column: {policy.missing_column}, extra column: {policy.extra_column}, "
            f"type mismatch: {policy.type_mismatch}",
            "observed": " | ".join(m.removeprefix("step 'validate': ") for m in schema[0] + schema[1])
            or "the columns and types of the contract",
            "status": status(bool(schema[0]), bool(schema[1])),
        },
        {
            "rule": "min_rows",
            "expected": f"at least {contract.min_rows if contract.min_rows is not None else 1:,} rows",
            "observed": f"{rows:,} rows",
            "status": status(rows < (contract.min_rows if contract.min_rows is not None else 1)),
        },
        {
            "rule": "max_bad_fraction",
            "expected": f"at most {contract.max_bad_fraction:.2%} of rows break a quarantine rule, in each batch",
            "observed": f"{bad:,} rows ({bad / rows if rows else 0.0:.2%})",
            "status": status(too_many_bad),
        },
    ]
    empty = [c for c, n in summary["non_null"].items() if rows > 0 and n == 0]
    found.append(
        {
            "rule": "columns have values",
            "expected": "no contract column null in every row",
            "observed": f"null in every row: {', '.join(empty)}" if empty else "every column has values",
            "status": status(bool(empty)),
        }
    )
    if contract.labels_present:
        counts = summary["label_counts"]
        found.append(
            {
                "rule": "labels_present",
                "expected": ", ".join(map(str, contract.labels_present)),
                "observed": ", ".join(f"{value}: {count:,} rows" for value, count in counts.items()),
                "status": status(any(count == 0 for count in counts.values()) and rows > 0),
            }
        )
    if contract.freshness is not None:
        newest = summary["newest"]
        stale = bool(stale_message(contract, newest, "validate", now))
        found.append(
            {
                "rule": "freshness",
                "expected": f"newest {contract.freshness.column} at most {contract.freshness.max_age_hours:g} h old",
                "observed": f"newest {newest:%Y-%m-%d %H:%M}" if newest is not None else "no values",
                "status": status(stale and contract.freshness.action == "fail", stale),
            }
        )
    return found


def _plain(value: Any) -> Any:
    """A profile's min or max as JSON holds it: numbers and booleans as they are, anything else as text."""
    if value is None or isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return str(value)


def _quality_rows(ctx: StepContext, report: dict[str, Any], checked_at: datetime) -> DataFrame:
    run_id = active_run_id()
    rows = [
        (
            ctx.config.name,
            run_id,
            checked_at,
            report["table"],
            int(report["table_version"]),
            r["rule"],
            r["column"],
            r["kind"],
            r["action"],
            int(r["rows_broken"]),
            int(report["rows_in"]),
        )
        for r in report["rules"]
    ]
    schema = (
        "pipeline string, run_id string, checked_at timestamp, table string, table_version long, rule string, "
        "column string, kind string, action string, rows_broken long, rows_checked long"
    )
    return ctx.spark.createDataFrame(rows, schema)


def recheck_freshness(ctx: StepContext, run_id: str) -> None:
    """A reused validate run checked freshness then; the same data may be too old now."""
    contract = ctx.config.contract
    restored = ctx.output(ValidateOutput)
    if contract is None or contract.freshness is None or restored is None:
        return
    newest = datetime.fromisoformat(restored.freshness_newest) if restored.freshness_newest else None
    message = stale_message(contract, newest, "validate", datetime.now())
    if not message:
        return
    message += f" (rechecked for the reused validate run {run_id})"
    if contract.freshness.action == "fail":
        raise ContractError(message)
    LOG.warning("%s", message)


STEP = Step(
    name="validate",
    run=run_validate,
    phase="train",
    sections=("contract", "key", "label"),
    tables=lambda ctx: [ctx.tables.raw, ctx.tables.clean, ctx.tables.quarantine, ctx.tables.quality],
    produces=ValidateOutput,
    # Without a contract there is nothing to validate: a full run goes from raw to split.
    in_default_run=lambda cfg: cfg.contract is not None,
    on_reuse=recheck_freshness,
)
