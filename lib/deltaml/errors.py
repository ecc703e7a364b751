"""The exceptions deltaml raises; each carries one line that names the problem and the fix."""

from __future__ import annotations


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
