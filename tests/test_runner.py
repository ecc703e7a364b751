"""The runner: a failure deep inside Spark reaches the user as one line and a FAILED MLflow run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from pyspark.sql import SparkSession

from deltaml.cli import main
from deltaml.pipeline import runner
from deltaml.steps.base import StepContext, StepResult
from tests.conftest import telco_config_dict, write_config


def test_a_spark_error_inside_a_step_is_one_line_and_a_failed_run(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken_split(ctx: StepContext) -> StepResult:
        ctx.spark.sql("SELECT no_such_column FROM range(1)").collect()
        return StepResult()

    monkeypatch.setattr(
        runner, "STEPS", tuple(replace(s, run=broken_split) if s.name == "split" else s for s in runner.STEPS)
    )
    data = telco_config_dict()
    data["state_dir"] = str(tmp_path / "state")
    conf = write_config(tmp_path / "p.yml", data)
    assert main(["run", str(conf), "--step", "split"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("deltaml: error: step 'split' failed: AnalysisException: [UNRESOLVED_COLUMN")
    runs = mlflow.search_runs(experiment_names=["deltaml-telco-churn"], output_format="list")
    assert {run.data.tags["deltaml.step"]: run.info.status for run in runs} == {"pipeline": "FAILED", "split": "FAILED"}
