"""The Telco pipeline end to end through the CLI: registered champion, idempotent predictions, clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from deltaml.cli import main
from deltaml.config.loader import load_config
from deltaml.io.session import check_delta_jars
from deltaml.io.tracking import load_run_table
from tests.browser import rendered_text
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

RAW = "warehouse/bronze/telco_churn"
PREDICTIONS = "warehouse/gold/telco_churn_predictions"
SPLIT = "warehouse/silver/telco_churn_split"
CLEAN = "warehouse/silver/telco_churn_clean"


def _rows(spark: SparkSession, path: Path, column: str) -> tuple[int, int]:
    df = spark.read.format("delta").load(str(path))
    return df.count(), df.select(column).distinct().count()


def _model_versions(spark: SparkSession, path: Path) -> set[int]:
    return {r["model_version"] for r in spark.read.format("delta").load(str(path)).select("model_version").collect()}


class _Widgets:
    """A minimal stand-in for Databricks' ``dbutils.widgets``: values given by the test win over defaults."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)

    def text(self, name: str, default: str, label: str = "") -> None:
        self.values.setdefault(name, default)

    def dropdown(self, name: str, default: str, choices: list[str], label: str = "") -> None:
        assert default in choices
        self.values.setdefault(name, default)
        assert self.values[name] in choices, f"widget {name}: {self.values[name]!r} is not one of {choices}"

    def get(self, name: str) -> str:
        return self.values[name]


def run_notebook(name: str, **widgets: str) -> dict[str, Any]:
    """Execute a Databricks source-format notebook cell by cell, as the workspace would."""
    source = (ROOT / "notebooks" / name).read_text()
    assert source.startswith("# Databricks notebook source\n")
    # What a Databricks notebook has built in beyond widgets, recorded: display, displayHTML, task values.
    shown: list[tuple[str, Any]] = []
    task_values: dict[str, Any] = {}
    jobs = SimpleNamespace(taskValues=SimpleNamespace(set=lambda key, value: task_values.__setitem__(key, value)))
    namespace: dict[str, Any] = {
        "dbutils": SimpleNamespace(widgets=_Widgets(widgets), jobs=jobs),
        "display": lambda data: shown.append(("display", data)),
        "displayHTML": lambda html: shown.append(("displayHTML", html)),
        "shown": shown,
        "task_values": task_values,
    }
    for cell in source.split("# COMMAND ----------"):
        exec(compile(cell, str(ROOT / "notebooks" / name), "exec"), namespace)
    return namespace


def _spark_submit_score(tmp_path: Path, conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    archive = tmp_path / "deltaml.zip"
    subprocess.run([sys.executable, "-m", "zipfile", "-c", str(archive), "deltaml"], cwd=ROOT / "lib", check=True)
    jars = ",".join(str(p) for p in check_delta_jars())
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master",
        "local[1]",
        "--conf",
        "spark.sql.shuffle.partitions=3",
        "--jars",
        jars,
        "--py-files",
        str(archive),
        str(ROOT / "jobs" / "score.py"),
        str(conf),
        *args,
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)


def _step_runs(parent_run_id: str) -> dict[str, mlflow.entities.Run]:
    parent = mlflow.get_run(parent_run_id)
    children = MlflowClient().search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    return {run.data.tags["deltaml.step"]: run for run in children}


def test_run_twice_registers_champions_and_never_duplicates_predictions(
    spark: SparkSession, telco_conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    assert main(["run", str(telco_conf)]) == 0
    client = MlflowClient()
    champion = client.get_model_version_by_alias("telco_churn", "champion")
    assert champion.version == 1
    tags = champion.tags
    assert tags["deltaml.config_hash"] == load_config(telco_conf).config_hash
    assert tags["deltaml.training_table"] == str(state / "warehouse/silver/telco_churn_split")
    assert tags["deltaml.training_table_version"] == "0"
    assert tags["deltaml.git_sha"] != ""
    # The single-machine reference (scikit-learn logistic regression) reaches about 0.84.
    assert float(tags["metric.test_auc_roc"]) > 0.82
    assert _rows(spark, state / RAW, "customer_id") == (7043, 7043)
    assert _rows(spark, state / PREDICTIONS, "customer_id") == (7043, 7043)

    # MLflow's own loader takes the registered model; its signature requires every column the model reads,
    # so a frame without one fails in MLflow's schema check, naming it, not deep inside Spark.
    loaded = mlflow.pyfunc.load_model("models:/telco_churn@champion")
    schema = loaded.metadata.get_input_schema()
    assert schema is not None and all(spec.required for spec in schema.inputs)
    sample: Any = spark.read.format("delta").load(str(state / CLEAN)).select(*schema.input_names()).limit(5).toPandas()
    predicted = loaded.predict(sample)
    assert list(predicted.columns) == ["probability", "prediction"] and len(predicted) == 5
    assert predicted["probability"].between(0, 1).all() and set(predicted["prediction"]) <= {0.0, 1.0}
    with pytest.raises(MlflowException, match="tenure"):
        loaded.predict(sample.drop(columns=["tenure"]))

    experiment = mlflow.get_experiment_by_name("deltaml-telco-churn")
    assert experiment is not None
    parent = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`deltaml.step` = 'pipeline'",
    )[0]
    steps = _step_runs(parent.info.run_id)
    assert sorted(steps) == ["evaluate", "fit", "ingest", "register", "score", "split", "validate"]
    assert steps["ingest"].data.metrics["rows_written"] == 7043
    assert (steps["validate"].data.metrics["rows_clean"], steps["validate"].data.metrics["rows_quarantined"]) == (
        7043,
        0,
    )
    assert (
        steps["fit"].data.metrics["rows_train"]
        + steps["split"].data.metrics["rows_validation"]
        + steps["split"].data.metrics["rows_test"]
        == 7043
    )
    assert all("seconds" in run.data.metrics for run in steps.values())
    assert parent.data.params["tuning.parallelism"] == "2"

    # Tuning: four families, two trials each, every trial a nested run of the fit step; the
    # leaderboard and the evaluation report are artifacts; the gate promoted the first version.
    fit_run = steps["fit"].info.run_id
    trials = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{fit_run}'")
    families = ["logistic_regression", "random_forest", "gbt", "hist_gradient_boosting"]
    assert sorted(t.data.tags["deltaml.family"] for t in trials) == sorted(families * 2)
    assert all("validation_auc_roc" in t.data.metrics and t.info.status == "FINISHED" for t in trials)
    assert steps["fit"].data.tags["deltaml.winner_family"] in families
    assert "leaderboard.json" in {a.path for a in client.list_artifacts(fit_run)}
    # The MLflow UI lists the tables each step read as dataset inputs, with their Delta version.
    fit_inputs = client.get_run(fit_run).inputs
    assert fit_inputs is not None
    (trained_on,) = fit_inputs.dataset_inputs
    assert json.loads(trained_on.dataset.source) == {"path": str(state / SPLIT), "delta_table_version": 0}
    assert {t.key: t.value for t in trained_on.tags}["mlflow.data.context"] == "fit"
    report = {a.path for a in client.list_artifacts(steps["evaluate"].info.run_id, "report")}
    assert {"report/report.html", "report/roc.png", "report/feature_importance.png"} <= report
    # The lift table is also an MLflow table (the run's artifact view shows it as one): ten deciles, all rows.
    lift = load_run_table(steps["evaluate"].info.run_id, "report/lift_table.json")
    assert list(lift["group"]) == list(range(1, 11)) and lift["gain"].iloc[-1] == pytest.approx(1.0)
    assert lift["rows"].sum() == pytest.approx(steps["split"].data.metrics["rows_test"])
    assert steps["register"].data.tags["deltaml.gate_decision"] == "promoted"

    # The pipeline's own run carries what the run table compares pipelines on (before: only seconds_* metrics),
    # and the registry page shows a description with the metrics and lineage.
    winner = steps["fit"].data.tags["deltaml.winner_family"]
    headline = parent.data.metrics
    assert headline["test_auc_roc"] == steps["evaluate"].data.metrics["test_auc_roc"] > 0.82
    assert headline["validation_auc_roc"] == steps["evaluate"].data.metrics["validation_auc_roc"]
    assert headline["winner_validation_auc_roc"] == steps["fit"].data.metrics["winner_validation_auc_roc"]
    assert (headline["model_version"], headline["trials"], headline["rows_scored"]) == (1, 8, 7043)
    assert parent.data.tags["deltaml.winner_family"] == winner
    assert (parent.data.tags["deltaml.model_version"], parent.data.tags["deltaml.gate_decision"]) == ("1", "promoted")
    description = client.get_model_version("telco_churn", "1").description or ""
    assert description.startswith(f"{winner} binary model of 'churn' (pipeline telco_churn). ")
    assert f"test auc_roc {headline['test_auc_roc']:.4f}" in description
    assert f"Trained on {state / SPLIT} v0; config hash {load_config(telco_conf).config_hash}, seed 42" in description
    assert f"fit run {fit_run}. Gate: first version: no @champion yet" in description
    assert "binary model of 'churn', trained on" in (client.get_registered_model("telco_churn").description or "")

    # Lineage: the version names the tables and versions every step read and wrote, and its config.
    capsys.readouterr()
    assert main(["lineage", "telco_churn", "--version", "1", "--conf", str(telco_conf)]) == 0
    printed = capsys.readouterr().out
    assert f"telco_churn version 1: trained by pipeline run {parent.info.run_id}" in printed
    assert f"  split: read {state / 'warehouse/silver/telco_churn_clean'} v0; wrote {state / SPLIT} v0" in printed
    assert f"config hash {load_config(telco_conf).config_hash}, seed 42" in printed
    assert client.get_model_version_by_alias("telco_churn", "challenger").version == 1

    # Second run, through the Databricks train notebook: nothing changed, so every step is reused.
    notebook = run_notebook("train.py", conf=str(telco_conf), env="", overrides="")
    outcome = notebook["outcome"]
    assert outcome.reused == {name: run.info.run_id for name, run in steps.items()}
    # It shows the report, the leaderboard and a sample of predictions, and hands the version to later job tasks.
    kinds = [kind for kind, _ in notebook["shown"]]
    assert kinds == ["displayHTML", "display", "display"], kinds
    html, leaderboard, predictions = (data for _, data in notebook["shown"])
    assert "<html" in html and "telco_churn" in html and "data:image/png;base64," in html
    # The report says which model, runs, data and config it is about, and has the lift table.
    assert "<h1>telco_churn: evaluation on the test split</h1>" in html
    assert f'<th class="name">fit run</th><td>{fit_run}</td>' in html
    assert f"{state / SPLIT} version 0: validation and test splits" in html
    assert f"hash {load_config(telco_conf).config_hash}, seed 42" in html
    assert "<h2>Lift and gains by decile</h2>" in html
    # The register step wrote its decision into the report the evaluate step had logged.
    assert '<td class="pass">promoted: version 1 is the new @champion</td>' in html
    assert "none yet: this is the first version" in html and "Not decided yet" not in html
    assert leaderboard["family"].iloc[0] == winner and len(leaderboard) == 4
    assert predictions.count() == 20 and "prediction" in predictions.columns
    values = notebook["task_values"]
    assert (values["model_version"], values["promoted"], values["winner_family"]) == (1, True, winner)
    assert values["run_id"] == outcome.run_id and values["test_auc_roc"] == round(headline["test_auc_roc"], 6)
    assert notebook["results"].summary.startswith(f"MLflow run {outcome.run_id}, winner {winner}, test_auc_roc ")
    # A pipeline run of reused steps still carries the metrics of the runs it stands for.
    reused = client.get_run(outcome.run_id).data
    assert reused.metrics["test_auc_roc"] == headline["test_auc_roc"]
    assert reused.tags["deltaml.winner_family"] == winner
    assert client.get_model_version_by_alias("telco_churn", "champion").version == 1

    # Forcing training: ingest, validate and split are still reused; the refit model is version 2,
    # and scoring is incremental: the clean table is the same version, so nothing is rescored.
    assert main(["run", str(telco_conf), "--force-step", "fit"]) == 0
    assert client.get_model_version_by_alias("telco_churn", "champion").version == 2
    assert _rows(spark, state / RAW, "customer_id") == (7043, 7043)
    assert _rows(spark, state / PREDICTIONS, "customer_id") == (7043, 7043)
    predictions = spark.read.format("delta").load(str(state / PREDICTIONS))
    assert {r["model_version"] for r in predictions.select("model_version").distinct().collect()} == {1}
    assert {r["source_version"] for r in predictions.select("source_version").distinct().collect()} == {0}

    # That run's evaluation report as a reader sees it, rendered by Chromium: which model, data and config it
    # is about, the gate's comparison of version 2 with champion 1 on the same test rows, and the lift table.
    latest = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`deltaml.step` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    forced = _step_runs(latest.info.run_id)
    evaluate_run = forced["evaluate"].info.run_id
    text = rendered_text(Path(mlflow.artifacts.download_artifacts(f"runs:/{evaluate_run}/report/report.html")))
    fit_again = forced["fit"].info.run_id
    for line in (
        "telco_churn: evaluation on the test split",
        "pipeline\ttelco_churn",
        "label\tchurn (binary)",
        f"fit run\t{fit_again}",
        f"data\t{state / SPLIT} version 0: validation and test splits",
        f"config\thash {load_config(telco_conf).config_hash}, seed 42, deltaml ",
        "Champion vs challenger",
        "decision\tpromoted: version 2 is the new @champion",
        f"compared on\tauc_roc, the test rows of {state / SPLIT} v0",
        "@champion\tversion 1: 0.",
        "@challenger\tversion 2: 0.",
        "difference\t",
        "Lift and gains by decile",
        "group\tp range\trows\tpositives\tpositive rate\tlift\tpositives found\tcumulative lift",
        "1 (top 10%)\t",
        "10 (top 100%)\t",
    ):
        assert line in text, f"{line!r} is not in the rendered report:\n{text[:3000]}"
    assert f"MLflow run {evaluate_run}" in text and "Not decided yet" not in text

    # The score step alone, through the spark-submit job's main(): --full rescores every row with the champion.
    spec = importlib.util.spec_from_file_location("score_job", ROOT / "jobs" / "score.py")
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main([str(telco_conf), "--full"]) == 0
    assert _rows(spark, state / PREDICTIONS, "customer_id") == (7043, 7043)
    assert _model_versions(spark, state / PREDICTIONS) == {2}

    # And through the score notebook, with widget overrides: version 1 pinned, every row rescored.
    run_notebook("score.py", conf=str(telco_conf), env="", overrides="score.model_version=1; score.mode=full")
    assert _rows(spark, state / PREDICTIONS, "customer_id") == (7043, 7043)
    assert _model_versions(spark, state / PREDICTIONS) == {1}

    # And as a scheduled job would: spark-submit with the package as a .zip, spark-submit's
    # own --conf kept, back to the champion.
    done = _spark_submit_score(tmp_path, telco_conf, "--full", "--set", "spark.conf.spark.sql.shuffle.partitions=5")
    # spark-submit merges the Python driver's stderr into its stdout.
    assert done.returncode == 0, done.stdout[-2000:]
    assert "using spark-submit's session (master local[1]); kept spark-submit's spark.sql.shuffle.partitions=3" in (
        done.stdout
    )
    # Spark's console INFO flood is off (spark.log.level=WARN): only the lines before it applies remain.
    spark_info = [line for line in done.stdout.splitlines() if " INFO " in line and "deltaml" not in line]
    assert len(spark_info) <= 5, spark_info[:20]
    assert _rows(spark, state / PREDICTIONS, "customer_id") == (7043, 7043)
    assert _model_versions(spark, state / PREDICTIONS) == {2}


def test_a_step_without_its_input_fails_in_one_line(
    spark: SparkSession, telco_conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(telco_conf), "--step", "fit"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("deltaml: error: step 'fit': input Delta table ")
    assert "does not exist; run the step that writes it first" in err[-1]
    assert main(["score", str(telco_conf)]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert "registered model 'telco_churn' has no alias @champion" in err[-1]


def test_bad_config_exits_2_before_spark_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "missing.yml")]) == 2
    assert (
        capsys.readouterr().err.strip() == f"deltaml: error: config file not found: {tmp_path / 'missing.yml'} "
        "(give the path of a pipeline YAML such as conf/telco_churn.yml)"
    )
