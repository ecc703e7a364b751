"""The exceptions deltaml raises; each carries one line that names the problem and the fix."""

from __future__ import annotations

import re
from typing import Any

# ``scheme://user:secret@host``: the user-info part of a URL; ``;token=...`` or ``?token=...``: a token parameter.
_USER_INFO = re.compile(r"(?<=//)[^/@\s]+@")
_TOKEN = re.compile(r"(?i)(\btoken=)[^;&\s]+")


class DeltamlError(Exception):
    """Base class: the CLI prints its message as one line and exits non-zero."""

    exit_code = 1


class ConfigError(DeltamlError):
    """The pipeline YAML, an overlay or a ``--set`` override is invalid."""

    exit_code = 2


class SetupError(DeltamlError):
    """Something set-up should have installed is missing (Delta jars, a package)."""

    exit_code = 3


class StepInputError(DeltamlError):
    """A step received input that breaks its contract (a missing table, column or model)."""

    exit_code = 4


class StepFailedError(DeltamlError):
    """A step failed inside Spark, Delta or MLflow; the message is the first line of their error."""

    exit_code = 1


class ContractError(DeltamlError):
    """The data broke its data contract; nothing downstream was written."""

    exit_code = 5


class ConcurrentWriteError(DeltamlError):
    """Another run kept committing to a Delta table this run writes; every attempt met its commits.

    Nothing of this run was committed to that table; running it again once the other run is done is safe.
    """

    exit_code = 6


def one_line(error: BaseException | str, limit: int = 500) -> str:
    """The first non-blank line of an error's message, at most ``limit`` characters.

    Spark, Delta and MLflow messages run to pages of JVM trace; the CLI shows one line and chains
    the rest. An empty message gives the exception's type name (a message never disappears).
    """
    text = error if isinstance(error, str) else str(error)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if not line:
        line = "(no message)" if isinstance(error, str) else type(error).__name__
    return without_credentials(line)[:limit]


def without_credentials(text: str) -> str:
    """``text`` with the secrets of URLs masked: ``scheme://user:secret@host`` -> ``scheme://***@host``, ``token=***``.

    Every error line deltaml prints goes through it (:func:`one_line`), so a password in a tracking
    URI never reaches a console even when MLflow's own message quotes the URI.
    """
    return _TOKEN.sub(r"\1***", _USER_INFO.sub("***@", text))


def redacted(value: Any) -> Any:
    """A config value (mappings and lists included) with every string's URL secrets masked, for logging it."""
    if isinstance(value, str):
        return without_credentials(value)
    if isinstance(value, dict):
        return {key: redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value
