"""A password written in ``mlflow.tracking_uri`` reaches no console, MLflow param or artifact (issue 18).

A real ``mlflow server`` (it ignores the user-info of the URL, as a server behind no auth does) and
the Telco ingest step: the run goes through, and the password is absent from stdout, stderr, the
run's params, its ``config.yml`` and its ``manifest.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from deltaml.cli import main
from deltaml.errors import one_line, redacted, without_credentials
from tests.cluster import (
    MlflowServer,
    mlflow_server_fixture,  # noqa: F401  (the module-scoped `mlflow_server` fixture)
)
from tests.conftest import telco_config_dict, write_config

SECRET = "s3cr3t-Pa55"


def test_url_secrets_are_masked_in_error_lines_and_configs() -> None:
    uri = f"http://alice:{SECRET}@mlflow.internal:5000/api"
    assert without_credentials(uri) == "http://***@mlflow.internal:5000/api"
    assert without_credentials(f"sc://host:443/;token={SECRET};x=1") == "sc://host:443/;token=***;x=1"
    assert SECRET not in one_line(f"API request to {uri}/experiments/get-by-name failed\nmore")
    config = {"mlflow": {"tracking_uri": uri}, "list": [uri, 3], "n": 1}
    assert SECRET not in json.dumps(redacted(config)) and redacted(config)["n"] == 1
    assert without_credentials("no url here") == "no url here"


@pytest.mark.slow
def test_a_password_in_the_tracking_uri_reaches_no_console_param_or_artifact(
    spark: SparkSession, mlflow_server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port_and_path = mlflow_server.url.removeprefix("http://")
    uri = f"http://alice:{SECRET}@{port_and_path}"
    data = telco_config_dict()
    data["state_dir"] = str(tmp_path / "state")
    data["mlflow"]["tracking_uri"] = uri
    conf = write_config(tmp_path / "telco_churn.yml", data)
    assert main(["run", str(conf), "--step", "ingest"]) == 0
    out, err = capsys.readouterr()
    assert "[ingest] done" in err
    assert SECRET not in out and SECRET not in err

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name(data["mlflow"]["experiment"])
    assert experiment is not None
    (pipeline,) = client.search_runs([experiment.experiment_id], filter_string="tags.`deltaml.step` = 'pipeline'")
    assert pipeline.data.params["mlflow.tracking_uri"] == uri.replace(f"alice:{SECRET}@", "***@")
    assert all(SECRET not in value for value in pipeline.data.params.values())
    for artifact in ("config.yml", "manifest.json"):
        text = Path(client.download_artifacts(pipeline.info.run_id, artifact, str(tmp_path))).read_text()
        assert SECRET not in text and "***@" in text, artifact
