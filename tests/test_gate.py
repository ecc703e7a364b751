"""The champion/challenger gate: Spark metrics against scikit-learn, the promotion rule, the bootstrap interval."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from sklearn.metrics import accuracy_score, log_loss, precision_recall_curve, roc_auc_score

from deltaml.config.schema import GateConfig
from deltaml.errors import StepInputError
from deltaml.quality.gate import bootstrap_differences, gate_decision, metric_value

SCHEMA = "y double, p_champion double, p_challenger double, pred_champion double, pred_challenger double"

# Twelve hand-made rows; ties in both score columns, a probability of exactly 0 and 1 for the clipping.
Y = [1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0]
P_GOOD = [0.9, 0.2, 0.65, 0.4, 0.3, 0.55, 0.8, 0.1, 0.4, 0.9, 0.0, 0.3]
P_WEAK = [0.6, 0.5, 0.5, 0.3, 0.6, 0.4, 0.7, 0.2, 0.5, 0.45, 0.1, 1.0]


def _scored(spark: SparkSession, champion: list[float], challenger: list[float], y: list[int] = Y) -> DataFrame:
    rows = [
        (float(label), pc, pn, float(pc >= 0.5), float(pn >= 0.5))
        for label, pc, pn in zip(y, champion, challenger, strict=True)
    ]
    return spark.createDataFrame(rows, SCHEMA)


def _spark_auc_pr(y: list[int], p: list[float]) -> float:
    """Spark's AUC-PR: trapezoids over one point per distinct score, starting at (0, first precision)."""
    precision, recall, _ = precision_recall_curve(y, p)
    # scikit-learn lists points by increasing threshold and appends (recall 0, precision 1); drop that.
    recall, precision = recall[:-1][::-1], precision[:-1][::-1]
    recall = np.concatenate([[0.0], recall])
    precision = np.concatenate([[precision[0]], precision])
    return float(np.trapezoid(precision, recall))


@pytest.mark.parametrize("column", ["champion", "challenger"])
def test_metric_value_matches_scikit_learn(spark: SparkSession, column: str) -> None:
    df = _scored(spark, P_WEAK, P_GOOD)
    p = P_WEAK if column == "champion" else P_GOOD
    prob, pred = f"p_{column}", f"pred_{column}"
    assert metric_value(df, "auc_roc", prob, pred) == pytest.approx(roc_auc_score(Y, p), abs=1e-12)
    assert metric_value(df, "log_loss", prob, pred) == pytest.approx(
        log_loss(Y, np.clip(p, 1e-15, 1 - 1e-15)), abs=1e-12
    )
    assert metric_value(df, "accuracy", prob, pred) == pytest.approx(
        accuracy_score(Y, [q >= 0.5 for q in p]), abs=1e-12
    )
    assert metric_value(df, "auc_pr", prob, pred) == pytest.approx(_spark_auc_pr(Y, p), abs=1e-12)


def test_metric_value_is_nan_when_undefined_and_rejects_unknown_metrics(spark: SparkSession) -> None:
    one_class = _scored(spark, [0.2, 0.7], [0.3, 0.6], y=[0, 0])
    assert math.isnan(metric_value(one_class, "auc_roc", "p_champion", "pred_champion"))
    assert math.isnan(metric_value(one_class, "auc_pr", "p_champion", "pred_champion"))
    assert metric_value(one_class, "accuracy", "p_champion", "pred_champion") == pytest.approx(0.5)
    with pytest.raises(StepInputError, match=r"^gate metric 'f1' is unknown; use one of auc_roc, auc_pr"):
        metric_value(one_class, "f1", "p_champion", "pred_champion")


def test_better_challenger_is_promoted_and_worse_refused(spark: SparkSession) -> None:
    expected = roc_auc_score(Y, P_GOOD) - roc_auc_score(Y, P_WEAK)
    assert expected > 0.2
    better = gate_decision(
        _scored(spark, P_WEAK, P_GOOD), GateConfig(), seed=1, champion_version=2, challenger_version=3
    )
    assert better.promote
    assert (better.champion_version, better.challenger_version, better.metric) == (2, 3, "auc_roc")
    assert better.challenger_value == pytest.approx(roc_auc_score(Y, P_GOOD), abs=1e-12)
    assert better.champion_value == pytest.approx(roc_auc_score(Y, P_WEAK), abs=1e-12)
    assert better.difference == pytest.approx(expected, abs=1e-12)
    assert (better.ci_low, better.ci_high, better.resamples) == (None, None, 0)
    assert better.reason == (
        f"auc_roc {roc_auc_score(Y, P_GOOD):.4f} vs {roc_auc_score(Y, P_WEAK):.4f}, +{expected:.4f} >= margin 0.0000"
    )

    worse = gate_decision(
        _scored(spark, P_GOOD, P_WEAK), GateConfig(), seed=1, champion_version=2, challenger_version=3
    )
    assert not worse.promote
    assert worse.difference == pytest.approx(-expected, abs=1e-12)
    assert f"-{expected:.4f} < margin 0.0000" in worse.reason


def test_margin_is_respected(spark: SparkSession) -> None:
    df = _scored(spark, P_WEAK, P_GOOD).cache()
    difference = roc_auc_score(Y, P_GOOD) - roc_auc_score(Y, P_WEAK)
    just_above = GateConfig(margin=difference + 1e-9)
    just_below = GateConfig(margin=difference - 1e-9)
    refused = gate_decision(df, just_above, seed=1, champion_version=1, challenger_version=2)
    promoted = gate_decision(df, just_below, seed=1, champion_version=1, challenger_version=2)
    assert (refused.promote, promoted.promote) == (False, True)
    assert " < margin " in refused.reason and " >= margin " in promoted.reason
    # The caller's cache is the caller's: the gate leaves it in place.
    assert df.is_cached
    df.unpersist()


def test_log_loss_difference_is_positive_when_the_challenger_loses_less(spark: SparkSession) -> None:
    clipped = {name: log_loss(Y, np.clip(p, 1e-15, 1 - 1e-15)) for name, p in (("good", P_GOOD), ("weak", P_WEAK))}
    assert clipped["good"] < clipped["weak"]
    gate = GateConfig(metric="log_loss")
    better = gate_decision(_scored(spark, P_WEAK, P_GOOD), gate, seed=1, champion_version=1, challenger_version=2)
    assert better.promote
    assert better.challenger_value == pytest.approx(clipped["good"], abs=1e-12)
    assert better.difference == pytest.approx(clipped["weak"] - clipped["good"], abs=1e-12)
    assert better.reason.startswith("log_loss (lower is better) ")
    worse = gate_decision(_scored(spark, P_GOOD, P_WEAK), gate, seed=1, champion_version=1, challenger_version=2)
    assert not worse.promote
    assert worse.difference == pytest.approx(clipped["good"] - clipped["weak"], abs=1e-12)


def test_first_version_is_promoted_without_champion_columns(spark: SparkSession) -> None:
    df = _scored(spark, P_WEAK, P_GOOD).select("y", "p_challenger", "pred_challenger")
    decision = gate_decision(df, GateConfig(bootstrap=10), seed=1, champion_version=None, challenger_version=1)
    assert decision.promote
    assert (decision.champion_value, decision.difference, decision.ci_low, decision.resamples) == (None, None, None, 0)
    assert decision.reason == f"first version: no @champion yet (auc_roc {roc_auc_score(Y, P_GOOD):.4f})"
    assert decision.as_metrics() == {
        "gate_promoted": 1.0,
        "gate_challenger_value": pytest.approx(roc_auc_score(Y, P_GOOD)),
        "gate_resamples": 0.0,
    }
    assert decision.as_tags() == {
        "gate_metric": "auc_roc",
        "gate_decision": "promoted",
        "gate_champion_version": "none",
        "gate_challenger_version": "1",
        "gate_reason": decision.reason,
    }
    assert not df.is_cached


def test_undefined_challenger_metric_is_an_error(spark: SparkSession) -> None:
    one_class = _scored(spark, [0.2, 0.7], [0.3, 0.6], y=[1, 1])
    with pytest.raises(StepInputError, match=r"gate: auc_roc of version 4 is undefined on the test split"):
        gate_decision(one_class, GateConfig(), seed=1, champion_version=3, challenger_version=4)


def _separable(spark: SparkSession, rows: int, seed: int) -> tuple[DataFrame, DataFrame]:
    """A clearly better challenger (scores follow the label) and a coin-flip champion; and two identical models."""
    rng = random.Random(seed)
    y = [rng.random() < 0.4 for _ in range(rows)]
    good = [round(min(max(0.25 + 0.5 * label + rng.gauss(0, 0.15), 0.0), 1.0), 3) for label in y]
    noise = [round(rng.random(), 3) for _ in y]
    labels = [int(v) for v in y]
    return _scored(spark, noise, good, labels), _scored(spark, good, good, labels)


def test_bootstrap_resamples_are_the_sampled_frames(spark: SparkSession) -> None:
    better, _ = _separable(spark, 120, seed=3)
    better = better.cache()
    for metric in ("auc_roc", "auc_pr", "log_loss", "accuracy"):
        sign = -1.0 if metric == "log_loss" else 1.0
        expected = []
        for i in range(3):
            resample = better.sample(withReplacement=True, fraction=1.0, seed=11 + i)
            expected.append(
                sign
                * (
                    metric_value(resample, metric, "p_challenger", "pred_challenger")
                    - metric_value(resample, metric, "p_champion", "pred_champion")
                )
            )
        assert bootstrap_differences(better, metric, 11, 3) == pytest.approx(expected, abs=1e-12), metric
    better.unpersist()


def test_bootstrap_interval_excludes_zero_only_for_a_clearly_better_model(spark: SparkSession) -> None:
    better, identical = _separable(spark, 200, seed=5)
    gate = GateConfig(bootstrap=60, confidence=0.9)
    promoted = gate_decision(better, gate, seed=42, champion_version=1, challenger_version=2)
    assert promoted.promote
    assert promoted.resamples == 60
    assert promoted.ci_low is not None and promoted.ci_high is not None and promoted.difference is not None
    assert 0 < promoted.ci_low < promoted.difference < promoted.ci_high
    assert "; 90% CI [+" in promoted.reason and "] above 0 over 60 resamples" in promoted.reason
    assert not better.is_cached

    # Two identical models: the difference is 0, which meets margin 0 ...
    plain = gate_decision(identical, GateConfig(), seed=42, champion_version=1, challenger_version=2)
    assert (plain.difference, plain.promote) == (0.0, True)
    # ... but with the bootstrap, an interval of [0, 0] is not above zero: the champion stays.
    kept = gate_decision(identical, GateConfig(bootstrap=20), seed=42, champion_version=1, challenger_version=2)
    assert (kept.difference, kept.ci_low, kept.ci_high, kept.promote) == (0.0, 0.0, 0.0, False)
    assert kept.reason.endswith("+0.0000 >= margin 0.0000; 95% CI [+0.0000, +0.0000] not above 0 over 20 resamples")
    assert kept.as_metrics()["gate_promoted"] == 0.0
    assert kept.as_tags()["gate_decision"] == "kept"


def test_regression_metrics_match_scikit_learn_and_lower_error_wins(spark: SparkSession) -> None:
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(3)
    y = rng.normal(10, 3, 40)
    good, weak = y + rng.normal(0, 0.5, 40), y + rng.normal(0, 2.0, 40)
    rows = [(float(a), float(w), float(g), float(w), float(g)) for a, w, g in zip(y, weak, good, strict=True)]
    df = spark.createDataFrame(rows, SCHEMA)
    for column, predicted in (("champion", weak), ("challenger", good)):
        args = (f"p_{column}", f"pred_{column}")
        assert metric_value(df, "rmse", *args, task="regression") == pytest.approx(
            math.sqrt(mean_squared_error(y, predicted)), rel=1e-12
        )
        assert metric_value(df, "mae", *args, task="regression") == pytest.approx(
            mean_absolute_error(y, predicted), rel=1e-12
        )
        assert metric_value(df, "r2", *args, task="regression") == pytest.approx(r2_score(y, predicted), rel=1e-12)
    for metric in ("rmse", "mae", "r2"):
        better = gate_decision(
            df, GateConfig(metric=metric), seed=1, champion_version=1, challenger_version=2, task="regression"
        )
        assert better.promote and better.difference is not None and better.difference > 0, metric
    swapped = df.select(
        "y",
        df.p_challenger.alias("p_champion"),
        df.p_champion.alias("p_challenger"),
        df.pred_challenger.alias("pred_champion"),
        df.pred_champion.alias("pred_challenger"),
    )
    worse = gate_decision(
        swapped,
        GateConfig(metric="rmse", bootstrap=20),
        seed=1,
        champion_version=1,
        challenger_version=2,
        task="regression",
    )
    assert not worse.promote and worse.ci_high is not None and worse.ci_high < 0


def test_multiclass_log_loss_reads_the_probability_of_the_true_class(spark: SparkSession) -> None:
    # p_* holds each row's probability of its TRUE class; pred_* the predicted class index.
    y = [0, 1, 2, 2, 1, 0]
    proba = np.array(
        [[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]
    )
    true_p = [float(proba[i, c]) for i, c in enumerate(y)]
    pred = [float(np.argmax(row)) for row in proba]
    rows = [(float(a), t, t, p, p) for a, t, p in zip(y, true_p, pred, strict=True)]
    df = spark.createDataFrame(rows, SCHEMA)
    assert metric_value(df, "log_loss", "p_challenger", "pred_challenger", task="multiclass") == pytest.approx(
        log_loss(y, proba), rel=1e-12
    )
    assert metric_value(df, "accuracy", "p_challenger", "pred_challenger", task="multiclass") == pytest.approx(
        accuracy_score(y, pred), rel=1e-12
    )
