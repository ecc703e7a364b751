"""The published JSON Schema agrees with the config loader: shipped configs pass, mistakes fail, ${VAR} is allowed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from deltaml.cli import main
from deltaml.config.json_schema import config_json_schema, config_json_schema_text
from deltaml.config.loader import load_config
from tests.conftest import TELCO_CONF, telco_config_dict, write_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "conf").glob("*.yml"))


def _errors(data: dict[str, Any]) -> list[str]:
    validator = Draft202012Validator(config_json_schema())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]


def test_the_schema_is_valid_json_schema() -> None:
    Draft202012Validator.check_schema(config_json_schema())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_passes_the_schema(path: Path) -> None:
    assert _errors(yaml.safe_load(path.read_text())) == []


def test_env_references_and_the_default_space_pass_where_the_loader_takes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = telco_config_dict()
    data["tuning"] = {"max_evals": "${EVALS:-3}", "engine": "${ENGINE:-optuna}", "parallelism": 2}
    data["model"] = {"candidates": [{"family": "gbt", "search": "default"}]}
    assert _errors(data) == []
    monkeypatch.setenv("EVALS", "7")
    loaded = load_config(write_config(tmp_path / "env.yml", data)).pipeline
    assert (loaded.tuning.max_evals, loaded.tuning.engine) == (7, "optuna")
    assert loaded.model.candidates[0].search  # the family's default space


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        ({"tunning": {"max_evals": 3}}, ""),  # a misspelled section
        ({"tuning": {"max_evals": "ten"}}, "tuning.max_evals"),
        ({"tuning": {"max_evals": 0}}, "tuning.max_evals"),
        ({"tuning": {"engine": "skopt"}}, "tuning.engine"),
        ({"model": {"candidates": [{"family": "xgboost"}]}}, "model.candidates.0.family"),
        ({"model": {"candidates": [{"family": "gbt", "search": "defaults"}]}}, "model.candidates.0.search"),
    ],
)
def test_mistakes_the_loader_rejects_fail_the_schema_at_the_same_key(
    tmp_path: Path, edit: dict[str, Any], where: str
) -> None:
    data = {**telco_config_dict(), **edit}
    errors = _errors(data)
    assert errors and any(e.startswith(f"{where}:") for e in errors), errors
    assert main(["check-config", str(write_config(tmp_path / "bad.yml", data))]) == 2


def test_the_schema_command_writes_the_published_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    published = ROOT / "docs" / "reference" / "deltaml.schema.json"
    assert main(["schema", "--output", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text() == published.read_text() == config_json_schema_text()
    capsys.readouterr()
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "deltaml pipeline config"
    assert (
        TELCO_CONF.read_text().splitlines()[0]
        == "# yaml-language-server: $schema=../docs/reference/deltaml.schema.json"
    )
