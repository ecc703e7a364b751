"""Lineage: each step's Delta reads and writes with their versions, in its run and in the pipeline's manifest."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from pyspark.sql import SparkSession

from deltaml import runner
from deltaml.catalog import Table, read_table, replace_where
from deltaml.cli import main
from deltaml.context import StepContext, StepResult
from deltaml.lineage import TableAccess, recording
from tests.conftest import telco_config_dict, write_config


def test_recording_sees_reads_and_writes_with_their_versions(spark: SparkSession, tmp_path: Path) -> None:
    table = Table(str(tmp_path / "t"), is_path=True)
    rows = spark.createDataFrame([(1, "a")], "id long, batch string")
    replace_where(spark, rows, table, "batch", ["a"])  # outside a recording: nothing to note, nothing fails
    with recording() as accesses:
        replace_where(spark, rows, table, "batch", ["a"])
        read_table(spark, table, "test")
        read_table(spark, table, "test", version=0)
        read_table(spark, table, "test")
    assert accesses == [
        TableAccess(str(table), 1, "write"),
        TableAccess(str(table), 1, "read"),
        TableAccess(str(table), 0, "read"),
    ]


def test_each_step_run_and_the_pipeline_manifest_carry_the_tables_and_versions(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = Table(str(tmp_path / "source"), is_path=True)
    target = Table(str(tmp_path / "target"), is_path=True)
    spark.createDataFrame([(1, "a"), (2, "a")], "id long, batch string").write.format("delta").save(source.ref)

    def copy(ctx: StepContext) -> StepResult:
        data, _ = read_table(ctx.spark, source, "split")
        replace_where(ctx.spark, data, target, "batch", ["a"])
        return StepResult()

    monkeypatch.setitem(runner.STEPS, "split", copy)
    data = telco_config_dict()
    data["state_dir"] = str(tmp_path / "state")
    conf = write_config(tmp_path / "p.yml", data)
    assert main(["run", str(conf), "--step", "split"]) == 0

    runs = {
        r.data.tags["deltaml.step"]: r
        for r in mlflow.search_runs(experiment_names=["deltaml-telco-churn"], output_format="list")
    }
    step = mlflow.artifacts.load_dict(f"runs:/{runs['split'].info.run_id}/lineage.json")
    assert step == {
        "inputs": [{"table": str(source), "version": 0, "kind": "read"}],
        "outputs": [{"table": str(target), "version": 0, "kind": "write"}],
    }
    manifest = mlflow.artifacts.load_dict(f"runs:/{runs['pipeline'].info.run_id}/manifest.json")
    assert manifest["steps"] == {"split": step}
    assert manifest["config_hash"] == runs["pipeline"].data.tags["deltaml.config_hash"]
    assert manifest["seed"] == 42 and manifest["config"]["name"] == "telco_churn"
    assert {"deltaml", "pyspark", "mlflow"} <= set(manifest["packages"])
