"""The profile ``deltaml init`` infers a config from: small per-column aggregates of a capped sample, in Spark.

Only aggregates reach the driver: per column the null count, an approximate distinct count, the
numeric range (NaN left out) or the time range, whether the values are whole numbers, the mean length
and word count of strings, and the values with their counts of columns with at most
:data:`~deltaml.config.scaffold.TOP_VALUES` of them. Columns whose approximate count says they may be
unique get an exact count, so a key is only ever a column whose sampled values are all distinct.
"""

from __future__ import annotations

import datetime
from typing import Any

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deltaml.config.scaffold import TOP_VALUES, ColumnProfile, DataProfile, Value

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
_TIME = (T.DateType, T.TimestampType, T.TimestampNTZType)
# Approximate distinct counts within this share of the rows may in fact be all distinct: they are counted exactly.
_MAYBE_UNIQUE = 0.9


def profile_sample(df: DataFrame, sample_rows: int) -> DataProfile:
    """Profile the first ``sample_rows`` rows of ``df`` (cached while profiled).

    Args:
        df: The source as read.
        sample_rows: The most rows to profile.

    Returns:
        The profile: rows sampled, the cap, and one :class:`ColumnProfile` per column in order.
    """
    sample = df.limit(sample_rows).cache()
    try:
        return _profile(sample, sample_rows)
    finally:
        sample.unpersist()


def _col(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")


def _profile(sample: DataFrame, sample_rows: int) -> DataProfile:
    fields = sample.schema.fields
    aggregates: list[Column] = [F.count(F.lit(1)).alias("rows")]
    for i, f in enumerate(fields):
        col = _col(f.name)
        value = F.when(~F.isnan(col), col) if isinstance(f.dataType, T.FloatType | T.DoubleType) else col
        aggregates += [F.count(col).alias(f"n{i}"), F.approx_count_distinct(col, 0.02).alias(f"d{i}")]
        if isinstance(f.dataType, _NUMERIC):
            aggregates += [
                F.min(value).cast("double").alias(f"lo{i}"),
                F.max(value).cast("double").alias(f"hi{i}"),
                F.min(F.when(value.isNull(), True).otherwise(value == F.floor(value))).alias(f"whole{i}"),
            ]
        elif isinstance(f.dataType, _TIME):
            aggregates += [F.min(col).cast("string").alias(f"lo{i}"), F.max(col).cast("string").alias(f"hi{i}")]
        elif isinstance(f.dataType, T.StringType):
            words = F.size(F.split(F.trim(col), r"\s+"))
            aggregates += [F.avg(F.length(col)).alias(f"len{i}"), F.avg(words).alias(f"words{i}")]
    row = sample.agg(*aggregates).first()
    assert row is not None
    stats = row.asDict()
    rows = int(stats["rows"])
    maybe_unique = [
        (i, f.name) for i, f in enumerate(fields) if stats[f"n{i}"] and stats[f"d{i}"] >= _MAYBE_UNIQUE * stats[f"n{i}"]
    ]
    exact: dict[int, int] = {}
    if maybe_unique:
        counted = sample.agg(*[F.count_distinct(_col(name)).alias(f"e{i}") for i, name in maybe_unique]).first()
        assert counted is not None
        exact = {i: int(counted[f"e{i}"]) for i, _ in maybe_unique}
    counts = {i: exact.get(i, min(int(stats[f"d{i}"]), int(stats[f"n{i}"]))) for i in range(len(fields))}
    few = [i for i in range(len(fields)) if counts[i] <= TOP_VALUES * 1.1 and stats[f"n{i}"]]
    top = _top_values(sample, few)
    columns = []
    for i, f in enumerate(fields):
        present = int(stats[f"n{i}"])
        distinct = counts[i]
        values = top.get(i) if i in few else None
        if values is not None:
            distinct = len(values)
        columns.append(
            ColumnProfile(
                name=f.name,
                type=f.dataType.simpleString(),
                nulls=rows - present,
                distinct=distinct,
                min=_float(stats.get(f"lo{i}")) if isinstance(f.dataType, _NUMERIC) else None,
                max=_float(stats.get(f"hi{i}")) if isinstance(f.dataType, _NUMERIC) else None,
                first=stats.get(f"lo{i}") if isinstance(f.dataType, _TIME) else None,
                last=stats.get(f"hi{i}") if isinstance(f.dataType, _TIME) else None,
                integral=bool(stats.get(f"whole{i}")) and isinstance(f.dataType, _NUMERIC),
                values=values,
                mean_length=_float(stats.get(f"len{i}")),
                mean_words=_float(stats.get(f"words{i}")),
                distinct_exact=values is not None or i in exact,
            )
        )
    return DataProfile(rows=rows, sample_rows=sample_rows, columns=columns)


def _top_values(sample: DataFrame, columns: list[int]) -> dict[int, list[tuple[Value, int]] | None]:
    """For each column (by position), its values with their counts, most frequent first; None for a column with
    more than TOP_VALUES. One Spark job for all of them: the values as text, counted per column, at most
    ``TOP_VALUES + 1`` per column collected, then read back as the column's type."""
    if not columns:
        return {}
    fields = sample.schema.fields
    pairs = F.explode(
        F.array(*[F.struct(F.lit(i).alias("c"), _col(fields[i].name).cast("string").alias("v")) for i in columns])
    )
    counted = sample.select(pairs.alias("p")).where(F.col("p.v").isNotNull()).groupBy("p.c", "p.v").count()
    rank = F.row_number().over(Window.partitionBy("c").orderBy(F.desc("count"), F.asc("v")))
    found: dict[int, list[tuple[Value, int]]] = {i: [] for i in columns}
    for row in counted.withColumn("rank", rank).where(F.col("rank") <= TOP_VALUES + 1).collect():
        found[int(row["c"])].append((_typed(row["v"], fields[int(row["c"])].dataType), int(row["count"])))
    return {
        i: sorted(values, key=lambda pair: (-pair[1], pair[0])) if len(values) <= TOP_VALUES else None
        for i, values in found.items()
    }


def _typed(text: str, kind: T.DataType) -> Value:
    """A value as Spark's cast to string wrote it, read back as the column's type (a date or time as ISO text)."""
    if isinstance(kind, T.BooleanType):
        return text == "true"
    if isinstance(kind, T.ByteType | T.ShortType | T.IntegerType | T.LongType):
        return int(text)
    if isinstance(kind, T.FloatType | T.DoubleType | T.DecimalType):
        return float(text)
    if isinstance(kind, T.TimestampType | T.TimestampNTZType):
        return datetime.datetime.fromisoformat(text).isoformat()
    return text


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
