"""Lineage: each step's Delta reads and writes with their versions, in its run, its dataset inputs and the
pipeline's manifest; and where a batch of predictions came from."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deltaml.cli import main
from deltaml.columns import MANIFEST_ARTIFACT
from deltaml.config.loader import load_config
from deltaml.errors import StepInputError
from deltaml.io.catalog import Table, read_table, replace_where
from deltaml.io.recording import TableAccess, recording
from deltaml.io.tables import resolve_tables
from deltaml.io.tracking import client_for, configure_tracking, log_datasets
from deltaml.pipeline import runner
from deltaml.pipeline.lineage import (
    batch_lineage,
    build_manifest,
    model_lineage,
    render_batch_lineage,
    render_lineage,
)
from deltaml.steps.base import StepContext, StepResult
from tests.cluster import free_port
from tests.conftest import telco_config_dict, write_config

pytestmark = pytest.mark.usefixtures("restore_cli_logging")


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

    patched = [replace(s, run=copy, produces=None) if s.name == "split" else s for s in runner.STEPS]
    monkeypatch.setattr(runner, "STEPS", tuple(patched))
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
    inputs = MlflowClient().get_run(run_id).inputs
    assert inputs is not None
    return {
        d.dataset.name: (json.loads(d.dataset.source), d.dataset.source_type, {t.key: t.value for t in d.tags})
        for d in inputs.dataset_inputs
    }


def test_log_datasets_names_each_table_read_at_the_version_read(spark: SparkSession, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client_for(uri)  # creates the store without MLflow 3.0's logging set-up, which would drop caplog's handler
    mlflow.set_tracking_uri(uri)
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
    run_inputs = MlflowClient().get_run(run.info.run_id).inputs
    assert run_inputs is not None
    logged = run_inputs.dataset_inputs[0].dataset
    assert logged.schema is not None
    assert [c["name"] for c in json.loads(logged.schema)["mlflow_colspec"]] == ["id", "batch", "x"]


def test_log_datasets_warns_and_goes_on_when_a_dataset_cannot_be_logged(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client_for(uri)  # creates the store without MLflow 3.0's logging set-up, which would drop caplog's handler
    mlflow.set_tracking_uri(uri)
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

    with caplog.at_level(logging.WARNING, logger="deltaml.io.tracking"):
        log_datasets(spark, accesses)  # no active run: nothing is logged, and no run is started
        assert mlflow.active_run() is None
        with mlflow.start_run(tags={"deltaml.step": "ingest"}) as run:
            log_datasets(spark, accesses)
    assert list(_dataset_inputs(run.info.run_id)) == ["kept@v0"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "deltaml.io.tracking"]
    assert warnings[0] == "lineage: no active MLflow run; 2 input table(s) not logged as datasets"
    assert warnings[1].startswith(f"lineage: {gone} v0 not logged as an MLflow dataset: Py4JJavaError: ")
    assert len(warnings) == 2 and "\n" not in warnings[1]


PREDICTIONS_SCHEMA = (
    "id long, probability double, prediction double, model_name string, model_version int, source_table string, "
    "source_version long, batch_id string, scored_at string"
)


def _predictions(spark: SparkSession, table: Table) -> None:
    """A predictions table as the score step writes it: batch v3 scored from two sources, and batch 2026-01-02."""
    rows = [
        (1, 0.9, 1.0, "m", 1, "/data/a", 3, "v3", "2026-01-01 12:00:00"),
        (2, 0.2, 0.0, "m", 1, "/data/a", 3, "v3", "2026-01-01 12:00:05"),
        (1, 0.7, 1.0, "m", 2, "/data/b", 3, "v3", "2026-01-03 08:30:00"),
        (3, 0.4, 0.0, "m", 2, "/data/a", 4, "2026-01-02", "2026-01-02 09:00:00"),
    ]
    df = spark.createDataFrame(rows, PREDICTIONS_SCHEMA).withColumn("scored_at", F.col("scored_at").cast("timestamp"))
    df.write.format("delta").save(table.ref)


BATCH_V3 = """\
batch v3 of {table} (v0): 3 rows
  2 rows scored by m version 1 from /data/a v3 at 2026-01-01 12:00:00Z to 2026-01-01 12:00:05Z
  1 row scored by m version 2 from /data/b v3 at 2026-01-03 08:30:00Z"""


def test_batch_lineage_says_which_model_versions_scored_a_batch_from_which_source_and_when(
    spark: SparkSession, tmp_path: Path
) -> None:
    table = Table(str(tmp_path / "predictions"), is_path=True)
    _predictions(spark, table)

    batch = batch_lineage(spark, table, "v3")
    assert batch == {
        "table": str(table),
        "version": 0,
        "batch": "v3",
        "rows": 3,
        "scored": [
            {
                "model_name": "m",
                "model_version": 1,
                "source_table": "/data/a",
                "source_version": 3,
                "rows": 2,
                "scored_from": "2026-01-01 12:00:00Z",
                "scored_to": "2026-01-01 12:00:05Z",
            },
            {
                "model_name": "m",
                "model_version": 2,
                "source_table": "/data/b",
                "source_version": 3,
                "rows": 1,
                "scored_from": "2026-01-03 08:30:00Z",
                "scored_to": "2026-01-03 08:30:00Z",
            },
        ],
    }
    assert render_batch_lineage(batch) == BATCH_V3.format(table=table)

    with pytest.raises(
        StepInputError,
        match=rf"^lineage: no batch 'v9' in {table} v0; its latest batches: v3, 2026-01-02 \(2 in all\)$",
    ):
        batch_lineage(spark, table, "v9")
    other = Table(str(tmp_path / "other"), is_path=True)
    spark.createDataFrame([(1, "v3")], "id long, batch_id string").write.format("delta").save(other.ref)
    with pytest.raises(StepInputError, match=r"has no column\(s\) \['model_name', 'model_version', 'source_table'"):
        batch_lineage(spark, other, "v3")


def test_cli_lineage_of_a_batch_prints_the_batch_then_each_model_version(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(
        tmp_path / "p.yml",
        {
            "name": "p",
            "state_dir": str(tmp_path / "state"),
            "key": "id",
            "source": {"kind": "parquet", "path": str(tmp_path / "unused")},
            "tables": {"raw": {"path": "raw"}, "split": {"path": "split"}, "predictions": {"path": "gold/predictions"}},
            "label": {"column": "outcome", "positive": "yes"},
            "features": {"numeric": ["x"]},
            "mlflow": {"experiment": "p", "registered_model": "m"},
        },
    )
    cfg = load_config(conf).pipeline
    table = resolve_tables(cfg).predictions
    _predictions(spark, table)
    # Version 1 was trained by a pipeline run with a manifest; version 2 by a run without one.
    configure_tracking(cfg)
    with mlflow.start_run() as pipeline:
        manifest = build_manifest(
            {"split": [TableAccess("/data/a", 3, "read"), TableAccess("/w/split", 0, "write")]},
            config_hash="c0ffee",
            effective_config={"name": "p"},
            seed=7,
            packages={"deltaml": "0.1"},
            git_sha="",
        )
        mlflow.log_dict(manifest, MANIFEST_ARTIFACT)
        with mlflow.start_run(nested=True) as fit:
            pass
    with mlflow.start_run() as bare:
        pass
    client = MlflowClient()
    client.create_registered_model("m")
    for run in (fit, bare):
        client.create_model_version("m", source=str(tmp_path / "model"), run_id=run.info.run_id)
    trained = render_lineage(model_lineage(client, "m", 1))
    assert trained.startswith(f"m version 1: trained by pipeline run {pipeline.info.run_id}\n")

    assert main(["lineage", str(conf), "--batch", "v3"]) == 0
    out = capsys.readouterr().out.splitlines()
    batch_part = BATCH_V3.format(table=table).splitlines()
    assert out[: len(batch_part)] == batch_part
    assert "\n".join(out[len(batch_part) : -1]) == trained
    assert out[-1].startswith("lineage: m version 2 has no manifest (")

    assert main(["lineage", str(conf), "--batch", "v9"]) == 4
    err = capsys.readouterr().err
    assert (
        err == f"deltaml: error: lineage: no batch 'v9' in {table} v0; its latest batches: v3, 2026-01-02 (2 in all)\n"
    )
    assert main(["lineage", str(conf), "--batch", "v3", "--conf", str(conf)]) == 2
    assert capsys.readouterr().err.endswith("CONF is the positional argument and names the registry too; drop --conf\n")
    # The model form is unchanged.
    assert main(["lineage", "m", "--version", "1", "--conf", str(conf)]) == 0
    assert capsys.readouterr().out == trained + "\n"
    with pytest.raises(SystemExit):
        main(["lineage", "m"])
    assert "one of the arguments --version --batch is required" in capsys.readouterr().err


def test_cli_lineage_says_which_is_missing_the_model_the_version_or_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    for name in ("m", "other"):
        client.create_registered_model(name)
    for _ in range(2):  # registered without a run, as from a model file
        client.create_model_version("m", source=str(tmp_path / "model"))
    # Should MLflow's client be asked after all, it gives up at once rather than retrying for minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    nobody = f"http://127.0.0.1:{free_port()}"
    cases = {
        ("m", "7", uri): (4, "lineage: m has no version 7; m's versions are 1, 2"),
        ("m", "-1", uri): (4, "lineage: -1 is not a model version: they count from 1; m's versions are 1, 2"),
        ("nope", "1", uri): (
            4,
            "lineage: the MLflow registry has no model 'nope' (its models are m, other); check NAME, or "
            "--tracking-uri / --conf",
        ),
        ("m", "1", uri): (
            4,
            "lineage: m version 1 has no manifest: it was registered without an MLflow run, so nothing recorded "
            "what trained it",
        ),
        ("m", "1", nobody): (
            1,
            f"MLflow tracking server {nobody} did not answer ([Errno 111] Connection refused); start it, or pass the "
            "right --tracking-uri (else MLFLOW_TRACKING_URI, else --conf's mlflow.tracking_uri)",
        ),
    }
    for (name, version, where), (code, line) in cases.items():
        assert main(["lineage", name, "--version", version, "--tracking-uri", where]) == code, (name, version, where)
        assert capsys.readouterr().err == f"deltaml: error: {line}\n"
