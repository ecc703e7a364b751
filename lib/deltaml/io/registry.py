"""The MLflow model registry: every alias, version and tag access of deltaml goes through here."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from deltaml.columns import (
    CHALLENGER,
    CHAMPION,
    HISTORY_TAG,
    PROMOTED_AT_TAG,
    ROLLED_BACK_AT_TAG,
)
from deltaml.errors import StepInputError, one_line

LOG = logging.getLogger(__name__)


HISTORY_ENTRIES = 50


# MLflow's SQL stores keep registered-model tag values in a VARCHAR(5000) column.
HISTORY_MAX_CHARS = 5000


_REASON_CHARS = 200


def _registered_model(client: MlflowClient, name: str) -> Any:
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise StepInputError(
                f"registered model '{name}' does not exist in the registry; check the name "
                "or the tracking URI, or register a version first (`deltaml run CONF`)"
            ) from None
        raise


def version_exists(client: MlflowClient, name: str, version: int) -> bool:
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def register_version(client: MlflowClient, model_uri: str, name: str, tags: dict[str, str]) -> int:
    """Register a logged model as a new version of ``name`` with lineage tags, and point @challenger at it."""
    registered = mlflow.register_model(model_uri, name, tags=tags)
    version = int(registered.version)
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    return version


def describe_version(client: MlflowClient, name: str, version: int, text: str) -> None:
    """Set a registered version's description (what the registry page shows first); the model's too if it has none."""
    client.update_model_version(name, str(version), description=text[:5000])


def describe_model(client: MlflowClient, name: str, text: str) -> None:
    """Set the registered model's description, unless someone wrote one (theirs is kept)."""
    if not (client.get_registered_model(name).description or "").strip():
        client.update_registered_model(name, description=text[:5000])


def tag_version(client: MlflowClient, name: str, version: int, key: str, value: str) -> None:
    """Set one tag of a registered version."""
    client.set_model_version_tag(name, str(version), key, value)


def version_tags(client: MlflowClient, name: str, version: int) -> dict[str, str]:
    """The tags of a registered version (its lineage, test metrics and gate decision)."""
    return dict(client.get_model_version(name, str(version)).tags)


def version_run_id(client: MlflowClient, name: str, version: int) -> str | None:
    """The MLflow run that logged a registered version's model (None for a model registered from elsewhere)."""
    run_id = client.get_model_version(name, str(version)).run_id
    return str(run_id) if run_id else None


def newest_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The most recently registered version of ``name`` (promoted or not), or None when there is none."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return max(versions, key=lambda v: int(v.creation_timestamp)) if versions else None


def aliased_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The registered version an alias points at, with its tags and times; None when the model or alias is missing."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    """The version an alias points at, or None when the model or the alias does not exist."""
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_version(client: MlflowClient, name: str) -> int | None:
    """The version the ``champion`` alias points at, or None.

    Raises:
        StepInputError: The registered model does not exist.
    """
    version = _registered_model(client, name).aliases.get(CHAMPION)
    # MLflow 3.0 keeps the alias of a deleted version (later versions drop it): that is no champion.
    if version is None or not version_exists(client, name, int(version)):
        return None
    return int(version)


def promotion_history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """The promotions and rollbacks recorded in the registered model's tag, oldest first.

    Raises:
        StepInputError: The registered model does not exist.
    """
    raw = _registered_model(client, name).tags.get(HISTORY_TAG)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError:
        LOG.warning("registered model %s: tag %s is not JSON; starting a new history", name, HISTORY_TAG)
        return []
    if not isinstance(entries, list):
        LOG.warning("registered model %s: tag %s is not a JSON list; starting a new history", name, HISTORY_TAG)
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("version"), int)]


def _encode_history(entries: list[dict[str, Any]]) -> str:
    """The newest ``HISTORY_ENTRIES`` entries as compact JSON of at most ``HISTORY_MAX_CHARS``.

    Reasons are clipped; if that is still too long, older entries lose their reasons first,
    and only then the oldest entries are dropped.
    """
    kept = [{**e, "reason": _clip(str(e.get("reason", "")), _REASON_CHARS)} for e in entries[-HISTORY_ENTRIES:]]

    def dumps() -> str:
        return json.dumps(kept, separators=(",", ":"))

    for limit in (40, 0):
        for i in range(len(kept) - 1):
            if len(dumps()) <= HISTORY_MAX_CHARS:
                return dumps()
            kept[i]["reason"] = _clip(kept[i]["reason"], limit)
    while len(dumps()) > HISTORY_MAX_CHARS and len(kept) > 1:
        kept.pop(0)
    return dumps()


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..." if limit > 3 else ""


def _record(client: MlflowClient, name: str, entry: dict[str, Any]) -> None:
    history = promotion_history(client, name)
    client.set_registered_model_tag(name, HISTORY_TAG, _encode_history([*history, entry]))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def promote(client: MlflowClient, name: str, version: int, reason: str) -> int | None:
    """Move the ``champion`` alias to ``version`` and record it in the promotion history.

    The history is the registered model's tag ``deltaml.promotion_history``: a JSON list of
    ``{version, previous, at, reason}`` (rollbacks also carry ``"rollback": true``), newest last,
    at most 50 entries. The version gets the tag ``deltaml.promoted_at``. Promoting the current
    champion changes nothing.

    Args:
        client: The registry client.
        name: The registered model.
        version: The version to make champion.
        reason: Why, in one line; stored in the history.

    Returns:
        The champion version before the call, or None if there was none.

    Raises:
        StepInputError: The registered model or the version does not exist.
    """
    previous = champion_version(client, name)
    if not version_exists(client, name, version):
        existing = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        listed = ", ".join(str(v) for v in existing[-20:]) or "none"
        raise StepInputError(
            f"registered model '{name}' has no version {version} (versions: {listed}); "
            "pass an existing one to --version"
        )
    if previous == version:
        LOG.info("%s version %s is already @%s", name, version, CHAMPION)
        return previous
    at = _now()
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), PROMOTED_AT_TAG, at)
    _record(client, name, {"version": version, "previous": previous, "at": at, "reason": reason})
    was = f"was version {previous}" if previous is not None else "first champion"
    LOG.info("%s version %s @%s (%s): %s", name, version, CHAMPION, was, reason)
    return previous


def _champion_stack(history: list[dict[str, Any]]) -> list[int]:
    """Replay the history into the stack of champions, the current one last."""
    stack: list[int] = []
    for entry in history:
        version, previous = entry["version"], entry.get("previous")
        if entry.get("rollback"):
            while stack and stack[-1] != version:
                stack.pop()
            if not stack:
                stack.append(version)
            continue
        if isinstance(previous, int) and (not stack or stack[-1] != previous):
            stack.append(previous)
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


def rollback(client: MlflowClient, name: str, reason: str) -> int:
    """Move the ``champion`` alias back to the champion before the current one.

    The history decides which one: repeated rollbacks walk further back, and versions that
    were deleted since are skipped. The rollback is recorded in the history; the version left
    gets the tag ``deltaml.rolled_back_at``.

    Args:
        client: The registry client.
        name: The registered model.
        reason: Why, in one line; stored in the history.

    Returns:
        The version that is champion now.

    Raises:
        StepInputError: The registered model does not exist, or no earlier champion exists.
    """
    current = champion_version(client, name)
    stack = _champion_stack(promotion_history(client, name))
    while stack and (stack[-1] == current or not version_exists(client, name, stack[-1])):
        stack.pop()
    if not stack:
        now = f"@{CHAMPION} is version {current}" if current is not None else f"no @{CHAMPION}"
        raise StepInputError(
            f"registered model '{name}': nothing to roll back to ({now} and no earlier champion in its "
            f"promotion history still exists); promote a version with `deltaml promote {name} --version N`"
        )
    target = stack[-1]
    at = _now()
    client.set_registered_model_alias(name, CHAMPION, str(target))
    if current is not None:
        client.set_model_version_tag(name, str(current), ROLLED_BACK_AT_TAG, at)
    _record(client, name, {"version": target, "previous": current, "at": at, "reason": reason, "rollback": True})
    LOG.info("%s rolled back @%s from version %s to %s: %s", name, CHAMPION, current, target, reason)
    return target


def find_scoring_version(name: str, alias: str, version: int | None) -> int:
    """The registered version to score with: ``version`` if pinned (and it exists), else the one ``@alias`` names.

    Raises:
        StepInputError: The model, alias or version does not exist in the registry.
    """
    client = MlflowClient()
    try:
        found = (
            client.get_model_version(name, str(version)) if version else client.get_model_version_by_alias(name, alias)
        )
    except MlflowException as exc:
        wanted = f"version {version}" if version else f"alias @{alias}"
        raise StepInputError(
            f"step 'score': registered model '{name}' has no {wanted} ({one_line(exc.message or exc)}); "
            "train and register a model first (`deltaml run CONF`)"
        ) from None
    return int(found.version)
