"""How the predictions vary with each of the most important features: the report's per-feature explanation.

For each feature, the scored rows are grouped by its value (a numeric feature by quantile bins, a
categorical one by level, its most frequent levels shown and the rest as one ``other`` group) and
each group's rows, mean prediction and mean actual are computed in Spark: one ``approxQuantile``
job for the bin edges of every numeric feature, then one aggregation over all the features at once.
Only ``features x (levels + 1)`` rows reach the driver, whatever the size of the scored rows.

This is the model's behaviour on the data as it is (features move together in real rows), not a
partial dependence: a group's mean prediction beside its actual rate says where the model follows
the data and where it is off.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, NumericType

# The quantiles a numeric feature is cut at (quintiles), the rank error they are computed with, and how
# many levels of a categorical feature are shown before the rest are one "other" group.
EFFECT_BINS = 5
QUANTILE_ERROR = 0.01
EFFECT_LEVELS = 8

_SLOT = re.compile(r"^missing\((?P<missing>.+)\)$|^(?P<column>[^=]+)=")


@dataclass(frozen=True)
class EffectRow:
    """One group of one feature.

    Attributes:
        feature: The feature (a column of the scored rows).
        level: The group: a range of a numeric feature (``[6, 20)``), a level, ``missing`` or ``other (n levels)``.
        rows: Rows in the group.
        predicted: The mean prediction (binary: probability of the positive class; multiclass: the
            share predicted right, the accuracy).
        actual: The mean actual (binary: the positive rate; regression: the mean label; multiclass: None).
    """

    feature: str
    level: str
    rows: int
    predicted: float
    actual: float | None


def source_columns(names: Sequence[str], available: Sequence[str], top: int) -> list[str]:
    """The columns behind the first importance names, in order: ``contract=Two year`` and ``missing(x)`` read
    as ``contract`` and ``x``; hashed slots and names that are no column of the scored rows are skipped."""
    found: list[str] = []
    for name in names:
        match = _SLOT.match(name)
        column = name if name in available else (match.group("missing") or match.group("column")) if match else None
        if column is not None and column in available and column not in found:
            found.append(column)
        if len(found) == top:
            break
    return found


def feature_effects(
    scored: DataFrame,
    features: Sequence[str],
    *,
    predicted: Column,
    actual: Column | None,
    bins: int = EFFECT_BINS,
    levels: int = EFFECT_LEVELS,
) -> list[EffectRow]:
    """Rows, mean prediction and mean actual per group of each feature (see the module's docstring).

    Args:
        scored: Rows with the features, the prediction and the label.
        features: Columns of ``scored``, most important first.
        predicted: The prediction as a double column (averaged per group).
        actual: The label as a double column, or None.
        bins: Quantile bins of a numeric feature. One with no quantile strictly inside its range (a 0/1
            flag) or whose quantiles are whole numbers less than ``levels`` apart (a code, a small count) is
            grouped by value instead, in order of value.
        levels: The most frequent groups a feature shows; the others are summed as one group.

    Returns:
        The groups, feature by feature in the order given; numeric groups in order of value, levels by rows,
        ``missing`` and ``other`` last.
    """
    if not features:
        return []
    # Plain aliases first: a column named "a.b" or with a backtick is then no nested field or broken quote.
    types = {field.name: field.dataType for field in scored.schema.fields}
    alias = {feature: f"_effect_{i}" for i, feature in enumerate(features)}
    rows = scored.select(
        *(F.col("`" + f.replace("`", "``") + "`").alias(alias[f]) for f in features),
        predicted.cast("double").alias("_p"),
        (actual.cast("double") if actual is not None else F.lit(None).cast("double")).alias("_y"),
    )
    numeric = [f for f in features if isinstance(types[f], NumericType) and not isinstance(types[f], BooleanType)]
    probabilities = [i / bins for i in range(bins + 1)]
    quantiles = rows.approxQuantile([alias[f] for f in numeric], probabilities, QUANTILE_ERROR) if numeric else []
    edges: dict[str, list[float]] = {}
    for name, values in zip(numeric, quantiles, strict=True):
        if len(values) == len(probabilities):
            low, high = values[0], values[-1]
            inside = sorted({v for v in values[1:-1] if low < v < high and math.isfinite(v)})
            # Whole numbers over a short range (a code, a count of a few) read best value by value.
            few = all(math.isfinite(v) and v == int(v) for v in values) and high - low < levels
            if inside and not few:  # one edge inside the range is two groups (a feature that is mostly 0, say)
                edges[name] = inside

    parts = []
    for feature in features:
        value = F.col(alias[feature])
        if feature in edges:
            level, order = _binned(value, edges[feature])
        elif feature in numeric:  # few values: each its own group, in order of value
            missing = value.isNull() | F.isnan(value.cast("double"))
            level = F.when(missing, F.lit("missing")).otherwise(value.cast("string"))
            order = F.when(missing, F.lit(math.inf)).otherwise(value.cast("double"))
        else:
            level, order = F.coalesce(value.cast("string"), F.lit("missing")), F.lit(0.0)
        parts.append(
            rows.select(
                F.lit(feature).alias("feature"),
                level.alias("level"),
                order.cast("double").alias("order"),
                F.col("_p").alias("p"),
                F.col("_y").alias("y"),
            )
        )
    groups = (
        reduce(DataFrame.unionByName, parts)
        .groupBy("feature", "level", "order")
        .agg(F.count(F.lit(1)).alias("rows"), F.sum("p").alias("p"), F.sum("y").alias("y"))
    )
    rank = F.row_number().over(Window.partitionBy("feature").orderBy(F.desc("rows"), "level"))
    ranked = groups.withColumn("rank", rank)
    kept = F.col("rank") <= levels
    merged = ranked.groupBy(
        "feature",
        F.when(kept, F.col("level")).otherwise(F.lit(None)).alias("level"),
        F.when(kept, F.col("order")).otherwise(F.lit(math.inf)).alias("order"),
    ).agg(
        F.sum("rows").alias("rows"),
        F.sum("p").alias("p"),
        F.sum("y").alias("y"),
        F.count(F.lit(1)).alias("merged"),
        F.min("rank").alias("rank"),
    )
    found: list[EffectRow] = []
    collected = merged.collect()
    for feature in features:
        groups_of = sorted((r for r in collected if r["feature"] == feature), key=lambda r: (r["order"], r["rank"]))
        for r in groups_of:
            found.append(
                EffectRow(
                    feature=feature,
                    level=str(r["level"]) if r["level"] is not None else f"other ({r['merged']} levels)",
                    rows=int(r["rows"]),
                    predicted=float(r["p"]) / r["rows"] if r["p"] is not None else math.nan,
                    actual=float(r["y"]) / r["rows"] if actual is not None and r["y"] is not None else None,
                )
            )
    return found


def _binned(value: Column, edges: list[float]) -> tuple[Column, Column]:
    """The range label and the order of a numeric value's bin between ``edges`` (NaN and null: ``missing``)."""
    missing = value.isNull() | F.isnan(value.cast("double"))
    label = F.when(missing, F.lit("missing")).when(value < edges[0], F.lit(f"<{edges[0]:.4g}"))
    order = F.when(missing, F.lit(len(edges) + 1)).when(value < edges[0], F.lit(0))
    for i, (low, high) in enumerate(itertools.pairwise(edges), start=1):
        label = label.when(value < high, F.lit(f"[{low:.4g}, {high:.4g})"))
        order = order.when(value < high, F.lit(i))
    return label.otherwise(F.lit(f">={edges[-1]:.4g}")), order.otherwise(F.lit(len(edges)))
