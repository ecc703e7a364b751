"""Promotion history, rollback and the register step's gate against a real SQLite MLflow registry."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

import mlflow
import mlflow.spark
import pytest
from mlflow.tracking import MlflowClient
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, SparkSession

from deltaml.cli import main
from deltaml.columns import HISTORY_TAG, LABEL_COL
from deltaml.config.loader import load_config
from deltaml.errors import StepInputError
from deltaml.io.catalog import overwrite_table
from deltaml.io.registry import HISTORY_MAX_CHARS, champion_version, promote, promotion_history, rollback
from deltaml.io.tables import resolve_tables
from deltaml.io.tracking import client_for, configure_tracking, resolve_tracking_uri
from deltaml.ml.labels import with_binary_label
from deltaml.steps.base import StepContext, StepResult
from deltaml.steps.outputs import EvaluateOutput, FitOutput, RegisterOutput
from deltaml.steps.register import STEP
from tests.conftest import write_config

NAME = "churn_model"


pytestmark = pytest.mark.usefixtures("restore_cli_logging")


def _registry(tmp_path: Path, versions: int, name: str = NAME) -> tuple[MlflowClient, str]:
    """A SQLite registry in ``tmp_path`` with ``versions`` versions of ``name`` (no champion yet)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)  # creates the store (MLflow 3.0 would otherwise print its migrations)
    client.create_registered_model(name)
    (tmp_path / "model").mkdir(exist_ok=True)
    for _ in range(versions):
        client.create_model_version(name, source=str(tmp_path / "model"))
    return client, uri


def _champion(client: MlflowClient, name: str = NAME) -> int | None:
    version = client.get_registered_model(name).aliases.get("champion")
    return int(version) if version is not None else None


def test_promote_moves_the_alias_and_keeps_a_history(tmp_path: Path) -> None:
    client, _ = _registry(tmp_path, 3)
    started = datetime.now().astimezone().replace(microsecond=0)
    assert promote(client, NAME, 1, "first") is None
    assert promote(client, NAME, 2, "better auc") == 1
    assert promote(client, NAME, 3, "even better") == 2
    assert promote(client, NAME, 3, "again") == 3  # already champion: nothing changes
    assert _champion(client) == 3
    history = promotion_history(client, NAME)
    assert [(e["version"], e["previous"], e["reason"]) for e in history] == [
        (1, None, "first"),
        (2, 1, "better auc"),
        (3, 2, "even better"),
    ]
    assert all(set(e) == {"version", "previous", "at", "reason"} for e in history)
    promoted_at = datetime.fromisoformat(client.get_model_version(NAME, "3").tags["deltaml.promoted_at"])
    offset = promoted_at.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert started <= promoted_at <= datetime.now().astimezone()
    assert history[-1]["at"] == client.get_model_version(NAME, "3").tags["deltaml.promoted_at"]


def test_rollback_walks_back_through_the_history(tmp_path: Path) -> None:
    client, _ = _registry(tmp_path, 3)
    for version in (1, 2, 3):
        promote(client, NAME, version, f"gate: v{version}")
    assert rollback(client, NAME, "v3 misbehaves") == 2
    assert _champion(client) == 2
    assert "deltaml.rolled_back_at" in client.get_model_version(NAME, "3").tags
    assert rollback(client, NAME, "v2 too") == 1
    assert _champion(client) == 1
    history = promotion_history(client, NAME)
    assert [(e["version"], e["previous"], e.get("rollback", False)) for e in history] == [
        (1, None, False),
        (2, 1, False),
        (3, 2, False),
        (2, 3, True),
        (1, 2, True),
    ]
    assert history[-1]["reason"] == "v2 too"
    with pytest.raises(StepInputError, match=r"nothing to roll back to \(@champion is version 1 and no earlier"):
        rollback(client, NAME, "once more")
    # A promotion after rollbacks starts a new line: rolling it back returns to version 1.
    promote(client, NAME, 3, "fixed")
    assert rollback(client, NAME, "no, not fixed") == 1


def test_rollback_skips_deleted_versions(tmp_path: Path) -> None:
    client, _ = _registry(tmp_path, 3)
    for version in (1, 2, 3):
        promote(client, NAME, version, "gate")
    client.delete_model_version(NAME, "2")
    assert rollback(client, NAME, "v3 broken") == 1
    # A deleted champion is no champion (MLflow 3.0 keeps its alias, later versions drop it); rollback
    # then returns to the champion before it.
    promote(client, NAME, 3, "v3 fixed")
    client.delete_model_version(NAME, "3")
    assert champion_version(client, NAME) is None
    assert rollback(client, NAME, "v3 deleted") == 1
    assert promotion_history(client, NAME)[-1] == {
        "version": 1,
        "previous": None,
        "at": promotion_history(client, NAME)[-1]["at"],
        "reason": "v3 deleted",
        "rollback": True,
    }
    client.delete_model_version(NAME, "1")
    with pytest.raises(StepInputError, match=rf"^registered model '{NAME}': nothing to roll back to \(no @champion"):
        rollback(client, NAME, "all gone")


def test_errors_name_the_problem_in_one_line(tmp_path: Path) -> None:
    client, _ = _registry(tmp_path, 2)
    with pytest.raises(StepInputError) as missing:
        promote(client, NAME, 7, "typo")
    assert str(missing.value) == (
        f"registered model '{NAME}' has no version 7 (versions: 1, 2); pass an existing one to --version"
    )
    with pytest.raises(StepInputError, match=r"^registered model 'nope' does not exist in the registry; "):
        promote(client, "nope", 1, "typo")
    with pytest.raises(StepInputError, match=r"nothing to roll back to \(no @champion and no earlier champion"):
        rollback(client, NAME, "nothing yet")
    promote(client, NAME, 1, "first")
    with pytest.raises(StepInputError, match=r"nothing to roll back to \(@champion is version 1 "):
        rollback(client, NAME, "only one")
    assert _champion(client) == 1


def test_history_keeps_the_newest_50_entries_within_the_tag_limit(tmp_path: Path) -> None:
    client, _ = _registry(tmp_path, 2)
    for i in range(56):
        promote(client, NAME, 1 + i % 2, f"promotion {i:02d} " + "x" * 300)
    raw = client.get_registered_model(NAME).tags[HISTORY_TAG]
    assert len(raw) <= HISTORY_MAX_CHARS
    history = json.loads(raw)
    assert len(history) == 50
    # The newest reason is kept (clipped to 200 characters); older ones shrink, oldest first, to fit.
    reasons = [e["reason"] for e in history]
    assert len(reasons[-1]) == 200 and reasons[-1].startswith("promotion 55 xxx") and reasons[-1].endswith("...")
    assert reasons[0] == "" and len(reasons[-2]) == 40
    numbered = [int(r.split()[1]) for r in reasons if r]
    assert numbered == list(range(56 - len(numbered), 56))
    assert [e["version"] for e in history] == [1 + i % 2 for i in range(6, 56)]
    assert rollback(client, NAME, "after many") == 1


# --- the CLI -----------------------------------------------------------------------------------------


def test_cli_promote_and_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client, uri = _registry(tmp_path, 2)
    assert main(["promote", NAME, "--version", "1", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == f"{NAME} version 1 is now @champion (there was none)\n"
    assert main(["promote", NAME, "--version", "2", "--reason", "beats v1 on recent data", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == f"{NAME} version 2 is now @champion (was version 1)\n"
    assert main(["promote", NAME, "--version", "2", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == f"{NAME} version 2 is already @champion\n"
    assert main(["rollback", NAME, "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == f"{NAME} rolled back: version 1 is now @champion\n"
    assert [e["reason"] for e in promotion_history(client, NAME)] == [
        "manual promotion",
        "beats v1 on recent data",
        "manual rollback",
    ]


def test_cli_errors_exit_non_zero_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, uri = _registry(tmp_path, 2)
    assert main(["promote", NAME, "--version", "9", "--tracking-uri", uri]) == 4
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"deltaml: error: registered model '{NAME}' has no version 9 (versions: 1, 2); "
        "pass an existing one to --version\n"
    )
    assert main(["rollback", NAME, "--tracking-uri", uri]) == 4
    assert capsys.readouterr().err.startswith(f"deltaml: error: registered model '{NAME}': nothing to roll back to")

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["rollback", NAME]) == 2
    assert capsys.readouterr().err == (
        "deltaml: error: rollback: no MLflow registry given; pass --tracking-uri URI, set MLFLOW_TRACKING_URI, "
        "or pass --conf CONF to use that pipeline's store\n"
    )
    missing = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert main(["promote", NAME, "--version", "1", "--tracking-uri", missing]) == 4
    assert capsys.readouterr().err == (
        f"deltaml: error: promote: no MLflow store at {missing}; run the pipeline first or pass the right "
        "--tracking-uri/--conf\n"
    )
    assert not (tmp_path / "elsewhere.db").exists()


def test_cli_finds_the_store_from_the_environment_or_the_config(
    tmp_path: Path, telco_conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, uri = _registry(tmp_path, 1)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["promote", NAME, "--version", "1"]) == 0
    assert capsys.readouterr().out == f"{NAME} version 1 is now @champion (there was none)\n"

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    embedded = resolve_tracking_uri(load_config(telco_conf).pipeline)
    assert embedded == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    (tmp_path / "state").mkdir()
    client = MlflowClient(tracking_uri=embedded, registry_uri=embedded)
    client.create_registered_model("telco_churn")
    client.create_model_version("telco_churn", source=str(tmp_path / "model"))
    assert main(["promote", "telco_churn", "--version", "1", "--conf", str(telco_conf)]) == 0
    assert capsys.readouterr().out == "telco_churn version 1 is now @champion (there was none)\n"
    assert _champion(client, "telco_churn") == 1


# --- the register step's gate, with real Spark models -------------------------------------------------


def _split_rows(spark: SparkSession, with_gone: bool) -> DataFrame:
    """400 rows: ``x1`` predicts the outcome, ``x2`` is noise, ``gone`` (optional) is a copy of ``x1``."""
    rng = random.Random(17)
    rows = []
    for i in range(400):
        x1, x2 = rng.gauss(0, 1), rng.gauss(0, 1)
        outcome = "yes" if x1 + rng.gauss(0, 0.7) > 0 else "no"
        rows.append((i, x1, x2, x1 + rng.gauss(0, 0.1), outcome, "train" if i % 10 < 7 else "test"))
    df = spark.createDataFrame(rows, "id long, x1 double, x2 double, gone double, outcome string, split string")
    return df if with_gone else df.drop("gone")


def _logged_model(train: DataFrame, features: list[str]) -> tuple[PipelineModel, str]:
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=features, outputCol="f"),
            LogisticRegression(featuresCol="f", labelCol=LABEL_COL),
        ]
    )
    model = pipeline.fit(train.where("split = 'train'").transform(with_binary_label("outcome", "yes")))
    with mlflow.start_run():
        info = mlflow.spark.log_model(model, artifact_path="model", pip_requirements=["pyspark"])
    return model, info.model_uri


def test_register_step_gates_the_champion(spark: SparkSession, tmp_path: Path) -> None:
    conf = write_config(
        tmp_path / "gate.yml",
        {
            "name": "gate_demo",
            "state_dir": str(tmp_path / "state"),
            "seed": 7,
            "key": "id",
            "source": {"kind": "parquet", "path": str(tmp_path / "unused")},
            "tables": {"raw": {"path": "raw"}, "split": {"path": "split"}, "predictions": {"path": "predictions"}},
            "label": {"column": "outcome", "positive": "yes"},
            "features": {"numeric": ["x1", "x2"]},
            "mlflow": {"experiment": "gate-demo", "registered_model": "gate_demo"},
        },
    )
    loaded = load_config(conf)
    configure_tracking(loaded.pipeline)
    split = resolve_tables(loaded.pipeline).split
    client = MlflowClient()

    def register(features: list[str], split_version: int, overrides: list[str] | None = None) -> StepResult:
        current = load_config(conf, overrides=overrides) if overrides else loaded
        model, uri = _logged_model(spark.read.format("delta").load(split.ref), features)
        ctx = StepContext(spark=spark, loaded=current, models={uri: model})
        ctx.publish(FitOutput(model_uri=uri, split_version=split_version))
        ctx.publish(EvaluateOutput(model_uri=uri, metrics={"test_x": 0.5}))
        return STEP.run(ctx.for_step(STEP))

    def registered(result: StepResult) -> tuple[int, bool]:
        assert isinstance(result.output, RegisterOutput)
        return result.output.model_version, result.output.promoted

    with_gone = overwrite_table(spark, _split_rows(spark, with_gone=True), split).version

    # Version 1, trained on a column the split will lose later: no champion yet, so it is promoted.
    first = register(["gone"], with_gone)
    assert first.summary.startswith("gate_demo version 1 @challenger; promoted to @champion (first")
    assert registered(first) == (1, True)
    tags = client.get_model_version("gate_demo", "1").tags
    assert tags["deltaml.training_table"] == split.ref
    assert tags["deltaml.training_table_version"] == str(with_gone)
    assert tags["deltaml.config_hash"] == loaded.config_hash
    assert tags["metric.test_x"] == "0.500000"

    # Version 2 learns from noise: it stays @challenger and version 1 stays @champion.
    second = register(["x2"], with_gone)
    result = second
    assert registered(second) == (2, False)
    assert result.summary.startswith("gate_demo version 2 @challenger; kept version 1 as @champion (auc_roc 0.")
    assert " < margin 0.0000)" in result.summary
    assert result.metrics["gate_promoted"] == 0.0
    assert result.metrics["gate_difference"] == pytest.approx(
        result.metrics["gate_challenger_value"] - result.metrics["gate_champion_value"]
    )
    assert result.metrics["gate_champion_value"] > 0.8 > 0.65 > result.metrics["gate_challenger_value"]
    assert result.tags["gate_reason"] in result.summary
    aliases = client.get_registered_model("gate_demo").aliases
    assert (aliases["champion"], aliases["challenger"]) == (1, 2)
    assert client.get_model_version("gate_demo", "2").tags["deltaml.gate"].startswith("kept: auc_roc ")

    # The split loses 'gone': version 1 cannot score it any more, so version 3 replaces it.
    without_gone = overwrite_table(spark, _split_rows(spark, with_gone=False), split).version
    third = register(["x1"], without_gone)
    result = third
    assert registered(third)[1] is True
    assert result.summary.startswith(
        "gate_demo version 3 @challenger; promoted to @champion (champion version 1 cannot score this data ("
    )
    assert result.tags["gate_champion_version"] == "1"
    assert "gate_champion_value" not in result.metrics
    aliases = client.get_registered_model("gate_demo").aliases
    assert (aliases["champion"], aliases["challenger"]) == (3, 3)

    # With the gate disabled, the noise model is promoted regardless.
    fourth = register(["x2"], without_gone, overrides=["register.gate.enabled=false"])
    assert fourth.summary == ("gate_demo version 4 @challenger; promoted to @champion (gate disabled)")
    history = promotion_history(client, "gate_demo")
    assert [(e["version"], e["previous"]) for e in history] == [(1, None), (3, 1), (4, 3)]
    assert history[1]["reason"].startswith("gate: champion version 1 cannot score this data")
    assert history[2]["reason"] == "gate disabled"
