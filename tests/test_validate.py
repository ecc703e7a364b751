"""The validate step on bad data: exactly the bad rows quarantined with their reasons, or a clean failure."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deltaml.config.loader import load_config
from deltaml.errors import ConfigError, ContractError
from deltaml.io.catalog import table_exists
from deltaml.pipeline.runner import run_pipeline
from deltaml.steps import validate as validate_step
from deltaml.steps.base import StepContext
from tests.browser import rendered_text
from tests.conftest import write_config

SCHEMA = "id long, x double, cat string, code string, y string"
GOOD = [
    (1, 1.0, "a", "AB-1", "Yes"),
    (2, 2.0, "b", "AB-2", "No"),
    (3, 3.0, "a", "AB-3", "No"),
    (4, 4.0, "b", "AB-4", "Yes"),
]
CONTRACT: dict[str, Any] = {
    "max_bad_fraction": 0.5,
    "unique": {"columns": ["id"]},
    "labels_present": ["Yes", "No"],
    "columns": {
        "id": {"type": "bigint", "nullable": False},
        "x": {"type": "double", "nullable": False, "min": 0, "max": 100},
        "cat": {"type": "string", "allowed": ["a", "b"]},
        "code": {"type": "string", "regex": "^AB-[0-9]+$"},
        "y": {"type": "string", "nullable": False, "allowed": ["Yes", "No"]},
    },
}


# A second raw table, so the bad batch is validated alone, while clean and quarantine are the first run's.
FRESH_RAW_TABLES = {
    "raw": {"path": "raw2"},
    "split": {"path": "split"},
    "predictions": {"path": "predictions"},
    "clean": {"path": "raw_clean"},
    "quarantine": {"path": "raw_quarantine"},
}


def _config(tmp_path: Path, contract: dict[str, Any] | None = None, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "name": "tiny",
        "state_dir": str(tmp_path / "state"),
        "key": "id",
        "source": {"kind": "parquet", "path": str(tmp_path / "source")},
        "tables": {"raw": {"path": "raw"}, "split": {"path": "split"}, "predictions": {"path": "predictions"}},
        "label": {"column": "y", "positive": "Yes"},
        "features": {"numeric": ["x"], "categorical": ["cat"]},
        "mlflow": {"experiment": "tiny", "registered_model": "tiny"},
        "contract": contract if contract is not None else CONTRACT,
        **extra,
    }
    return write_config(tmp_path / "tiny.yml", data)


def _write_source(spark: SparkSession, tmp_path: Path, rows: list[tuple[Any, ...]], schema: str = SCHEMA) -> None:
    spark.createDataFrame(rows, schema).coalesce(1).write.mode("overwrite").parquet(str(tmp_path / "source"))


def _validate(conf: Path, spark: SparkSession, *overrides: str, force: bool = False) -> StepContext:
    loaded = load_config(conf, overrides=list(overrides))
    run_pipeline(loaded, steps=["ingest", "validate"], spark=spark, force=force)
    return StepContext(spark, loaded)


def _table(spark: SparkSession, ctx: StepContext, name: str) -> list[dict[str, Any]]:
    table = getattr(ctx.tables, name)
    return [r.asDict() for r in spark.read.format("delta").load(table.ref).orderBy("id").collect()]


def _quarantined(spark: SparkSession, ctx: StepContext) -> dict[int, list[str]]:
    return {r["id"]: sorted(r["_violations"]) for r in _table(spark, ctx, "quarantine")}


BAD_ROWS = {
    # id: (row, the rules it breaks)
    10: ((10, -5.0, "a", "AB-10", "No"), ["x.min"]),  # out of range
    11: ((11, 500.0, "a", "AB-11", "No"), ["x.max"]),
    12: ((12, None, "a", "AB-12", "No"), ["x.not_null"]),  # null in a non-nullable column
    13: ((13, math.nan, "a", "AB-13", "No"), ["x.finite"]),  # NaN and infinity
    14: ((14, math.inf, "b", "AB-14", "No"), ["x.finite"]),
    15: ((15, 1.0, "zzz", "AB-15", "No"), ["cat.allowed"]),  # a category the contract does not know
    16: ((16, 1.0, "a", "AB-16", "Maybe"), ["y.allowed"]),  # unexpected label value
    17: ((17, 1.0, "a", "XX", "No"), ["code.regex"]),
    18: ((18, -1.0, "zzz", None, None), ["cat.allowed", "x.min", "y.not_null"]),  # several rules at once
}


def test_bad_rows_go_to_quarantine_with_every_rule_they_broke(spark: SparkSession, tmp_path: Path) -> None:
    duplicate = (2, 9.0, "a", "AB-9", "No")  # key 2 twice: both copies are quarantined
    _write_source(spark, tmp_path, [*GOOD, duplicate, *(row for row, _ in BAD_ROWS.values())])
    ctx = _validate(_config(tmp_path, contract={**CONTRACT, "max_bad_fraction": 0.9}), spark)
    quarantine = _table(spark, ctx, "quarantine")
    assert sorted((r["id"], sorted(r["_violations"])) for r in quarantine) == sorted(
        [(2, ["id.unique"]), (2, ["id.unique"]), *((key, rules) for key, (_, rules) in BAD_ROWS.items())]
    )
    assert [r["id"] for r in _table(spark, ctx, "clean")] == [1, 3, 4]
    assert all(r["_ingest_batch_id"].startswith("src-") for r in quarantine)
    assert all(isinstance(r["_quarantined_at"], datetime) for r in quarantine)
    nan_row = next(r for r in quarantine if r["id"] == 13)
    assert math.isnan(nan_row["x"])  # original values are kept


def test_values_of_the_wrong_type_are_coerced_or_quarantined(spark: SparkSession, tmp_path: Path) -> None:
    rows = [(1, "1.5", "a", "AB-1", "Yes"), (2, "abc", "b", "AB-2", "No"), (3, "3", "a", "AB-3", "No")]
    _write_source(spark, tmp_path, rows, "id long, x string, cat string, code string, y string")
    ctx = _validate(_config(tmp_path), spark)
    assert _quarantined(spark, ctx) == {2: ["x.type"]}
    # The quarantine keeps the original value; the clean table has the contract's type.
    assert _table(spark, ctx, "quarantine")[0]["x"] == "abc"
    clean = spark.read.format("delta").load(ctx.tables.clean.ref)
    assert dict(clean.dtypes)["x"] == "double"
    assert [(r["id"], r["x"]) for r in clean.orderBy("id").collect()] == [(1, 1.5), (3, 3.0)]


def test_malformed_csv_lines_are_quarantined_with_their_text(spark: SparkSession, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("id,x,cat,code,y\n1,1.0,a,AB-1,Yes\n2,2.0,b,AB-2,No\n3,oops,a,AB-3,No\n4,4.0,b,AB-4,Yes,extra\n")
    conf = _config(tmp_path, source={"kind": "csv", "path": str(source)})
    ctx = _validate(conf, spark)
    quarantined = _table(spark, ctx, "quarantine")
    assert {r["id"]: sorted(r["_violations"]) for r in quarantined} == {
        3: ["row.malformed", "x.not_null"],
        4: ["row.malformed"],
    }
    assert [r["_corrupt_record"] for r in quarantined] == ["3,oops,a,AB-3,No", "4,4.0,b,AB-4,Yes,extra"]
    assert [r["id"] for r in _table(spark, ctx, "clean")] == [1, 2]
    assert "_corrupt_record" not in spark.read.format("delta").load(ctx.tables.clean.ref).columns


def test_a_rerun_of_the_same_batch_replaces_its_rows(spark: SparkSession, tmp_path: Path) -> None:
    _write_source(spark, tmp_path, [*GOOD, (10, -5.0, "a", "AB-10", "No")])
    conf = _config(tmp_path)
    _validate(conf, spark)
    ctx = _validate(conf, spark, force=True)  # unforced, both steps would be reused: nothing changed
    assert len(_table(spark, ctx, "clean")) == 4
    assert _quarantined(spark, ctx) == {10: ["x.min"]}
    quality = spark.read.format("delta").load(ctx.tables.quality.ref)
    assert quality.where("rule = 'x.min'").select("rows_broken").distinct().collect()[0][0] == 1
    assert quality.count() == 2 * quality.select("rule").distinct().count()  # one row per rule per run


def test_report_counts_rules_and_shows_examples(spark: SparkSession, tmp_path: Path) -> None:
    _write_source(spark, tmp_path, [*GOOD, (10, -5.0, "a", "AB-10", "No"), (11, -7.0, "zzz", "AB-11", "No")])
    loaded = load_config(_config(tmp_path))
    outcome = run_pipeline(loaded, steps=["ingest", "validate"], spark=spark)
    child = mlflow.search_runs(
        experiment_names=["tiny"], filter_string="tags.`deltaml.step` = 'validate'", output_format="list"
    )[0]
    assert child.data.tags["mlflow.parentRunId"] == outcome.run_id
    report = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{child.info.run_id}/validation/report.json")).read_text()
    )
    by_rule = {r["rule"]: r for r in report["rules"]}
    assert (report["rows_in"], report["rows_passed"], report["rows_quarantined"]) == (6, 4, 2)
    assert by_rule["x.min"]["rows_broken"] == 2
    assert by_rule["x.min"]["examples"] == [{"key": "10", "value": "-5.0"}, {"key": "11", "value": "-7.0"}]
    assert by_rule["cat.allowed"]["examples"] == [{"key": "11", "value": "zzz"}]
    assert by_rule["y.allowed"]["rows_broken"] == 0
    # Every table rule is listed, passed or not, and each contract column has a profile over all rows.
    assert [(r["rule"], r["status"]) for r in report["table_rules"]] == [
        ("schema", "passed"),
        ("min_rows", "passed"),
        ("max_bad_fraction", "passed"),
        ("columns have values", "passed"),
        ("labels_present", "passed"),
    ]
    columns = {c["column"]: c for c in report["columns"]}
    assert (columns["x"]["min"], columns["x"]["max"], columns["x"]["null_fraction"]) == (-7.0, 4.0, 0.0)
    assert (columns["cat"]["distinct"], columns["cat"]["min"], columns["cat"]["type"]) == (3, "a", "string")
    html = Path(mlflow.artifacts.download_artifacts(f"runs:/{child.info.run_id}/validation/report.html"))
    page = html.read_text()
    assert page.count('<tr class="fail">') == 2  # x.min and cat.allowed, broken; the rest are not highlighted
    text = rendered_text(html)
    assert "Validation of " in text and "Table rules" in text and "Columns" in text
    assert "min_rows\tat least 1 rows\t6 rows\tpassed" in text
    assert "labels_present\tYes, No\tYes: 2 rows, No: 4 rows\tpassed" in text
    assert "x\tdouble\t0.00%\t-7\t4\t6" in text
    assert "x.min" in text and "11: -7.0" in text


def _fails_and_writes_nothing(
    spark: SparkSession,
    tmp_path: Path,
    bad_source: list[tuple[Any, ...]] | None,
    message: str,
    good: list[tuple[Any, ...]] = GOOD,
    **config: Any,
) -> None:
    """Run a good batch, then the bad input: the error names the problem and no table moves."""
    _write_source(spark, tmp_path, good)
    conf = _config(tmp_path)
    ctx = _validate(conf, spark)
    before = {name: _table(spark, ctx, name) for name in ("clean", "quarantine")}
    versions = {name: spark.sql(f"DESCRIBE HISTORY delta.`{getattr(ctx.tables, name).ref}`").count() for name in before}
    if bad_source is not None:
        schema = config.pop("schema", SCHEMA)
        _write_source(spark, tmp_path, bad_source, schema)
    bad_conf = _config(tmp_path, **config) if config else conf
    with pytest.raises(ContractError, match=message) as caught:
        _validate(bad_conf, spark, "ingest.batch_id=second")
    assert "\n" not in str(caught.value)
    for name, rows in before.items():
        assert _table(spark, ctx, name) == rows
        assert spark.sql(f"DESCRIBE HISTORY delta.`{getattr(ctx.tables, name).ref}`").count() == versions[name]
    assert not table_exists(spark, ctx.tables.split)


def _table_rule_status(rule: str) -> str:
    """The status of a table rule in the newest validate run's report (a failed run logs its report too)."""
    run = mlflow.search_runs(
        experiment_names=["tiny"],
        filter_string="tags.`deltaml.step` = 'validate'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )[0]
    report = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/validation/report.json")).read_text()
    )
    return str({r["rule"]: r["status"] for r in report["table_rules"]}[rule])


def test_too_many_bad_rows_fail_before_writing(spark: SparkSession, tmp_path: Path) -> None:
    bad = [(10 + i, -1.0, "a", "AB-1", "No") for i in range(6)]
    _fails_and_writes_nothing(
        spark, tmp_path, bad, r"6 of 10 rows \(60.0%\) broke the contract, above max_bad_fraction 50.0% \(x.min 6\)"
    )
    assert _table_rule_status("max_bad_fraction") == "failed"


def test_missing_label_column_fails(spark: SparkSession, tmp_path: Path) -> None:
    rows = [(i, float(i), "a", "AB-1") for i in range(1, 5)]
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        rows,
        r"^step 'ingest': column 'y' is missing \(the contract expects it",
        schema="id long, x double, cat string, code string",
    )


def test_renamed_column_is_reported_as_missing_and_new(spark: SparkSession, tmp_path: Path) -> None:
    rows = [(i, float(i), "a", "AB-1", "No") for i in range(1, 5)]
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        rows,
        r"^step 'ingest': column 'x' is missing .* \(\+1 more: step 'ingest': column\(s\) \['x_renamed'\] are not in",
        schema="id long, x_renamed double, cat string, code string, y string",
        contract={**CONTRACT, "schema_policy": {"extra_column": "fail"}},
    )


def test_type_change_fails_when_the_policy_says_so(spark: SparkSession, tmp_path: Path) -> None:
    rows = [(i, str(i), "a", "AB-1", "Yes" if i % 2 else "No") for i in range(1, 5)]
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        rows,
        r"^step 'ingest': column 'x' has type string, the contract says double \(fix the source or set schema_policy",
        schema="id long, x string, cat string, code string, y string",
        contract={**CONTRACT, "schema_policy": {"type_mismatch": "fail"}},
    )


def test_empty_table_fails_and_creates_no_table(spark: SparkSession, tmp_path: Path) -> None:
    spark.createDataFrame([], SCHEMA).write.parquet(str(tmp_path / "empty"))
    conf = _config(tmp_path, source={"kind": "parquet", "path": str(tmp_path / "empty")})
    with pytest.raises(ContractError, match=r"^step 'validate': the table is empty; ingest data first"):
        _validate(conf, spark)
    ctx = StepContext(spark, load_config(conf))
    assert not table_exists(spark, ctx.tables.clean)
    assert not table_exists(spark, ctx.tables.quarantine)


def test_min_rows_fails(spark: SparkSession, tmp_path: Path) -> None:
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        None,
        r"the table has 8 rows, the contract needs at least 100",
        contract={**CONTRACT, "min_rows": 100},
    )


def test_all_null_column_fails(spark: SparkSession, tmp_path: Path) -> None:
    rows = [(i, float(i), None, "AB-1", "Yes" if i % 2 else "No") for i in range(10, 14)]
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        rows,
        r"column 'cat' is null in all 4 rows",
        contract={**CONTRACT, "unique": None},
        tables=FRESH_RAW_TABLES,
    )


def test_a_fail_action_rule_stops_the_run(spark: SparkSession, tmp_path: Path) -> None:
    contract = json.loads(json.dumps(CONTRACT))
    contract["columns"]["x"]["actions"] = {"max": "fail"}
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        [(20, 5000.0, "a", "AB-1", "No")],
        r"rule x.max \(x is above 100\) broken by 1 rows and its action is fail",
        contract=contract,
    )


def test_missing_label_value_fails(spark: SparkSession, tmp_path: Path) -> None:
    rows = [(i, float(i), "a", "AB-1", "No") for i in range(10, 14)]
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        rows,
        r"label value\(s\) \['Yes'\] do not occur; the contract expects \['Yes', 'No'\]",
        tables=FRESH_RAW_TABLES,
    )


def test_stale_table_fails_on_freshness(spark: SparkSession, tmp_path: Path) -> None:
    old = datetime.now() - timedelta(days=3)
    rows = [(i, float(i), "a", "AB-1", "Yes" if i % 2 else "No", old) for i in range(1, 5)]
    contract = json.loads(json.dumps(CONTRACT))
    contract["columns"]["updated_at"] = {"type": "timestamp"}
    contract["freshness"] = {"column": "updated_at", "max_age_hours": 24}
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        rows,
        r"the newest 'updated_at' is .*, 72.0 h old; the contract allows 24 h",
        schema=f"{SCHEMA}, updated_at timestamp",
        contract=contract,
    )
    assert _table_rule_status("freshness") == "failed"


def test_a_reused_validate_run_rechecks_freshness_against_the_clock(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recent = datetime.now() - timedelta(hours=1)
    rows = [(i, float(i), "a", "AB-1", "Yes" if i % 2 else "No", recent) for i in range(1, 5)]
    contract = json.loads(json.dumps(CONTRACT))
    contract["columns"]["updated_at"] = {"type": "timestamp"}
    contract["freshness"] = {"column": "updated_at", "max_age_hours": 24}
    _write_source(spark, tmp_path, rows, schema=f"{SCHEMA}, updated_at timestamp")
    conf = _config(tmp_path, contract=contract)
    _validate(conf, spark)  # an hour old: fresh

    class TwoDaysLater(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> TwoDaysLater:
            return cls.fromtimestamp((datetime.now(tz) + timedelta(days=2)).timestamp(), tz)

    # Nothing changed, so ingest and validate are reused; the same rows are now 49 hours old.
    monkeypatch.setattr(validate_step, "datetime", TwoDaysLater)
    with pytest.raises(ContractError, match=r"49\.0 h old; the contract allows 24 h \(rechecked for the reused"):
        _validate(conf, spark)


def test_a_small_bad_batch_fails_on_its_own_fraction(spark: SparkSession, tmp_path: Path) -> None:
    """Before, 2 bad rows in a new batch of 2 passed silently: 2 of 22 rows is under max_bad_fraction 10%."""
    good = [(i, float(i), "a", f"AB-{i}", "Yes" if i % 2 else "No") for i in range(1, 21)]
    _fails_and_writes_nothing(
        spark,
        tmp_path,
        [(21, 1.0, "a", "AB-21", None), (22, 2.0, "b", "AB-22", None)],
        r"^step 'validate': batch second: 2 of 2 rows \(100\.0%\) broke the contract, above max_bad_fraction 10\.0% "
        r"\(the whole table: 2 of 22, 9\.1%; y\.not_null 2\); fix the source or raise contract\.max_bad_fraction$",
        good=good,
        contract={**CONTRACT, "max_bad_fraction": 0.1},
    )
    assert _table_rule_status("max_bad_fraction") == "failed"  # the table's 9.1% passes; the batch's 100% does not


def test_a_rejected_batch_is_quarantined_by_command_and_later_runs_pass(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, a batch that broke the contract stayed in the raw table and failed every later validate."""
    from deltaml.cli import main

    good = [(i, float(i), "a", f"AB-{i}", "Yes" if i % 2 else "No") for i in range(1, 21)]
    conf = _config(tmp_path, {**CONTRACT, "max_bad_fraction": 0.1}, ingest={"mode": "append"})
    _write_source(spark, tmp_path, good)
    ctx = _validate(conf, spark)
    arrived = [(21, 1.0, "a", "AB-21", None), (22, 2.0, "b", "AB-22", None)]
    spark.createDataFrame(arrived, SCHEMA).coalesce(1).write.mode("append").parquet(str(tmp_path / "source"))
    with pytest.raises(ContractError, match=r"^step 'validate': batch (src-[0-9a-f]{16}): 2 of 2 rows") as caught:
        _validate(conf, spark)
    bad_batch = re.search(r"batch (src-[0-9a-f]{16})", str(caught.value))
    assert bad_batch is not None
    batch = bad_batch.group(1)
    raw = spark.read.format("delta").load(str(ctx.tables.raw.ref))
    assert raw.where(F.col("_ingest_batch_id") == batch).count() == 2  # only the appended rows are the new batch

    capsys.readouterr()
    assert main(["batches", "list", str(conf)]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"^{batch} +\S+ \S+ +2 +0 +0$", listed, re.M), listed
    assert main(["batches", "quarantine", str(conf), "--batch", "src-0000000000000000", "--reason", "x"]) == 4
    assert "batch 'src-0000000000000000' is not in " in capsys.readouterr().err
    assert main(["batches", "quarantine", str(conf), "--batch", batch]) == 2
    assert "say why with --reason" in capsys.readouterr().err
    assert main(["batches", "quarantine", str(conf), "--batch", batch, "--reason", "labels missing upstream"]) == 0
    assert f"batch {batch}: 2 rows quarantined (labels missing upstream)" in capsys.readouterr().out

    _validate(conf, spark)  # passes: the batch is out of the raw table
    quarantine = spark.read.format("delta").load(str(ctx.tables.quarantine.ref))
    held = quarantine.where(F.col("_ingest_batch_id") == batch).select("id", "_violations").collect()
    assert sorted((r["id"], list(r["_violations"])) for r in held) == [
        (21, ["batch.quarantined"]),
        (22, ["batch.quarantined"]),
    ]
    clean = spark.read.format("delta").load(str(ctx.tables.clean.ref))
    assert sorted(r["id"] for r in clean.select("id").collect()) == list(range(1, 21))
    # The source still holds the rows: ingest does not bring them back.
    _validate(conf, spark, force=True)
    assert spark.read.format("delta").load(str(ctx.tables.raw.ref)).count() == 20
    dropped = spark.read.format("delta").load(str(ctx.tables.dropped.ref))
    assert {(r["_ingest_batch_id"], r["_drop_action"], r["_drop_reason"]) for r in dropped.collect()} == {
        (batch, "quarantine", "labels missing upstream")
    }
    assert main(["batches", "list", str(conf)]) == 0
    assert re.search(rf"^{batch} .* 0 +0 +2 +quarantine: labels missing upstream \(", capsys.readouterr().out, re.M)
    runs = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.`deltaml.step` = 'batches'")
    assert list(runs["tags.deltaml.batch_id"]) == [batch]


def test_the_summary_names_each_warning(spark: SparkSession, tmp_path: Path) -> None:
    """Before, the summary ended with "warnings: 2" and the user had to find them in the log."""
    rows = [(i, str(x), c, code, y, "n") for i, x, c, code, y in GOOD]
    _write_source(spark, tmp_path, rows, schema="id long, x string, cat string, code string, y string, note string")
    loaded = load_config(_config(tmp_path))
    summary = run_pipeline(loaded, steps=["ingest", "validate"], spark=spark).results["validate"].summary
    assert summary.endswith(
        "; 2 warnings: column 'x' has type string, the contract says double; coerced, values that do not convert "
        "break rule x.type | column(s) ['note'] are not in the contract (add them to contract.columns)"
    ), summary


def test_warn_rules_pass_rows_and_are_counted(spark: SparkSession, tmp_path: Path) -> None:
    contract = json.loads(json.dumps(CONTRACT))
    contract["columns"]["x"]["actions"] = {"max": "warn"}
    _write_source(spark, tmp_path, [*GOOD, (10, 500.0, "a", "AB-10", "No")])
    ctx = _validate(_config(tmp_path, contract=contract), spark)
    assert [r["id"] for r in _table(spark, ctx, "clean")] == [1, 2, 3, 4, 10]
    quality = spark.read.format("delta").load(ctx.tables.quality.ref)
    broken = quality.where(F.col("rule") == "x.max").select("action", "rows_broken").first()
    assert broken is not None
    assert broken.asDict() == {
        "action": "warn",
        "rows_broken": 1,
    }


@pytest.mark.parametrize(
    ("contract", "message"),
    [
        ({"columns": {"x": {"type": "double", "bogus_rule": 1}}}, r"unknown key 'contract.columns.x.bogus_rule'"),
        ({"columns": {"x": {"min": 10, "max": 1}}}, r"'contract.columns.x': min \(10\) is greater than max \(1\)"),
        ({"columns": {"x": {"type": "decimalish"}}}, r"'contract.columns.x.type': unknown type 'decimalish'"),
        ({"columns": {"x": {"regex": "([a-"}}}, r"'contract.columns.x.regex': regex does not compile"),
        (
            {"columns": {"x": {"action": "explode"}}},
            r"'contract.columns.x.action': Input should be 'quarantine', 'fail'",
        ),
        ({"max_bad_fraction": 2}, r"'contract.max_bad_fraction': Input should be less than or equal to 1"),
        ({"columns": {"x": {"allowed": []}}}, r"'allowed' is empty"),
    ],
)
def test_invalid_contract_is_a_config_error(tmp_path: Path, contract: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_config(tmp_path, contract=contract))


@pytest.mark.parametrize(
    ("contract_edit", "message"),
    [
        (
            {"unique": {"columns": ["idd"]}},
            r"contract.unique names column\(s\) \['idd'\], which the data does not have",
        ),
        ({"freshness": {"column": "x", "max_age_hours": 1}}, r"contract.freshness column 'x' is double; it must be a"),
        (
            {"columns": {**CONTRACT["columns"], "cat": {"type": "string", "min": 1}}},
            r"contract.columns.cat has min/max but the column is string",
        ),
    ],
)
def test_a_rule_that_cannot_apply_fails_at_ingest(
    spark: SparkSession, tmp_path: Path, contract_edit: dict[str, Any], message: str
) -> None:
    _write_source(spark, tmp_path, GOOD)
    conf = _config(tmp_path, contract={**CONTRACT, **contract_edit})
    with pytest.raises(ContractError, match=r"^step 'ingest': " + message):
        _validate(conf, spark)
    assert not table_exists(spark, StepContext(spark, load_config(conf)).tables.raw)


def test_a_column_that_cannot_be_cast_to_the_contract_type_fails_at_ingest(spark: SparkSession, tmp_path: Path) -> None:
    # schema_policy.type_mismatch is coerce, but no cast makes a struct a double.
    rows = [(1, (1.0, 2.0), "a", "AB-1", "Yes"), (2, (3.0, 4.0), "b", "AB-2", "No")]
    _write_source(spark, tmp_path, rows, "id long, x struct<a:double,b:double>, cat string, code string, y string")
    conf = _config(tmp_path)
    with pytest.raises(ContractError) as raised:
        _validate(conf, spark)
    assert str(raised.value) == (
        "step 'ingest': column 'x' has type struct<a:double,b:double>, which cannot be cast to the contract's double; "
        "fix the source, or change contract.columns.x.type"
    )
    assert not table_exists(spark, StepContext(spark, load_config(conf)).tables.raw)
