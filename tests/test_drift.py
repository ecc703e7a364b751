"""Drift profiles and metrics computed in Spark agree with numpy and scipy on the same rows."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, ks_2samp, wasserstein_distance

from deltaml.errors import StepInputError
from deltaml.quality.drift import (
    CATEGORICAL_METRICS,
    NUMERIC_METRICS,
    OTHER,
    CategoricalProfile,
    DriftMetric,
    NumericProfile,
    Profile,
    build_profile,
    compare,
)

ROWS = 4000
CATEGORIES = ["a", "b", "c", "d", "e"]
REFERENCE_MIX = [0.4, 0.3, 0.15, 0.1, 0.05]
# A column name with a dot: the module must address columns by their exact names.
COUNT = "visits.count"
SCHEMA = StructType(
    [
        StructField("x", DoubleType()),
        StructField(COUNT, IntegerType()),
        StructField("cat", StringType()),
    ]
)


@dataclass
class Sample:
    """One data set as numpy arrays (NaN where the Spark row is missing) and as a DataFrame."""

    x: npt.NDArray[np.float64]  # NaN for null, NaN and infinite values
    count: npt.NDArray[np.float64]  # NaN for null
    cat: list[str | None]
    df: DataFrame


def _sample(
    spark: SparkSession,
    seed: int,
    *,
    shift: float = 0.0,
    rate: float = 3.0,
    mix: list[float] = REFERENCE_MIX,
    categories: list[str] = CATEGORIES,
) -> Sample:
    """Normal ``x`` with nulls, NaN and infinities; Poisson counts (many ties); categories with nulls."""
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 1.0, ROWS)
    kind = rng.choice(4, size=ROWS, p=[0.94, 0.03, 0.02, 0.01])  # value, null, NaN, +-inf
    count = rng.poisson(rate, ROWS).astype(np.float64)
    count_null = rng.random(ROWS) < 0.01
    cat: list[str | None] = [str(v) for v in rng.choice(categories, size=ROWS, p=mix)]
    for index in np.flatnonzero(rng.random(ROWS) < 0.04):
        cat[index] = None
    rows: list[tuple[Any, ...]] = []
    for i in range(ROWS):
        x_value: float | None = float(x[i])
        if kind[i] == 1:
            x_value = None
        elif kind[i] == 2:
            x_value = math.nan
        elif kind[i] == 3:
            x_value = math.inf if i % 2 else -math.inf
        rows.append((x_value, None if count_null[i] else int(count[i]), cat[i]))
    df = spark.createDataFrame(rows, SCHEMA)
    return Sample(
        x=np.where(kind == 0, x, np.nan),
        count=np.where(count_null, np.nan, count),
        cat=cat,
        df=df,
    )


@pytest.fixture(scope="module")
def reference(spark: SparkSession) -> Sample:
    return _sample(spark, seed=1)


@pytest.fixture(scope="module")
def profile(reference: Sample) -> Profile:
    return build_profile(reference.df, ["x", COUNT], ["cat"])


@pytest.fixture(scope="module")
def same(spark: SparkSession) -> Sample:
    """Another sample of the reference's distributions."""
    return _sample(spark, seed=2)


@pytest.fixture(scope="module")
def shifted(spark: SparkSession) -> Sample:
    """``x`` shifted by one standard deviation, a higher Poisson rate, another category mix and new categories."""
    return _sample(
        spark,
        seed=3,
        shift=1.0,
        rate=4.0,
        mix=[0.1, 0.2, 0.2, 0.2, 0.2, 0.05, 0.05],
        categories=[*CATEGORIES, "new1", "new2"],
    )


def _values(metrics: list[DriftMetric]) -> dict[tuple[str, str], float]:
    return {(m.feature, m.metric): m.value for m in metrics}


def _present(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return values[~np.isnan(values)]


def _numpy_psi(reference: npt.NDArray[np.float64], current: npt.NDArray[np.float64], epsilon: float = 1e-4) -> float:
    r = np.maximum(reference / reference.sum(), epsilon)
    c = np.maximum(current / current.sum(), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def _bin_counts(values: npt.NDArray[np.float64], edges: list[float]) -> npt.NDArray[np.float64]:
    """Counts in the bins (-inf, e0], (e0, e1], ..., (e_last, inf): a value's bin is the number of edges below it."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1).astype(np.float64)


def _category_counts(values: list[str | None], categories: list[str]) -> npt.NDArray[np.float64]:
    """Counts over the profile's categories (which end with OTHER); every other non-null value counts as OTHER."""
    counts = Counter(v if v in categories else OTHER for v in values if v is not None)
    return np.array([counts.get(c, 0) for c in categories], dtype=np.float64)


def _null_share(values: npt.NDArray[np.float64] | list[str | None]) -> float:
    if isinstance(values, list):
        return sum(v is None for v in values) / len(values)
    return int(np.isnan(values).sum()) / len(values)


def test_profile_round_trips_through_json(profile: Profile) -> None:
    data = profile.to_dict()
    text = json.dumps(data, allow_nan=False)
    back = Profile.from_dict(json.loads(text))

    assert data["version"] == 1
    assert back == profile
    assert back.to_dict() == data
    assert list(back.columns) == ["x", COUNT, "cat"]
    with pytest.raises(StepInputError, match=r"drift profile has version 2; this deltaml reads version 1"):
        Profile.from_dict({**data, "version": 2})
    broken = json.loads(text)
    del broken["columns"]["x"]["grid"]
    with pytest.raises(StepInputError, match=r"drift profile lacks the key 'grid'"):
        Profile.from_dict(broken)


def test_numeric_profile_matches_numpy(profile: Profile, reference: Sample) -> None:
    x = profile.columns["x"]
    assert isinstance(x, NumericProfile)
    values = np.sort(_present(reference.x))
    n = len(values)

    assert x.rows == ROWS
    assert x.nulls == ROWS - n  # nulls, NaN and infinities
    assert x.nulls > 0.05 * ROWS
    assert x.mean == pytest.approx(float(np.mean(values)), rel=1e-9)
    assert x.std == pytest.approx(float(np.std(values, ddof=1)), rel=1e-9)
    assert (x.min, x.max) == (values[0], values[-1])
    assert x.edges == sorted(set(x.edges))
    assert len(x.edges) == 9
    for probability, edge in zip(np.arange(1, 10) / 10, x.edges, strict=True):
        assert edge in values
        assert abs(np.searchsorted(values, edge, side="right") / n - probability) <= 2 / n
    assert x.bin_counts == _bin_counts(values, x.edges).astype(int).tolist()
    assert len(x.quantiles) == 100
    for probability, quantile in zip((np.arange(100) + 0.5) / 100, x.quantiles, strict=True):
        assert abs(np.searchsorted(values, quantile, side="right") / n - probability) <= 2 / n
    assert len(x.grid) == len(set(x.grid)) > 950
    assert x.grid == sorted(x.grid)
    assert x.grid_cdf == (np.searchsorted(values, x.grid, side="right") / n).tolist()


def test_discrete_profile_counts_ties_at_the_points(profile: Profile, reference: Sample) -> None:
    """Poisson counts: every grid point and edge is a value shared by many rows, so ``<=`` versus ``<`` shows."""
    count = profile.columns[COUNT]
    assert isinstance(count, NumericProfile)
    values = np.sort(_present(reference.count))
    n = len(values)

    assert count.nulls == ROWS - n
    assert count.grid == np.unique(values)[: len(count.grid)].tolist()  # every value up to the 99.95th percentile
    assert count.edges == sorted(set(count.edges))
    assert count.bin_counts == _bin_counts(values, count.edges).astype(int).tolist()
    assert count.grid_cdf == (np.searchsorted(values, count.grid, side="right") / n).tolist()
    assert sum(count.bin_counts) == n


def test_categorical_profile_keeps_top_k_and_sums_the_rest(spark: SparkSession) -> None:
    values = ["a"] * 5 + ["c"] * 4 + ["b"] * 4 + ["d"] * 2 + [OTHER, "e", None, None]
    df = spark.createDataFrame([(v,) for v in values], StructType([StructField("cat", StringType())]))

    got = build_profile(df, [], ["cat"], top_k=2).columns["cat"]

    # b and c tie at 4: the string order keeps b. A value spelled like OTHER counts with the others.
    assert got == CategoricalProfile(name="cat", rows=19, nulls=2, counts={"a": 5, "b": 4, OTHER: 8})
    assert list(got.counts) == ["a", "b", OTHER]


def test_metrics_agree_with_numpy_and_scipy(profile: Profile, reference: Sample, shifted: Sample) -> None:
    got = _values(compare(profile, shifted.df))
    ref_x, cur_x = _present(reference.x), _present(shifted.x)
    x = profile.columns["x"]
    assert isinstance(x, NumericProfile)
    cat = profile.columns["cat"]
    assert isinstance(cat, CategoricalProfile)
    categories = list(cat.counts)
    ref_cat, cur_cat = _category_counts(reference.cat, categories), _category_counts(shifted.cat, categories)
    table = np.vstack([ref_cat, cur_cat])
    table = table[:, table.sum(axis=0) > 0]

    expected = {
        ("x", "psi"): _numpy_psi(_bin_counts(ref_x, x.edges), _bin_counts(cur_x, x.edges)),
        ("x", "null_rate_change"): _null_share(shifted.x) - _null_share(reference.x),
        ("cat", "psi"): _numpy_psi(ref_cat, cur_cat),
        ("cat", "js_distance"): float(jensenshannon(ref_cat, cur_cat, base=2)),
        ("cat", "chi2_pvalue"): float(chi2_contingency(table, correction=False).pvalue),
        ("cat", "null_rate_change"): _null_share(shifted.cat) - _null_share(reference.cat),
    }
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-300), key
    exact_ks = float(ks_2samp(ref_x, cur_x).statistic)
    assert exact_ks - 0.01 <= got["x", "ks"] <= exact_ks + 1e-12  # a lower bound, within 1/len(grid)
    exact_wasserstein = wasserstein_distance(ref_x, cur_x) / np.std(ref_x, ddof=1)
    assert got["x", "wasserstein"] == pytest.approx(exact_wasserstein, rel=0.02)


def test_chi2_and_js_agree_with_scipy_without_drift(profile: Profile, reference: Sample, same: Sample) -> None:
    """Where the p-value is neither 0 nor 1, so the comparison with scipy means something."""
    got = _values(compare(profile, same.df, ["cat", "x"]))
    cat = profile.columns["cat"]
    assert isinstance(cat, CategoricalProfile)
    categories = list(cat.counts)
    ref_cat, cur_cat = _category_counts(reference.cat, categories), _category_counts(same.cat, categories)
    table = np.vstack([ref_cat, cur_cat])
    table = table[:, table.sum(axis=0) > 0]
    ref_x, cur_x = _present(reference.x), _present(same.x)

    assert 0.001 < got["cat", "chi2_pvalue"] < 0.999
    assert got["cat", "chi2_pvalue"] == pytest.approx(chi2_contingency(table, correction=False).pvalue, rel=1e-9)
    assert got["cat", "js_distance"] == pytest.approx(float(jensenshannon(ref_cat, cur_cat, base=2)), rel=1e-9)
    exact_ks = float(ks_2samp(ref_x, cur_x).statistic)
    assert exact_ks - 0.01 <= got["x", "ks"] <= exact_ks + 1e-12
    exact_wasserstein = wasserstein_distance(ref_x, cur_x) / np.std(ref_x, ddof=1)
    assert got["x", "wasserstein"] == pytest.approx(exact_wasserstein, abs=0.01)


def test_same_distribution_shows_no_drift_and_a_shift_shows_drift(
    profile: Profile, same: Sample, shifted: Sample
) -> None:
    calm = _values(compare(profile, same.df))
    drifted = _values(compare(profile, shifted.df))

    for feature in ("x", COUNT):
        assert calm[feature, "psi"] < 0.1
        assert calm[feature, "ks"] < 0.05
        assert calm[feature, "wasserstein"] < 0.1
        assert drifted[feature, "psi"] > 0.25
        assert drifted[feature, "ks"] > 0.2
        assert drifted[feature, "wasserstein"] > 0.3
    assert drifted["x", "wasserstein"] == pytest.approx(1.0, abs=0.1)  # one standard deviation
    assert calm["cat", "psi"] < 0.1
    assert calm["cat", "js_distance"] < 0.05
    assert calm["cat", "chi2_pvalue"] > 0.05
    assert drifted["cat", "psi"] > 0.25
    assert drifted["cat", "js_distance"] > 0.2
    assert drifted["cat", "chi2_pvalue"] < 1e-10


def test_result_lists_each_features_metrics_in_order(profile: Profile, same: Sample) -> None:
    metrics = compare(profile, same.df, ["cat", "x"])

    assert [(m.feature, m.kind, m.metric) for m in metrics] == [
        *[("cat", "categorical", name) for name in CATEGORICAL_METRICS],
        *[("x", "numeric", name) for name in NUMERIC_METRICS],
    ]
    assert {(m.reference_rows, m.current_rows) for m in metrics} == {(ROWS, ROWS)}


def test_unseen_categories_count_as_other(spark: SparkSession, profile: Profile, reference: Sample) -> None:
    values: list[str | None] = ["a"] * 60 + ["zzz"] * 30 + ["yyy"] * 10 + [None] * 20
    df = spark.createDataFrame([(None, None, v) for v in values], SCHEMA)
    cat = profile.columns["cat"]
    assert isinstance(cat, CategoricalProfile)
    categories = list(cat.counts)
    assert categories[-1] == OTHER
    assert cat.counts[OTHER] == 0  # five categories, fewer than top_k
    ref_cat = _category_counts(reference.cat, categories)
    with_other = np.array([60, 0, 0, 0, 0, 40], dtype=np.float64)
    dropped = np.array([60, 0, 0, 0, 0, 0], dtype=np.float64)

    got = _values(compare(profile, df, ["cat"]))

    assert got["cat", "psi"] == pytest.approx(_numpy_psi(ref_cat, with_other), rel=1e-9)
    assert got["cat", "psi"] != pytest.approx(_numpy_psi(ref_cat, dropped), rel=1e-3)
    assert got["cat", "js_distance"] == pytest.approx(float(jensenshannon(ref_cat, with_other, base=2)), rel=1e-9)
    assert got["cat", "null_rate_change"] == 20 / 120 - _null_share(reference.cat)


def test_all_null_current_columns_get_only_the_null_rate_change(
    spark: SparkSession, profile: Profile, reference: Sample
) -> None:
    df = spark.createDataFrame([(None, 3, None)] * 50, SCHEMA)

    metrics = compare(profile, df)

    assert [(m.feature, m.metric) for m in metrics] == [
        ("x", "null_rate_change"),
        *[(COUNT, name) for name in NUMERIC_METRICS],
        ("cat", "null_rate_change"),
    ]
    got = _values(metrics)
    assert got["x", "null_rate_change"] == 1.0 - _null_share(reference.x)
    assert got["cat", "null_rate_change"] == 1.0 - _null_share(reference.cat)
    assert got[COUNT, "null_rate_change"] == 0.0 - _null_share(reference.count)


def test_bad_input_is_refused_with_what_was_expected(spark: SparkSession, profile: Profile, same: Sample) -> None:
    with pytest.raises(StepInputError, match=r"build_profile: the reference data lacks the columns \['nope'\]"):
        build_profile(same.df, ["x", "nope"], [])
    with pytest.raises(StepInputError, match=r"numeric type in the reference data, but \{'cat': 'string'\}"):
        build_profile(same.df, ["cat"], [])
    with pytest.raises(StepInputError, match=r"columns \['x'\] are listed more than once"):
        build_profile(same.df, ["x"], ["x"])
    with pytest.raises(StepInputError, match=r"compare: columns \['nope'\] are not in the reference profile"):
        compare(profile, same.df, ["nope"])
    with pytest.raises(StepInputError, match=r"compare: the current data lacks the columns \['cat'\]"):
        compare(profile, same.df.drop("cat"))
    with pytest.raises(StepInputError, match=r"compare: the current data has no rows"):
        compare(profile, same.df.limit(0))
    with pytest.raises(ValueError, match=r"top_k must be an integer >= 1, got 0"):
        build_profile(same.df, ["x"], [], top_k=0)


def test_spark_jobs_do_not_grow_with_the_columns(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    wide = spark.createDataFrame(
        [(*(float(v) for v in row), str(int(row[0] > 0)), str(int(row[1] > 0))) for row in rng.normal(size=(500, 6))],
        [f"n{i}" for i in range(6)] + ["c0", "c1"],
    )
    sc = spark.sparkContext
    tracker = sc.statusTracker()

    def jobs(group: str, numeric: list[str], categorical: list[str]) -> tuple[int, int]:
        sc.setJobGroup(f"{group}-profile", "drift test")
        reference = build_profile(wide, numeric, categorical)
        sc.setJobGroup(f"{group}-compare", "drift test")
        compare(reference, wide)
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        return len(tracker.getJobIdsForGroup(f"{group}-profile")), len(tracker.getJobIdsForGroup(f"{group}-compare"))

    narrow_jobs = jobs("drift-narrow", ["n0"], ["c0"])
    wide_jobs = jobs("drift-wide", [f"n{i}" for i in range(6)], ["c0", "c1"])

    assert narrow_jobs == wide_jobs
    assert max(wide_jobs) <= 12


def test_the_drift_report_reads_one_row_per_feature_with_its_limit_in_view(tmp_path: Any) -> None:
    """Before: ~80 long rows, a PSI chart that auto-scaled (a PSI far below its limit filled the width), and the
    predictions overlay labelled "reference (train)" though their reference is the test split."""
    from deltaml.report.plots import _plot_drift_bars, _plot_overlay
    from deltaml.report.writers import write_drift_report

    def row(
        feature: str, kind: str, metric: str, value: float, threshold: float | None, drifted: bool
    ) -> dict[str, Any]:
        return {
            "feature": feature,
            "kind": kind,
            "metric": metric,
            "value": value,
            "threshold": threshold,
            "drifted": drifted,
        }

    rows = [
        row("tenure", "numeric", "psi", 0.0044, 0.2, False),
        row("tenure", "numeric", "ks", 0.03, 0.1, False),
        row("contract", "categorical", "psi", 0.31, 0.2, True),
        row("contract", "categorical", "chi2_pvalue", 0.0001, 0.01, True),
    ]
    overlays = [("predictions (probability)", "reference (test)", ["[0, 0.5)", "[0.5, 1]"], [0.7, 0.3], [0.6, 0.4])]
    write_drift_report(tmp_path, title="t", rows=rows, share=0.5, overlays=overlays)
    page = (tmp_path / "report.html").read_text()
    header = "<th>drifted</th><th>psi</th><th>ks</th><th>chi2_pvalue</th>"
    assert header in page
    # Drifted features first; a value past its limit shows the limit.
    assert page.index('<td class="name">contract</td>') < page.index('<td class="name">tenure</td>')
    assert "<td>0.31 (limit 0.2)</td>" in page and "<td>0.0044</td>" in page
    assert page.count('<td class="name">') == 2

    small = _plot_drift_bars({"tenure": 0.0044}, set(), 0.2)
    axes = small.axes[0]
    assert axes.get_xlim()[1] >= 0.2 and [list(np.asarray(line.get_xdata())) for line in axes.lines] == [[0.2, 0.2]]
    legend = _plot_overlay("predictions", ["a"], [1.0], [1.0], "reference (test)").axes[0].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["reference (test)", "current"]
