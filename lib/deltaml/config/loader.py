"""Reading a pipeline config: YAML, environment overlay, ``--set`` overrides and ``${VAR}`` values, validated once."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
)

from deltaml.config.schema import PIN_KEYS, PipelineConfig
from deltaml.errors import ConfigError, one_line

# Free-form mappings whose keys contain dots themselves: in ``--set spark.conf.spark.sql.x=1``
# everything after the section is one key.
_DOTTED_KEY_SECTIONS = (("spark", "conf"), ("source", "options"), ("source", "rename"), ("model", "params"))


_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


REDACTED_NOTE = "interpolated from the environment; not logged"


class LoadedConfig(BaseModel):
    """A validated config plus what is needed to log it: the redacted effective form and its hash."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    pipeline: PipelineConfig
    effective: dict[str, Any]
    config_hash: str
    source_files: list[str]


def load_config(
    path: str | Path,
    env: str | None = None,
    overrides: list[str] | None = None,
) -> LoadedConfig:
    """Read, merge, interpolate and validate a pipeline config.

    Args:
        path: The pipeline YAML file.
        env: Optional overlay name: ``env/<env>.yml`` beside the file (or next to its folder), else the
            overlay of that name deltaml ships (``local``, ``local-connect``).
        overrides: ``key.path=value`` strings; values are parsed as YAML scalars.

    Returns:
        The validated config, its redacted effective form and its hash.

    Raises:
        ConfigError: A file is missing or unreadable, a key is unknown, a value has the wrong type.
    """
    base_path = Path(path)
    data = _read_yaml(base_path)
    files = [str(base_path)]
    if env:
        overlay_path = _find_overlay(base_path, env)
        data = _deep_merge(data, _read_yaml(overlay_path))
        files.append(str(overlay_path))
    for item in overrides or []:
        _apply_override(data, item)
    templates: dict[tuple[str, ...], str] = {}
    data = _interpolate(data, (), templates)
    try:
        pipeline = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, files)) from None
    effective = pipeline.model_dump(mode="json", by_alias=True)
    for key_path, template in templates.items():
        _set_path(effective, key_path, f"{template} ({REDACTED_NOTE})")
    digest = hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()
    return LoadedConfig(pipeline=pipeline, effective=effective, config_hash=digest[:16], source_files=files)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path} (give the path of a pipeline YAML such as conf/telco_churn.yml)"
        )
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or one_line(exc)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
    return loaded


# The overlays that suit any pipeline (``local``, ``local-connect``) ship with the package too, so
# ``--env local`` works for a config kept outside a copy of the repository's conf/.
PACKAGED_OVERLAYS = Path(__file__).with_name("env")


def _find_overlay(base_path: Path, env: str) -> Path:
    """``env/<env>.yml`` beside the config or beside its folder, else the packaged overlay of that name."""
    beside = [base_path.parent / "env" / f"{env}.yml", base_path.parent.parent / "env" / f"{env}.yml"]
    for candidate in [*beside, PACKAGED_OVERLAYS / f"{env}.yml"]:
        if candidate.is_file():
            return candidate
    found = {p.stem for folder in [*(c.parent for c in beside), PACKAGED_OVERLAYS] for p in folder.glob("*.yml")}
    raise ConfigError(
        f"environment overlay '{env}' not found (looked for {beside[0]}, and deltaml ships none of that name); "
        f"available: {sorted(found)}; write {beside[0]} or give another --env"
    )


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        # A table is either a path or a name: an overlay's table entry replaces the base's whole
        # (one that only pins a version, without path or name, pins the base's table).
        is_table_ref = (
            isinstance(value, dict)
            and bool(set(value) & {"path", "name"})
            and set(value) <= {"path", "name", *PIN_KEYS}
        )
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not is_table_ref:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw_value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{item}': write --set key.path=value, e.g. --set model.params.regParam=0.1")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    parts = key.split(".")
    for section in _DOTTED_KEY_SECTIONS:
        if tuple(parts[: len(section)]) == section and len(parts) > len(section) + 1:
            parts = [*section, ".".join(parts[len(section) :])]
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"bad override '{item}': '{where}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _interpolate(value: Any, key_path: tuple[str, ...], templates: dict[tuple[str, ...], str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*key_path, str(k)), templates) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*key_path, str(i)), templates) for i, v in enumerate(value)]
    if isinstance(value, str) and _ENV_PATTERN.search(value):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None:
                return found
            if default is not None:
                return default
            where = ".".join(key_path)
            raise ConfigError(
                f"config key '{where}' uses ${{{name}}} but the environment variable {name} is not set "
                f"(export it, or write ${{{name}:-default}})"
            )

        templates[key_path] = value
        return _ENV_PATTERN.sub(substitute, value)
    return value


def _set_path(data: dict[str, Any], key_path: tuple[str, ...], value: Any) -> None:
    node: Any = data
    for part in key_path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = key_path[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif last in node:
        node[last] = value


def _format_validation_error(exc: ValidationError, files: list[str]) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        kind = error["type"]
        if kind == "extra_forbidden":
            problems.append(f"unknown key '{where}' (remove it or check its spelling)")
        elif kind == "missing":
            problems.append(f"missing key '{where}'")
        else:
            message = error["msg"].removeprefix("Value error, ")
            given = error.get("input")
            # A whole section (a mapping) as the input says nothing the message does not.
            got = "" if isinstance(given, dict) else f", got {given!r}"
            problems.append(f"'{where}': {message}{got}")
    return f"invalid config ({' + '.join(files)}): " + "; ".join(problems)
