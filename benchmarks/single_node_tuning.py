"""Single-node tuning throughput: plain Hyperopt, Hyperopt's ``SparkTrials``, and deltaml's executor trials.

    .venv/bin/python benchmarks/single_node_tuning.py [TRIALS] [ROWS]

Generates a binary problem (ROWS train rows, default 100000, ROWS/5 validation rows, 20
features) and tunes scikit-learn's ``HistGradientBoostingClassifier`` (100 iterations; one fit
takes 1-2 s on one core) over the same search space, TRIALS trials each (default 16), in one
process on a ``local[2]`` session:

(a) ``hyperopt.fmin`` with ``Trials()``: one trial at a time on the driver, fit on the driver's
    numpy arrays with native threads capped to 1;
(b) ``fmin`` with ``hyperopt.SparkTrials(parallelism=2)``: the same objective, which closes over
    the numpy arrays (typical user code), so every trial's task carries the data;
(c) deltaml: ``ship_data`` once, then ``search_family`` with parallelism 2 and
    ``executor_trial`` (one-task jobs reading the broadcast).

Before timing, both Python workers import scikit-learn (a long-running session has done so).
Spark gives each Python worker ``OMP_NUM_THREADS=1`` (``spark.task.cpus``), so every method fits
on one thread per trial. Prints wall seconds, trials per minute and the mean fit time per trial
(the methods draw different points, so their mean fit times differ somewhat) and the ratios.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hyperopt import STATUS_OK, SparkTrials, Trials, fmin, tpe
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from deltaml.config.search_space import build_space, params_from_sample
from deltaml.io.session import build_local_session
from deltaml.ml.single_node import SingleNodeModel, TrialTaskInfo, executor_trial, ship_data
from deltaml.ml.tuning import SearchBudget, search_family

FAMILY = "hist_gradient_boosting"
SEARCH = {
    "learning_rate": {"loguniform": [0.02, 0.3]},
    "max_leaf_nodes": {"quniform": [8, 64, 1]},
    "l2_regularization": {"loguniform": [1.0e-4, 10.0]},
}
FIXED = {"max_iter": 100, "early_stopping": False}
FEATURES = 20
PARALLELISM = 2


def _problem(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and validation arrays of a noisy, partly non-linear binary problem."""
    rng = np.random.default_rng(seed)
    n = rows + rows // 5
    x = rng.normal(size=(n, FEATURES))
    signal = x[:, :5].sum(axis=1) + np.sin(2 * x[:, 5]) + x[:, 6] * x[:, 7]
    y = (signal + rng.normal(scale=1.5, size=n) > 0).astype(np.float64)
    return x[:rows], y[:rows], x[rows:], y[rows:]


def _frame(spark: SparkSession, x: np.ndarray, y: np.ndarray) -> DataFrame:
    """``features`` (a vector) and ``_label``, cached, in 2 partitions."""
    pdf = pd.DataFrame({"x": list(x), "_label": y})
    df = spark.createDataFrame(pdf).select(array_to_vector(F.col("x")).alias("features"), F.col("_label"))
    df = df.repartition(PARALLELISM).cache()
    df.count()
    return df


def _warm_up_workers(spark: SparkSession) -> None:
    """Import scikit-learn in both Python workers (the iterator is read to its end, so they are reused)."""

    def imports(rows: Any) -> Any:
        from sklearn import ensemble, metrics  # noqa: F401

        yield sum(1 for _ in rows)

    spark.sparkContext.parallelize(range(PARALLELISM), PARALLELISM).mapPartitions(imports).collect()


def main(argv: list[str]) -> int:
    trials = int(argv[0]) if argv else 16
    rows = int(argv[1]) if len(argv) > 1 else 100_000
    logging.basicConfig(level=logging.WARNING)
    state = Path(tempfile.mkdtemp(prefix="deltaml-bench-"))
    spark = build_local_session(
        state,
        master=f"local[{PARALLELISM}]",
        conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"},
        app_name="deltaml-single-node-benchmark",
    )
    spark.sparkContext.setLogLevel("ERROR")
    x_train, y_train, x_val, y_val = _problem(rows)
    train_df, validation_df = _frame(spark, x_train, y_train), _frame(spark, x_val, y_val)
    print(
        f"train {len(y_train)} x {FEATURES} ({x_train.nbytes / 1e6:.0f} MB), validation {len(y_val)}, "
        f"{trials} trials, HistGradientBoostingClassifier {FIXED}, master local[{PARALLELISM}]",
        flush=True,
    )
    space = build_space(SEARCH, FAMILY)

    def objective(sample: dict[str, Any]) -> dict[str, Any]:
        """Typical user code: fit on the numpy arrays the closure holds, score the validation rows."""
        params = {**FIXED, **params_from_sample(sample, SEARCH)}
        started = time.perf_counter()
        with threadpool_limits(limits=1):
            model = HistGradientBoostingClassifier(random_state=0, **params).fit(x_train, y_train.astype(int))
            fit_seconds = time.perf_counter() - started
            auc = roc_auc_score(y_val, model.predict_proba(x_val)[:, 1])
        return {"loss": -auc, "status": STATUS_OK, "fit_seconds": fit_seconds}

    _warm_up_workers(spark)

    results: list[tuple[str, float, float, int]] = []

    plain = Trials()
    started = time.perf_counter()
    fmin(
        objective,
        space,
        algo=tpe.suggest,
        max_evals=trials,
        trials=plain,
        rstate=np.random.default_rng(0),
        show_progressbar=False,
    )
    seconds = time.perf_counter() - started
    fits = [r["fit_seconds"] for r in plain.results if r.get("status") == STATUS_OK]
    results.append(("(a) fmin + Trials() on the driver", seconds, float(np.mean(fits)), len(fits)))

    spark_trials = SparkTrials(parallelism=PARALLELISM, spark_session=spark)
    started = time.perf_counter()
    fmin(
        objective,
        space,
        algo=tpe.suggest,
        max_evals=trials,
        trials=spark_trials,
        rstate=np.random.default_rng(0),
        show_progressbar=False,
    )
    seconds = time.perf_counter() - started
    fits = [r["fit_seconds"] for r in spark_trials.results if r.get("status") == STATUS_OK]
    results.append((f"(b) fmin + SparkTrials(parallelism={PARALLELISM})", seconds, float(np.mean(fits)), len(fits)))

    started = time.perf_counter()
    shipped = ship_data(spark, train_df, validation_df, max_rows=rows, seed=0)
    ship_seconds = time.perf_counter() - started
    budget = SearchBudget(trials, PARALLELISM, time.monotonic() + 3600, 0, 0)
    infos: list[TrialTaskInfo] = []

    def train_trial(params: dict[str, Any]) -> tuple[SingleNodeModel, dict[str, float]]:
        model, metrics = executor_trial(spark, shipped, FAMILY, "binary", params, seed=0)
        if model.trial_info is not None:
            infos.append(model.trial_info)
        return model, metrics

    started = time.perf_counter()
    result = search_family(FAMILY, SEARCH, FIXED, train_trial, metric="auc_roc", budget=budget)
    seconds = time.perf_counter() - started
    ok = sum(t.ok for t in result.trials)
    fit_seconds = float(np.mean([i.fit_seconds for i in infos]))
    results.append((f"(c) deltaml search_family + executor_trial, parallelism {PARALLELISM}", seconds, fit_seconds, ok))
    loads = sum(not i.data_reused for i in infos)
    shipped.destroy()

    print(f"{'method':<62} {'ok':>3} {'seconds':>8} {'trials/min':>10} {'fit s':>6}")
    for name, seconds, fit, ok in results:
        print(f"{name:<62} {ok:>3} {seconds:>8.1f} {trials / seconds * 60:>10.1f} {fit:>6.2f}")
    total_c = results[2][1] + ship_seconds
    print(
        f"{'(c) including ship_data (once, ' + f'{ship_seconds:.1f} s)':<62} {'':>3} {total_c:>8.1f} "
        f"{trials / total_c * 60:>10.1f}"
    )
    print(f"(c) broadcast unpickled {loads} time(s) in {len({i.pid for i in infos})} Python worker(s)")
    a, b, c = (trials / r[1] for r in results)
    with_ship = trials / total_c
    print(f"c/a = {c / a:.2f}x, c/b = {c / b:.2f}x (with ship_data: {with_ship / a:.2f}x, {with_ship / b:.2f}x)")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
