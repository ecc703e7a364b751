"""Single-node families: data shipped once, trials as one-task jobs on executors, and the saveable scoring stage."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vector, Vectors, VectorUDT
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import DoubleType, StructField, StructType
from pyspark.testing import assertDataFrameEqual
from sklearn import metrics as skm

from deltaml.errors import StepFailedError, StepInputError
from deltaml.ml.single_node import (
    TRIAL_JOB_GROUP,
    ShippedData,
    SingleNodeModel,
    executor_trial,
    fit_single_node,
    fixed_rounds,
    permutation_importances,
    ship_data,
    single_node_estimator,
)

if TYPE_CHECKING:
    from pyspark.ml._typing import MulticlassClassificationEvaluatorMetricType

SCHEMA = StructType([StructField("features", VectorUDT(), False), StructField("_label", DoubleType(), False)])
PARAMS = {"max_iter": 30.0, "max_leaf_nodes": 15.0, "learning_rate": 0.2}  # floats, as Hyperopt gives them


def _vectors(x: np.ndarray, sparse_every: int = 0) -> list[Vector]:
    """Dense vectors, with every ``sparse_every``-th row sparse (zeros left out)."""
    rows: list[Vector] = []
    for i, row in enumerate(x):
        if sparse_every and i % sparse_every == 0:
            nonzero = np.flatnonzero(row)
            rows.append(Vectors.sparse(len(row), nonzero.tolist(), row[nonzero].tolist()))
        else:
            rows.append(Vectors.dense(row.tolist()))
    return rows


def _frame(spark: SparkSession, x: np.ndarray, y: np.ndarray, sparse_every: int = 0) -> DataFrame:
    rows = list(zip(_vectors(x, sparse_every), (float(v) for v in y), strict=True))
    return spark.createDataFrame(rows, SCHEMA)


def _binary(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 5))
    x[:, 4] = np.where(rng.random(400) < 0.6, 0.0, x[:, 4])  # zeros, so sparse vectors hold fewer values
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=400) > 0).astype(float)
    return _frame(spark, x[:300], y[:300], sparse_every=2), _frame(spark, x[300:], y[300:], sparse_every=3)


def _multiclass(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    """Three well separated classes; class 2 is absent from train."""
    rng = np.random.default_rng(2)
    y = np.repeat([0.0, 1.0, 2.0], 100)
    x = rng.normal(size=(300, 4)) + 3.0 * np.eye(4)[y.astype(int)]
    train = np.flatnonzero((y < 2) & (np.arange(300) % 100 < 75))
    validation = np.flatnonzero(np.arange(300) % 100 >= 75)
    return _frame(spark, x[train], y[train]), _frame(spark, x[validation], y[validation])


def _regression(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4))
    y = 3.0 * x[:, 0] - 2.0 * x[:, 1] + 0.3 * rng.normal(size=400)
    return _frame(spark, x[:300], y[:300]), _frame(spark, x[300:], y[300:])


@pytest.fixture(scope="module")
def binary(spark: SparkSession) -> Iterator[tuple[DataFrame, DataFrame, ShippedData]]:
    """Binary train and validation rows (some vectors sparse), shipped once for the module's trials."""
    train, validation = _binary(spark)
    shipped = ship_data(spark, train, validation, max_rows=10_000, seed=7)
    yield train, validation, shipped
    shipped.destroy()


def _scored(model: SingleNodeModel, validation: DataFrame) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    rows = model.transform(validation).collect()
    labels = np.array([r["_label"] for r in rows])
    return labels, np.array([r["prediction"] for r in rows]), rows


def _assert_metrics_match(ours: dict[str, float], recomputed: dict[str, float]) -> None:
    assert set(ours) == set(recomputed)
    for name, value in recomputed.items():
        assert ours[name] == pytest.approx(value, abs=1e-9), name


def test_binary_trial_metrics_match_sklearn_on_the_stage_output(
    spark: SparkSession, binary: tuple[DataFrame, DataFrame, ShippedData]
) -> None:
    _, validation, shipped = binary
    assert (shipped.train_rows, shipped.validation_rows, shipped.num_features, shipped.sampled) == (300, 100, 5, False)

    model, metrics = executor_trial(spark, shipped, "hist_gradient_boosting", "binary", PARAMS, seed=7)

    assert metrics["auc_roc"] > 0.9 and metrics["accuracy"] > 0.8
    y, predicted, rows = _scored(model, validation)
    probability = np.array([r["probability"].toArray() for r in rows])
    assert probability.shape == (100, 2)
    assert all(r["rawPrediction"] == r["probability"] for r in rows)
    np.testing.assert_array_equal(predicted, probability.argmax(axis=1))
    _assert_metrics_match(
        metrics,
        {
            "rows": 100.0,
            "auc_roc": skm.roc_auc_score(y, probability[:, 1]),
            # Spark's own AUC-PR (exact, no bins) of the same output: trials and evaluate agree.
            "auc_pr": BinaryClassificationEvaluator(
                labelCol="_label", rawPredictionCol="probability", metricName="areaUnderPR", numBins=0
            ).evaluate(model.transform(validation)),
            "log_loss": skm.log_loss(y, probability, labels=[0, 1]),
            "accuracy": skm.accuracy_score(y, predicted),
        },
    )
    # Hyperopt's floats became the ints the estimator needs; the seed is the random_state.
    estimator = model.estimator()
    assert (estimator.max_iter, estimator.max_leaf_nodes, estimator.random_state) == (30, 15, 7)
    info = model.trial_info
    assert info is not None and info.cpus == 1 and info.pid > 0 and info.host and info.fit_seconds > 0


def test_multiclass_probability_has_every_class_even_one_absent_from_train(spark: SparkSession) -> None:
    train, validation = _multiclass(spark)
    shipped = ship_data(spark, train, validation, max_rows=10_000, seed=1)
    try:
        model, metrics = executor_trial(
            spark, shipped, "hist_gradient_boosting", "multiclass", PARAMS, seed=1, num_classes=3
        )
    finally:
        shipped.destroy()

    y, predicted, rows = _scored(model, validation)
    probability = np.array([r["probability"].toArray() for r in rows])
    assert probability.shape == (75, 3) and np.all(probability[:, 2] == 0.0)
    assert metrics["accuracy"] == pytest.approx(2 / 3, abs=0.05)  # class 2 (a third) is never predicted
    _assert_metrics_match(
        metrics,
        {
            "rows": 75.0,
            "accuracy": skm.accuracy_score(y, predicted),
            "f1": skm.f1_score(y, predicted, average="weighted", zero_division=0.0),
            # Spark's log-loss of the same output (class 2's probability 0 floored at 1e-15, as
            # deltaml's evaluate step does), not scikit-learn's (floored at float64 eps). The cast:
            # pyspark's stub Literal for metricName leaves out "logLoss", which Spark accepts.
            "log_loss": MulticlassClassificationEvaluator(
                labelCol="_label", metricName=cast("MulticlassClassificationEvaluatorMetricType", "logLoss")
            ).evaluate(model.transform(validation)),
        },
    )


def test_regression_trial_and_driver_fit(spark: SparkSession, tmp_path: Path) -> None:
    train, validation = _regression(spark)
    shipped = ship_data(spark, train, validation, max_rows=10_000, seed=3)
    try:
        model, metrics = executor_trial(spark, shipped, "hist_gradient_boosting", "regression", PARAMS, seed=3)
    finally:
        shipped.destroy()

    assert metrics["r2"] > 0.8
    y, predicted, rows = _scored(model, validation)
    assert "probability" not in rows[0].asDict()
    _assert_metrics_match(
        metrics,
        {
            "rows": 100.0,
            "rmse": skm.root_mean_squared_error(y, predicted),
            "mae": skm.mean_absolute_error(y, predicted),
            "r2": skm.r2_score(y, predicted),
        },
    )
    refit = fit_single_node(spark, train, "hist_gradient_boosting", "regression", PARAMS, seed=3, max_rows=10_000)
    assert skm.r2_score(y, _scored(refit, validation)[1]) > 0.8

    # y = 3 x0 - 2 x1 + noise: shuffling x0 hurts most, then x1; x2 and x3 carry nothing.
    importances = permutation_importances(refit, validation, seed=3)
    assert len(importances) == 4
    assert importances[0] > importances[1] > 0.3 > max(abs(importances[2]), abs(importances[3]))


def test_permutation_importances_run_on_one_thread_within_their_time(
    spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncapped, the estimator's OpenMP threads fought the driver's JVM: 2,742 s of evaluate on 48k rows."""
    import sklearn.inspection
    from threadpoolctl import threadpool_info

    train, validation = _regression(spark)
    model = fit_single_node(spark, train, "hist_gradient_boosting", "regression", PARAMS, seed=3, max_rows=10_000)
    threads: list[int] = []
    real = sklearn.inspection.permutation_importance

    def counting_threads(*args: Any, **kwargs: Any) -> Any:
        threads.append(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sklearn.inspection, "permutation_importance", counting_threads)
    assert len(permutation_importances(model, validation, seed=3, max_seconds=60)) == 4
    assert threads == [1]
    with pytest.raises(StepInputError, match=r"above evaluate\.importances\.max_seconds 1e-09; raise it"):
        permutation_importances(model, validation, seed=3, max_seconds=1e-9)


def test_max_rows_samples_train_and_validation(spark: SparkSession, caplog: pytest.LogCaptureFixture) -> None:
    train, validation = _binary(spark)
    with caplog.at_level(logging.INFO, logger="deltaml.ml.single_node"):
        shipped = ship_data(spark, train, validation, max_rows=60, seed=5)
    try:
        assert (shipped.train_rows, shipped.validation_rows, shipped.sampled) == (60, 60, True)
        assert "single-node train rows: sampled 60 of 300 (max_rows 60)" in caplog.text
        assert "single-node validation rows: sampled 60 of 100 (max_rows 60)" in caplog.text
        _, metrics = executor_trial(spark, shipped, "hist_gradient_boosting", "binary", PARAMS, seed=5)
        assert metrics["rows"] == 60.0
        # The same seed draws the same rows.
        again = ship_data(spark, train, validation, max_rows=60, seed=5)
        _, same = executor_trial(spark, again, "hist_gradient_boosting", "binary", PARAMS, seed=5)
        again.destroy()
        assert same == metrics
    finally:
        shipped.destroy()


def test_unknown_or_fractional_param_is_a_step_input_error(
    spark: SparkSession, binary: tuple[DataFrame, DataFrame, ShippedData]
) -> None:
    shipped = binary[2]
    with pytest.raises(StepInputError, match=r"\['max_leafs'\] are not params of HistGradientBoostingClassifier"):
        executor_trial(spark, shipped, "hist_gradient_boosting", "binary", {"max_leafs": 8}, seed=1)
    with pytest.raises(StepInputError, match=r"valid: \[.*'max_leaf_nodes'"):
        single_node_estimator("hist_gradient_boosting", "regression", {"max_leafs": 8}, seed=1)
    with pytest.raises(StepInputError, match=r"max_iter must be a whole number, got 10\.5"):
        single_node_estimator("hist_gradient_boosting", "binary", {"max_iter": 10.5}, seed=1)
    # LightGBM's own parameters and their aliases are keywords of its scikit-learn estimators.
    lgbm = single_node_estimator("lightgbm", "binary", {"verbose": -1, "min_data_in_leaf": 5, "num_leaves": 7}, seed=1)
    assert lgbm.get_params()["min_data_in_leaf"] == 5 and lgbm.get_params()["verbose"] == -1
    with pytest.raises(StepInputError, match=r"\['num_leafs'\] are not params of LGBMClassifier.*LightGBM's own"):
        single_node_estimator("lightgbm", "binary", {"num_leafs": 7}, seed=1)
    with pytest.raises(StepInputError, match="unknown single-node family 'xgboost'"):
        single_node_estimator("xgboost", "binary", {}, seed=1)
    with pytest.raises(StepInputError, match=r"labels must be class indices 0\.\.1.*found label 2"):
        executor_trial(spark, replace(shipped, label_max=2.0), "hist_gradient_boosting", "binary", {}, seed=1)


def test_an_error_inside_the_task_is_raised_in_the_calling_thread(
    spark: SparkSession, binary: tuple[DataFrame, DataFrame, ShippedData]
) -> None:
    sc = spark.sparkContext
    sc.setLocalProperty("spark.job.description", "the caller's own description")
    try:
        with pytest.raises(StepFailedError) as raised:
            executor_trial(spark, binary[2], "hist_gradient_boosting", "binary", {"learning_rate": -1}, seed=1)
        # The job properties of this thread are the caller's again.
        assert sc.getLocalProperty("spark.job.description") == "the caller's own description"
        assert sc.getLocalProperty("spark.jobGroup.id") is None
    finally:
        sc.setLocalProperty("spark.job.description", None)  # type: ignore[arg-type]
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(
        "InvalidParameterError: The 'learning_rate' parameter of HistGradientBoostingClassifier must be"
    )


def test_one_broadcast_serves_concurrent_trials_each_one_job(
    spark: SparkSession, binary: tuple[DataFrame, DataFrame, ShippedData]
) -> None:
    shipped = binary[2]
    tracker = spark.sparkContext.statusTracker()
    jobs_before = set(tracker.getJobIdsForGroup(TRIAL_JOB_GROUP))

    def trial(params: dict[str, Any]) -> tuple[SingleNodeModel, dict[str, float]]:
        return executor_trial(spark, shipped, "hist_gradient_boosting", "binary", params, seed=2)

    grid = [{**PARAMS, "learning_rate": rate} for rate in (0.1, 0.1, 0.3, 0.05)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(trial, grid))

    assert all(metrics["auc_roc"] > 0.9 for _, metrics in results)
    assert results[0][1] == results[1][1]  # same params and seed, concurrently: the same model
    infos = [model.trial_info for model, _ in results]
    assert all(info is not None for info in infos)
    # local[2]: the trials ran in at most two Python workers (reused, not forked per trial), and each
    # worker unpickled the broadcast at most once; later trials found it in memory.
    pids = {info.pid for info in infos if info is not None}
    assert len(pids) <= 2
    assert sum(not info.data_reused for info in infos if info is not None) <= len(pids)
    assert len(set(tracker.getJobIdsForGroup(TRIAL_JOB_GROUP)) - jobs_before) == len(grid)


def test_a_trial_after_destroy_fails_and_a_failed_job_says_why(spark: SparkSession) -> None:
    train, validation = _binary(spark)
    shipped = ship_data(spark, train.limit(40), validation.limit(20), max_rows=100, seed=1)
    shipped.destroy()
    with pytest.raises(StepInputError, match=r"the shipped data was destroyed; ship the data again"):
        executor_trial(spark, shipped, "hist_gradient_boosting", "binary", PARAMS, seed=1)
    # Past the check, the job itself fails: the one line is the JVM's root cause, not py4j's wrapper.
    with pytest.raises(StepFailedError, match=r"the Spark job failed: .*Attempted to use Broadcast\(\d+\) after"):
        executor_trial(spark, replace(shipped, destroyed=False), "hist_gradient_boosting", "binary", PARAMS, seed=1)


def test_pipeline_with_the_stage_saves_and_loads(
    spark: SparkSession, binary: tuple[DataFrame, DataFrame, ShippedData], tmp_path: Path
) -> None:
    train, validation, _ = binary
    stage = fit_single_node(spark, train, "hist_gradient_boosting", "binary", PARAMS, seed=4, max_rows=10_000)
    model = PipelineModel(stages=[stage])
    model.save(str(tmp_path / "model"))

    loaded = PipelineModel.load(str(tmp_path / "model"))

    restored = loaded.stages[0]
    assert isinstance(restored, SingleNodeModel)
    assert (restored.getFamily(), restored.getTask(), restored.getNumClasses()) == (
        "hist_gradient_boosting",
        "binary",
        2,
    )
    assertDataFrameEqual(loaded.transform(validation), model.transform(validation))


def test_lightgbm_family_when_installed(spark: SparkSession, binary: tuple[DataFrame, DataFrame, ShippedData]) -> None:
    pytest.importorskip("lightgbm")
    _, validation, shipped = binary
    params = {"n_estimators": 30.0, "num_leaves": 7.0, "min_child_samples": 10}

    model, metrics = executor_trial(spark, shipped, "lightgbm", "binary", params, seed=3)

    assert metrics["auc_roc"] > 0.9
    y, predicted, rows = _scored(model, validation)
    probability = np.array([r["probability"].toArray() for r in rows])
    assert metrics["auc_roc"] == pytest.approx(skm.roc_auc_score(y, probability[:, 1]), abs=1e-9)
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted), abs=1e-9)
    assert model.estimator().get_params()["n_jobs"] == 1


def test_the_single_node_copy_is_sampled_down_to_its_memory_budget(caplog: pytest.LogCaptureFixture) -> None:
    from deltaml.steps.fit import single_node_rows

    # The census case that failed: 209,498 train and 44,893 validation rows x 463 features (about 944 MB).
    with caplog.at_level("INFO", logger="deltaml"):
        cap = single_node_rows(200_000, 512, 463, [209_498, 44_893])
    budget = 512 * 1024**2 // (8 * 463)
    # Validation fits whole; train takes what is left of the budget.
    assert cap == budget - 44_893
    assert min(cap, 209_498) + min(cap, 44_893) <= budget
    assert "above tuning.single_node_max_mb 512; sampling each split to at most" in caplog.text
    # Both larger than half the budget: sampled alike.
    assert single_node_rows(10**9, 512, 463, [10**6, 10**6]) == budget // 2
    # Within the budget: only single_node_max_rows applies.
    assert single_node_rows(200_000, 512, 40, [4931, 1056]) == 200_000
    with pytest.raises(StepInputError, match=r"tuning.single_node_max_mb 16 holds only \d+ rows of 1000000 features"):
        single_node_rows(200_000, 16, 1_000_000, [5000, 5000])


def _categories(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    """Slot 1 holds the rank of one of 300 levels, and the label depends on the level, not on the rank's order."""
    rng = np.random.default_rng(5)
    rows = 4000
    x = np.column_stack([rng.normal(size=rows), rng.integers(0, 300, size=rows).astype(float)])
    y = ((x[:, 1] % 3 == 0) ^ (rng.random(rows) < 0.05)).astype(float)
    x[3000:3010, 1] = 1000.0  # levels the train rows never had (unseen at scoring)
    return _frame(spark, x[:3000], y[:3000]), _frame(spark, x[3000:], y[3000:])


@pytest.mark.parametrize(
    ("family", "params", "least_auc"),
    [
        ("hist_gradient_boosting", {"max_iter": 60}, 0.85),
        # Fewer bins than levels: the 63rd to 300th levels are one category, a fifth of the rows keep theirs.
        ("hist_gradient_boosting", {"max_iter": 60, "max_bins": 63}, 0.58),
        ("lightgbm", {"n_estimators": 60, "min_child_samples": 5, "cat_smooth": 1.0}, 0.85),
    ],
)
def test_category_rank_slots_are_split_as_categories_beyond_max_bins_levels(
    spark: SparkSession, family: str, params: dict[str, Any], least_auc: float
) -> None:
    if family == "lightgbm":
        pytest.importorskip("lightgbm")
    train, validation = _categories(spark)
    as_numbers = ship_data(spark, train, validation, max_rows=10_000, seed=1)
    as_categories = ship_data(spark, train, validation, max_rows=10_000, seed=1, categorical=[1])
    try:
        _, numeric_metrics = executor_trial(spark, as_numbers, family, "binary", params, seed=1)
        model, metrics = executor_trial(spark, as_categories, family, "binary", params, seed=1)
    finally:
        as_numbers.destroy()
        as_categories.destroy()

    # Every third level is positive: a split on the rank's order cannot find that, a categorical split can.
    assert metrics["auc_roc"] > max(least_auc, numeric_metrics["auc_roc"])
    # The Spark stage scores the validation rows (unseen levels included) exactly as the trial did.
    y, _, rows = _scored(model, validation)
    probability = np.array([r["probability"].toArray()[1] for r in rows])
    assert metrics["auc_roc"] == pytest.approx(skm.roc_auc_score(y, probability), abs=1e-9)
    # The final fit on the driver takes the same slots.
    final = fit_single_node(spark, train, family, "binary", params, seed=1, max_rows=10_000, categorical=[1])
    y, _, rows = _scored(final, validation)
    assert skm.roc_auc_score(y, [r["probability"].toArray()[1] for r in rows]) == pytest.approx(
        metrics["auc_roc"], abs=1e-9
    )


@pytest.mark.parametrize(
    ("family", "params", "rounds"),
    [
        ("hist_gradient_boosting", {"max_iter": 500, "early_stopping": True, "n_iter_no_change": 5}, "n_iter_"),
        ("lightgbm", {"n_estimators": 500, "early_stopping_round": 5, "learning_rate": 0.3}, "best_iteration_"),
    ],
)
def test_early_stopping_watches_the_validation_rows_and_a_refit_keeps_the_rounds(
    spark: SparkSession,
    binary: tuple[DataFrame, DataFrame, ShippedData],
    family: str,
    params: dict[str, Any],
    rounds: str,
) -> None:
    if family == "lightgbm":
        pytest.importorskip("lightgbm")
    train, validation, shipped = binary

    model, metrics = executor_trial(spark, shipped, family, "binary", params, seed=3)

    stopped = int(getattr(model.estimator(), rounds))
    assert 0 < stopped < 100 and metrics["auc_roc"] > 0.9
    if family == "hist_gradient_boosting" and "X_val" in inspect.signature(model.estimator().fit).parameters:
        # It stopped on the shipped validation rows, not on a slice of train: its last validation
        # score is minus the log-loss of the final model on exactly those rows.
        y, _, rows = _scored(model, validation)
        probability = np.array([r["probability"].toArray()[1] for r in rows])
        assert -model.estimator().validation_score_[-1] == pytest.approx(skm.log_loss(y, probability), rel=1e-6)
    # A refit has no validation rows to stop on: it fits as many rounds as the trial kept.
    fixed = fixed_rounds(model, params)
    refit = fit_single_node(spark, train, family, "binary", fixed, seed=3, max_rows=10_000)
    assert (
        int(getattr(refit.estimator(), "n_iter_" if family == "hist_gradient_boosting" else "n_estimators")) == stopped
    )


@pytest.mark.parametrize(
    ("family", "params"),
    [
        ("hist_gradient_boosting", {"max_iter": 200, "early_stopping": True, "n_iter_no_change": 5}),
        ("lightgbm", {"n_estimators": 200, "early_stopping_round": 5, "min_child_samples": 5}),
    ],
)
def test_early_stopping_leaves_out_validation_rows_of_a_class_train_lacks(
    spark: SparkSession, family: str, params: dict[str, Any]
) -> None:
    if family == "lightgbm":
        pytest.importorskip("lightgbm")
    rng = np.random.default_rng(4)
    y = np.repeat([0.0, 1.0, 2.0], 100)
    x = rng.normal(size=(300, 3)) + 3.0 * np.eye(3)[y.astype(int)]
    train = np.flatnonzero((y != 1) & (np.arange(300) % 100 < 75))  # class 1, the middle one, absent from train
    validation = np.flatnonzero(np.arange(300) % 100 >= 75)
    shipped = ship_data(
        spark, _frame(spark, x[train], y[train]), _frame(spark, x[validation], y[validation]), max_rows=10_000, seed=1
    )
    try:
        model, metrics = executor_trial(spark, shipped, family, "multiclass", params, seed=1, num_classes=3)
    finally:
        shipped.destroy()

    # Classes 0 and 2 are told apart (the stopping rows were encoded as the estimator's own classes);
    # class 1, a third of the validation rows, is never predicted.
    assert metrics["accuracy"] == pytest.approx(2 / 3, abs=0.05)
    probability = np.array(
        [r["probability"].toArray() for r in _scored(model, _frame(spark, x[validation], y[validation]))[2]]
    )
    assert np.all(probability[:, 1] == 0.0)
