"""The report's per-feature explanation: groups, their order and their means, against pandas on the same rows."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deltaml.report.effects import EffectRow, feature_effects, source_columns


def test_importance_names_map_back_to_their_columns() -> None:
    names = ["contract=Two year", "missing(total)", "tenure", "contract=One year", "hash(a,b)[3]", "gone", "flag"]
    available = ["contract", "total", "tenure", "flag"]
    assert source_columns(names, available, top=5) == ["contract", "total", "tenure", "flag"]
    assert source_columns(names, available, top=2) == ["contract", "total"]
    # A column whose own name has "=" in it is taken as it is.
    assert source_columns(["a=b", "a=b=c"], ["a=b"], top=3) == ["a=b"]


def test_groups_are_quintiles_levels_and_other_with_the_means_of_their_rows(spark: SparkSession) -> None:
    rows = []
    for i in range(1000):
        tenure = None if i % 50 == 0 else float(i % 100)
        city = f"c{i % 10}" if i % 10 < 9 else None  # ten levels and nulls: eight shown, the rest as one
        flag = i % 2
        p = (i % 7) / 7
        y = float(i % 3 == 0)
        rows.append((tenure, city, flag, p, y))
    data = spark.createDataFrame(rows, "tenure double, city string, flag int, p double, y double")
    effects = feature_effects(data, ["tenure", "city", "flag"], predicted=F.col("p"), actual=F.col("y"))
    frame = pd.DataFrame(rows, columns=["tenure", "city", "flag", "p", "y"])

    by_feature: dict[str, list[EffectRow]] = {}
    for effect in effects:
        by_feature.setdefault(effect.feature, []).append(effect)
    assert list(by_feature) == ["tenure", "city", "flag"]
    assert all(sum(e.rows for e in found) == 1000 for found in by_feature.values())

    # Numeric: quintile ranges in order of value, then missing; each group's means are its rows' means.
    bins = by_feature["tenure"]
    assert [e.level for e in bins][-1] == "missing" and bins[0].level.startswith("<")
    assert bins[-2].level.startswith(">=") and len(bins) == 6
    assert bins[-1].rows == 20
    edges = [float(e.level.strip("[<>=").split(",")[0]) for e in bins[1:-1]]
    assert edges == sorted(edges)
    low = frame[frame["tenure"] < edges[0]]
    assert (bins[0].rows, bins[0].predicted, bins[0].actual) == (
        len(low),
        pytest.approx(low["p"].mean()),
        pytest.approx(low["y"].mean()),
    )

    # Categorical: the eight most frequent levels by rows, the rest (here: c8 and missing, 100 rows each) as one.
    levels = by_feature["city"]
    assert len(levels) == 9 and levels[-1].level == "other (2 levels)" and levels[-1].rows == 200
    assert all(e.rows == 100 for e in levels[:-1])
    c3 = frame[frame["city"] == "c3"]
    assert next(e for e in levels if e.level == "c3").predicted == pytest.approx(c3["p"].mean())

    # A 0/1 flag has no quantile inside its range: it is grouped by value.
    assert [(e.level, e.rows) for e in by_feature["flag"]] == [("0", 500), ("1", 500)]


def test_without_an_actual_only_the_prediction_is_averaged(spark: SparkSession) -> None:
    data = spark.createDataFrame([(1.0, 0.5), (2.0, 1.0), (math.nan, 0.0)], "x double, right double")
    effects = feature_effects(data, ["x"], predicted=F.col("right"), actual=None)
    assert sorted((e.level, e.rows, e.predicted, e.actual) for e in effects) == [
        ("1.0", 1, 0.5, None),
        ("2.0", 1, 1.0, None),
        ("missing", 1, 0.0, None),
    ]
    assert feature_effects(data, [], predicted=F.col("right"), actual=None) == []


def test_a_dotted_name_and_a_mostly_zero_feature(spark: SparkSession) -> None:
    # 70% of the rows spend 0: one quantile inside the range still gives two ordered groups, not 300 values.
    rows = [(float(i) if i % 10 >= 7 else 0.0, i % 3, float(i % 2)) for i in range(300)]
    data = spark.createDataFrame(rows, "`spend.total` double, `odd``name` int, y double")
    effects = feature_effects(data, ["spend.total", "odd`name"], predicted=F.col("y"), actual=F.col("y"))
    spend = [(e.level, e.rows) for e in effects if e.feature == "spend.total"]
    assert len(spend) == 2 and spend[0][0].startswith("<") and spend[1][0].startswith(">=")
    assert sum(n for _, n in spend) == 300
    # Few values: grouped by value, in order of value.
    assert [(e.level, e.rows) for e in effects if e.feature == "odd`name"] == [("0", 100), ("1", 100), ("2", 100)]
