"""Incremental scoring plans on real Delta tables: what is new or changed gets scored, nothing else."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from deltaml.columns import BATCH_COL, INPUT_HASH_COL
from deltaml.errors import StepInputError
from deltaml.io.catalog import Table, read_table, replace_rows, sql_in, table_id
from deltaml.ml.predictions import ScoredSource, batch_values, input_hash, scored_source
from deltaml.steps.score import ScoringPlan, plan_scoring, sync_serving

SCHEMA = "id long, batch string, x double, note string"
FEATURES = ["x"]
T0 = datetime(2026, 1, 1, 12, 0, 0)


def _table(spark: SparkSession, tmp_path: Path, name: str, rows: list[tuple], cdf: bool = False) -> Table:
    table = Table(str(tmp_path / name), is_path=True)
    writer = spark.createDataFrame(rows, SCHEMA).write.format("delta")
    if cdf:
        writer = writer.option("delta.enableChangeDataFeed", "true")
    writer.save(table.ref)
    return table


def _append(spark: SparkSession, table: Table, rows: list[tuple]) -> None:
    spark.createDataFrame(rows, SCHEMA).write.format("delta").mode("append").save(table.ref)


def _source(spark: SparkSession, table: Table) -> ScoredSource:
    """The table as the score step identifies it, its folder standing for the state folder."""
    return scored_source(spark, table, Path(table.ref).parent)


def _plan(
    spark: SparkSession, source: Table, predictions: Table, batch_column: str | None, full: bool = False
) -> tuple[ScoringPlan, int]:
    data, version = read_table(spark, source, "score")
    identity = _source(spark, source)
    return plan_scoring(spark, data, identity, version, predictions, "id", FEATURES, batch_column, full), version


def _record(
    spark: SparkSession,
    plan: ScoringPlan,
    source: Table,
    version: int,
    predictions: Table,
    scored_at: datetime = T0,
    with_id: bool = True,
) -> None:
    """Write what a score run would for the plan: one prediction per row with its lineage columns (``with_id``
    False: as deltaml wrote them before it recorded the source's table id)."""
    assert plan.rows is not None
    batch = plan.batch if plan.batch is not None else F.lit(f"v{version}")
    table_id_column = [F.lit(table_id(spark, source)).alias("source_table_id")] if with_id else []
    rows = plan.rows.select(
        "id",
        (F.col("x") * 2).alias("prediction"),
        F.lit(1).alias("model_version"),
        F.lit(str(source)).alias("source_table"),
        *table_id_column,
        F.lit(version).cast("long").alias("source_version"),
        batch.alias(BATCH_COL),
        F.lit(scored_at).cast("timestamp").alias("scored_at"),
        input_hash("id", FEATURES).alias(INPUT_HASH_COL),
    )
    replace_rows(spark, rows, predictions, plan.replace, merge_schema=True)


def _ids(df: DataFrame | None) -> list[int]:
    assert df is not None
    return sorted(r["id"] for r in df.select("id").collect())


def test_batched_input_scores_new_and_changed_batches_only(spark: SparkSession, tmp_path: Path) -> None:
    source = _table(spark, tmp_path, "in", [(1, "a", 1.0, "n"), (2, "a", 2.0, "n"), (3, "b", 3.0, "n")])
    predictions = Table(str(tmp_path / "predictions"), is_path=True)

    first, v0 = _plan(spark, source, predictions, "batch")
    assert first.reason == f"first scoring of {source}"
    assert _ids(first.rows) == [1, 2, 3]
    _record(spark, first, source, v0, predictions)

    again, _ = _plan(spark, source, predictions, "batch")
    assert again.rows is None and again.reason == f"{source} v0 was already scored"

    _append(spark, source, [(4, "c", 4.0, "n"), (5, "c", 5.0, "n")])
    new, v1 = _plan(spark, source, predictions, "batch")
    assert (_ids(new.rows), new.batches, new.reason) == ([4, 5], ["c"], "1 new and 0 changed of 3 batches")
    where_source = _source(spark, source).predicate(["source_table", "source_table_id"])
    assert new.replace == f"{where_source} AND {sql_in(BATCH_COL, ['c'])}"
    _record(spark, new, source, v1, predictions)

    # A rewrite of batch a with the same content (as the validate step does on every run) is not a change;
    # a column the model does not read is not either. A changed feature value is.
    DeltaTable.forPath(spark, source.ref).update("id = 1", {"note": F.lit("edited")})
    unchanged, _ = _plan(spark, source, predictions, "batch")
    assert unchanged.rows is None and unchanged.reason == f"all 3 batches of {source} v2 are scored"
    DeltaTable.forPath(spark, source.ref).update("id = 2", {"x": F.lit(20.0)})
    changed, v3 = _plan(spark, source, predictions, "batch")
    assert (_ids(changed.rows), changed.batches, changed.reason) == ([1, 2], ["a"], "0 new and 1 changed of 3 batches")
    _record(spark, changed, source, v3, predictions)

    stored = spark.read.format("delta").load(predictions.ref)
    assert stored.count() == 5
    assert {r["id"]: r["prediction"] for r in stored.collect()} == {1: 2.0, 2: 40.0, 3: 6.0, 4: 8.0, 5: 10.0}
    assert {r[BATCH_COL]: r["source_version"] for r in stored.collect()} == {"a": 3, "b": 0, "c": 1}

    # A row deleted from a batch changes its count: the batch is rescored without it.
    DeltaTable.forPath(spark, source.ref).delete("id = 5")
    shrunk, _ = _plan(spark, source, predictions, "batch")
    assert (_ids(shrunk.rows), shrunk.batches) == ([4], ["c"])


def test_full_mode_scores_every_row_and_replaces_the_source(spark: SparkSession, tmp_path: Path) -> None:
    source = _table(spark, tmp_path, "in", [(1, "a", 1.0, "n"), (2, None, 2.0, "n")])
    predictions = Table(str(tmp_path / "predictions"), is_path=True)
    first, v0 = _plan(spark, source, predictions, "batch")
    _record(spark, first, source, v0, predictions)
    full, _ = _plan(spark, source, predictions, "batch", full=True)
    assert full.reason == "full rescoring (--full)"
    assert full.replace == _source(spark, source).predicate(["source_table", "source_table_id"])
    assert _ids(full.rows) == [1, 2]
    # A null batch is stored as "null", so it can be replaced like any other.
    assert sorted(r[BATCH_COL] for r in spark.read.format("delta").load(predictions.ref).collect()) == ["a", "null"]


def test_rows_without_a_batch_column_are_compared_by_key_and_hash(spark: SparkSession, tmp_path: Path) -> None:
    source = _table(spark, tmp_path, "in", [(1, "a", 1.0, "n"), (2, "a", 2.0, "n")])
    predictions = Table(str(tmp_path / "predictions"), is_path=True)
    first, v0 = _plan(spark, source, predictions, None)
    assert first.batch is None
    _record(spark, first, source, v0, predictions)

    _append(spark, source, [(3, "z", 3.0, "n")])
    DeltaTable.forPath(spark, source.ref).update("id = 1", {"x": F.lit(10.0)})
    plan, v2 = _plan(spark, source, predictions, None)
    assert plan.reason == f"rows of {source} v2 without a prediction"
    assert (_ids(plan.rows), plan.batches) == ([1, 3], ["v2"])
    _record(spark, plan, source, v2, predictions)
    stored = spark.read.format("delta").load(predictions.ref)
    # Predictions are a log per batch: key 1 keeps its v0 prediction and gains one for its new values.
    assert sorted((r["id"], r[BATCH_COL]) for r in stored.collect()) == [(1, "v0"), (1, "v2"), (2, "v0"), (3, "v2")]

    # Key 1 changes back to its first values: its newest prediction is for 10.0, so it is scored again.
    DeltaTable.forPath(spark, source.ref).update("id = 1", {"x": F.lit(1.0)})
    back, v3 = _plan(spark, source, predictions, None)
    assert (_ids(back.rows), back.batches) == ([1], ["v3"])
    _record(spark, back, source, v3, predictions, scored_at=T0 + timedelta(minutes=1))
    # A commit that changes no row the model reads leaves nothing to score, and nothing is written.
    DeltaTable.forPath(spark, source.ref).update("id = 2", {"note": F.lit("edited")})
    nothing, _ = _plan(spark, source, predictions, None)
    assert nothing.rows is None and nothing.reason == f"no rows of {source} v4 without a prediction"


def test_predictions_follow_their_input_by_table_id_when_the_folder_moves(spark: SparkSession, tmp_path: Path) -> None:
    source = _table(spark, tmp_path / "old", "in", [(1, "a", 1.0, "n"), (2, "b", 2.0, "n")])
    predictions = Table(str(tmp_path / "predictions"), is_path=True)
    first, v0 = _plan(spark, source, predictions, "batch")
    _record(spark, first, source, v0, predictions)

    # A copy keeps the Delta table id: its predictions are found, and a new batch replaces only its own rows.
    copy = Table(str(tmp_path / "new" / "in"), is_path=True)
    shutil.copytree(source.ref, copy.ref)
    again, _ = _plan(spark, copy, predictions, "batch")
    assert again.rows is None and again.reason == f"{copy} v0 was already scored"
    _append(spark, copy, [(3, "c", 3.0, "n")])
    new, v1 = _plan(spark, copy, predictions, "batch")
    assert (_ids(new.rows), new.batches) == ([3], ["c"])
    _record(spark, new, copy, v1, predictions)
    # A full rescoring of the copy replaces the predictions made before the copy too.
    full, v1 = _plan(spark, copy, predictions, "batch", full=True)
    _record(spark, full, copy, v1, predictions)
    stored = spark.read.format("delta").load(predictions.ref)
    assert sorted((r["id"], r["source_table"]) for r in stored.collect()) == [(i, copy.ref) for i in (1, 2, 3)]

    # Another table at the same path (a new table id) is another input: its predictions are its own.
    shutil.rmtree(source.ref)
    _table(spark, tmp_path / "old", "in", [(1, "a", 1.0, "n")])
    fresh, _ = _plan(spark, source, predictions, "batch")
    assert fresh.reason == f"first scoring of {source}"


def test_predictions_written_before_the_table_id_match_by_path_and_by_the_path_in_the_state_folder(
    spark: SparkSession, tmp_path: Path
) -> None:
    source = _table(spark, tmp_path / "state-a", "in", [(1, "a", 1.0, "n"), (2, "b", 2.0, "n")])
    predictions = Table(str(tmp_path / "predictions"), is_path=True)
    first, v0 = _plan(spark, source, predictions, "batch")
    _record(spark, first, source, v0, predictions, with_id=False)
    again, _ = _plan(spark, source, predictions, "batch")
    assert again.rows is None and again.reason == f"{source} v0 was already scored"

    # The state folder moved: rows without an id match the table's path below it.
    moved = Table(str(tmp_path / "state-b" / "in"), is_path=True)
    shutil.copytree(source.ref, moved.ref)
    _append(spark, moved, [(3, "c", 3.0, "n")])
    new, v1 = _plan(spark, moved, predictions, "batch")
    assert (_ids(new.rows), new.batches, new.reason) == ([3], ["c"], "1 new and 0 changed of 3 batches")
    _record(spark, new, moved, v1, predictions)  # the write adds the id column; older rows have it null
    DeltaTable.forPath(spark, moved.ref).update("id = 1", {"x": F.lit(10.0)})
    changed, v2 = _plan(spark, moved, predictions, "batch")
    assert (_ids(changed.rows), changed.batches) == ([1], ["a"])
    _record(spark, changed, moved, v2, predictions)
    stored = spark.read.format("delta").load(predictions.ref)
    moved_id = table_id(spark, moved)
    assert sorted((r["id"], r["source_table_id"]) for r in stored.collect()) == [
        (1, moved_id),
        (2, None),
        (3, moved_id),
    ]
    assert _plan(spark, moved, predictions, "batch")[0].reason == f"{moved} v2 was already scored"

    # A table elsewhere, outside the state folder's layout, is not mistaken for it.
    other = _table(spark, tmp_path / "elsewhere", "other", [(1, "a", 1.0, "n")])
    assert _plan(spark, other, predictions, "batch")[0].reason == f"first scoring of {other}"


def test_input_hash_tells_nulls_apart(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1, None, 5.0), (1, 5.0, None)], "id long, a double, b double")
    hashes = [r[0] for r in df.select(input_hash("id", ["a", "b"])).collect()]
    assert hashes[0] != hashes[1]


def test_change_data_feed_narrows_the_comparison_to_changed_keys(spark: SparkSession, tmp_path: Path) -> None:
    source = _table(spark, tmp_path, "in", [(1, "a", 1.0, "n"), (2, "a", 2.0, "n")], cdf=True)
    predictions = Table(str(tmp_path / "predictions"), is_path=True)
    first, v0 = _plan(spark, source, predictions, None)
    _record(spark, first, source, v0, predictions)
    _append(spark, source, [(3, "z", 3.0, "n")])
    DeltaTable.forPath(spark, source.ref).update("id = 2", {"note": F.lit("edited")})
    plan, _ = _plan(spark, source, predictions, None)
    assert plan.reason == f"rows changed in {source} v1..v2 without a prediction"
    # Key 2 changed, but not in a column the model reads, so only key 3 is scored.
    assert _ids(plan.rows) == [3]


def test_too_many_batches_and_an_empty_input_are_one_line_errors(spark: SparkSession, tmp_path: Path) -> None:
    predictions = Table(str(tmp_path / "predictions"), is_path=True)
    empty = _table(spark, tmp_path, "empty", [])
    with pytest.raises(StepInputError, match=r"input table .*empty v0 is empty; ingest data first"):
        _plan(spark, empty, predictions, None)

    source = _table(spark, tmp_path, "in", [(1, "a", 1.0, "n")])
    first, v0 = _plan(spark, source, predictions, "batch")
    _record(spark, first, source, v0, predictions)
    _append(spark, source, [(i, f"b{i}", 1.0, "n") for i in range(2, 12)])
    import deltaml.steps.score

    data, version = read_table(spark, source, "score")
    limit = deltaml.steps.score.MAX_BATCHES
    try:
        deltaml.steps.score.MAX_BATCHES = 5
        with pytest.raises(StepInputError, match=r"more than 5 batches; set score.batch_column"):
            plan_scoring(spark, data, _source(spark, source), version, predictions, "id", FEATURES, "batch", False)
    finally:
        deltaml.steps.score.MAX_BATCHES = limit


def test_batch_values_keeps_strings_and_names_nulls(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1, "a"), (2, None)], "id long, batch string")
    assert [r[0] for r in df.select(batch_values("batch")).orderBy("id").collect()] == ["a", "null"]


def test_serving_table_keeps_the_latest_prediction_per_key(spark: SparkSession, tmp_path: Path) -> None:
    predictions = Table(str(tmp_path / "predictions"), is_path=True)
    serving = Table(str(tmp_path / "serving"), is_path=True)
    schema = f"id long, prediction double, {BATCH_COL} string, scored_at timestamp"
    spark.createDataFrame([(1, 0.1, "a", T0), (2, 0.2, "a", T0)], schema).write.format("delta").save(predictions.ref)
    first = sync_serving(spark, predictions, serving, "id")
    assert first is not None and first.rows_written == 2

    later = T0 + timedelta(hours=1)
    # Key 2 is scored twice in one run (it is in two batches): the later batch name wins, deterministically.
    rows = [(2, 0.5, "b", later), (2, 0.6, "c", later), (3, 0.3, "b", later)]
    spark.createDataFrame(rows, schema).write.format("delta").mode("append").save(predictions.ref)
    second = sync_serving(spark, predictions, serving, "id")
    assert second is not None and second.rows_written == 2
    served = {r["id"]: (r["prediction"], r[BATCH_COL]) for r in spark.read.format("delta").load(serving.ref).collect()}
    assert served == {1: (0.1, "a"), 2: (0.6, "c"), 3: (0.3, "b")}
    # Nothing newer than what is served: no write at all.
    before = DeltaTable.forPath(spark, serving.ref).history(1).first()
    assert before is not None
    assert sync_serving(spark, predictions, serving, "id") is None
    after = DeltaTable.forPath(spark, serving.ref).history(1).first()
    assert after is not None
    assert after["version"] == before["version"]
