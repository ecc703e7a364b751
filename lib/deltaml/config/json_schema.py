"""The config's JSON Schema, from the pydantic models: editors validate and complete pipeline YAML with it.

YAML language servers (VS Code's YAML extension, JetBrains IDEs) read a schema named on the file's
first line, ``# yaml-language-server: $schema=deltaml.schema.json``, or mapped in their settings.
Two things the loader accepts are added to what pydantic generates: ``${VAR}`` (an environment
value, substituted before validation) wherever a value is not free text, and ``search: default``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from deltaml.config.schema import PipelineConfig

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# ``${NAME}`` or ``${NAME:-default}`` anywhere in the text (see deltaml.config.loader).
ENV_REFERENCE = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}",
    "description": "an environment variable, substituted when the config is loaded",
}

# Keys a leaf keeps at its top when it is wrapped (what an editor shows on hover, and the default it offers).
_ANNOTATIONS = ("title", "description", "default", "examples", "deprecated")

# Keys whose values are schemas, or maps or lists of schemas.
_SCHEMA_KEYS = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_SCHEMA_MAPS = ("properties", "$defs", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pipeline config file."""
    schema = copy.deepcopy(PipelineConfig.model_json_schema(mode="validation"))
    candidate = schema.get("$defs", {}).get("CandidateConfig", {}).get("properties", {})
    if "search" in candidate:
        search = candidate["search"]
        candidate["search"] = {
            **{k: search[k] for k in _ANNOTATIONS if k in search},
            "anyOf": [
                {k: v for k, v in search.items() if k not in _ANNOTATIONS},
                {"const": "default", "description": "deltaml's search space for the family"},
            ],
        }
    schema = _with_env_references(schema)
    return {"$schema": SCHEMA_DIALECT, **schema, "title": "deltaml pipeline config"}


def config_json_schema_text() -> str:
    """The schema as the file deltaml publishes (sorted keys, two-space indent, a final newline)."""
    return json.dumps(config_json_schema(), indent=2, sort_keys=True) + "\n"


def _with_env_references(node: Any) -> Any:
    """Allow ``${VAR}`` in place of every value that is not free text (numbers, booleans, enums, patterns)."""
    if isinstance(node, list):
        return [_with_env_references(item) for item in node]
    if not isinstance(node, dict):
        return node
    if _is_constrained_leaf(node):
        return {
            **{k: node[k] for k in _ANNOTATIONS if k in node},
            "anyOf": [{k: v for k, v in node.items() if k not in _ANNOTATIONS}, ENV_REFERENCE],
        }
    out = dict(node)
    for key in _SCHEMA_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = _with_env_references(out[key])
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _with_env_references(child) for name, child in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_with_env_references(child) for child in out[key]]
    return out


def _is_constrained_leaf(node: dict[str, Any]) -> bool:
    if "enum" in node or "const" in node:
        return True
    kind = node.get("type")
    if kind in ("integer", "number", "boolean"):
        return True
    return kind == "string" and any(k in node for k in ("pattern", "format", "minLength", "maxLength"))
