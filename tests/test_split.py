"""The split: seeded, independent of partitioning, stratified per label; named by a column; by time."""

from __future__ import annotations

from datetime import date

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from deltaml.columns import SPLIT_COL
from deltaml.config.schema import SplitConfig
from deltaml.errors import StepInputError
from deltaml.steps.split import _check_split_column, assign_split


def _labelled(spark: SparkSession, rows: int = 2000) -> DataFrame:
    # 20% positives, so a random split would give noticeably uneven class shares.
    return spark.range(rows).withColumn("y", F.when(F.col("id") % 5 == 0, "Yes").otherwise("No"))


def _assignment(df: DataFrame) -> dict[int, str]:
    return {r["id"]: r[SPLIT_COL] for r in df.select("id", SPLIT_COL).collect()}


def test_stratified_split_gives_each_label_the_configured_shares(spark: SparkSession) -> None:
    cfg = SplitConfig(strategy="stratified", train=0.6, validation=0.2, test=0.2)
    out = _labelled(spark).transform(assign_split("id", "y", 42, cfg))
    counts = {(r["y"], r[SPLIT_COL]): r["count"] for r in out.groupBy("y", SPLIT_COL).count().collect()}
    # Per-label quantile cuts: 400 Yes -> 240/80/80 and 1600 No -> 960/320/320, within one row.
    for label, total in (("Yes", 400), ("No", 1600)):
        for split, share in (("train", 0.6), ("validation", 0.2), ("test", 0.2)):
            assert abs(counts[(label, split)] - total * share) <= 1, (label, split, counts)


def test_split_depends_on_key_and_seed_only(spark: SparkSession) -> None:
    cfg = SplitConfig()
    data = _labelled(spark)
    first = _assignment(data.transform(assign_split("id", "y", 7, cfg)))
    shuffled = data.repartition(7, "y").orderBy(F.rand(3))
    assert _assignment(shuffled.transform(assign_split("id", "y", 7, cfg))) == first
    other_seed = _assignment(data.transform(assign_split("id", "y", 8, cfg)))
    changed = sum(first[k] != other_seed[k] for k in first)
    assert changed > 500


def test_random_split_fractions(spark: SparkSession) -> None:
    cfg = SplitConfig(strategy="random", train=0.5, validation=0.0, test=0.5)
    out = _labelled(spark, 4000).transform(assign_split("id", "y", 1, cfg))
    counts = {r[SPLIT_COL]: r["count"] for r in out.groupBy(SPLIT_COL).count().collect()}
    assert set(counts) == {"train", "test"}
    assert abs(counts["train"] - 2000) < 150


def test_column_split_takes_the_published_test_set_and_carves_validation_from_train(spark: SparkSession) -> None:
    # A training file and its published test file in one table, with a column saying which file a row came from.
    data = _labelled(spark, 1000).withColumn("part", F.when(F.col("id") >= 800, "test.csv").otherwise("train.csv"))
    cfg = SplitConfig(
        strategy="column",
        column="part",
        values={"train": ["train.csv"], "test": ["test.csv"]},
        train=0.6,
        validation=0.2,
        test=0.2,
    )
    out = data.transform(assign_split("id", "y", 3, cfg))
    assignment = _assignment(out)
    assert {k for k, v in assignment.items() if v == "test"} == set(range(800, 1000))
    validation = [k for k, v in assignment.items() if v == "validation"]
    # validation / (train + validation) = 0.25 of the 800 training rows, by key hash, none from the test file.
    assert max(validation) < 800 and abs(len(validation) - 200) < 40
    assert _assignment(data.transform(assign_split("id", "y", 3, cfg))) == assignment


def test_column_split_with_its_own_validation_values_moves_no_row(spark: SparkSession) -> None:
    data = spark.createDataFrame(
        [(i, "No", ["tr", "va", "te"][i % 3]) for i in range(30)], "id long, y string, s string"
    )
    cfg = SplitConfig(strategy="column", column="s", values={"train": ["tr"], "validation": ["va"], "test": ["te"]})
    expected = {i: ["train", "validation", "test"][i % 3] for i in range(30)}
    assert _assignment(data.transform(assign_split("id", "y", 3, cfg))) == expected


def test_time_split_trains_on_the_past_and_tests_on_the_future(spark: SparkSession) -> None:
    days = (
        spark.range(100)
        .withColumn("y", F.lit("No"))
        .withColumn("day", F.date_add(F.lit("2024-01-01").cast("date"), F.col("id").cast("int")))
    )
    by_dates = SplitConfig(strategy="time", column="day", validation_from=date(2024, 3, 1), test_from=date(2024, 3, 21))
    out = _assignment(days.transform(assign_split("id", "y", 3, by_dates)))
    # 2024-03-01 is day 60 (a leap year), 2024-03-21 day 80.
    assert out == {i: "train" if i < 60 else "validation" if i < 80 else "test" for i in range(100)}

    by_shares = SplitConfig(strategy="time", column="day", train=0.7, validation=0.1, test=0.2)
    out = _assignment(days.transform(assign_split("id", "y", 3, by_shares)))
    assert out == {i: "train" if i < 70 else "validation" if i < 80 else "test" for i in range(100)}

    # Only test_from: validation is the latest share of the earlier rows.
    test_only = SplitConfig(
        strategy="time", column="day", train=0.6, validation=0.2, test=0.2, test_from=date(2024, 3, 21)
    )
    out = _assignment(days.transform(assign_split("id", "y", 3, test_only)))
    assert out == {i: "train" if i < 60 else "validation" if i < 80 else "test" for i in range(100)}


def test_a_split_column_that_cannot_place_every_row_fails_naming_what_it_found(spark: SparkSession) -> None:
    data = spark.createDataFrame(
        [(1, "No", "tr", "2024-01-01"), (2, "No", "te", None), (3, "No", "dev", "2024-01-03")],
        "id long, y string, s string, t string",
    )
    named = SplitConfig(strategy="column", column="s", values={"train": ["tr"], "test": ["te"]})
    with pytest.raises(StepInputError, match=r"values of split.column 's' that split.values does not name: \['dev'\]"):
        _check_split_column(data, named, "the table")
    with pytest.raises(StepInputError, match=r"split.column 'nope' is not a column of the table"):
        _check_split_column(data, named.model_copy(update={"column": "nope"}), "the table")
    timed = SplitConfig(strategy="time", column="t")
    with pytest.raises(StepInputError, match=r"split.column 't' is string, not a timestamp or date"):
        _check_split_column(data, timed, "the table")
    with pytest.raises(StepInputError, match=r"1 rows of the table have no t, so they are neither past nor future"):
        _check_split_column(data.withColumn("t", F.col("t").cast("date")), timed, "the table")
    _check_split_column(data.where("id = 1"), named, "the table")  # every value named: no error
