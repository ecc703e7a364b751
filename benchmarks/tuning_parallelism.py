"""Spark ML tuning throughput: deltaml's concurrent trials against Hyperopt's plain sequential ``fmin``.

    .venv/bin/python benchmarks/tuning_parallelism.py [TRIALS] [PARALLELISM]

Needs the demo's tables (run `make demo` first). Fits the Telco feature stages once, then, on
the same cached train/validation vectors and the same random-forest search space, runs
(a) ``hyperopt.fmin`` with ``Trials()`` (one trial at a time) and (b) deltaml's
``search_family`` with PARALLELISM trials at once, TRIALS trials each (default 12 and 2),
in the same process, after a warm-up trial. Prints trials per minute of each and the ratio.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from hyperopt import STATUS_OK, Trials, fmin, tpe
from pyspark.ml import Pipeline
from pyspark.sql import functions as F

from deltaml.columns import FEATURES_COL, LABEL_COL, SPLIT_COL, TRAIN, VALIDATION
from deltaml.config.loader import load_config
from deltaml.config.search_space import build_space, params_from_sample
from deltaml.io.session import get_spark
from deltaml.io.tables import event_tables, resolve_tables
from deltaml.ml.features import build_feature_stages
from deltaml.ml.labels import with_binary_label
from deltaml.ml.metrics import collected_metrics
from deltaml.ml.models import model_stages
from deltaml.ml.training import fit_pipeline
from deltaml.ml.tuning import SearchBudget, search_family

SEARCH = {
    "maxDepth": {"quniform": [4, 10, 1]},
    "minInstancesPerNode": {"quniform": [1, 20, 1]},
    "featureSubsetStrategy": {"choice": ["sqrt", "onethird"]},
}
FIXED = {"numTrees": 40}


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and all its descendants so far (the Spark JVM, Python workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    mine = {os.getpid()}
    grew = True
    while grew:
        found = {pid for pid, parent in parents.items() if parent in mine} - mine
        grew = bool(found)
        mine |= found
    return sum(times.get(pid, 0.0) for pid in mine)


def main(argv: list[str]) -> int:
    trials = int(argv[0]) if argv else 12
    parallelism = int(argv[1]) if len(argv) > 1 else 2
    partitions = int(argv[2]) if len(argv) > 2 else 0
    cfg = load_config("conf/telco_churn.yml", env="local").pipeline
    spark = get_spark(cfg)
    split = spark.read.format("delta").load(resolve_tables(cfg).split.ref)
    labelled = split.transform(with_binary_label(cfg.label.column, cfg.label.positive))
    train = labelled.where(F.col(SPLIT_COL) == TRAIN).cache()
    features = fit_pipeline(Pipeline(stages=build_feature_stages(cfg.features, events=event_tables(cfg))), train)
    train_vectors = features.transform(train).select(FEATURES_COL, LABEL_COL)
    validation_vectors = features.transform(labelled.where(F.col(SPLIT_COL) == VALIDATION)).select(
        FEATURES_COL, LABEL_COL
    )
    if partitions:
        train_vectors, validation_vectors = train_vectors.coalesce(partitions), validation_vectors.coalesce(partitions)
    train_vectors, validation_vectors = train_vectors.cache(), validation_vectors.cache()
    print(
        f"train rows {train_vectors.count()} in {train_vectors.rdd.getNumPartitions()} partition(s), "
        f"validation rows {validation_vectors.count()}, default parallelism {spark.sparkContext.defaultParallelism}"
    )

    def train_trial(params: dict[str, Any]) -> tuple[Any, dict[str, float]]:
        model = Pipeline(stages=model_stages("random_forest", params, seed=cfg.seed)).fit(train_vectors)
        # As run_fit scores a trial on a validation split of this size: one collect, metrics on the driver.
        return model, collected_metrics(model.transform(validation_vectors), "binary", 2)

    train_trial({**FIXED, "maxDepth": 5})  # warm-up: JIT, broadcast, caches

    space = build_space(SEARCH, "random_forest")
    cpu = _cpu_seconds()
    started = time.perf_counter()
    fmin(
        lambda sample: {
            "loss": -train_trial({**FIXED, **params_from_sample(sample, SEARCH)})[1]["auc_roc"],
            "status": STATUS_OK,
        },
        space,
        algo=tpe.suggest,
        max_evals=trials,
        trials=Trials(),
        rstate=np.random.default_rng(0),
        show_progressbar=False,
    )
    sequential = time.perf_counter() - started
    sequential_cores = (_cpu_seconds() - cpu) / sequential

    cpu = _cpu_seconds()
    started = time.perf_counter()
    budget = SearchBudget(trials, parallelism, time.monotonic() + 3600, 0, 0)
    result = search_family("random_forest", SEARCH, FIXED, train_trial, metric="auc_roc", budget=budget)
    concurrent = time.perf_counter() - started
    concurrent_cores = (_cpu_seconds() - cpu) / concurrent
    assert len(result.trials) == trials

    seq_rate, par_rate = trials / sequential * 60, trials / concurrent * 60
    print(
        f"hyperopt fmin + Trials (sequential): {trials} trials in {sequential:.1f} s = {seq_rate:.1f} trials/min, "
        f"{sequential_cores:.2f} cores busy on average"
    )
    print(
        f"deltaml search_family (parallelism {parallelism}): {trials} trials in {concurrent:.1f} s = "
        f"{par_rate:.1f} trials/min, {concurrent_cores:.2f} cores busy on average"
    )
    print(f"ratio: {par_rate / seq_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
