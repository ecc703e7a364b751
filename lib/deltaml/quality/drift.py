"""Drift statistics: a stored profile of reference data, and metrics of new data against it, computed in Spark.

:func:`build_profile` summarises a reference DataFrame once into a :class:`Profile` small enough to
store as JSON (``O(columns x bins)`` numbers, whatever the row count). :func:`compare` later reads
new data against that stored profile and returns one :class:`DriftMetric` per feature and metric.
Everything that touches rows runs as Spark aggregations; only the aggregates reach the driver,
where numpy and scipy finish the statistics.

Numeric columns are cast to double. A null, NaN or infinite value counts as missing (``nulls``):
the mean, quantiles and distances of a column holding infinities are not finite numbers, and a
stored profile has to be valid JSON. Categorical values are cast to strings; nulls are counted
apart, never as a category.

Spark jobs. :func:`build_profile` runs four Spark queries (three without categorical columns, two
without numeric ones), however many columns there are (with adaptive query execution a query with
a shuffle shows as two or three jobs: nine for a profile and eight for a comparison, measured
with 1, 6 and 40 numeric columns):

1. one aggregation: rows, and per column the non-null count, mean, sample standard deviation,
   min and max;
2. one ``DataFrame.approxQuantile`` call over all numeric columns, for the deciles (PSI bin
   edges), the 100 Wasserstein probabilities and the 1000 KS grid probabilities together;
3. one count of the rows at or below each bin edge and grid point, for all numeric columns:
   a multi-column :class:`~pyspark.ml.feature.Bucketizer` gives each value the index of its
   interval between those points (a binary search in the JVM, so ``O(log points)`` per value
   instead of one ``when`` expression per point), and one ``groupBy`` over (column, interval)
   counts them; at most ``columns x 1011`` grouped rows reach the driver, whose cumulative sums
   are the exact counts ``<= point``;
4. one ``groupBy`` over (column, value) of all categorical columns stacked with ``explode``, with
   a window per column (its distinct values ranked in one task) that keeps the ``top_k`` most
   frequent values and the column's total.

:func:`compare` runs the same kinds of queries over the current data (counts, the 100 quantiles,
the counts at the reference's points, the counts of the reference's categories): four at most.
Each reads the input again, so cache an input that is expensive to compute.

Metrics. Numeric features get ``psi``, ``ks``, ``wasserstein`` and ``null_rate_change``;
categorical ones ``psi``, ``chi2_pvalue``, ``js_distance`` and ``null_rate_change``.

* ``psi``: ``sum((c - r) * ln(c / r))`` over the reference's bins (numeric) or categories, with
  ``r`` and ``c`` the reference and current shares of non-null rows, each clipped below at
  ``epsilon`` so that an empty bin costs a large but finite amount.
* ``ks``: the largest ``|F_ref(g) - F_cur(g)|`` over the reference's grid points ``g`` (up to
  1000 quantiles), both CDFs exact at those points. It is the two-sample Kolmogorov-Smirnov
  statistic evaluated on the reference's grid: a lower bound of the exact statistic, within about
  ``1 / len(grid)`` of it for continuous data (the reference CDF rises by about that much between
  neighbouring grid points).
* ``wasserstein``: the mean over the probabilities 0.005, 0.015, ..., 0.995 of
  ``|Q_ref(p) - Q_cur(p)|`` (the 1-Wasserstein distance, as the integral of the quantile
  difference, by the midpoint rule), divided by the reference's sample standard deviation so that
  it reads in standard deviations. When that deviation is 0 or unknown (a constant column, or one
  non-null row) the distance is divided by 1, i.e. left in the column's own units. On data with
  few distinct values, whose quantile functions are steps, 100 probabilities can miss part of a
  small difference.
* ``chi2_pvalue``: the p-value of Pearson's chi-square test of homogeneity on the 2 x k table of
  reference and current counts per category, without continuity correction; categories empty on
  both sides are dropped, and with fewer than two left the p-value is 1.0. With millions of rows
  any small difference is significant; ``psi`` and ``js_distance`` do not grow with the row count.
* ``js_distance``: the Jensen-Shannon distance with base 2 between the two category distributions,
  in ``[0, 1]``.
* ``null_rate_change``: the current share of missing values minus the reference's.

The current data's categorical values are counted over the reference's categories; every other
value, including ones the reference never had, counts as :data:`OTHER`. A value equal to
:data:`OTHER` itself is counted with the others as well.

A feature with no non-null value in the current data, or none in the reference, has no
distribution to compare: it gets only ``null_rate_change``. Current data with no rows at all
raises :class:`~deltaml.errors.StepInputError`, as no rate of anything is defined.

Why not ``pyspark.ml.stat``: ``ChiSquareTest`` tests the independence of each feature from a
label over the rows of one DataFrame, and ``KolmogorovSmirnovTest`` is a one-sample test of a
column against a theoretical distribution (normal with given parameters). Here the reference
exists only as a stored profile, not as rows, so both tests need the two-sample forms computed
from aggregates, as above.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from pyspark.ml.feature import Bucketizer
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType
from scipy import stats

from deltaml.errors import StepInputError

LOG = logging.getLogger(__name__)


PROFILE_VERSION = 1


OTHER = "__other__"


NUMERIC = "numeric"


CATEGORICAL = "categorical"


NUMERIC_METRICS: tuple[str, ...] = ("psi", "ks", "wasserstein", "null_rate_change")


CATEGORICAL_METRICS: tuple[str, ...] = ("psi", "chi2_pvalue", "js_distance", "null_rate_change")


DEFAULT_TOP_K = 50


DEFAULT_RELATIVE_ERROR = 1e-4


DEFAULT_EPSILON = 1e-4


DECILE_PROBABILITIES: tuple[float, ...] = tuple(i / 10 for i in range(1, 10))


WASSERSTEIN_PROBABILITIES: tuple[float, ...] = tuple((i + 0.5) / 100 for i in range(100))


GRID_PROBABILITIES: tuple[float, ...] = tuple((i + 0.5) / 1000 for i in range(1000))


_INFINITY = float("inf")


@dataclass(frozen=True)
class NumericProfile:
    """The reference distribution of one numeric column.

    Attributes:
        name: The column.
        rows: Rows profiled.
        nulls: Rows whose value is null, NaN or infinite.
        mean: Mean of the other values (None when there are none).
        std: Their sample standard deviation (None with fewer than two).
        min: Their smallest value.
        max: Their largest value.
        edges: PSI bin edges, the distinct deciles, sorted; the bins are ``(-inf, e0]``,
            ``(e0, e1]``, ..., ``(e_last, inf)``.
        bin_counts: Non-null rows per bin, ``len(edges) + 1`` of them.
        quantiles: The values at probabilities 0.005, 0.015, ..., 0.995 (100, for Wasserstein).
        grid: Sorted distinct points at which the CDF is stored: the quantiles at
            ``(i + 0.5) / 1000``, deduplicated.
        grid_cdf: Exact share of non-null rows at or below each grid point.
    """

    name: str
    rows: int
    nulls: int
    mean: float | None
    std: float | None
    min: float | None
    max: float | None
    edges: list[float]
    bin_counts: list[int]
    quantiles: list[float]
    grid: list[float]
    grid_cdf: list[float]


@dataclass(frozen=True)
class CategoricalProfile:
    """The reference distribution of one categorical column.

    Attributes:
        name: The column.
        rows: Rows profiled.
        nulls: Rows whose value is null.
        counts: Rows of each of the ``top_k`` most frequent values (as strings, most frequent first,
            ties in string order), then :data:`OTHER` with the rows of all other values (0 if none).
    """

    name: str
    rows: int
    nulls: int
    counts: dict[str, int]


ColumnProfile = NumericProfile | CategoricalProfile


@dataclass(frozen=True)
class Profile:
    """The stored summary of a reference DataFrame that drift is measured against.

    Attributes:
        rows: Rows profiled.
        columns: Each profiled column's profile, by name, in the order given.
    """

    rows: int
    columns: dict[str, ColumnProfile]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (no NaN or infinity) of this profile, with ``"version": 1``."""
        columns: dict[str, Any] = {}
        for name, profile in self.columns.items():
            if isinstance(profile, NumericProfile):
                columns[name] = {
                    "kind": NUMERIC,
                    "name": profile.name,
                    "rows": profile.rows,
                    "nulls": profile.nulls,
                    "mean": profile.mean,
                    "std": profile.std,
                    "min": profile.min,
                    "max": profile.max,
                    "edges": list(profile.edges),
                    "bin_counts": list(profile.bin_counts),
                    "quantiles": list(profile.quantiles),
                    "grid": list(profile.grid),
                    "grid_cdf": list(profile.grid_cdf),
                }
            else:
                columns[name] = {
                    "kind": CATEGORICAL,
                    "name": profile.name,
                    "rows": profile.rows,
                    "nulls": profile.nulls,
                    "counts": dict(profile.counts),
                }
        return {"version": PROFILE_VERSION, "rows": self.rows, "columns": columns}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """The profile that :meth:`to_dict` wrote.

        Args:
            data: The dict, e.g. read back from JSON.

        Returns:
            A profile equal to the one that wrote ``data``.

        Raises:
            StepInputError: ``data`` is of another version or lacks a key.
        """
        version = data.get("version")
        if version != PROFILE_VERSION:
            raise StepInputError(
                f"drift profile has version {version!r}; this deltaml reads version {PROFILE_VERSION} "
                "(build the reference profile again)"
            )
        try:
            columns: dict[str, ColumnProfile] = {}
            for name, entry in data["columns"].items():
                kind = entry["kind"]
                if kind == NUMERIC:
                    columns[name] = NumericProfile(
                        name=str(entry["name"]),
                        rows=int(entry["rows"]),
                        nulls=int(entry["nulls"]),
                        mean=_optional_float(entry["mean"]),
                        std=_optional_float(entry["std"]),
                        min=_optional_float(entry["min"]),
                        max=_optional_float(entry["max"]),
                        edges=[float(v) for v in entry["edges"]],
                        bin_counts=[int(v) for v in entry["bin_counts"]],
                        quantiles=[float(v) for v in entry["quantiles"]],
                        grid=[float(v) for v in entry["grid"]],
                        grid_cdf=[float(v) for v in entry["grid_cdf"]],
                    )
                elif kind == CATEGORICAL:
                    columns[name] = CategoricalProfile(
                        name=str(entry["name"]),
                        rows=int(entry["rows"]),
                        nulls=int(entry["nulls"]),
                        counts={str(k): int(v) for k, v in entry["counts"].items()},
                    )
                else:
                    raise StepInputError(
                        f"drift profile column {name!r} has kind {kind!r}; expected {NUMERIC!r} or {CATEGORICAL!r}"
                    )
            return cls(rows=int(data["rows"]), columns=columns)
        except KeyError as exc:
            raise StepInputError(f"drift profile lacks the key {exc.args[0]!r}; build the profile again") from exc


@dataclass(frozen=True)
class DriftMetric:
    """One drift metric of one feature.

    Attributes:
        feature: The column.
        kind: ``numeric`` or ``categorical``.
        metric: One of :data:`NUMERIC_METRICS` or :data:`CATEGORICAL_METRICS`.
        value: The metric's value.
        reference_rows: Rows in the reference profile.
        current_rows: Rows in the current data.
    """

    feature: str
    kind: str
    metric: str
    value: float
    reference_rows: int
    current_rows: int


def build_profile(
    df: DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    top_k: int = DEFAULT_TOP_K,
    relative_error: float = DEFAULT_RELATIVE_ERROR,
) -> Profile:
    """Profile the reference data in at most four Spark queries, whatever the number of columns.

    Args:
        df: The reference rows.
        numeric: Columns of a numeric type, profiled as numbers (cast to double).
        categorical: Columns of any type, profiled as categories (cast to string).
        top_k: How many of each categorical column's most frequent values keep their own count.
        relative_error: Relative rank error of ``approxQuantile`` for the deciles, the Wasserstein
            quantiles and the KS grid (0 is exact, at a cost). The bin counts and the grid CDF
            are exact at whichever points it returns.

    Returns:
        The profile, with columns in the order ``numeric`` then ``categorical``.

    Raises:
        ValueError: ``top_k`` is below 1 or ``relative_error`` is outside ``[0, 1)``.
        StepInputError: A column is missing, listed twice, or listed as numeric without a numeric
            type, or ``df`` has no rows.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if not 0.0 <= relative_error < 1.0:
        raise ValueError(f"relative_error must be in [0, 1), got {relative_error!r}")
    numeric, categorical = list(numeric), list(categorical)
    _check_columns(df, numeric, categorical, "build_profile", "the reference data")
    prepared = _prepared(df, numeric, categorical)
    num_cols = [_numeric_alias(i) for i in range(len(numeric))]
    cat_cols = [_categorical_alias(j) for j in range(len(categorical))]

    moments: list[Column] = [F.count(F.lit(1)).alias("rows")]
    for col in num_cols:
        value = F.col(col)
        moments += [
            F.count(value).alias(f"{col}_n"),
            F.avg(value).alias(f"{col}_mean"),
            F.stddev_samp(value).alias(f"{col}_std"),
            F.min(value).alias(f"{col}_min"),
            F.max(value).alias(f"{col}_max"),
        ]
    moments += [F.count(F.col(col)).alias(f"{col}_n") for col in cat_cols]
    summary = prepared.agg(*moments).first()
    if summary is None or not summary["rows"]:
        raise StepInputError("build_profile: the reference data has no rows, so there is nothing to profile")
    rows = int(summary["rows"])

    probabilities = [*DECILE_PROBABILITIES, *WASSERSTEIN_PROBABILITIES, *GRID_PROBABILITIES]
    quantiles = _approx_quantiles(prepared, num_cols, probabilities, relative_error)
    deciles_end = len(DECILE_PROBABILITIES)
    wasserstein_end = deciles_end + len(WASSERSTEIN_PROBABILITIES)
    edges, grids, points = [], [], []
    for found in quantiles:
        column_edges = _distinct_sorted(found[:deciles_end])
        column_grid = _distinct_sorted(found[wasserstein_end:])
        edges.append(column_edges)
        grids.append(column_grid)
        points.append(_distinct_sorted([*column_edges, *column_grid]))
    at_or_below = _counts_at_or_below(prepared, num_cols, points)

    columns: dict[str, ColumnProfile] = {}
    for name, col, found, column_edges, column_grid, column_points, cumulative in zip(
        numeric, num_cols, quantiles, edges, grids, points, at_or_below, strict=True
    ):
        # The bins and the CDF share one count (the Bucketizer job's), so they agree even on input
        # that is not deterministic between jobs; ``nulls`` comes from the first aggregation.
        counted = int(cumulative[-1])
        count_at = dict(zip(column_points, cumulative[:-1].tolist(), strict=True))
        edge_counts = [count_at[e] for e in column_edges]
        columns[name] = NumericProfile(
            name=name,
            rows=rows,
            nulls=rows - int(summary[f"{col}_n"]),
            mean=_optional_float(summary[f"{col}_mean"]),
            std=_optional_float(summary[f"{col}_std"]),
            min=_optional_float(summary[f"{col}_min"]),
            max=_optional_float(summary[f"{col}_max"]),
            edges=column_edges,
            bin_counts=[int(v) for v in np.diff([0, *edge_counts, counted])],
            quantiles=[float(v) for v in found[deciles_end:wasserstein_end]],
            grid=column_grid,
            grid_cdf=[count_at[g] / counted for g in column_grid],
        )
    for name, col, counts in zip(categorical, cat_cols, _top_categories(prepared, cat_cols, top_k), strict=True):
        columns[name] = CategoricalProfile(name=name, rows=rows, nulls=rows - int(summary[f"{col}_n"]), counts=counts)
    LOG.info("drift profile of %d rows: %d numeric and %d categorical columns", rows, len(numeric), len(categorical))
    return Profile(rows=rows, columns=columns)


def compare(
    reference: Profile,
    current: DataFrame,
    columns: Sequence[str] | None = None,
    *,
    epsilon: float = DEFAULT_EPSILON,
    relative_error: float = DEFAULT_RELATIVE_ERROR,
) -> list[DriftMetric]:
    """Drift metrics of the current data against the reference profile, in at most four Spark queries.

    Args:
        reference: The stored profile of the reference data.
        current: The current rows, with the profiled columns.
        columns: The features to compare (all of the profile's when None), in the order of the result.
        epsilon: Lower clip of each bin's or category's share in PSI.
        relative_error: Relative rank error of ``approxQuantile`` for the current data's
            Wasserstein quantiles.

    Returns:
        Per feature, in order, its metrics in the order of :data:`NUMERIC_METRICS` or
        :data:`CATEGORICAL_METRICS`; only ``null_rate_change`` for a feature without non-null
        values on either side.

    Raises:
        ValueError: ``epsilon`` is outside ``(0, 1)`` or ``relative_error`` outside ``[0, 1)``.
        StepInputError: A column is not in the profile, is missing from ``current`` or is not
            numeric there while numeric in the profile, or ``current`` has no rows.
    """
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    if not 0.0 <= relative_error < 1.0:
        raise ValueError(f"relative_error must be in [0, 1), got {relative_error!r}")
    names = list(reference.columns) if columns is None else list(columns)
    unknown = [name for name in names if name not in reference.columns]
    if unknown:
        raise StepInputError(
            f"compare: columns {unknown} are not in the reference profile, which has {list(reference.columns)}"
        )
    numeric = [n for n in names if isinstance(reference.columns[n], NumericProfile)]
    categorical = [n for n in names if isinstance(reference.columns[n], CategoricalProfile)]
    _check_columns(current, numeric, categorical, "compare", "the current data")
    prepared = _prepared(current, numeric, categorical)
    num_cols = [_numeric_alias(i) for i in range(len(numeric))]
    cat_cols = [_categorical_alias(j) for j in range(len(categorical))]

    summary = prepared.agg(
        F.count(F.lit(1)).alias("rows"), *[F.count(F.col(c)).alias(f"{c}_n") for c in [*num_cols, *cat_cols]]
    ).first()
    if summary is None or not summary["rows"]:
        raise StepInputError("compare: the current data has no rows, so no drift can be measured")
    rows = int(summary["rows"])
    non_null = {
        name: int(summary[f"{col}_n"])
        for name, col in zip([*numeric, *categorical], [*num_cols, *cat_cols], strict=True)
    }

    # Only features with values on both sides have distributions to compare.
    num_pairs = [
        (name, col)
        for name, col in zip(numeric, num_cols, strict=True)
        if non_null[name] and _non_null(reference.columns[name])
    ]
    cat_pairs = [
        (name, col)
        for name, col in zip(categorical, cat_cols, strict=True)
        if non_null[name] and _non_null(reference.columns[name])
    ]
    num_profiles = [cast(NumericProfile, reference.columns[name]) for name, _ in num_pairs]
    cat_profiles = [cast(CategoricalProfile, reference.columns[name]) for name, _ in cat_pairs]
    points = [_distinct_sorted([*p.edges, *p.grid]) for p in num_profiles]
    at_or_below = _counts_at_or_below(prepared, [col for _, col in num_pairs], points)
    current_quantiles = _approx_quantiles(
        prepared, [col for _, col in num_pairs], list(WASSERSTEIN_PROBABILITIES), relative_error
    )
    current_counts = _counts_in_categories(
        prepared, [col for _, col in cat_pairs], [list(p.counts) for p in cat_profiles]
    )

    distribution: dict[str, dict[str, float]] = {}
    for numeric_profile, column_points, cumulative, found in zip(
        num_profiles, points, at_or_below, current_quantiles, strict=True
    ):
        distribution[numeric_profile.name] = _numeric_metrics(
            numeric_profile, column_points, cumulative, found, epsilon
        )
    for categorical_profile, counts in zip(cat_profiles, current_counts, strict=True):
        distribution[categorical_profile.name] = _categorical_metrics(categorical_profile, counts, epsilon)

    metrics: list[DriftMetric] = []
    for name in names:
        profile = reference.columns[name]
        kind, order = (
            (NUMERIC, NUMERIC_METRICS) if isinstance(profile, NumericProfile) else (CATEGORICAL, CATEGORICAL_METRICS)
        )
        values = {
            **distribution.get(name, {}),
            "null_rate_change": (rows - non_null[name]) / rows - profile.nulls / profile.rows,
        }
        metrics += [
            DriftMetric(name, kind, metric, float(values[metric]), profile.rows, rows)
            for metric in order
            if metric in values
        ]
    LOG.info("drift of %d current rows against %d reference rows: %d column(s)", rows, reference.rows, len(names))
    return metrics


def _numeric_metrics(
    profile: NumericProfile,
    points: list[float],
    cumulative: npt.NDArray[np.int64],
    current_quantiles: list[float],
    epsilon: float,
) -> dict[str, float]:
    """PSI, KS and normalised Wasserstein of one numeric feature from the current data's aggregates."""
    total = float(cumulative[-1])
    count_at = dict(zip(points, cumulative[:-1].tolist(), strict=True))
    edge_counts = [count_at[e] for e in profile.edges]
    current_bins = np.diff(np.array([0, *edge_counts, total], dtype=np.float64))
    current_cdf = np.array([count_at[g] for g in profile.grid], dtype=np.float64) / total
    ks = float(np.max(np.abs(np.array(profile.grid_cdf) - current_cdf)))
    scale = profile.std if profile.std else 1.0
    wasserstein = float(np.mean(np.abs(np.array(profile.quantiles) - np.array(current_quantiles)))) / scale
    return {
        "psi": _psi(np.array(profile.bin_counts, dtype=np.float64), current_bins, epsilon),
        "ks": ks,
        "wasserstein": wasserstein,
    }


def _categorical_metrics(profile: CategoricalProfile, counts: dict[str, int], epsilon: float) -> dict[str, float]:
    """PSI, chi-square p-value and Jensen-Shannon distance of one categorical feature, over the reference categories."""
    categories = list(profile.counts)
    reference = np.array([profile.counts[c] for c in categories], dtype=np.float64)
    current = np.array([counts.get(c, 0) for c in categories], dtype=np.float64)
    return {
        "psi": _psi(reference, current, epsilon),
        "chi2_pvalue": _chi2_pvalue(reference, current),
        "js_distance": _js_distance(reference, current),
    }


def _psi(reference: npt.NDArray[np.float64], current: npt.NDArray[np.float64], epsilon: float) -> float:
    """Population stability index of two count vectors over the same bins, shares clipped at ``epsilon``."""
    r = np.maximum(reference / reference.sum(), epsilon)
    c = np.maximum(current / current.sum(), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def _chi2_pvalue(reference: npt.NDArray[np.float64], current: npt.NDArray[np.float64]) -> float:
    """P-value of Pearson's chi-square test of homogeneity on the 2 x k table, no continuity correction."""
    keep = (reference + current) > 0
    if int(keep.sum()) < 2:
        return 1.0
    table = np.vstack([reference[keep], current[keep]])
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return float(stats.chi2.sf(statistic, table.shape[1] - 1))


def _js_distance(reference: npt.NDArray[np.float64], current: npt.NDArray[np.float64]) -> float:
    """Jensen-Shannon distance, base 2, of two count vectors over the same categories."""
    p, q = reference / reference.sum(), current / current.sum()
    m = (p + q) / 2

    def divergence(a: npt.NDArray[np.float64]) -> float:
        present = a > 0
        return float(np.sum(a[present] * np.log2(a[present] / m[present])))

    return math.sqrt(min(max((divergence(p) + divergence(q)) / 2, 0.0), 1.0))


def _check_columns(df: DataFrame, numeric: list[str], categorical: list[str], caller: str, what: str) -> None:
    """Raise StepInputError unless every column is present once and each numeric one has a numeric type."""
    listed = [*numeric, *categorical]
    twice = sorted({name for name in listed if listed.count(name) > 1})
    if twice:
        raise StepInputError(f"{caller}: columns {twice} are listed more than once (as numeric and/or categorical)")
    types = {field.name: field.dataType for field in df.schema.fields}
    missing = [name for name in listed if name not in types]
    if missing:
        raise StepInputError(f"{caller}: {what} lacks the columns {missing}; it has {list(types)}")
    not_numeric = {name: types[name].simpleString() for name in numeric if not isinstance(types[name], NumericType)}
    if not_numeric:
        raise StepInputError(
            f"{caller}: numeric columns must have a numeric type in {what}, but {not_numeric} do not "
            "(cast them first, or profile them as categorical)"
        )


def _column(name: str) -> Column:
    """A top-level column by its exact name, even one that contains dots or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def _numeric_alias(index: int) -> str:
    return f"_n{index}"


def _categorical_alias(index: int) -> str:
    return f"_c{index}"


def _prepared(df: DataFrame, numeric: list[str], categorical: list[str]) -> DataFrame:
    """The columns under positional names: numbers as finite doubles (else null), categories as strings."""
    selected = []
    for index, name in enumerate(numeric):
        value = _column(name).cast("double")
        finite = ~F.isnan(value) & (F.abs(value) != F.lit(_INFINITY))
        # "+ 0.0" turns -0.0 into 0.0: the Bucketizer's binary search orders -0.0 below 0.0.
        selected.append(F.when(finite, value + F.lit(0.0)).alias(_numeric_alias(index)))
    for index, name in enumerate(categorical):
        selected.append(_column(name).cast("string").alias(_categorical_alias(index)))
    return df.select(*selected) if selected else df.select(F.lit(1).alias("_one"))


def _approx_quantiles(
    prepared: DataFrame, cols: list[str], probabilities: list[float], relative_error: float
) -> list[list[float]]:
    """Quantiles of each column at ``probabilities`` in one job; an empty list for a column without values."""
    if not cols:
        return []
    found = prepared.approxQuantile(cols, probabilities, relative_error)
    return [[float(v) for v in values] for values in found]


def _counts_at_or_below(prepared: DataFrame, cols: list[str], points: list[list[float]]) -> list[npt.NDArray[np.int64]]:
    """Per column, the exact count of non-null values ``<=`` each of its sorted points, then the non-null total.

    One Spark job for all columns. The Bucketizer's intervals are closed on the left, ``[a, b)``;
    bucketizing ``-x`` on the negated points gives intervals ``(p_k-1, p_k]`` of ``x`` instead,
    whose running totals are the counts at or below each point. A column without points (one
    without values, whose quantiles are empty) gets ``[0]`` without being read.
    """
    totals: list[npt.NDArray[np.int64]] = [np.zeros(len(p) + 1, dtype=np.int64) for p in points]
    with_points = [(i, col) for i, col in enumerate(cols) if points[i]]
    if not with_points:
        return totals
    splits = [[-_INFINITY, *(-p for p in reversed(points[i])), _INFINITY] for i, _ in with_points]
    negated = prepared.select(*[(-F.col(col)).alias(col) for _, col in with_points])
    bucketed = Bucketizer(
        splitsArray=splits,
        inputCols=[col for _, col in with_points],
        outputCols=[f"{col}_bucket" for _, col in with_points],
        handleInvalid="error",
    ).transform(negated)
    pairs = F.explode(
        F.array(
            *[F.struct(F.lit(i).alias("c"), F.col(f"{col}_bucket").cast("int").alias("b")) for i, col in with_points]
        )
    )
    grouped = (
        bucketed.select(pairs.alias("p"))
        .select("p.c", "p.b")
        .where(F.col("b").isNotNull())
        .groupBy("c", "b")
        .agg(F.count(F.lit(1)).alias("n"))
        .collect()
    )
    for row in grouped:
        # Bucket b of -x is interval len(points) - b of x in ascending order: 0 is x <= p_0, the last x > p_last.
        per_interval = totals[row["c"]]
        per_interval[len(per_interval) - 1 - row["b"]] += int(row["n"])
    return [np.cumsum(counts) for counts in totals]


def _top_categories(prepared: DataFrame, cols: list[str], top_k: int) -> list[dict[str, int]]:
    """Per column, the counts of its ``top_k`` most frequent values and of all others under OTHER, in one job."""
    if not cols:
        return []
    ranked = _value_counts(prepared, cols)
    by_column = Window.partitionBy("c")
    # A value spelled like OTHER is ranked last and never kept: it counts with the other values.
    order = by_column.orderBy((F.col("v") == F.lit(OTHER)).asc(), F.col("n").desc(), F.col("v").asc())
    kept = (
        ranked.select(
            "c", "v", "n", F.row_number().over(order).alias("rank"), F.sum("n").over(by_column).alias("total")
        )
        .where((F.col("rank") <= top_k) & (F.col("v") != F.lit(OTHER)))
        .collect()
    )
    kept.sort(key=lambda row: (row["c"], row["rank"]))
    counts: list[dict[str, int]] = [{} for _ in cols]
    totals = [0] * len(cols)
    for row in kept:
        counts[row["c"]][row["v"]] = int(row["n"])
        totals[row["c"]] = int(row["total"])
    for index, column_counts in enumerate(counts):
        column_counts[OTHER] = totals[index] - sum(column_counts.values())
    return counts


def _counts_in_categories(prepared: DataFrame, cols: list[str], categories: list[list[str]]) -> list[dict[str, int]]:
    """Per column, the counts of its given categories, every other non-null value under OTHER, in one job."""
    if not cols:
        return []
    mapped = prepared.select(
        *[
            F.when(F.col(col).isNull() | F.col(col).isin([c for c in known if c != OTHER]), F.col(col))
            .otherwise(F.lit(OTHER))
            .alias(col)
            for col, known in zip(cols, categories, strict=True)
        ]
    )
    counts: list[dict[str, int]] = [{} for _ in cols]
    for row in _value_counts(mapped, cols).collect():
        counts[row["c"]][row["v"]] = int(row["n"])
    return counts


def _value_counts(prepared: DataFrame, cols: list[str]) -> DataFrame:
    """Rows ``(c, v, n)``: column index, non-null value and its count, for all columns stacked."""
    pairs = F.explode(F.array(*[F.struct(F.lit(i).alias("c"), F.col(col).alias("v")) for i, col in enumerate(cols)]))
    return (
        prepared.select(pairs.alias("p"))
        .select("p.c", "p.v")
        .where(F.col("v").isNotNull())
        .groupBy("c", "v")
        .agg(F.count(F.lit(1)).alias("n"))
    )


def _non_null(profile: ColumnProfile) -> int:
    return profile.rows - profile.nulls


def _distinct_sorted(values: Sequence[float]) -> list[float]:
    return [float(v) for v in np.unique(np.asarray(values, dtype=np.float64))]


def _optional_float(value: Any) -> float | None:
    """A float, or None for None and NaN (Spark's stddev of one row)."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number
