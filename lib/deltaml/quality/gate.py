"""The champion/challenger decision: metrics of both models on the same test rows, with bootstrap noise."""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from deltaml.columns import CHALLENGER, CHAMPION
from deltaml.config.schema import GateConfig
from deltaml.errors import StepInputError
from deltaml.tasks import LOG_LOSS_EPS, TASKS, gate_metrics, improvement
from deltaml.tasks import metric as metric_spec

MODELS = (CHAMPION, CHALLENGER)
# Every metric the gate can compare, for some task.
GATE_METRIC_NAMES = tuple(dict.fromkeys(m for task in TASKS for m in gate_metrics(task)))


# Spark sums partition results in the order they arrive, so the same scores can give metrics that
# differ in the last bits; differences smaller than this are such noise and count as zero.
_NOISE = 1e-12


# Resamples scored per Spark job: one job stacks this many ``sample`` frames and aggregates
# them by resample id, which keeps both the job count and the query plan small.
_RESAMPLES_PER_JOB = 50


@dataclass(frozen=True)
class GateDecision:
    """The outcome of the champion/challenger gate on one metric.

    ``difference`` is challenger minus champion, with the sign flipped for metrics where lower
    is better (``log_loss``), so that a positive difference always means the challenger is
    better; ``ci_low``/``ci_high`` bound it over ``resamples`` bootstrap resamples.
    """

    promote: bool
    metric: str
    champion_version: int | None
    challenger_version: int
    champion_value: float | None
    challenger_value: float
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    resamples: int
    reason: str

    def as_metrics(self) -> dict[str, float]:
        """The decision as MLflow metrics (``gate_*``); values that are None are left out."""
        values: dict[str, float | None] = {
            "gate_promoted": 1.0 if self.promote else 0.0,
            "gate_challenger_value": self.challenger_value,
            "gate_champion_value": self.champion_value,
            "gate_difference": self.difference,
            "gate_ci_low": self.ci_low,
            "gate_ci_high": self.ci_high,
            "gate_resamples": float(self.resamples),
        }
        return {k: float(v) for k, v in values.items() if v is not None}

    def as_tags(self) -> dict[str, str]:
        """The decision as MLflow tags (``gate_*``; the runner prefixes step tags with ``deltaml.``)."""
        return {
            "gate_metric": self.metric,
            "gate_decision": "promoted" if self.promote else "kept",
            "gate_champion_version": str(self.champion_version) if self.champion_version is not None else "none",
            "gate_challenger_version": str(self.challenger_version),
            "gate_reason": self.reason,
        }


def _check_metric(metric: str) -> None:
    if metric not in GATE_METRIC_NAMES:
        raise StepInputError(f"gate metric '{metric}' is unknown; use one of {', '.join(GATE_METRIC_NAMES)}")


def metric_value(
    scored: DataFrame, metric: str, prob_col: str, pred_col: str, label_col: str = "y", task: str = "binary"
) -> float:
    """One metric of a scored DataFrame, computed in Spark on all rows.

    AUC-ROC and AUC-PR come from :class:`BinaryClassificationEvaluator` on the probability
    column, without down-sampling the curves (``numBins=0``); log-loss clips probabilities to
    ``[LOG_LOSS_EPS, 1 - LOG_LOSS_EPS]`` as :func:`deltaml.ml.metrics.binary_metrics` does; accuracy compares
    the 0/1 prediction column with the label. For a ``multiclass`` task the probability column
    holds the probability of each row's TRUE class, and log-loss is the mean of ``-log`` of it;
    for ``regression``, ``rmse``, ``mae`` and ``r2`` compare the prediction with the label.

    Args:
        scored: Rows with a 0.0/1.0 label, a probability of the positive class and a 0/1 prediction.
        metric: ``auc_roc``, ``auc_pr``, ``log_loss``, ``accuracy``, ``rmse``, ``mae`` or ``r2``.
        prob_col: The probability column.
        pred_col: The 0/1 prediction column.
        label_col: The 0.0/1.0 label column (class index or value for the other tasks).
        task: ``binary``, ``multiclass`` or ``regression``.

    Returns:
        The metric; NaN when it is undefined (no rows, or a single class for the AUCs).

    Raises:
        StepInputError: ``metric`` is not one of the four.
    """
    _check_metric(metric)
    if metric in ("auc_roc", "auc_pr"):
        counts = scored.agg(F.sum(F.col(label_col)).alias("pos"), F.sum(1 - F.col(label_col)).alias("neg")).first()
        assert counts is not None
        if not counts["pos"] or (metric == "auc_roc" and not counts["neg"]):
            return float("nan")
        evaluator = BinaryClassificationEvaluator(
            rawPredictionCol=prob_col,
            labelCol=label_col,
            metricName="areaUnderROC" if metric == "auc_roc" else "areaUnderPR",
            numBins=0,
        )
        return float(evaluator.evaluate(scored.select(F.col(prob_col).cast("double"), F.col(label_col).cast("double"))))
    value = _pointwise_metric(metric, F.col(prob_col), F.col(pred_col), F.col(label_col), task)
    row = scored.agg(value.alias("v")).first()
    assert row is not None
    return float("nan") if row["v"] is None else float(row["v"])


def _pointwise_metric(metric: str, p: Column, pred: Column, y: Column, task: str = "binary") -> Column:
    """The aggregate of a metric built from per-row terms (log-loss, accuracy, RMSE, MAE, R²)."""
    if metric == "log_loss":
        clipped = F.least(F.greatest(p, F.lit(LOG_LOSS_EPS)), F.lit(1 - LOG_LOSS_EPS))
        if task == "multiclass":  # p is the probability of the true class
            return F.avg(-F.log(clipped))
        return F.avg(-(y * F.log(clipped) + (1 - y) * F.log(1 - clipped)))
    error = pred.cast("double") - y.cast("double")
    if metric == "rmse":
        return F.sqrt(F.avg(error * error))
    if metric == "mae":
        return F.avg(F.abs(error))
    if metric == "r2":
        total = F.var_pop(y) * F.count(y)
        return F.when(total > 0, F.lit(1.0) - F.sum(error * error) / total)
    return F.avg((pred == y).cast("double"))


def _difference(challenger: float, champion: float, metric: str) -> float:
    """Challenger minus champion, sign flipped where lower is better; float noise snapped to 0."""
    difference = improvement(metric, challenger, champion)
    return 0.0 if abs(difference) < _NOISE else difference


def _curve_area(long: DataFrame, groups: list[str], metric: str) -> DataFrame:
    """AUC-ROC or AUC-PR per group, as Spark's ``BinaryClassificationMetrics`` computes it without bins.

    One curve point per distinct score (thresholds descending), trapezoids between points;
    ROC starts at (0, 0), PR at (0, precision of the first point). Groups whose curve is
    undefined (no positives, or no negatives for ROC) get null.
    """
    counts = long.groupBy(*groups, "p").agg(F.sum("y").alias("pos"), F.sum(1 - F.col("y")).alias("neg"))
    ordered = Window.partitionBy(*groups).orderBy(F.col("p").desc())
    running = ordered.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    whole = Window.partitionBy(*groups)
    points = (
        counts.withColumn("tp", F.sum("pos").over(running))
        .withColumn("fp", F.sum("neg").over(running))
        .withColumn("P", F.sum("pos").over(whole))
        .withColumn("N", F.sum("neg").over(whole))
    )
    if metric == "auc_roc":
        points = points.withColumn("x", F.col("fp") / F.col("N")).withColumn("h", F.col("tp") / F.col("P"))
        first_h = F.lit(0.0)
    else:
        points = points.withColumn("x", F.col("tp") / F.col("P")).withColumn(
            "h", F.col("tp") / (F.col("tp") + F.col("fp"))
        )
        first_h = F.first("h").over(ordered)
    points = points.withColumn("x0", F.lag("x", 1, 0.0).over(ordered)).withColumn(
        "h0", F.coalesce(F.lag("h").over(ordered), first_h)
    )
    defined = (F.col("P") > 0) & ((F.col("N") > 0) if metric == "auc_roc" else F.lit(True))
    area = F.when(defined, (F.col("x") - F.col("x0")) * (F.col("h") + F.col("h0")) / 2)
    return points.groupBy(*groups).agg(F.sum(area).alias("value"))


def _metric_by_group(stacked: DataFrame, metric: str, task: str = "binary") -> dict[tuple[int, str], float]:
    """``metric`` of both models in each resample of ``stacked`` (columns ``_b``, ``y``, ``p_*``, ``pred_*``)."""
    long = stacked.select(
        "_b",
        F.col("y").cast("double").alias("y"),
        F.explode(
            F.array(
                *[
                    F.struct(
                        F.lit(model).alias("model"),
                        F.col(f"p_{model}").cast("double").alias("p"),
                        F.col(f"pred_{model}").cast("double").alias("pred"),
                    )
                    for model in MODELS
                ]
            )
        ).alias("m"),
    ).select("_b", "y", "m.model", "m.p", "m.pred")
    groups = ["_b", "model"]
    if metric in ("auc_roc", "auc_pr"):
        values = _curve_area(long, groups, metric)
    else:
        values = long.groupBy(*groups).agg(
            _pointwise_metric(metric, F.col("p"), F.col("pred"), F.col("y"), task).alias("value")
        )
    return {(int(r["_b"]), str(r["model"])): r["value"] for r in values.collect() if r["value"] is not None}


def bootstrap_differences(
    scored: DataFrame, metric: str, seed: int, resamples: int, task: str = "binary"
) -> list[float]:
    """The challenger-minus-champion difference of ``metric`` in each bootstrap resample.

    Resample ``i`` is ``scored.sample(withReplacement=True, fraction=1.0, seed=seed + i)``;
    several resamples are stacked into one Spark job and aggregated by resample id, so only
    two numbers per resample reach the driver. The sign is flipped for ``log_loss``, so a
    positive difference means the challenger is better. Resamples where the metric is
    undefined (a single class) are left out.

    Args:
        scored: Columns ``y``, ``p_champion``, ``p_challenger``, ``pred_champion``, ``pred_challenger``.
        metric: One of :data:`GATE_METRIC_NAMES`.
        seed: The seed of resample 0.
        resamples: How many resamples.
        task: ``binary``, ``multiclass`` or ``regression`` (see :func:`metric_value`).

    Returns:
        One difference per resample where both models' metric is defined, in resample order.
    """
    _check_metric(metric)
    columns = ["y", *(f"p_{m}" for m in MODELS), *(f"pred_{m}" for m in MODELS)]
    differences: list[float] = []
    for start in range(0, resamples, _RESAMPLES_PER_JOB):
        ids = range(start, min(start + _RESAMPLES_PER_JOB, resamples))
        frames = [
            scored.sample(withReplacement=True, fraction=1.0, seed=seed + i).select(F.lit(i).alias("_b"), *columns)
            for i in ids
        ]
        values = _metric_by_group(reduce(DataFrame.unionAll, frames), metric, task)
        for i in ids:
            champion, challenger = values.get((i, "champion")), values.get((i, "challenger"))
            if champion is not None and challenger is not None:
                differences.append(_difference(challenger, champion, metric))
    return differences


def gate_decision(
    scored: DataFrame,
    gate: GateConfig,
    *,
    seed: int,
    champion_version: int | None,
    challenger_version: int,
    task: str = "binary",
    metric: str | None = None,
) -> GateDecision:
    """Decide whether the challenger replaces the champion, on the same test rows.

    No champion: the challenger is promoted. Otherwise it is promoted iff ``difference >=
    gate.margin`` and, when ``gate.bootstrap > 0``, the lower end of the two-sided
    ``gate.confidence`` percentile interval of the difference over ``gate.bootstrap`` resamples
    is above zero (so two equally good models are not swapped on noise). Differences within
    1e-12 of zero (Spark's summation order) count as zero.

    Args:
        scored: Columns ``y`` (0.0/1.0), ``p_challenger``, ``pred_challenger`` and, when there is
            a champion, ``p_champion``, ``pred_champion``: the two models' scores of the same rows.
        gate: The gate's metric, margin, resamples and confidence.
        seed: Seed of the first bootstrap resample (resample ``i`` uses ``seed + i``).
        champion_version: The current champion's version, or None when there is none.
        challenger_version: The version under test.
        task: ``binary``, ``multiclass`` or ``regression`` (see :func:`metric_value`).
        metric: The metric to compare; ``gate.metric`` when None.

    Returns:
        The decision, with both metric values, the difference, its interval and a one-line reason.

    Raises:
        StepInputError: The metric of the challenger is undefined on these rows (no rows, one class).
    """
    metric = metric or gate.metric or "auc_roc"
    _check_metric(metric)
    was_cached = scored.is_cached
    if not was_cached:
        scored = scored.cache()
    try:
        challenger_value = metric_value(scored, metric, "p_challenger", "pred_challenger", task=task)
        if np.isnan(challenger_value):
            raise StepInputError(
                f"gate: {metric} of version {challenger_version} is undefined on the test split "
                "(no rows, or a single class); check the split and label.positive"
            )
        if champion_version is None:
            return GateDecision(
                promote=True,
                metric=metric,
                champion_version=None,
                challenger_version=challenger_version,
                champion_value=None,
                challenger_value=challenger_value,
                difference=None,
                ci_low=None,
                ci_high=None,
                resamples=0,
                reason=f"first version: no @{CHAMPION} yet ({metric} {challenger_value:.4f})",
            )
        champion_value = metric_value(scored, metric, "p_champion", "pred_champion", task=task)
        difference = _difference(challenger_value, champion_value, metric)
        ci_low = ci_high = None
        differences: list[float] = []
        if gate.bootstrap > 0:
            differences = bootstrap_differences(scored, metric, seed, gate.bootstrap, task)
            if differences:
                alpha = 1 - gate.confidence
                ci_low, ci_high = (float(q) for q in np.quantile(differences, [alpha / 2, 1 - alpha / 2]))
    finally:
        if not was_cached:
            scored.unpersist()
    beats_margin = difference >= gate.margin
    significant = gate.bootstrap == 0 or (ci_low is not None and ci_low > 0)
    better = "" if metric_spec(metric).larger_is_better else " (lower is better)"
    reason = (
        f"{metric}{better} {challenger_value:.4f} vs {champion_value:.4f}, "
        f"{difference:+.4f} {'>=' if beats_margin else '<'} margin {gate.margin:.4f}"
    )
    if gate.bootstrap > 0:
        if ci_low is None or ci_high is None:
            reason += f"; no bootstrap resample of {gate.bootstrap} had a defined metric (e.g. both classes)"
        else:
            reason += (
                f"; {gate.confidence:.0%} CI [{ci_low:+.4f}, {ci_high:+.4f}] "
                f"{'above' if significant else 'not above'} 0 over {len(differences)} resamples"
            )
    return GateDecision(
        promote=beats_margin and significant,
        metric=metric,
        champion_version=champion_version,
        challenger_version=challenger_version,
        champion_value=champion_value,
        challenger_value=challenger_value,
        difference=difference,
        ci_low=ci_low,
        ci_high=ci_high,
        resamples=len(differences),
        reason=reason,
    )
