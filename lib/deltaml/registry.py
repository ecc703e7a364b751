"""The register step: the fitted model into the MLflow registry with lineage tags and the champion alias."""

from __future__ import annotations

import logging

import mlflow
from mlflow.tracking import MlflowClient

from deltaml import __version__
from deltaml.catalog import table_version
from deltaml.context import StepContext, StepResult
from deltaml.errors import StepInputError
from deltaml.tracking import latest_step_run
from deltaml.train import load_fitted_model

LOG = logging.getLogger(__name__)

CHAMPION = "champion"


def run_register(ctx: StepContext) -> StepResult:
    """Register the model fitted in this run (or the latest fit run), tag its lineage, make it champion.

    The champion/challenger gate arrives with tuning; until then every registered version
    becomes the champion.
    """
    cfg = ctx.config
    _, model_uri = load_fitted_model(ctx)
    metrics = ctx.outputs.get("metrics")
    if metrics is None:
        evaluated = latest_step_run(cfg, "evaluate")
        if evaluated.data.tags.get("deltaml.model_uri") != model_uri:
            raise StepInputError(
                f"step 'register': the latest evaluate run scored {evaluated.data.tags.get('deltaml.model_uri')}, "
                f"not the model to register ({model_uri}); run --step evaluate first"
            )
        metrics = dict(evaluated.data.metrics)
    split_version = ctx.outputs.get("split_version")
    if split_version is None:
        split_version = table_version(ctx.spark, ctx.tables.split)
    lineage = {
        "deltaml.pipeline": cfg.name,
        "deltaml.config_hash": ctx.loaded.config_hash,
        "deltaml.version": __version__,
        "deltaml.git_sha": ctx.outputs.get("git_sha", "unknown"),
        "deltaml.training_table": str(ctx.tables.split),
        "deltaml.training_table_version": str(split_version),
        "deltaml.raw_table": str(ctx.tables.raw),
        "deltaml.model_uri": model_uri,
        **{f"metric.{k}": f"{v:.6f}" for k, v in sorted(metrics.items()) if k.startswith("test_")},
    }
    version = mlflow.register_model(model_uri, cfg.mlflow.registered_model, tags=lineage)
    client = MlflowClient()
    client.set_registered_model_alias(cfg.mlflow.registered_model, CHAMPION, version.version)
    ctx.outputs["model_version"] = int(version.version)
    return StepResult(
        metrics={"model_version": float(version.version)},
        tags={"registered_model": cfg.mlflow.registered_model, "model_version": str(version.version)},
        summary=f"{cfg.mlflow.registered_model} version {version.version} @{CHAMPION}",
    )
