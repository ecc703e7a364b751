"""The exceptions deltaml raises; each carries one line that names the problem and the fix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
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


class SessionLostError(StepFailedError):
    """The Spark session's driver JVM is gone (most often out of memory): no later Spark work can succeed."""


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
    the rest. For a Spark error the line is its root cause (:func:`spark_cause`), not py4j's
    ``An error occurred while calling o926.save.``. An empty message gives the exception's type
    name (a message never disappears).
    """
    if not isinstance(error, str):
        cause = spark_cause(error)
        if cause is not None:
            return without_credentials(cause.line)[:limit]
    text = error if isinstance(error, str) else str(error)
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    if not line:
        line = "(no message)" if isinstance(error, str) else type(error).__name__
    return without_credentials(line)[:limit]


@dataclass(frozen=True)
class JavaError:
    """One exception of a JVM cause chain: its class, its message's telling line, its Spark error condition."""

    kind: str
    message: str
    condition: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)

    @property
    def short_kind(self) -> str:
        """The class name without its package: ``IOException``."""
        return self.kind.rsplit(".", 1)[-1]


# Spark conditions that name the file a task was reading or the table folder it was writing (parameter ``path``).
READ_FAILED = "FAILED_READ_FILE"
WRITE_FAILED = "TASK_WRITE_FAILED"
_PATH_IN_MESSAGE = {
    READ_FAILED: re.compile(r"while reading file (\S+?)\.?(?:\s|$)"),
    WRITE_FAILED: re.compile(r"writing rows to (\S+?)\.?(?:\s|$)"),
}
_MAX_CHAIN = 20


@dataclass(frozen=True)
class SparkCause:
    """The JVM exceptions behind a Spark error, outermost first: what went wrong is at the root."""

    chain: tuple[JavaError, ...]

    @property
    def root(self) -> JavaError:
        """The innermost exception: ``No space left on device`` rather than ``Task failed while writing rows``."""
        return self.chain[-1]

    def first(self, condition: str) -> JavaError | None:
        """The outermost exception whose Spark error condition is ``condition`` or one of its sub-conditions."""
        return next((e for e in self.chain if e.condition and (e.condition + ".").startswith(condition + ".")), None)

    def path(self, condition: str) -> str | None:
        """The file or folder an exception of ``condition`` names (its ``path`` parameter, else from its message)."""
        found = self.first(condition)
        if found is None:
            return None
        if found.parameters.get("path"):
            return found.parameters["path"]
        match = _PATH_IN_MESSAGE[condition].search(found.message) if condition in _PATH_IN_MESSAGE else None
        return match.group(1) if match else None

    @property
    def line(self) -> str:
        """One line: the root cause's message (its class name when it has none), and the file read or written."""
        root = self.root
        message = root.message or next((e.message for e in self.chain if e.message), "")
        line = f"{root.short_kind}: {message}" if not root.message and message else message or root.short_kind
        for condition, verb in ((READ_FAILED, "reading"), (WRITE_FAILED, "writing")):
            where = self.path(condition)
            if where and where not in line:
                return f"{line} ({verb} {where})"
        return line


def spark_cause(error: BaseException) -> SparkCause | None:
    """The JVM cause chain behind a Spark or Delta error, or None for an error without one.

    On a classic session, py4j's ``Py4JJavaError`` (``java_exception``) and pyspark's captured
    errors (``AnalysisException`` and the like) hold the Java exception: its ``getCause()`` chain is
    walked. Over Spark Connect there is no JVM on this side: the error's message, condition and
    parameters, and the ``Caused by:`` lines of the server's stack trace, are what is known. Nothing
    here imports pyspark: executor code and installs without it use this module.
    """
    java = getattr(error, "java_exception", None)  # py4j's Py4JJavaError
    if java is None:
        java = getattr(error, "_origin", None)  # pyspark's AnalysisException and the like, on a classic session
    if java is not None:
        try:
            return SparkCause(tuple(_java_chain(java)))
        except Exception:  # the JVM gateway is gone; the Python message is what is left
            return None
    if callable(getattr(error, "getStackTrace", None)) and callable(getattr(error, "getCondition", None)):
        return SparkCause(tuple(_connect_chain(error)))
    if _is_python_worker_error(type(error).__name__):
        return SparkCause((JavaError(type(error).__name__, _telling_line(type(error).__name__, str(error))),))
    return None


def _java_chain(java: Any) -> list[JavaError]:
    chain: list[JavaError] = []
    while java is not None and len(chain) < _MAX_CHAIN:
        kind = str(java.getClass().getName())
        condition, parameters = None, {}
        try:  # a SparkThrowable; other exceptions have no such methods
            condition = java.getCondition()
            parameters = {str(k): str(v) for k, v in dict(java.getMessageParameters() or {}).items()}
        except Exception:
            pass
        message = java.getMessage()
        chain.append(JavaError(kind, _telling_line(kind, message), str(condition) if condition else None, parameters))
        java = java.getCause()
    return chain


def _connect_chain(error: Any) -> list[JavaError]:
    condition = error.getCondition()
    parameters = {str(k): str(v) for k, v in (error.getMessageParameters() or {}).items()}
    kind = type(error).__name__
    chain = [JavaError(kind, _telling_line(kind, error.getMessage()), condition, parameters)]
    for line in (error.getStackTrace() or "").splitlines():
        if line.startswith("Caused by: "):
            cause_kind, _, message = line.removeprefix("Caused by: ").partition(": ")
            chain.append(JavaError(cause_kind.strip(), message.strip()))
    return chain


def _is_python_worker_error(kind: str) -> bool:
    return kind.endswith("PythonException")


def _telling_line(kind: str, message: str | None) -> str:
    """A message's first non-blank line; for a Python worker's error, the traceback's last (the error itself)."""
    lines = [part.strip() for part in (message or "").splitlines() if part.strip()]
    if not lines:
        return ""
    return lines[-1] if _is_python_worker_error(kind) else lines[0]


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
