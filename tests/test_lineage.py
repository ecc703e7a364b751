"""Lineage: each step's Delta reads and writes with their versions, in its run and in the pipeline's manifest."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from deltaml import runner
from deltaml.catalog import Table, read_table, replace_where
from deltaml.cli import main
from deltaml.context import StepContext, StepResult
from deltaml.lineage import TableAccess, log_datasets, recording
from tests.conftest import telco_config_dict, write_config


@pytest.fixture(autouse=True)
def _restore_cli_logging() -> Iterator[None]:
    """``main`` points the ``deltaml`` logger at the current stderr, which is pytest's capture here; undo that."""
    logger = logging.getLogger("deltaml")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


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


def _dataset_inputs(run_id: str) -> dict[str, tuple[dict[str, object], str, dict[str, str]]]:
    """A run's dataset inputs by name: the source, its type and the input's tags."""
    return {
        d.dataset.name: (json.loads(d.dataset.source), d.dataset.source_type, {t.key: t.value for t in d.tags})
        for d in MlflowClient().get_run(run_id).inputs.dataset_inputs
    }


def test_log_datasets_names_each_table_read_at_the_version_read(spark: SparkSession, tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("lineage-datasets")  # an earlier test's experiment id means nothing in this store
    features = Table(str(tmp_path / "features"), is_path=True)
    output = Table(str(tmp_path / "scores"), is_path=True)
    named = Table("lineage_datasets_named", is_path=False)
    rows = spark.createDataFrame([(1, "a", 0.5)], "id long, batch string, x double")
    replace_where(spark, rows, features, "batch", ["a"])
    replace_where(spark, rows, features, "batch", ["a"])  # version 1; the step reads version 0
    rows.write.format("delta").saveAsTable(named.ref)
    try:
        with recording() as accesses:
            data, _ = read_table(spark, features, "fit", version=0)
            read_table(spark, named, "fit")
            written = replace_where(spark, data, output, "batch", ["a"])
            read_table(spark, output, "fit", version=written.version)  # reading back what it wrote: not an input
        with mlflow.start_run(tags={"deltaml.step": "fit"}) as run:
            log_datasets(spark, accesses)
    finally:
        spark.sql(f"DROP TABLE IF EXISTS {named.ref}")

    inputs = _dataset_inputs(run.info.run_id)
    assert inputs == {
        "features@v0": (
            {"path": str(features), "delta_table_version": 0},
            "delta_table",
            {"mlflow.data.context": "fit"},
        ),
        "lineage_datasets_named@v0": (
            {"delta_table_name": f"spark_catalog.default.{named.ref}", "delta_table_version": 0},
            "delta_table",
            {"mlflow.data.context": "fit"},
        ),
    }
    logged = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs[0].dataset
    assert [c["name"] for c in json.loads(logged.schema)["mlflow_colspec"]] == ["id", "batch", "x"]


def test_log_datasets_warns_and_goes_on_when_a_dataset_cannot_be_logged(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("lineage-datasets")  # an earlier test's experiment id means nothing in this store
    gone = Table(str(tmp_path / "gone"), is_path=True)
    kept = Table(str(tmp_path / "kept"), is_path=True)
    rows = spark.createDataFrame([(1, "a")], "id long, batch string")
    for table in (gone, kept):
        replace_where(spark, rows, table, "batch", ["a"])
    with recording() as accesses:
        read_table(spark, gone, "ingest")
        read_table(spark, kept, "ingest")
    shutil.rmtree(gone.ref)

    with caplog.at_level(logging.WARNING, logger="deltaml.lineage"):
        log_datasets(spark, accesses)  # no active run: nothing is logged, and no run is started
        assert mlflow.active_run() is None
        with mlflow.start_run(tags={"deltaml.step": "ingest"}) as run:
            log_datasets(spark, accesses)
    assert list(_dataset_inputs(run.info.run_id)) == ["kept@v0"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "deltaml.lineage"]
    assert warnings[0] == "lineage: no active MLflow run; 2 input table(s) not logged as datasets"
    assert warnings[1].startswith(f"lineage: {gone} v0 not logged as an MLflow dataset: Py4JJavaError: ")
    assert len(warnings) == 2 and "\n" not in warnings[1]
