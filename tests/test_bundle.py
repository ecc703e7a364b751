"""The Databricks Asset Bundle (databricks.yml, resources/): structure, referenced files, task parameters.

No workspace is reachable from here, so these tests check what can be checked offline: every job
against the typed job models of Databricks' ``databricks-bundles`` package (strictly: an unknown
field or a wrongly typed value fails), the bundle's shape, that every file a job names exists
where the bundle deploys it from, that the notebook widgets and spark_python_task arguments are
the ones deltaml reads, and that the config they name loads with the databricks overlay and the
cluster's environment variables.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import glob
import importlib.metadata
import re
import sys
import types
from enum import Enum
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
import yaml

from deltaml.cli import build_parser
from deltaml.config.loader import LoadedConfig, load_config
from deltaml.widgets import config_from_widgets

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_FILE = ROOT / "databricks.yml"
TARGETS = ["dev", "prod"]
NOTEBOOK_HEADER = "# Databricks notebook source"
PAUSE_STATUSES = {"PAUSED", "UNPAUSED"}
# What a task may run: deltaml code (a notebook or a jobs/*.py script) or another job of the bundle.
TASK_KINDS = ("notebook_task", "spark_python_task", "run_job_task")
# The daily workflow's steps, in the order its depends_on must run them.
DAILY_STEPS = ["deltaml_score", "deltaml_monitor", "deltaml_retrain"]
# The two forms of the daily workflow (job cluster, serverless): a target schedules at most one.
DAILY_WORKFLOWS = {"deltaml_daily", "deltaml_daily_serverless"}
SERVERLESS_FILE = ROOT / "resources" / "deltaml_daily_serverless.yml"

_REFERENCE = re.compile(r"\$\{([^}]+)\}")
_WIDGET = re.compile(r"""dbutils\.widgets\.(?:text|dropdown|combobox|multiselect)\(\s*["']([^"']+)["']""")
_JOB_COMMAND = re.compile(r"""deltaml_main\(\[\s*["']([\w-]+)["']""")
_OVERLAY_VARIABLE = re.compile(r"\$\{(\w+)(?::-[^}]*)?\}")
# A value that is one whole bundle reference, e.g. ``${resources.jobs.deltaml_retrain.id}``: the
# models take it wherever a field is ``VariableOr[...]`` (every field is).
_WHOLE_REFERENCE = re.compile(r"\$\{[A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*(?:\[\d+\])*)*\}")
MODELS_PACKAGE = "databricks-bundles"
# A dynamic value reference to a job parameter, resolved by the Jobs service when a run starts.
# What only a classic (non Spark Connect) session has.
_CLASSIC_ONLY = re.compile(r"\bsparkContext\b|\._jvm\b|\._jsc\b|\bsc\.\w|\.rdd\b")
_JOB_ID = re.compile(r"\$\{resources\.jobs\.([\w-]+)\.id\}")
_JOB_PARAMETER = re.compile(r"\{\{\s*job\.parameters\.([\w.-]+)\s*\}\}")


def _read_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def _bundle() -> dict[str, Any]:
    return _read_yaml(BUNDLE_FILE)


def _resource_files() -> list[Path]:
    """The files the bundle's ``include`` globs name, relative to databricks.yml."""
    files: set[Path] = set()
    for pattern in _bundle().get("include", []):
        files.update(Path(p) for p in glob.glob(str(ROOT / pattern)))
    return sorted(files)


def _jobs() -> list[tuple[Path, str, dict[str, Any]]]:
    """``(resource file, job name, job)`` for every job of every included resource file."""
    found: list[tuple[Path, str, dict[str, Any]]] = []
    for path in _resource_files():
        jobs = _read_yaml(path).get("resources", {}).get("jobs", {})
        found.extend((path, name, job) for name, job in jobs.items())
    return found


def _tasks() -> list[tuple[Path, str, dict[str, Any]]]:
    """``(resource file, job name, task)`` for every task of every job."""
    return [(path, name, task) for path, name, job in _jobs() for task in job.get("tasks", [])]


def _job(path: Path, job_name: str) -> dict[str, Any]:
    return next(job for p, name, job in _jobs() if p == path and name == job_name)


def _job_parameters(job: dict[str, Any]) -> dict[str, Any]:
    """The job's parameters (``parameters:`` with ``name`` and ``default``) as name -> default."""
    return {p["name"]: p["default"] for p in job.get("parameters", [])}


def _resolve_job_parameters(value: Any, parameters: dict[str, Any]) -> Any:
    """Replace ``{{job.parameters.NAME}}`` with the parameter's value, as a run does.

    Raises:
        KeyError: The reference names no parameter of the job.
    """
    if isinstance(value, dict):
        return {k: _resolve_job_parameters(v, parameters) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_job_parameters(v, parameters) for v in value]
    if isinstance(value, str):
        return _JOB_PARAMETER.sub(lambda m: str(parameters[m.group(1)]), value)
    return value


def _notebook_parameters(job: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """What a notebook task's widgets receive: its ``base_parameters``, then the job's parameters (they win)."""
    return {**(task["notebook_task"].get("base_parameters") or {}), **_job_parameters(job)}


def _run_job_target(task: dict[str, Any]) -> str:
    """The bundle job a ``run_job_task`` starts (its ``job_id`` is ``${resources.jobs.NAME.id}``)."""
    match = _JOB_ID.fullmatch(str(task["run_job_task"]["job_id"]))
    if match is None:
        raise ValueError(f"task {task['task_key']}: job_id {task['run_job_task']['job_id']!r} names no bundle job")
    return match.group(1)


def _task_order(job: dict[str, Any]) -> list[str]:
    """The job's task keys in an order depends_on allows (each after the tasks it depends on).

    Raises:
        ValueError: A depends_on names no task of the job, or the dependencies form a cycle.
    """
    needs = {t["task_key"]: [d["task_key"] for d in t.get("depends_on", [])] for t in job["tasks"]}
    for key, deps in needs.items():
        unknown = [d for d in deps if d not in needs or d == key]
        if unknown:
            raise ValueError(f"task {key} depends on {unknown}: not another task of the job {sorted(needs)}")
    order: list[str] = []
    while len(order) < len(needs):
        ready = [k for k, deps in needs.items() if k not in order and all(d in order for d in deps)]
        if not ready:
            raise ValueError(f"the depends_on of tasks {sorted(set(needs) - set(order))} form a cycle")
        order.extend(ready)
    return order


def _task_id(item: tuple[Path, str, dict[str, Any]]) -> str:
    return f"{item[1]}.{item[2].get('task_key', '?')}"


def _target_variables(target: str) -> dict[str, Any]:
    """The bundle variables' values for a target: defaults, then the target's overrides (not merged)."""
    bundle = _bundle()
    values = {name: spec.get("default") for name, spec in bundle.get("variables", {}).items()}
    values.update(bundle["targets"][target].get("variables") or {})
    return values


def _resolve_variables(value: Any, variables: dict[str, Any]) -> Any:
    """Replace ``${var.NAME}`` references with the variables' values, as ``databricks bundle`` does.

    A whole-string reference keeps the value's type (a complex variable stays a mapping or a list,
    a number a number); other references (``${workspace.file_path}``, ``${resources...}``) stay.

    Raises:
        KeyError: A ``${var.NAME}`` names no declared variable.
    """
    if isinstance(value, dict):
        return {k: _resolve_variables(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_variables(v, variables) for v in value]
    if not isinstance(value, str):
        return value
    whole = re.fullmatch(r"\$\{var\.([\w-]+)\}", value)
    if whole:
        return _resolve_variables(variables[whole.group(1)], variables)

    def replace(match: re.Match[str]) -> str:
        reference = match.group(1)
        if reference.startswith("var."):
            return str(_resolve_variables(variables[reference.removeprefix("var.")], variables))
        return match.group(0)

    return _REFERENCE.sub(replace, value)


def _substitute(value: Any, variables: dict[str, Any]) -> Any:
    """Resolve ``${...}`` references the way ``databricks bundle deploy`` would, offline.

    ``${var.NAME}`` takes the variable's value (see :func:`_resolve_variables`),
    ``${workspace.file_path}`` becomes the repository root (the bundle deploys the repository's
    files there), and any other reference a placeholder string.

    Raises:
        KeyError: A ``${var.NAME}`` names no declared variable.
    """
    resolved = _resolve_variables(value, variables)

    def placeholders(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: placeholders(v) for k, v in item.items()}
        if isinstance(item, list):
            return [placeholders(v) for v in item]
        if not isinstance(item, str):
            return item

        def replace(match: re.Match[str]) -> str:
            reference = match.group(1)
            if reference == "workspace.file_path":
                return str(ROOT)
            return "placeholder-" + reference.replace(".", "-")

        return _REFERENCE.sub(replace, item)

    return placeholders(resolved)


def _resolve_path(resource_file: Path, relative: str) -> Path:
    """A path in a resource file, resolved as the bundle does: relative to that file."""
    return (resource_file.parent / relative).resolve()


def _notebook_widgets(source: str) -> list[str]:
    """The widget names a Databricks notebook declares with ``dbutils.widgets.<kind>("NAME", ...)``."""
    return _WIDGET.findall(source)


def _job_command(source: str) -> str:
    """The ``deltaml`` sub-command a jobs/*.py entry point runs (``deltaml_main(["score", *argv])``)."""
    match = _JOB_COMMAND.search(source)
    if match is None:
        raise ValueError("no deltaml_main([COMMAND, ...]) call in the job script")
    return match.group(1)


def _quartz_problems(expression: str) -> list[str]:
    """What makes a Quartz cron expression unusable for a Databricks schedule (empty if nothing)."""
    fields = expression.split()
    if len(fields) not in (6, 7):
        return [f"{len(fields)} fields; Quartz has 6 or 7: seconds minutes hours day-of-month month day-of-week [year]"]
    problems = []
    if not fields[0].isdigit() or int(fields[0]) > 59:
        problems.append(f"seconds field {fields[0]!r} is not a number 0-59")
    if (fields[3] == "?") == (fields[5] == "?"):
        problems.append("exactly one of day-of-month and day-of-week must be '?'")
    return problems


def _setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """``install_requires`` and ``extras_require`` as written in setup.py (read, not executed)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            keywords = {k.arg: k.value for k in node.keywords}
            return ast.literal_eval(keywords["install_requires"]), ast.literal_eval(keywords["extras_require"])
    raise AssertionError("setup.py has no setup(...) call")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def _task_env(job: dict[str, Any], task: dict[str, Any], variables: dict[str, Any]) -> dict[str, str]:
    """The environment variables a code task runs with.

    On a job cluster its ``spark_env_vars``; on serverless compute the job's
    ``environment_variables`` entry the task names (none if it names none).
    """
    if "job_cluster_key" in task:
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job.get("job_clusters", [])}
        spec = _substitute(clusters[task["job_cluster_key"]], variables)
        return {k: str(v) for k, v in (spec.get("spark_env_vars") or {}).items()}
    if "environment_variables_key" not in task:
        return {}
    entries = {e["environment_variables_key"]: e["spec"] for e in job.get("environment_variables", [])}
    spec = _substitute(entries[task["environment_variables_key"]], variables)
    return {k: str(v) for k, v in (spec.get("variables") or {}).items()}


def _assert_catalog_tables(loaded: LoadedConfig, env: dict[str, str]) -> None:
    prefix = f"{env['DELTAML_CATALOG']}.{env['DELTAML_SCHEMA']}."
    tables = loaded.pipeline.tables
    names = [ref.name if ref else None for ref in (tables.raw, tables.clean, tables.split, tables.predictions)]
    assert all(name is not None and name.startswith(prefix) for name in names), names
    assert loaded.pipeline.mlflow.tracking_uri == "databricks"


# -- Databricks' job model (databricks-bundles) ---------------------------------------------------


def _job_model() -> type:
    """``databricks.bundles.jobs.Job``; a missing package fails the test (never skips it)."""
    try:
        from databricks.bundles.jobs import Job
    except ImportError:
        pytest.fail(
            f"the bundle's jobs are checked against Databricks' job models: pip install {MODELS_PACKAGE} "
            "(it is in deltaml's dev extra; make setup installs it)",
            pytrace=False,
        )
    return Job


def _is_variable(hint: Any) -> bool:
    from databricks.bundles.core import Variable

    return get_origin(hint) is Variable


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def _model_problems(hint: Any, value: Any, path: str) -> list[str]:
    """Where ``value`` does not fit ``hint``, a databricks-bundles type hint: one line per problem.

    Stricter than ``Job.from_dict``, which converts where it can: it takes any value for a string
    field (a mapping becomes its ``str``), ``"5"``, ``2.7`` or ``True`` for an integer, ``"yes"``
    for a boolean, and names only the class of an unknown field, not its path. Here a value must
    already have the field's type; a whole-string ``${...}`` reference is taken wherever the model
    says ``VariableOr[...]``; a required field must be present.
    """
    if hint is Any:
        return []
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if isinstance(value, str) and _WHOLE_REFERENCE.fullmatch(value) and any(map(_is_variable, options)):
            return []
        if value is None:
            return [] if type(None) in options else [f"{path}: null, expected a value"]
        concrete = [o for o in options if not _is_variable(o) and o is not type(None)]
        if len(concrete) != 1:
            return [f"{path}: the model allows {hint}; the check knows one concrete type per field"]
        return _model_problems(concrete[0], value, path)
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: {_describe(value)}, expected a list"]
        (item,) = get_args(hint)
        return [p for i, v in enumerate(value) for p in _model_problems(item, v, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: {_describe(value)}, expected a mapping"]
        _, item = get_args(hint)
        return [p for k, v in value.items() for p in _model_problems(item, v, f"{path}.{k}")]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            return [f"{path}: {_describe(value)}, expected a mapping ({hint.__name__})"]
        fields = {f.name: f for f in dataclasses.fields(hint)}
        hints = get_type_hints(hint)
        problems = []
        for key, item in value.items():
            if key not in fields:
                near = difflib.get_close_matches(str(key), list(fields), n=1)
                hint_text = f" (did you mean {near[0]}?)" if near else ""
                problems.append(f"{path}.{key}: unknown field of {hint.__name__}{hint_text}")
            else:
                problems.extend(_model_problems(hints[key], item, f"{path}.{key}"))
        for name, field in fields.items():
            required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if required and name not in value:
                problems.append(f"{path}.{name}: missing, {hint.__name__} requires it")
        return problems
    if isinstance(hint, type) and issubclass(hint, Enum):
        allowed = [member.value for member in hint]
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed} ({hint.__name__})"]
    if hint is bool:
        return [] if isinstance(value, bool) else [f"{path}: {_describe(value)}, expected a boolean"]
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {_describe(value)}, expected an integer"]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {_describe(value)}, expected a number"]
    if hint is str:
        return [] if isinstance(value, str) else [f"{path}: {_describe(value)}, expected a string"]
    return [f"{path}: the check has no rule for the model's type {hint!r}"]


def _check_job_model(name: str, job: dict[str, Any]) -> None:
    """Check one job (its ``${var.*}`` resolved) against databricks-bundles' ``Job`` model.

    Raises:
        ValueError: An unknown field or a wrongly typed value, each named by its path from the job,
            or ``Job.from_dict`` itself refused the job.
    """
    job_model = _job_model()
    version = importlib.metadata.version(MODELS_PACKAGE)
    problems = _model_problems(job_model, job, name)
    if problems:
        raise ValueError(f"job {name} does not fit {MODELS_PACKAGE} {version}'s Job model:\n  " + "\n  ".join(problems))
    try:
        job_model.from_dict(copy.deepcopy(job))  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"job {name}: {MODELS_PACKAGE} {version}'s Job.from_dict refused it: {exc}") from exc


NOTEBOOK_TASKS = [t for t in _tasks() if "notebook_task" in t[2]]
PYTHON_TASKS = [t for t in _tasks() if "spark_python_task" in t[2]]
CODE_TASKS = NOTEBOOK_TASKS + PYTHON_TASKS
RUN_JOB_TASKS = [t for t in _tasks() if "run_job_task" in t[2]]


# -- the bundle's shape ---------------------------------------------------------------------------


def test_bundle_is_named_and_includes_every_resource_file() -> None:
    bundle = _bundle()
    assert bundle["bundle"]["name"] == "deltaml"
    included = _resource_files()
    assert included, f"include {bundle.get('include')} matches no file"
    on_disk = sorted((ROOT / "resources").glob("*.yml"))
    assert included == on_disk, "a resources/*.yml file is not included, so it would never deploy"


def test_exactly_one_default_target_and_dev_is_development() -> None:
    targets = _bundle()["targets"]
    assert sorted(targets) == TARGETS
    assert [name for name, t in targets.items() if t.get("default")] == ["dev"]
    assert targets["dev"]["mode"] == "development"
    assert targets["prod"]["mode"] == "production"
    # Production mode wants an explicit root path (one deployment per target) and a run identity.
    assert targets["prod"]["workspace"]["root_path"].startswith("/Workspace/")
    assert targets["prod"]["run_as"]


def test_every_variable_reference_is_declared() -> None:
    declared = set(_bundle().get("variables", {}))
    texts = [BUNDLE_FILE.read_text()] + [p.read_text() for p in _resource_files()]
    used = {m.split(".")[1] for text in texts for m in _REFERENCE.findall(text) if m.startswith("var.")}
    assert used, "no ${var.*} reference found"
    assert used <= declared, f"undeclared variables: {sorted(used - declared)}"
    for name, target in _bundle()["targets"].items():
        overridden = set(target.get("variables") or {})
        assert overridden <= declared, f"target {name} sets undeclared variables {sorted(overridden - declared)}"


def test_wheel_artifact_builds_where_the_tasks_take_it_from() -> None:
    artifacts = _bundle()["artifacts"]
    assert len(artifacts) == 1
    artifact = next(iter(artifacts.values()))
    assert artifact["type"] == "whl"
    package_dir = (ROOT / artifact["path"]).resolve()
    assert (package_dir / "setup.py").is_file()
    build = artifact["build"].split()
    assert "wheel" in build and "--no-deps" in build
    wheel_dir = (package_dir / build[build.index("-w") + 1]).resolve()
    for path, job_name, task in CODE_TASKS:
        if "environment_key" in task:  # serverless: the wheel is a dependency of the task's environment
            job = _job(path, job_name)
            spec = next(e["spec"] for e in job["environments"] if e["environment_key"] == task["environment_key"])
            wheels = [d for d in spec.get("dependencies", []) if d.endswith(".whl")]
        else:
            wheels = [lib["whl"] for lib in task.get("libraries", []) if "whl" in lib]
        assert len(wheels) == 1, f"{job_name}.{task['task_key']} installs {wheels}, expected deltaml's wheel"
        wheel = _resolve_path(path, wheels[0])
        assert wheel.parent == wheel_dir and wheel.name.endswith(".whl"), (wheel, wheel_dir)


def test_the_wheel_leaves_spark_and_delta_to_the_runtime() -> None:
    install_requires, extras = _setup_requirements()
    runtime_packages = {"pyspark", "delta-spark"}
    assert not runtime_packages & {_requirement_name(r) for r in install_requires}
    # Off a runtime the spark extra adds Spark, Delta and the full MLflow (its database layer); a runtime
    # has mlflow-skinny, which the wheel requires.
    assert {_requirement_name(r) for r in extras["spark"]} == runtime_packages | {"mlflow"}
    assert "mlflow-skinny" in {_requirement_name(r) for r in install_requires}
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"-e '\.\[([a-z,]+)\]'", makefile)
    assert installs, "the Makefile installs the package with its extras"
    for extras_installed in installs:
        assert "spark" in extras_installed.split(","), (
            f"make must install the spark extra for local runs and tests: {installs}"
        )


# -- the jobs against Databricks' own job model -------------------------------------------------


def _job_ids() -> list[str]:
    return [name for _, name, _ in _jobs()]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("job_name", _job_ids())
def test_job_fits_the_databricks_bundles_job_model(job_name: str, target: str) -> None:
    job = next(job for _, name, job in _jobs() if name == job_name)
    _check_job_model(job_name, _resolve_variables(job, _target_variables(target)))


def _score_job() -> dict[str, Any]:
    """A real job of the bundle (dev's variables resolved), to break in the tests below."""
    job = next(job for _, name, job in _jobs() if name == "deltaml_score")
    resolved: dict[str, Any] = _resolve_variables(job, _target_variables("dev"))
    return resolved


def test_model_check_accepts_the_unbroken_job_and_references() -> None:
    job = _score_job()
    _check_job_model("deltaml_score", job)
    job["max_concurrent_runs"] = "${var.anything}"  # a whole reference is a VariableOr[int]
    _check_job_model("deltaml_score", job)


def _score_job_with(path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    """The score job with the field at ``path`` set to ``value``."""
    job = _score_job()
    node: Any = job
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return job


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("max_concurent_runs",),
            1,
            r"deltaml_score\.max_concurent_runs: unknown field of Job \(did you mean max_concurrent_runs\?\)",
        ),
        (
            ("tasks", 0, "spark_python_task", "parameter"),
            [],
            r"deltaml_score\.tasks\[0\]\.spark_python_task\.parameter: unknown field of SparkPythonTask",
        ),
        (("tasks", 0, "task_key"), None, r"deltaml_score\.tasks\[0\]\.task_key: null"),
    ],
    ids=["misspelled-job-field", "misspelled-task-field", "null-task-key"],
)
def test_model_check_refuses_unknown_fields(path: tuple[str | int, ...], value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _check_job_model("deltaml_score", _score_job_with(path, value))


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("max_concurrent_runs",), "1", r"deltaml_score\.max_concurrent_runs: str '1', expected an integer"),
        (("timeout_seconds",), True, r"deltaml_score\.timeout_seconds: bool True, expected an integer"),
        (("tasks", 0, "max_retries"), 1.5, r"deltaml_score\.tasks\[0\]\.max_retries: float 1\.5, expected an integer"),
        (("description",), {"text": "x"}, r"deltaml_score\.description: dict .*expected a string"),
        (
            ("tasks", 0, "spark_python_task", "parameters"),
            "conf.yml --env databricks",
            r"deltaml_score\.tasks\[0\]\.spark_python_task\.parameters: str .*expected a list",
        ),
        (
            ("health", "rules", 0, "op"),
            "MORE_THAN",
            r"deltaml_score\.health\.rules\[0\]\.op: 'MORE_THAN' is not one of",
        ),
    ],
    ids=["str-for-int", "bool-for-int", "float-for-int", "mapping-for-str", "str-for-list", "bad-enum"],
)
def test_model_check_refuses_wrong_types(path: tuple[str | int, ...], value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _check_job_model("deltaml_score", _score_job_with(path, value))


def test_model_check_is_stricter_than_from_dict() -> None:
    """What ``Job.from_dict`` converts without a word, the check refuses (so the check is needed)."""
    job_model = _job_model()
    for field, value in [("max_concurrent_runs", "1"), ("timeout_seconds", True), ("description", {"a": 1})]:
        job = {**_score_job(), field: value}
        job_model.from_dict(copy.deepcopy(job))  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match=f"deltaml_score\\.{field}: "):
            _check_job_model("deltaml_score", job)


def test_model_check_fails_without_databricks_bundles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "databricks.bundles.jobs", None)
    with pytest.raises(pytest.fail.Exception, match="pip install databricks-bundles"):
        _check_job_model("deltaml_score", _score_job())


# -- jobs, tasks and schedules --------------------------------------------------------------------


def test_jobs_have_tasks_and_code_tasks_run_on_defined_clusters() -> None:
    jobs = _jobs()
    assert {name for _, name, _ in jobs} >= {"deltaml_train", "deltaml_daily", *DAILY_STEPS}
    for _, name, job in jobs:
        tasks = job.get("tasks", [])
        assert tasks, f"job {name} has no tasks"
        keys = [t["task_key"] for t in tasks]
        assert len(keys) == len(set(keys)), f"job {name} repeats a task_key: {keys}"
        clusters = {c["job_cluster_key"] for c in job.get("job_clusters", [])}
        environments = {e["environment_key"] for e in job.get("environments", [])}
        for task in tasks:
            kinds = [kind for kind in TASK_KINDS if kind in task]
            assert len(kinds) == 1, f"{name}.{task['task_key']} runs {kinds}, expected one of {TASK_KINDS}"
            if kinds == ["run_job_task"]:
                continue  # the job it starts brings its own compute
            on_cluster = task.get("job_cluster_key") in clusters or bool(task.get("existing_cluster_id"))
            on_serverless = task.get("environment_key") in environments
            assert on_cluster != on_serverless, (
                f"{name}.{task['task_key']}: job_cluster_key {task.get('job_cluster_key')!r} (clusters "
                f"{sorted(clusters)}), environment_key {task.get('environment_key')!r} (environments "
                f"{sorted(environments)}): expected exactly one of a cluster and a serverless environment"
            )
            if on_serverless:
                # A serverless task takes its libraries from the environment, and a notebook task
                # cannot name an environment (its notebook's own environment applies).
                assert not task.get("libraries"), f"{name}.{task['task_key']}: libraries on serverless"
                assert "notebook_task" not in task, (
                    f"{name}.{task['task_key']}: a notebook task cannot use environments"
                )
        used = {t.get("environment_key") for t in tasks}
        assert environments <= used, f"job {name}: environments {sorted(environments - used)} serve no task"
        assert job.get("max_concurrent_runs") == 1, f"job {name} could race itself"


@pytest.mark.parametrize("item", _jobs(), ids=lambda item: item[1])
def test_jobs_queue_time_out_and_warn_before_the_timeout(item: tuple[Path, str, dict[str, Any]]) -> None:
    _, name, job = item
    assert job.get("queue") == {"enabled": True}, f"job {name}: a run started during another would be skipped"
    timeout = job.get("timeout_seconds")
    assert isinstance(timeout, int) and timeout > 0, f"job {name} has no timeout_seconds"
    for task in job["tasks"]:
        if "timeout_seconds" in task:
            assert task["timeout_seconds"] <= timeout, f"{name}.{task['task_key']}: task timeout above the job's"
    rules = [r for r in (job.get("health") or {}).get("rules", []) if r["metric"] == "RUN_DURATION_SECONDS"]
    assert len(rules) == 1 and rules[0]["op"] == "GREATER_THAN", f"job {name}: no run-duration health rule"
    assert 0 < rules[0]["value"] < timeout, f"job {name}: the duration warning must come before the timeout"
    notify = job.get("email_notifications") or {}
    assert "on_duration_warning_threshold_exceeded" in notify, f"job {name}: the duration warning tells no one"


@pytest.mark.parametrize("target", TARGETS)
def test_every_job_grants_view_and_prod_grants_runs_to_distinct_groups(target: str) -> None:
    variables = _target_variables(target)
    for _, name, job in _jobs():
        permissions = _resolve_variables(job.get("permissions"), variables)
        assert permissions, f"job {name} has no permissions: only its owner and admins could see it"
        levels = {p["level"] for p in permissions}
        principals = [p.get("group_name") or p.get("user_name") or p.get("service_principal_name") for p in permissions]
        assert len(principals) == len(set(principals)), f"job {name}: one principal twice in {permissions}"
        assert "CAN_VIEW" in levels
        assert ("CAN_MANAGE_RUN" in levels) == (target == "prod"), (name, target, levels)


def test_both_task_forms_are_used() -> None:
    assert NOTEBOOK_TASKS, "no notebook_task: notebooks/*.py are not exercised by the bundle"
    assert PYTHON_TASKS, "no spark_python_task: jobs/*.py are not exercised by the bundle"


@pytest.mark.parametrize("item", _jobs(), ids=lambda item: item[1])
def test_depends_on_names_other_tasks_of_the_same_job_without_cycles(item: tuple[Path, str, dict[str, Any]]) -> None:
    _, name, job = item
    assert sorted(_task_order(job)) == sorted(t["task_key"] for t in job["tasks"]), name


@pytest.mark.parametrize(
    ("tasks", "problem"),
    [
        ([{"task_key": "a", "depends_on": [{"task_key": "b"}]}], r"task a depends on \['b'\]"),
        ([{"task_key": "a", "depends_on": [{"task_key": "a"}]}], r"task a depends on \['a'\]"),
        (
            [
                {"task_key": "a", "depends_on": [{"task_key": "b"}]},
                {"task_key": "b", "depends_on": [{"task_key": "a"}]},
            ],
            r"tasks \['a', 'b'\] form a cycle",
        ),
    ],
    ids=["unknown-task", "itself", "cycle"],
)
def test_task_order_rejects_unknown_dependencies_and_cycles(tasks: list[dict[str, Any]], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        _task_order({"tasks": tasks})


def test_daily_workflow_runs_score_then_monitor_then_retrain() -> None:
    job = next(job for _, name, job in _jobs() if name == "deltaml_daily")
    by_key = {t["task_key"]: t for t in job["tasks"]}
    assert [_run_job_target(by_key[key]) for key in _task_order(job)] == DAILY_STEPS
    # A strict chain: each step waits for the one before it, not only for the first.
    for earlier, later in zip(job["tasks"], job["tasks"][1:], strict=False):
        assert later.get("depends_on") == [{"task_key": earlier["task_key"]}], later["task_key"]


@pytest.mark.parametrize("item", RUN_JOB_TASKS, ids=_task_id)
def test_run_job_tasks_start_bundle_jobs_with_parameters_they_declare(item: tuple[Path, str, dict[str, Any]]) -> None:
    _, job_name, task = item
    started = _run_job_target(task)
    jobs = {name: job for _, name, job in _jobs()}
    assert started in jobs and started != job_name, f"{job_name}.{task['task_key']} starts {started}"
    passed = set(task["run_job_task"].get("job_parameters") or {})
    declared = set(_job_parameters(jobs[started]))
    assert passed <= declared, (
        f"{job_name}.{task['task_key']} passes {sorted(passed - declared)}, not parameters of {started}"
    )


def test_a_job_started_by_a_scheduled_workflow_has_no_schedule_of_its_own() -> None:
    jobs = {name: job for _, name, job in _jobs()}
    for name, job in jobs.items():
        if "schedule" not in job:
            continue
        for task in job["tasks"]:
            if "run_job_task" in task:
                started = _run_job_target(task)
                assert "schedule" not in jobs[started], f"{started} runs on its own schedule and again from {name}"


def _documented_serverless_switch() -> dict[str, str]:
    """The ``--var NAME=VALUE`` pairs the serverless workflow's file tells prod to deploy with."""
    return dict(re.findall(r"--var (\w+)=(\w+)", SERVERLESS_FILE.read_text()))


@pytest.mark.parametrize(
    ("target", "switch"),
    [("dev", False), ("prod", False), ("prod", True)],
    ids=["dev", "prod", "prod-serverless-daily"],
)
def test_schedules_are_quartz_and_a_target_runs_training_and_one_daily_workflow(target: str, switch: bool) -> None:
    variables = {**_target_variables(target), **(_documented_serverless_switch() if switch else {})}
    scheduled = {name: _substitute(job["schedule"], variables) for _, name, job in _jobs() if "schedule" in job}
    assert set(scheduled) == {"deltaml_train", *DAILY_WORKFLOWS}
    for name, schedule in scheduled.items():
        assert _quartz_problems(schedule["quartz_cron_expression"]) == [], name
        assert schedule.get("timezone_id"), f"job {name} has no timezone_id"
        assert schedule["pause_status"] in PAUSE_STATUSES
    unpaused = {name for name, schedule in scheduled.items() if schedule["pause_status"] == "UNPAUSED"}
    if target == "dev":
        assert unpaused == set()
    else:
        expected_daily = "deltaml_daily_serverless" if switch else "deltaml_daily"
        assert unpaused == {"deltaml_train", expected_daily}, "two daily workflows would score the same tables twice"


def test_serverless_switch_is_the_same_in_the_bundle_and_the_docs() -> None:
    switch = _documented_serverless_switch()
    assert switch == {"daily_pause_status": "PAUSED", "serverless_daily_pause_status": "UNPAUSED"}
    written = " ".join(f"--var {name}={value}" for name, value in switch.items())
    assert written in BUNDLE_FILE.read_text()
    assert written in (ROOT / "docs" / "deployment" / "databricks.md").read_text()


def test_serverless_daily_workflow_runs_the_same_steps_with_the_same_arguments() -> None:
    jobs = {name: job for _, name, job in _jobs()}
    workflow = jobs["deltaml_daily_serverless"]
    by_key = {t["task_key"]: t for t in workflow["tasks"]}
    steps = []
    for key in _task_order(workflow):
        task = by_key[key]
        if "run_job_task" in task:
            steps.append(_run_job_target(task))
            # Training needs a SparkContext, which serverless compute does not have.
            assert jobs[steps[-1]].get("job_clusters"), f"{steps[-1]} must run on a job cluster"
        else:
            script = _resolve_path(SERVERLESS_FILE, task["spark_python_task"]["python_file"])
            steps.append(f"deltaml_{_job_command(script.read_text())}")
            classic = next(t for t in jobs["deltaml_score"]["tasks"] if "spark_python_task" in t)
            assert task["spark_python_task"]["parameters"] == classic["spark_python_task"]["parameters"], key
    assert steps == DAILY_STEPS


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("0 2 * * *", "5 fields"),
        ("0 0 2 * * *", "exactly one of day-of-month"),
        ("0 0 2 ? * ?", "exactly one of day-of-month"),
        ("x 0 2 * * ?", "seconds field"),
    ],
)
def test_quartz_check_rejects_unix_cron_and_bad_fields(expression: str, problem: str) -> None:
    assert any(problem in p for p in _quartz_problems(expression))


# -- referenced files ---------------------------------------------------------------------------


@pytest.mark.parametrize("item", CODE_TASKS, ids=_task_id)
def test_task_files_exist_in_the_repository(item: tuple[Path, str, dict[str, Any]]) -> None:
    path, _, task = item
    if "notebook_task" in task:
        relative = task["notebook_task"]["notebook_path"]
    else:
        relative = task["spark_python_task"]["python_file"]
    resolved = _resolve_path(path, relative)
    assert resolved.is_file(), f"{relative} (relative to {path.name}) -> {resolved} does not exist"
    assert resolved.is_relative_to(ROOT), "a task file outside the bundle root is not deployed"


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.py")), ids=lambda p: p.name)
def test_notebooks_are_databricks_source_without_path_hacks(notebook: Path) -> None:
    source = notebook.read_text()
    assert source.splitlines()[0] == NOTEBOOK_HEADER
    assert "sys.path" not in source, "notebooks import deltaml from the installed wheel"
    assert _notebook_widgets(source), "a notebook without widgets cannot take the job's parameters"


@pytest.mark.parametrize(
    "source",
    [*sorted((ROOT / "notebooks").glob("*.py")), ROOT / "lib" / "deltaml" / "widgets.py"],
    ids=lambda p: p.name,
)
def test_notebooks_use_no_classic_only_spark_api(source: Path) -> None:
    # Serverless compute and standard access mode run Spark Connect: no SparkContext, JVM or RDDs.
    found = _CLASSIC_ONLY.findall(source.read_text())
    assert not found, f"{source.name} uses {found}, which Spark Connect (serverless) does not have"


@pytest.mark.parametrize("item", NOTEBOOK_TASKS, ids=_task_id)
def test_notebook_parameters_are_exactly_its_widgets(item: tuple[Path, str, dict[str, Any]]) -> None:
    path, job_name, task = item
    notebook = _resolve_path(path, task["notebook_task"]["notebook_path"])
    widgets = _notebook_widgets(notebook.read_text())
    assert sorted(_notebook_parameters(_job(path, job_name), task)) == sorted(widgets)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("item", NOTEBOOK_TASKS, ids=_task_id)
def test_notebook_parameters_load_the_deployed_config(
    item: tuple[Path, str, dict[str, Any]], target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, job_name, task = item
    variables = _target_variables(target)
    job = _job(path, job_name)
    env = _task_env(job, task, variables)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    parameters = {k: str(v) for k, v in _substitute(_notebook_parameters(job, task), variables).items()}
    assert Path(parameters["conf"]).is_file(), f"{parameters['conf']} is not in the repository"
    # The notebook's own code path: its widgets, read through deltaml.widgets.
    loaded = config_from_widgets(_DictWidgets(parameters))
    _assert_catalog_tables(loaded, env)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("item", PYTHON_TASKS, ids=_task_id)
def test_python_task_arguments_parse_and_load_the_deployed_config(
    item: tuple[Path, str, dict[str, Any]], target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, job_name, task = item
    variables = _target_variables(target)
    job = _job(path, job_name)
    env = _task_env(job, task, variables)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    script = _resolve_path(path, task["spark_python_task"]["python_file"])
    command = _job_command(script.read_text())
    arguments = _resolve_job_parameters(task["spark_python_task"].get("parameters", []), _job_parameters(job))
    arguments = [str(a) for a in _substitute(arguments, variables)]
    args = build_parser().parse_args([command, *arguments])
    assert Path(args.config).is_file(), f"{args.config} is not in the repository"
    assert args.env == "databricks"
    loaded = load_config(args.config, env=args.env, overrides=args.overrides)
    _assert_catalog_tables(loaded, env)


@pytest.mark.parametrize("item", _jobs(), ids=lambda item: item[1])
def test_job_parameters_are_declared_once_and_each_is_read(item: tuple[Path, str, dict[str, Any]]) -> None:
    path, name, job = item
    declared = [p["name"] for p in job.get("parameters", [])]
    assert declared, f"job {name} has no parameters: a run could not point it at another config"
    assert len(declared) == len(set(declared)), f"job {name} repeats a parameter: {declared}"
    referenced = {m for task in job["tasks"] for m in _JOB_PARAMETER.findall(str(task))}
    assert referenced <= set(declared), (
        f"job {name}: {{{{job.parameters.*}}}} names undeclared {referenced - set(declared)}"
    )
    read = set(referenced)
    for task in job["tasks"]:
        if "notebook_task" in task:
            read.update(_notebook_widgets(_resolve_path(path, task["notebook_task"]["notebook_path"]).read_text()))
    assert set(declared) <= read, f"job {name}: parameters {sorted(set(declared) - read)} reach no task"


@pytest.mark.parametrize("item", CODE_TASKS, ids=_task_id)
def test_code_task_gets_exactly_the_variables_the_databricks_overlay_reads(
    item: tuple[Path, str, dict[str, Any]],
) -> None:
    # Without them the overlay falls back to main.deltaml: prod's tables, from any target.
    path, job_name, task = item
    overlay = (ROOT / "conf" / "env" / "databricks.yml").read_text()
    wanted = set(_OVERLAY_VARIABLE.findall(overlay))
    assert wanted, "the databricks overlay reads no environment variable"
    env = _task_env(_job(path, job_name), task, _target_variables("dev"))
    assert set(env) == wanted, (
        f"{job_name}.{task['task_key']} runs with {sorted(env)}, the overlay reads {sorted(wanted)}"
    )


def test_prod_tables_differ_from_dev_tables() -> None:
    dev, prod = _target_variables("dev"), _target_variables("prod")
    assert (dev["catalog"], dev["schema"]) != (prod["catalog"], prod["schema"])


# -- the helpers themselves ---------------------------------------------------------------------


class _DictWidgets:
    """``dbutils.widgets`` as deltaml reads it, from a dict."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def get(self, name: str) -> str:
        return self._values[name]


def test_substitute_resolves_variables_and_rejects_undeclared_ones() -> None:
    variables = {"a": "x", "cluster": {"k": "${var.a}"}}
    assert _substitute({"c": "${var.cluster}", "p": "${workspace.file_path}/conf"}, variables) == {
        "c": {"k": "x"},
        "p": f"{ROOT}/conf",
    }
    assert _substitute("${workspace.current_user.userName}", variables) == "placeholder-workspace-current_user-userName"
    with pytest.raises(KeyError, match="missing"):
        _substitute("pre-${var.missing}", variables)


def test_job_parameter_references_resolve_and_reject_undeclared_ones() -> None:
    parameters = {"conf": "c.yml", "env": "databricks"}
    assert _resolve_job_parameters(["{{job.parameters.conf}}", "--env", "{{ job.parameters.env }}"], parameters) == [
        "c.yml",
        "--env",
        "databricks",
    ]
    with pytest.raises(KeyError, match="missing"):
        _resolve_job_parameters("{{job.parameters.missing}}", parameters)


def test_widget_and_job_command_parsers_read_the_source() -> None:
    source = 'dbutils.widgets.text("conf", "x")\ndbutils.widgets.dropdown( "env", "a", ["a"])\n'
    assert _notebook_widgets(source) == ["conf", "env"]
    assert _job_command('    return deltaml_main(["score", *argv])') == "score"
    with pytest.raises(ValueError, match="no deltaml_main"):
        _job_command("print('hello')")
