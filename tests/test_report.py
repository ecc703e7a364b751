"""The evaluation report agrees with numpy and scikit-learn on the same rows, and writes a self-contained HTML."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pyspark.ml.classification import (
    LogisticRegression,
    MultilayerPerceptronClassifier,
    RandomForestClassifier,
)
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.regression import LinearRegression, RandomForestRegressor
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from deltaml.config.schema import CostConfig
from deltaml.errors import StepInputError
from deltaml.report.effects import EffectRow
from deltaml.report.html import gate_comparison, with_gate_comparison
from deltaml.report.statistics import (
    RESIDUAL_QUANTILES,
    CalibrationPoint,
    PredictedVsActualGrid,
    ResidualHistogram,
    ScoreHistogram,
    auc,
    calibration_points,
    choose_threshold,
    confusion_matrix,
    feature_importances,
    importance_kind,
    lift_table,
    multiclass_confusion,
    per_class_metrics,
    pr_points,
    predicted_vs_actual,
    residual_histogram,
    roc_points,
    score_histogram,
)
from deltaml.report.writers import write_multiclass_report, write_regression_report, write_report

ROWS = 2000
BINS = 1000
SCHEMA = "y double, p double"


@pytest.fixture(scope="module")
def data() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Labels drawn from a logistic model and its true probabilities: perfectly calibrated by construction."""
    rng = np.random.default_rng(20240611)
    x = rng.normal(size=ROWS)
    p = 1.0 / (1.0 + np.exp(-(-0.4 + 1.6 * x)))
    y = (rng.random(ROWS) < p).astype(np.float64)
    return y, p


@pytest.fixture(scope="module")
def scored(spark: SparkSession, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]) -> Any:
    y, p = data
    df = spark.createDataFrame(list(zip(y.tolist(), p.tolist(), strict=True)), SCHEMA).cache()
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def histogram(scored: DataFrame) -> ScoreHistogram:
    return score_histogram(scored, bins=BINS)


def _candidate_counts(
    y: npt.NDArray[np.float64], p: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Brute force over the candidate edges k / BINS, k = 1 .. BINS - 1: thresholds, TP, FP, FN."""
    thresholds = np.arange(1, BINS) / BINS
    predicted = p[None, :] >= thresholds[:, None]
    positive = y[None, :] == 1.0
    tp = (predicted & positive).sum(axis=1)
    fp = (predicted & ~positive).sum(axis=1)
    fn = (~predicted & positive).sum(axis=1)
    return thresholds, tp, fp, fn


def _closest_to_half(thresholds: npt.NDArray[np.float64], best: npt.NDArray[np.bool_]) -> float:
    tied = thresholds[best]
    return float(tied[np.argmin(np.abs(tied - 0.5))])


def test_histogram_counts_every_row_in_its_bin(
    histogram: ScoreHistogram, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, p = data
    # Bin i holds i / BINS <= p < (i + 1) / BINS: the number of inner edges at or below p.
    expected_bin = np.searchsorted(np.arange(1, BINS) / BINS, p, side="right")
    assert histogram.bins == BINS
    np.testing.assert_array_equal(histogram.positives, np.bincount(expected_bin[y == 1], minlength=BINS))
    np.testing.assert_array_equal(histogram.negatives, np.bincount(expected_bin[y == 0], minlength=BINS))
    np.testing.assert_allclose(histogram.prob_sums, np.bincount(expected_bin, weights=p, minlength=BINS), atol=1e-12)
    assert (histogram.total_positives, histogram.total_negatives) == (int(y.sum()), int((1 - y).sum()))
    assert histogram.rows == ROWS


def test_binned_auc_matches_scikit_learn(
    histogram: ScoreHistogram, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, p = data
    assert auc(histogram) == pytest.approx(roc_auc_score(y, p), abs=2e-3)


def test_roc_and_pr_run_from_no_row_to_every_row_positive(
    histogram: ScoreHistogram, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, _ = data
    fpr, tpr = roc_points(histogram)
    assert len(fpr) == len(tpr) == BINS + 1
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    recall, precision = pr_points(histogram)
    assert len(recall) == len(precision)
    assert (recall[0], precision[0]) == (0.0, 1.0)
    assert recall[-1] == 1.0
    assert precision[-1] == pytest.approx(y.mean(), abs=1e-12)
    assert np.all(np.diff(recall) >= 0)


def test_confusion_matrix_is_exact_and_agrees_with_the_histogram_at_an_edge(
    scored: DataFrame,
    histogram: ScoreHistogram,
    data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]],
) -> None:
    y, p = data
    # 0.5 is a bin edge; the other threshold is one of the scores itself, so p >= t must count it.
    for threshold in (0.5, float(np.sort(p)[ROWS // 3])):
        predicted, positive = p >= threshold, y == 1.0
        expected = {
            "tp": int((predicted & positive).sum()),
            "fp": int((predicted & ~positive).sum()),
            "tn": int((~predicted & ~positive).sum()),
            "fn": int((~predicted & positive).sum()),
        }
        assert confusion_matrix(scored, threshold) == expected
    at_half = confusion_matrix(scored, 0.5)
    fpr, tpr = roc_points(histogram)
    point = BINS - BINS // 2  # point j predicts positive p >= (BINS - j) / BINS
    assert round(tpr[point] * histogram.total_positives) == at_half["tp"]
    assert round(fpr[point] * histogram.total_negatives) == at_half["fp"]


def test_max_f1_matches_brute_force(
    histogram: ScoreHistogram, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, p = data
    thresholds, tp, fp, fn = _candidate_counts(y, p)
    f1 = 2 * tp / (2 * tp + fp + fn)
    expected = _closest_to_half(thresholds, f1 == f1.max())
    chosen = choose_threshold(histogram, "max_f1")
    assert abs(chosen - expected) <= 1 / BINS + 1e-12
    k = round(chosen * BINS) - 1
    assert f1[k] == pytest.approx(f1.max(), abs=1e-12)


def test_min_cost_matches_brute_force_and_lowers_the_threshold_when_misses_cost_more(
    histogram: ScoreHistogram, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, p = data
    thresholds, _, fp, fn = _candidate_counts(y, p)
    chosen: dict[float, float] = {}
    for fn_cost in (1.0, 5.0):
        cost = CostConfig(false_positive=1.0, false_negative=fn_cost)
        total = fp + fn_cost * fn
        chosen[fn_cost] = choose_threshold(histogram, "min_cost", cost=cost)
        assert chosen[fn_cost] == pytest.approx(_closest_to_half(thresholds, total == total.min()), abs=1e-12)
        assert total[round(chosen[fn_cost] * BINS) - 1] == total.min()
    # Calibrated scores: the Bayes threshold is fp / (fp + fn), 0.5 and then 1/6.
    assert chosen[5.0] < chosen[1.0]
    assert chosen[5.0] == pytest.approx(1 / 6, abs=0.1)


def test_fixed_rule_and_bad_arguments(histogram: ScoreHistogram) -> None:
    assert choose_threshold(histogram, "fixed", fixed=0.3) == 0.3
    with pytest.raises(ValueError, match="unknown threshold rule 'best'"):
        choose_threshold(histogram, "best")
    with pytest.raises(ValueError, match="needs cost=CostConfig"):
        choose_threshold(histogram, "min_cost")
    with pytest.raises(ValueError, match=r"fixed threshold must be in \(0, 1\)"):
        choose_threshold(histogram, "fixed", fixed=1.0)
    no_positives = ScoreHistogram(
        positives=np.zeros(4, dtype=np.int64), negatives=np.ones(4, dtype=np.int64), prob_sums=np.zeros(4)
    )
    with pytest.raises(StepInputError, match="'max_f1' needs positive rows"):
        choose_threshold(no_positives, "max_f1")
    with pytest.raises(StepInputError, match="needs rows of both classes"):
        auc(no_positives)


def _separable(bins: int) -> ScoreHistogram:
    """Five negatives in the first bin, five positives in the last: every inner edge separates them."""
    positives, negatives = np.zeros(bins, dtype=np.int64), np.zeros(bins, dtype=np.int64)
    positives[-1], negatives[0] = 5, 5
    return ScoreHistogram(positives=positives, negatives=negatives, prob_sums=np.zeros(bins))


def test_ties_resolve_toward_one_half() -> None:
    assert choose_threshold(_separable(10), "max_f1") == 0.5
    assert choose_threshold(_separable(10), "min_cost", cost=CostConfig(false_positive=2.0, false_negative=3.0)) == 0.5
    # With 9 bins the edges 4/9 and 5/9 are equally close to 0.5: the lower wins.
    assert choose_threshold(_separable(9), "max_f1") == 4 / 9


def test_calibrated_scores_lie_on_the_diagonal(histogram: ScoreHistogram) -> None:
    points = calibration_points(histogram, n=10)
    assert sum(point.rows for point in points) == ROWS
    assert [point.lower for point in points] == sorted(point.lower for point in points)
    for point in points:
        assert point.lower <= point.mean_predicted <= point.upper
        if point.rows >= 30:
            rate = point.mean_predicted
            tolerance = 4 * math.sqrt(rate * (1 - rate) / point.rows) + 0.01
            assert abs(point.observed_rate - point.mean_predicted) <= tolerance, point
    with pytest.raises(ValueError, match="positive divisor of the histogram's 1000 bins"):
        calibration_points(histogram, n=7)


def test_probabilities_are_clipped_and_bad_rows_are_refused(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1.0, 1.0), (0.0, -0.2), (1.0, 1.3), (0.0, 0.0), (1.0, 0.25)], "label double, s double")
    h = score_histogram(df, bins=4, label_col="label", prob_col="s")
    np.testing.assert_array_equal(h.positives, [0, 1, 0, 2])
    np.testing.assert_array_equal(h.negatives, [2, 0, 0, 0])
    np.testing.assert_allclose(h.prob_sums, [0.0, 0.25, 0.0, 2.0])
    assert confusion_matrix(df, 0.25, label_col="label", prob_col="s") == {"tp": 3, "fp": 0, "tn": 2, "fn": 0}

    bad = spark.createDataFrame([(1.0, 0.9), (2.0, 0.4), (0.0, None), (0.0, float("nan"))], SCHEMA)
    with pytest.raises(StepInputError, match=r"score_histogram: 3 of 4 rows have a null or NaN probability"):
        score_histogram(bad)
    with pytest.raises(StepInputError, match=r"confusion_matrix: 3 of 4 rows"):
        confusion_matrix(bad, 0.5)
    with pytest.raises(StepInputError, match=r"lack column\(s\) \['y', 'p'\]; present: \['label', 's'\]"):
        score_histogram(df)
    with pytest.raises(ValueError, match="bins must be an integer from 2"):
        score_histogram(df, bins=1)


@pytest.fixture(scope="module")
def tiny_training(spark: SparkSession) -> DataFrame:
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=(3, 200))
    y = (2.5 * b - 1.0 * c + 0.3 * rng.normal(size=200) > 0).astype(float)
    rows = list(zip(a.tolist(), b.tolist(), c.tolist(), y.tolist(), strict=True))
    df = spark.createDataFrame(rows, "a double, b double, c double, label double")
    return VectorAssembler(inputCols=["a", "b", "c"], outputCol="features").transform(df).cache()


def test_feature_importances_of_real_models(tiny_training: DataFrame) -> None:
    names = ["a", "b", "c"]
    logistic = LogisticRegression(maxIter=15).fit(tiny_training)
    got = feature_importances(logistic, names)
    by_name = dict(zip(names, logistic.coefficients.toArray().tolist(), strict=True))
    assert got == sorted(by_name.items(), key=lambda pair: -abs(pair[1]))
    assert got[0][0] == "b"
    assert dict(got)["c"] < 0

    # A two-class multinomial fit: the positive class's log-odds weights, coef[1] - coef[0].
    multinomial = LogisticRegression(maxIter=15, family="multinomial").fit(tiny_training)
    matrix = multinomial.coefficientMatrix.toArray()
    got = feature_importances(multinomial, names)
    assert got == sorted(zip(names, (matrix[1] - matrix[0]).tolist(), strict=True), key=lambda pair: -abs(pair[1]))
    assert got[0][0] == "b"

    forest = RandomForestClassifier(numTrees=5, maxDepth=3, seed=1).fit(tiny_training)
    got = feature_importances(forest, names)
    by_name = dict(zip(names, forest.featureImportances.toArray().tolist(), strict=True))
    assert got == sorted(by_name.items(), key=lambda pair: -abs(pair[1]))
    assert sum(value for _, value in got) == pytest.approx(1.0)

    with pytest.raises(ValueError, match=r"LogisticRegressionModel has 3 weights but 2 names were given"):
        feature_importances(logistic, ["a", "b"])

    mlp = MultilayerPerceptronClassifier(layers=[3, 2], maxIter=3, seed=1).fit(tiny_training)
    assert feature_importances(mlp, names) == []
    # What each kind of weight is, for the report's axis: coefficients, split importances, or none.
    assert importance_kind(logistic).startswith("coefficient: the change in log-odds")
    assert importance_kind(forest).startswith("split importance: Spark's featureImportances")
    assert importance_kind(mlp) == ""


def test_lift_table_matches_ranking_the_rows_by_hand(
    histogram: ScoreHistogram, data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, p = data
    lift = lift_table(histogram)
    # By hand: rank the rows by p, highest first, cut into ten groups of 200.
    ranked = y[np.argsort(-p, kind="stable")]
    groups = ranked.reshape(10, -1)
    rate = y.mean()
    assert [row.group for row in lift] == list(range(1, 11)) and all(row.rows == ROWS / 10 for row in lift)
    # Scores within a bin (1/1000 wide) count as tied, so a group edge can split a bin: within one row.
    assert np.allclose([row.positives for row in lift], groups.sum(axis=1), atol=1.0)
    assert np.allclose([row.lift for row in lift], groups.mean(axis=1) / rate, atol=0.03)
    assert np.allclose([row.gain for row in lift], np.cumsum(groups.sum(axis=1)) / y.sum(), atol=0.005)
    assert lift[-1].gain == pytest.approx(1.0) and lift[-1].cumulative_lift == pytest.approx(1.0)
    assert lift[0].lift > 2 and lift[-1].lift < 0.5  # a model with signal: the top decile is rich
    assert all(a.score_low >= b.score_high - 1 / BINS - 1e-9 for a, b in itertools.pairwise(lift))
    # No positives: no table; a single score for every row: every group is the average (lift 1).
    empty = ScoreHistogram(np.zeros(10, np.int64), np.full(10, 5, np.int64), np.zeros(10))
    assert lift_table(empty) == []
    tied = ScoreHistogram(
        np.array([0, 0, 30, 0], np.int64), np.array([0, 0, 70, 0], np.int64), np.array([0.0, 0.0, 60.0, 0.0])
    )
    assert [round(row.lift, 9) for row in lift_table(tied, groups=4)] == [1.0] * 4
    with pytest.raises(ValueError, match="groups must be an integer from 2 to 100"):
        lift_table(histogram, groups=1)


def test_write_report_writes_a_self_contained_html(
    tmp_path: Path, histogram: ScoreHistogram, scored: DataFrame
) -> None:
    threshold = choose_threshold(histogram, "max_f1")
    confusion = confusion_matrix(scored, threshold)
    metrics = {"test_auc_roc": auc(histogram), "test_rows": float(ROWS), "test_log_loss": float("nan")}
    calibration = calibration_points(histogram)
    importances = [("<b>x</b>", -2.0), ("price_$usd$", 1.5), ("tenure_months", 0.25)]
    leaderboard: list[dict[str, object]] = [  # keys sorted, as a fit restored from an earlier run has them
        {
            "family": "logistic_regression",
            "params": '{"regParam": 0.001234567, "maxIter": 100}',
            "rank": 1,
            "trials": 2,
            "validation_auc_roc": 0.81,
        },
        {"family": "random_forest", "maxDepth": 5, "rank": 2, "validation_auc_roc": 0.79},
    ]
    out = tmp_path / "report"
    written = write_report(
        out,
        title="Churn <test> & report",
        header=[("model", "lightgbm: models:/m-1"), ("data", "silver/split <v3>")],
        metrics={**metrics, "validation_auc_roc": 0.8123456},
        histogram=histogram,
        confusion=confusion,
        threshold=threshold,
        calibration=calibration,
        importances=importances,
        leaderboard=leaderboard,
        top_features=2,
        importance_kind="coefficient: the change in log-odds per unit of the feature",
        effects=[EffectRow("x_tenure", "[6, 20)", 120, 0.2512345, 0.25), EffectRow("city", "<x>", 7, 0.5, None)],
    )
    names = ["roc.png", "pr.png", "confusion_matrix.png", "calibration.png", "feature_importance.png"]
    assert written == [out / n for n in [*names, "metrics.json", "report.html"]]
    for path in written:
        assert path.stat().st_size > 0
    for name in names:
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(names)
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "Churn &lt;test&gt; &amp; report" in page
    assert "tenure_months" not in page  # top_features=2 keeps the two largest
    assert "random_forest" in page and "maxDepth" in page
    # A fixed column order whatever order the rows come in; params as name=value, not a JSON blob.
    assert (
        '<th class="name">rank</th><th>family</th><th>validation_auc_roc</th><th>maxDepth</th><th>trials</th>' in page
    )
    assert "<td>maxIter=100, regParam=0.001235</td>" in page
    assert "<p>Coefficient: the change in log-odds per unit of the feature.</p>" in page
    assert '<th class="name">feature</th><th>coefficient</th>' in page
    # The header says what the report is about; validation sits beside test, under readable names.
    assert '<tr><th class="name">data</th><td>silver/split &lt;v3&gt;</td></tr>' in page
    assert "<th>validation</th><th>test</th>" in page
    auc_row = f'<tr><td class="name">AUC-ROC</td><td>0.8123</td><td>{metrics["test_auc_roc"]:.4f}</td></tr>'
    assert auc_row in page
    assert '<tr><td class="name">log-loss</td><td></td><td>n/a</td></tr>' in page
    assert '<tr><td class="name">rows</td><td></td><td>2,000</td></tr>' in page
    assert "<h2>Lift and gains by decile</h2>" in page and "1 (top 10%)" in page and "10 (top 100%)" in page
    # Until the register step writes the gate's decision into it, the report says it is not decided.
    assert "<h2>Champion vs challenger</h2>" in page and "Not decided yet" in page
    decided = with_gate_comparison(page, gate_comparison([("decision", "kept: version 3 <stays>")], False))
    assert '<td class="fail">kept: version 3 &lt;stays&gt;</td>' in decided and "Not decided yet" not in decided
    assert with_gate_comparison(decided, "<p>again</p>").count("Champion vs challenger") == 1
    # How the predictions vary with the top features: each group's rows, mean prediction and actual rate.
    assert "<h2>How the predictions vary with the top 2 features</h2>" in page
    effect_row = '<td class="name">x_tenure</td><td>[6, 20)</td><td>120</td><td>0.2512</td><td>0.25</td>'
    assert effect_row in page and "<td>&lt;x&gt;</td><td>7</td><td>0.5</td><td></td>" in page

    document = json.loads((out / "metrics.json").read_text())
    assert document["metrics"] == {
        "test_auc_roc": metrics["test_auc_roc"],
        "test_rows": 2000.0,
        "test_log_loss": None,
        "validation_auc_roc": 0.8123456,
    }
    assert document["header"] == {"model": "lightgbm: models:/m-1", "data": "silver/split <v3>"}
    assert document["threshold"] == threshold
    assert [row["group"] for row in document["lift"]] == list(range(1, 11))
    assert document["confusion_matrix"] == confusion
    assert [CalibrationPoint(**point) for point in document["calibration"]] == calibration
    assert [tuple(pair) for pair in document["feature_importances"]] == importances
    assert document["leaderboard"] == leaderboard

    # Without importances (e.g. an MLP) there is no importance plot, and a stale one is removed.
    written = write_report(
        out,
        title="MLP",
        metrics={},
        histogram=histogram,
        confusion=confusion,
        threshold=threshold,
        calibration=calibration,
        importances=[],
    )
    assert not (out / "feature_importance.png").exists()
    assert len(written) == 6
    assert (out / "report.html").read_text().count('<img src="data:image/png;base64,') == 4


# ---- multiclass ----------------------------------------------------------------------------

CLASSES = 4
MULTICLASS_ROWS = 300
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def multiclass_data() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """True class indices 0..3 and predictions right about 60% of the time; class 3 is never predicted."""
    rng = np.random.default_rng(7)
    y = rng.integers(0, CLASSES, MULTICLASS_ROWS).astype(np.float64)
    guess = rng.integers(0, CLASSES - 1, MULTICLASS_ROWS).astype(np.float64)
    pred = np.where((rng.random(MULTICLASS_ROWS) < 0.6) & (y < CLASSES - 1), y, guess)
    return y, pred


@pytest.fixture(scope="module")
def multiclass_scored(
    spark: SparkSession, multiclass_data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> DataFrame:
    y, pred = multiclass_data
    return spark.createDataFrame(list(zip(y.tolist(), pred.tolist(), strict=True)), "label double, prediction double")


@pytest.fixture(scope="module")
def multiclass_counts(multiclass_scored: DataFrame) -> list[list[int]]:
    return multiclass_confusion(multiclass_scored, CLASSES, label_col="label", pred_col="prediction")


def test_multiclass_confusion_and_per_class_metrics_match_scikit_learn(
    multiclass_counts: list[list[int]], multiclass_data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, pred = multiclass_data
    expected = sklearn_confusion_matrix(y, pred, labels=list(range(CLASSES)))
    assert multiclass_counts == expected.tolist()
    assert all(type(count) is int for row in multiclass_counts for count in row)
    assert sum(row[CLASSES - 1] for row in multiclass_counts) == 0  # class 3 is never predicted

    labels = ["a", "b", "c", "d"]
    got = per_class_metrics(multiclass_counts, labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=list(range(CLASSES)), zero_division=0
    )
    assert [m["label"] for m in got] == labels
    assert [m["support"] for m in got] == support.tolist()
    np.testing.assert_allclose([float(m["precision"]) for m in got], precision, atol=1e-12)
    np.testing.assert_allclose([float(m["recall"]) for m in got], recall, atol=1e-12)
    np.testing.assert_allclose([float(m["f1"]) for m in got], f1, atol=1e-12)
    assert got[-1]["precision"] == 0.0 and got[-1]["f1"] == 0.0  # 0 / 0 is 0.0, as zero_division=0

    with pytest.raises(ValueError, match=r"confusion must be a 3 x 3 matrix of non-negative integers"):
        per_class_metrics(multiclass_counts, labels[:3])
    with pytest.raises(ValueError, match=r"confusion must be a 2 x 2 matrix"):
        per_class_metrics([[1, -1], [0, 2]], ["x", "y"])


def test_multiclass_confusion_refuses_bad_rows_and_arguments(spark: SparkSession) -> None:
    good = [(0.0, 2.0), (2.0, 2.0)]
    bad = [(None, 1.0), (1.0, float("nan")), (3.0, 0.0), (-1.0, 0.0), (1.5, 1.0), (0.0, float("inf"))]
    df = spark.createDataFrame(good + bad, "y double, pred double")
    with pytest.raises(StepInputError, match=r"multiclass_confusion: 6 of 8 rows have a null, NaN or non-integer"):
        multiclass_confusion(df, 3)
    assert multiclass_confusion(df.where(F.col("pred") == 2.0), 3) == [[0, 0, 1], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(StepInputError, match=r"lack column\(s\) \['prediction'\].*pass label_col= and pred_col="):
        multiclass_confusion(df, 3, pred_col="prediction")
    with pytest.raises(ValueError, match="num_classes must be an integer from 2 to 1000, got 1"):
        multiclass_confusion(df, 1)


def test_write_multiclass_report(tmp_path: Path, multiclass_counts: list[list[int]]) -> None:
    labels = ["<cat>", "dog & co", "$bird$", "fish"]
    metrics = {"test_accuracy": 0.5, "test_f1": float("nan")}
    importances = [("<b>x</b>", 0.9), ("tenure", 0.5), ("tiny", 0.01)]
    leaderboard: list[dict[str, object]] = [{"family": "logistic_regression", "f1": 0.61}]
    out = tmp_path / "multiclass"
    written = write_multiclass_report(
        out,
        title="Species <test>",
        metrics=metrics,
        labels=labels,
        confusion=multiclass_counts,
        importances=importances,
        leaderboard=leaderboard,
        top_features=2,
    )
    plots = ["confusion_matrix.png", "confusion_matrix_normalized.png", "feature_importance.png"]
    assert written == [out / name for name in [*plots, "metrics.json", "report.html"]]
    for name in plots:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(plots)
    assert "Species &lt;test&gt;" in page and "<cat>" not in page
    for label in ("&lt;cat&gt;", "dog &amp; co", "$bird$", "fish"):
        assert f'<td class="name">{label}</td>' in page  # a row of the per-class and the confusion table
    assert "<th>precision</th><th>recall</th><th>F1</th><th>support</th>" in page
    assert "tiny" not in page and "logistic_regression" in page

    document = json.loads((out / "metrics.json").read_text())
    assert document["task"] == "multiclass"
    assert document["labels"] == labels
    assert document["confusion_matrix"] == multiclass_counts
    assert document["per_class"] == per_class_metrics(multiclass_counts, labels)
    assert document["metrics"] == {"test_accuracy": 0.5, "test_f1": None}
    assert [tuple(pair) for pair in document["feature_importances"]] == importances
    assert document["leaderboard"] == leaderboard

    # A model without importances: no importance plot, and the stale one is removed.
    written = write_multiclass_report(
        out, title="MLP", metrics={}, labels=labels, confusion=multiclass_counts, importances=[]
    )
    assert not (out / "feature_importance.png").exists()
    assert len(written) == 4
    with pytest.raises(ValueError, match="confusion must be a 3 x 3 matrix"):
        write_multiclass_report(
            out, title="x", metrics={}, labels=labels[:3], confusion=multiclass_counts, importances=[]
        )


# ---- regression ----------------------------------------------------------------------------

REGRESSION_ROWS = 400


@pytest.fixture(scope="module")
def regression_data() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Actual values and biased, noisy predictions; the first 60 rows are whole numbers, so residuals and
    values fall exactly on bin edges too."""
    rng = np.random.default_rng(11)
    y = 50.0 + 10.0 * rng.normal(size=REGRESSION_ROWS)
    pred = y + 0.5 + 3.0 * rng.normal(size=REGRESSION_ROWS)
    y[:60], pred[:60] = np.round(y[:60]), np.round(pred[:60])
    return y, pred


@pytest.fixture(scope="module")
def regression_scored(
    spark: SparkSession, regression_data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> Any:
    y, pred = regression_data
    df = spark.createDataFrame(list(zip(y.tolist(), pred.tolist(), strict=True)), "y double, pred double").cache()
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def residuals(regression_scored: DataFrame) -> ResidualHistogram:
    return residual_histogram(regression_scored, bins=40)


@pytest.fixture(scope="module")
def grid(regression_scored: DataFrame) -> PredictedVsActualGrid:
    return predicted_vs_actual(regression_scored, bins=30)


def test_residual_histogram_matches_numpy(
    residuals: ResidualHistogram, regression_data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, pred = regression_data
    r = pred - y
    counts, edges = np.histogram(r, bins=40)
    np.testing.assert_array_equal(residuals.edges, edges)
    np.testing.assert_array_equal(residuals.counts, counts)
    assert (residuals.bins, residuals.rows) == (40, REGRESSION_ROWS)
    assert residuals.mean == pytest.approx(r.mean(), abs=1e-12)
    assert list(residuals.quantiles) == list(RESIDUAL_QUANTILES)
    for q, value in residuals.quantiles.items():
        assert value == np.quantile(r, q, method="inverted_cdf"), q


def test_predicted_vs_actual_matches_numpy_histogram2d(
    grid: PredictedVsActualGrid, regression_data: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
) -> None:
    y, pred = regression_data
    lo, hi = min(y.min(), pred.min()), max(y.max(), pred.max())
    counts, x_edges, y_edges = np.histogram2d(y, pred, bins=30, range=[(lo, hi), (lo, hi)])
    assert (grid.lo, grid.hi, grid.bins) == (lo, hi, 30)
    np.testing.assert_array_equal(grid.edges, x_edges)
    np.testing.assert_array_equal(grid.edges, y_edges)
    assert grid.counts == counts.astype(int).tolist()
    assert grid.rows == REGRESSION_ROWS


def test_regression_summaries_of_equal_values_and_bad_rows(spark: SparkSession) -> None:
    # Every residual is 1.0 and every value 2.0 or 3.0: numpy widens a zero range by 0.5 each side.
    same = spark.createDataFrame([(2.0, 3.0), (2.0, 3.0), (3.0, 4.0)], "y double, pred double")
    h = residual_histogram(same, bins=4)
    counts, edges = np.histogram(np.ones(3), bins=4)
    np.testing.assert_array_equal(h.edges, edges)
    np.testing.assert_array_equal(h.counts, counts)
    one = predicted_vs_actual(same.where(F.col("pred") == 4.0).select("y", F.col("y").alias("pred")), bins=2)
    assert (one.lo, one.hi, one.counts) == (2.5, 3.5, [[0, 0], [0, 1]])

    bad = spark.createDataFrame(
        [(1.0, 1.0), (None, 2.0), (1.0, float("nan")), (float("inf"), 1.0), (2.0, 2.5)], "y double, pred double"
    )
    with pytest.raises(StepInputError, match=r"residual_histogram: 3 of 5 rows have a null, NaN or infinite value"):
        residual_histogram(bad)
    with pytest.raises(StepInputError, match=r"predicted_vs_actual: 3 of 5 rows have a null, NaN or infinite"):
        predicted_vs_actual(bad)
    with pytest.raises(StepInputError, match="there are no scored rows"):
        residual_histogram(bad.limit(0))
    with pytest.raises(ValueError, match="bins must be an integer from 1 to 500, got 501"):
        predicted_vs_actual(bad, bins=501)
    with pytest.raises(StepInputError, match=r"lack column\(s\) \['label'\]"):
        residual_histogram(bad, label_col="label")


def test_write_regression_report(tmp_path: Path, residuals: ResidualHistogram, grid: PredictedVsActualGrid) -> None:
    out = tmp_path / "regression"
    importances = [("distance", 3.5), ("<hour>", -1.25)]
    written = write_regression_report(
        out,
        title="Delay & minutes",
        metrics={"test_rmse": 3.1, "test_r2": 0.9},
        residuals=residuals,
        grid=grid,
        importances=importances,
        leaderboard=[{"family": "gbt", "rmse": 3.1}],
    )
    plots = ["residuals.png", "predicted_vs_actual.png", "feature_importance.png"]
    assert written == [out / name for name in [*plots, "metrics.json", "report.html"]]
    for name in plots:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE)

    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == len(plots)
    assert "Delay &amp; minutes" in page and "&lt;hour&gt;" in page and "<hour>" not in page
    assert '<td class="name">quantile 0.5</td>' in page and '<td class="name">RMSE</td>' in page and "gbt" in page

    document = json.loads((out / "metrics.json").read_text())
    assert document["task"] == "regression"
    assert document["residuals"]["counts"] == residuals.counts.tolist()
    assert document["residuals"]["edges"] == residuals.edges.tolist()
    assert document["residuals"]["rows"] == REGRESSION_ROWS
    assert document["residuals"]["quantiles"] == {str(q): v for q, v in residuals.quantiles.items()}
    assert PredictedVsActualGrid(**document["predicted_vs_actual"]) == grid
    assert [tuple(pair) for pair in document["feature_importances"]] == importances

    write_regression_report(out, title="r", metrics={}, residuals=residuals, grid=grid, importances=[])
    assert not (out / "feature_importance.png").exists()


def test_feature_importances_of_regression_and_multiclass_models(spark: SparkSession) -> None:
    rng = np.random.default_rng(5)
    a, b, c = rng.normal(size=(3, 150))
    target = 3.0 * b - 1.0 * c + 0.1 * rng.normal(size=150)
    classes = np.digitize(target, [-1.5, 1.5]).astype(float)  # 0, 1, 2 mostly decided by b
    rows = list(zip(a.tolist(), b.tolist(), c.tolist(), target.tolist(), classes.tolist(), strict=True))
    df = spark.createDataFrame(rows, "a double, b double, c double, target double, label double")
    training = VectorAssembler(inputCols=["a", "b", "c"], outputCol="features").transform(df).cache()
    names = ["a", "b", "c"]

    def sorted_pairs(values: Any) -> list[tuple[str, float]]:
        return sorted(zip(names, np.asarray(values).tolist(), strict=True), key=lambda pair: -abs(pair[1]))

    linear = LinearRegression(labelCol="target", maxIter=10).fit(training)
    got = feature_importances(linear, names)
    assert got == sorted_pairs(linear.coefficients.toArray())
    assert [name for name, _ in got] == ["b", "c", "a"] and dict(got)["c"] < 0

    forest = RandomForestRegressor(labelCol="target", numTrees=3, maxDepth=3, seed=1).fit(training)
    got = feature_importances(forest, names)
    assert got == sorted_pairs(forest.featureImportances.toArray())
    assert got[0][0] == "b"

    multiclass = LogisticRegression(maxIter=15).fit(training)
    assert multiclass.numClasses == 3
    got = feature_importances(multiclass, names)
    assert got == sorted_pairs(np.abs(multiclass.coefficientMatrix.toArray()).max(axis=0))
    assert got[0][0] == "b" and all(value >= 0 for _, value in got)
    with pytest.raises(ValueError, match="LinearRegressionModel has 3 weights but 1 names"):
        feature_importances(linear, ["a"])
    training.unpersist()
