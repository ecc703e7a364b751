"""Shared fixtures: one local Spark session with Delta for the whole test session, tiny configs."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parents[1]
TELCO_CONF = ROOT / "conf" / "telco_churn.yml"


@pytest.fixture
def restore_cli_logging() -> Iterator[None]:
    """``main`` points the ``deltaml`` logger at the current stderr, which is pytest's capture here; undo that."""
    logger = logging.getLogger("deltaml")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment() -> Iterator[None]:
    """Keep the developer's MLflow server and Spark settings out of the tests."""
    saved = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI") if k in os.environ}
    yield
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _restore_mlflow_environment() -> Iterator[None]:
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; undo that after every test so no test
    sends a later test's runs to its store."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    """The one SparkSession of the test run: local[2], Delta from set-up's jars, 2 shuffle partitions."""
    from deltaml.io.session import build_local_session

    session = build_local_session(
        tmp_path_factory.mktemp("spark-state"),
        master="local[2]",
        conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"},
        app_name="deltaml-tests",
    )
    yield session
    session.stop()


def write_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a config dict as YAML and return its path."""
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def telco_config_dict() -> dict[str, Any]:
    """The Telco demo config as a dict, to edit in a test."""
    return yaml.safe_load(TELCO_CONF.read_text())


@pytest.fixture
def telco_conf(tmp_path: Path) -> Path:
    """The Telco config with its state folder in ``tmp_path``: all four model families, two trials each."""
    data = telco_config_dict()
    data["state_dir"] = str(tmp_path / "state")
    data["tuning"]["max_evals"] = 2
    for candidate in data["model"]["candidates"]:
        candidate.pop("max_evals", None)
    return write_config(tmp_path / "telco_churn.yml", data)


def register_tiny_model(spark: SparkSession, name: str) -> None:
    """Fit a one-feature logistic regression (``x`` -> ``outcome == 'yes'``) and register it as ``name`` version 1.

    Logs to the MLflow store configured in this process (``configure_tracking`` first).
    """
    import mlflow
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    from deltaml.columns import LABEL_COL
    from deltaml.ml.labels import with_binary_label

    train = spark.createDataFrame(
        [(i, float(i), "yes" if i > 4 else "no") for i in range(10)], "id long, x double, outcome string"
    ).transform(with_binary_label("outcome", "yes"))
    stages = Pipeline(
        stages=[
            VectorAssembler(inputCols=["x"], outputCol="f"),
            LogisticRegression(featuresCol="f", labelCol=LABEL_COL),
        ]
    )
    with mlflow.start_run():
        mlflow.spark.log_model(
            stages.fit(train), artifact_path="model", registered_model_name=name, pip_requirements=[]
        )
