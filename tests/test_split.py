"""The split: seeded, independent of partitioning, stratified per label."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from deltaml.columns import SPLIT_COL
from deltaml.config.schema import SplitConfig
from deltaml.steps.split import assign_split


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
