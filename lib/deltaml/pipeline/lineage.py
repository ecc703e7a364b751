"""Lineage: every Delta read and write of a step, with its version, and the manifest each MLflow run carries.

:mod:`deltaml.io.catalog` reports each read (the version read) and each write (the version it
committed) to the recording that :func:`recording` opens around a step; the runner logs them as
the step run's ``lineage.json`` and gathers them, with the effective config, its hash, the seed,
package versions and the git sha, into the pipeline run's ``manifest.json``. :func:`deltaml.io.tracking.log_datasets`
lists a step's inputs as the step run's MLflow dataset inputs; :func:`batch_lineage` follows a batch
of predictions back to the model versions that scored it and the source versions they read.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from deltaml.io.catalog import Table
from deltaml.columns import (
    BATCH_COL,
    MANIFEST_ARTIFACT,
    MODEL_NAME_COL,
    MODEL_VERSION_COL,
    PREDICTION_LINEAGE_COLUMNS,
    SCORED_AT_COL,
    SOURCE_TABLE_COL,
    SOURCE_VERSION_COL,
)
from deltaml.errors import one_line, redacted
from deltaml.io.recording import TableAccess, step_lineage
from deltaml.io.registry import version_run_id

LOG = logging.getLogger(__name__)


# How many existing batches an unknown batch id's error names.
BATCHES_SHOWN = 5


def build_manifest(
    steps: dict[str, list[TableAccess]],
    *,
    config_hash: str,
    effective_config: dict[str, Any],
    seed: int,
    packages: dict[str, str],
    git_sha: str,
    state_path: str = "",
) -> dict[str, Any]:
    """The pipeline run's manifest: per step its tables and versions, and what produced them."""
    return {
        "version": 1,
        "config_hash": config_hash,
        "state_path": state_path,
        "seed": seed,
        "git_sha": git_sha,
        "packages": packages,
        "steps": {name: step_lineage(accesses) for name, accesses in steps.items()},
        "config": redacted(effective_config),
    }


def model_lineage(client: Any, name: str, version: int) -> dict[str, Any]:
    """The manifest of the pipeline run that trained a registered model version.

    Args:
        client: An ``mlflow.tracking.MlflowClient`` bound to the registry.
        name: The registered model.
        version: Its version.

    Raises:
        StepInputError: The registry has no such model, the model no such version (the message lists those there
            are), the version was not logged by an MLflow run, or its run carries no manifest (trained before
            deltaml wrote one).
        StepFailedError: The registry failed otherwise.
    """
    from mlflow.exceptions import MlflowException

    from deltaml.errors import StepFailedError, StepInputError
    from deltaml.io.tracking import load_run_json

    try:
        if version < 1:
            raise StepInputError(_missing_version(client, name, f"{version} is not a model version: they count from 1"))
        run_id = version_run_id(client, name, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise StepFailedError(f"lineage: the MLflow registry failed: {one_line(exc.message or exc, 300)}") from exc
        raise StepInputError(_missing_version(client, name, f"{name} has no version {version}")) from None
    if run_id is None:
        raise StepInputError(
            f"lineage: {name} version {version} has no manifest: it was registered without an MLflow run, "
            "so nothing recorded what trained it"
        )
    try:
        fit_run = client.get_run(run_id)
        pipeline_run = fit_run.data.tags.get("mlflow.parentRunId", run_id)
        manifest: dict[str, Any] = load_run_json(client, pipeline_run, MANIFEST_ARTIFACT)
    except (MlflowException, OSError) as exc:
        first = one_line(exc, 200)
        raise StepInputError(
            f"lineage: {name} version {version} has no manifest ({first}); versions trained before deltaml "
            "recorded manifests have only their lineage tags (`mlflow` UI, model version tags)"
        ) from None
    return {"model": name, "version": version, "pipeline_run": pipeline_run, **manifest}


# How many versions, or registered models, an error about a missing one lists.
LISTED = 10


def _missing_version(client: Any, name: str, problem: str) -> str:
    """``problem`` and the versions the model has (the newest, if many), or that the registry has no such model."""
    from mlflow.exceptions import MlflowException

    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        if not versions:
            client.get_registered_model(name)  # a model without versions, or none at all
    except MlflowException:
        models = [m.name for m in client.search_registered_models(max_results=LISTED + 1)]
        listed = ", ".join(models[:LISTED]) + (", ..." if len(models) > LISTED else "")
        held = f"its models are {listed}" if models else "it has no registered models"
        return f"lineage: the MLflow registry has no model '{name}' ({held}); check NAME, or --tracking-uri / --conf"
    if not versions:
        return f"lineage: {problem}; {name} has no versions yet"
    if len(versions) <= LISTED:
        return f"lineage: {problem}; {name}'s versions are {', '.join(map(str, versions))}"
    newest = ", ".join(map(str, versions[-LISTED:]))
    return f"lineage: {problem}; {name}'s newest versions are {newest} ({len(versions)} in all)"


def render_lineage(lineage: dict[str, Any]) -> str:
    """A model version's lineage as text: what it was trained on, by what, and then its config."""
    import yaml

    lines = [
        f"{lineage['model']} version {lineage['version']}: trained by pipeline run {lineage['pipeline_run']}",
        f"  config hash {lineage['config_hash']}, seed {lineage['seed']}, git sha {lineage['git_sha'] or 'unknown'}",
        "  packages: " + ", ".join(f"{k} {v}" for k, v in sorted(lineage["packages"].items())),
    ]
    for step, tables in lineage["steps"].items():
        reads = ", ".join(f"{t['table']} v{t['version']}" for t in tables["inputs"]) or "-"
        writes = ", ".join(f"{t['table']} v{t['version']}" for t in tables["outputs"]) or "-"
        lines.append(f"  {step}: read {reads}; wrote {writes}")
    lines.append("config:")
    lines += ["  " + line for line in yaml.safe_dump(lineage["config"], sort_keys=False).splitlines()]
    return "\n".join(lines)


def batch_lineage(spark: SparkSession, predictions: Table, batch_id: str) -> dict[str, Any]:
    """Where one batch of a predictions table came from, from the lineage columns the score step writes.

    Returns:
        The table and the version read, the batch id, its row count, and under ``scored`` one entry
        per model version and source it was scored from: ``model_name``, ``model_version``,
        ``source_table``, ``source_version``, ``rows`` and the first and last ``scored_at`` (text, in
        the session time zone).

    Raises:
        StepInputError: The table does not exist, lacks the lineage columns, or has no such batch (the
            message names its latest batches).
    """
    from pyspark.sql import functions as F

    from deltaml.errors import StepInputError
    from deltaml.io.catalog import read_table

    df, version = read_table(spark, predictions, "lineage")
    missing = [c for c in PREDICTION_LINEAGE_COLUMNS if c not in df.columns]
    if missing:
        raise StepInputError(
            f"lineage: {predictions} has no column(s) {missing}, so it is not a table the score step wrote; "
            f"its columns are {df.columns}"
        )
    shown = "yyyy-MM-dd HH:mm:ssXXX"
    groups = [MODEL_NAME_COL, MODEL_VERSION_COL, SOURCE_TABLE_COL, SOURCE_VERSION_COL]
    rows = (
        df.where(F.col(BATCH_COL) == batch_id)
        .groupBy(*groups)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.min(SCORED_AT_COL).alias("first"),
            F.date_format(F.min(SCORED_AT_COL), shown).alias("scored_from"),
            F.date_format(F.max(SCORED_AT_COL), shown).alias("scored_to"),
        )
        .orderBy("first", *groups)
        .collect()
    )
    if not rows:
        latest = df.groupBy(BATCH_COL).agg(F.max(SCORED_AT_COL).alias("at")).orderBy(F.desc("at"), BATCH_COL)
        known = [r[BATCH_COL] for r in latest.limit(BATCHES_SHOWN).collect()]
        count = df.select(BATCH_COL).distinct().count() if len(known) == BATCHES_SHOWN else len(known)
        listed = f"its latest batches: {', '.join(known)} ({count} in all)" if known else "it has no batches"
        raise StepInputError(f"lineage: no batch '{batch_id}' in {predictions} v{version}; {listed}")
    scored = [{k: r[k] for k in (*groups, "rows", "scored_from", "scored_to")} for r in rows]
    return {
        "table": str(predictions),
        "version": version,
        "batch": batch_id,
        "rows": sum(s["rows"] for s in scored),
        "scored": scored,
    }


def render_batch_lineage(batch: dict[str, Any]) -> str:
    """A predictions batch's lineage as text: its rows, and which model version scored which source version when."""

    def rows(n: int) -> str:
        return f"{n} row{'' if n == 1 else 's'}"

    lines = [f"batch {batch['batch']} of {batch['table']} (v{batch['version']}): {rows(batch['rows'])}"]
    for s in batch["scored"]:
        when = s["scored_from"] if s["scored_from"] == s["scored_to"] else f"{s['scored_from']} to {s['scored_to']}"
        lines.append(
            f"  {rows(s['rows'])} scored by {s['model_name']} version {s['model_version']} "
            f"from {s['source_table']} v{s['source_version']} at {when}"
        )
    return "\n".join(lines)
