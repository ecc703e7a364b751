"""Lineage: every Delta read and write of a step, with its version, and the manifest each MLflow run carries.

:mod:`deltaml.io.catalog` reports each read (the version read) and each write (the version it
committed) to the recording that :func:`recording` opens around a step; the runner logs them as
the step run's ``lineage.json`` and gathers them, with the effective config, its hash, the seed,
package versions and the git sha, into the pipeline run's ``manifest.json``. :func:`log_datasets`
lists a step's inputs as the step run's MLflow dataset inputs; :func:`batch_lineage` follows a batch
of predictions back to the model versions that scored it and the source versions they read.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.data.dataset import Dataset
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
from deltaml.errors import one_line
from deltaml.io.recording import TableAccess
from deltaml.io.registry import version_run_id

LOG = logging.getLogger(__name__)


# How many existing batches an unknown batch id's error names.
BATCHES_SHOWN = 5


def step_lineage(accesses: list[TableAccess]) -> dict[str, list[dict[str, Any]]]:
    """A step's inputs and outputs as JSON-ready lists (reading back a version the step wrote is not an input)."""
    written = {(a.table, a.version) for a in accesses if a.kind == "write"}
    return {
        "inputs": [a.as_dict() for a in accesses if a.kind == "read" and (a.table, a.version) not in written],
        "outputs": [a.as_dict() for a in accesses if a.kind == "write"],
    }


def log_datasets(spark: SparkSession, accesses: list[TableAccess], context: str | None = None) -> None:
    """Log each Delta table a step read, at the version it read, as a dataset input of the active MLflow run.

    Each dataset is MLflow's Delta source (the path or the table name, and the version), the table's
    schema at that version, and a digest of ``table@vN``: the table is never read. (MLflow's own Spark
    dataset, ``mlflow.data.load_delta``, would be profiled when logged, with a Spark job over all its
    rows.) A table whose dataset cannot be logged costs one warning, never the step.

    Args:
        spark: The session the tables were read with.
        accesses: The step's recording (see :func:`recording`); only its inputs are logged.
        context: The inputs' context (``mlflow.data.context``); by default the run's step name
            (its ``deltaml.step`` tag).
    """
    import mlflow

    from deltaml.columns import TAG_STEP

    inputs = step_lineage(accesses)["inputs"]
    active = mlflow.active_run()
    if not inputs or active is None:
        if inputs:
            LOG.warning("lineage: no active MLflow run; %d input table(s) not logged as datasets", len(inputs))
        return
    context = context or active.data.tags.get(TAG_STEP)
    for access in inputs:
        try:
            mlflow.log_input(_delta_dataset(spark, access["table"], access["version"]), context=context)
        except Exception as exc:  # MLflow, Spark or the network: the step's result stands without it
            # Py4J's first line only names the JVM call; the Java exception is on the next.
            lines = [x.strip(" :") for x in str(exc).splitlines() if x.strip(" :")]
            first = next((x for x in lines if not x.startswith("An error occurred while calling")), type(exc).__name__)
            LOG.warning(
                "lineage: %s v%d not logged as an MLflow dataset: %s: %s",
                access["table"],
                access["version"],
                type(exc).__name__,
                first[:300],
            )


def _delta_dataset(spark: SparkSession, table: str, version: int) -> Dataset:
    """An MLflow dataset that names a Delta table at a version, with its schema, without reading it."""
    import warnings

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.models import infer_signature

    from deltaml.io.catalog import full_table_name, recorded_table, table_schema
    from deltaml.io.tracking import DeltaTableSource

    where = recorded_table(table)
    if where.is_path:
        source = DeltaTableSource(path=where.ref, delta_table_version=version)
    else:
        # In full: MLflow takes the first part of a shorter name for a Unity Catalog and asks Databricks for it.
        source = DeltaTableSource(delta_table_name=full_table_name(spark, where), delta_table_version=version)
    struct = table_schema(spark, where, version)
    schema = None
    # MLflow infers a map column's fields from the data; inferred from an empty frame it gives up (schema "any").
    if '"type":"map"' not in struct.json():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its hint on integer columns is about pandas inputs
            schema = infer_signature(spark.createDataFrame([], struct)).inputs
    name = f"{where.ref.rstrip('/').rsplit('/', 1)[-1] if where.is_path else where.ref}@v{version}"
    digest = hashlib.sha256(f"{table}@v{version}".encode()).hexdigest()[:16]
    # Dataset is not an ABC: MetaDataset leaves profile abstract, and it is None.
    return MetaDataset(source, name=name, digest=digest, schema=schema)  # type: ignore[abstract]


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
        "config": effective_config,
    }


def model_lineage(client: Any, name: str, version: int) -> dict[str, Any]:
    """The manifest of the pipeline run that trained a registered model version.

    Args:
        client: An ``mlflow.tracking.MlflowClient`` bound to the registry.
        name: The registered model.
        version: Its version.

    Raises:
        StepInputError: The version does not exist, or its run carries no manifest (trained before deltaml wrote one).
    """
    from mlflow.exceptions import MlflowException

    from deltaml.errors import StepInputError
    from deltaml.io.tracking import load_run_json

    try:
        run_id = version_run_id(client, name, version)
        if run_id is None:
            raise OSError("the version has no MLflow run")
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
