"""The Telco pipeline through a real Spark Connect server: same test metrics as a classic session, scoring, monitoring.

Databricks serverless and standard-access clusters run Python over Spark Connect: no SparkContext,
no RDDs, no broadcasts, no JVM gateway. The server here is pyspark's own (tests/connect.py); the
pipeline runs in a separate process whose only session is the Connect client, so any use of the
JVM on the way fails the run. One Spark ML family and one single-node family are tuned.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deltaml.cli import main
from tests.conftest import telco_config_dict, write_config
from tests.connect import (
    ConnectServer,
    connect_server_fixture,  # noqa: F401  (the module-scoped `connect_server` fixture)
)

pytestmark = pytest.mark.slow

EXPERIMENT = "deltaml-telco-churn"
CLEAN = "warehouse/silver/telco_churn_clean"
PREDICTIONS = "warehouse/gold/telco_churn_predictions"
TEST_METRICS = ("test_auc_roc", "test_auc_pr", "test_log_loss", "test_accuracy")


def _config(folder: Path, master: str | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = telco_config_dict()
    data["state_dir"] = str(folder / "state")
    data["model"] = {
        "candidates": [
            {
                "family": "logistic_regression",
                "params": {"maxIter": 50},
                "search": {"regParam": {"choice": [0.001, 0.01]}},
            },
            {
                "family": "hist_gradient_boosting",
                "params": {"max_iter": 60},
                "search": {"learning_rate": {"choice": [0.05, 0.1]}},
            },
        ]
    }
    data["tuning"] = {"max_evals": 2, "parallelism": 2}
    data["register"] = {"gate": {"enabled": False}}
    if master is not None:
        data["spark"] = {"master": master}
    return write_config(folder / "telco_churn.yml", data)


def _deltaml(*args: str, timeout: float = 900.0) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process: no classic session there, so the config's sc:// master is the only session."""
    # The classic run in this process exported its MLflow store (mlflow.set_tracking_uri): drop it.
    dropped = ("SPARK_REMOTE", "PYSPARK_GATEWAY_PORT", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    return subprocess.run(
        [sys.executable, "-c", "from deltaml.cli import console_main; console_main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _test_metrics(state: Path) -> dict[str, float]:
    client = MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`deltaml.step` = 'evaluate' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    assert runs, f"no finished evaluate run in {state}"
    return {name: runs[0].data.metrics[name] for name in TEST_METRICS}


def _predictions(spark: SparkSession, state: Path) -> tuple[int, int]:
    rows = spark.read.format("delta").load(str(state / PREDICTIONS))
    return rows.count(), rows.select("customer_id").distinct().count()


def test_pipeline_over_spark_connect_matches_classic_and_scores_incrementally(
    spark: SparkSession, connect_server: ConnectServer, tmp_path: Path
) -> None:
    classic_conf = _config(tmp_path / "classic", master=None)
    started = time.monotonic()
    assert main(["run", str(classic_conf)]) == 0
    classic_seconds = time.monotonic() - started

    connect_conf = _config(tmp_path / "connect", master=connect_server.url)
    started = time.monotonic()
    run = _deltaml("run", str(connect_conf))
    connect_seconds = time.monotonic() - started
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"using Spark Connect at {connect_server.url}" in run.stderr
    for step in ("ingest", "validate", "split", "fit", "evaluate", "register", "score"):
        assert f"[{step}] done" in run.stderr, f"step {step} did not finish:\n{run.stderr[-3000:]}"
    assert "hist_gradient_boosting 2/2" in run.stderr and "logistic_regression 2/2" in run.stderr
    ratio = connect_seconds / classic_seconds
    print(f"classic {classic_seconds:.1f}s, connect {connect_seconds:.1f}s (ratio {ratio:.2f})")

    classic, connect = _test_metrics(tmp_path / "classic" / "state"), _test_metrics(tmp_path / "connect" / "state")
    for name in TEST_METRICS:
        assert connect[name] == pytest.approx(classic[name], abs=1e-6), (name, classic, connect)

    state = tmp_path / "connect" / "state"
    assert _predictions(spark, state) == (7043, 7043)
    # New customers arrive in the clean table; the next scoring run scores exactly them, the one after nothing.
    clean = spark.read.format("delta").load(str(state / CLEAN))
    extra = clean.limit(25).withColumn("customer_id", F.col("customer_id") + F.lit(1_000_000))
    extra = extra.withColumn("_ingest_batch_id", F.lit("connect-extra"))
    extra.write.format("delta").mode("append").save(str(state / CLEAN))
    first = _deltaml("score", str(connect_conf))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "25 rows" in first.stderr, first.stderr[-2000:]
    assert _predictions(spark, state) == (7068, 7068)
    second = _deltaml("score", str(connect_conf))
    assert second.returncode == 0, second.stderr[-3000:]
    assert _predictions(spark, state) == (7068, 7068)

    monitor = _deltaml("monitor", str(connect_conf))
    assert monitor.returncode == 0, monitor.stderr[-3000:]
    assert "[monitor] done" in monitor.stderr and "25 predictions" in monitor.stderr, monitor.stderr[-2000:]
