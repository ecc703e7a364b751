"""The fit step: one Spark ML Pipeline (features + model) fitted on the train split only, logged to MLflow."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import mlflow.spark
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

import deltaml
from deltaml.catalog import read_table
from deltaml.config import PipelineConfig
from deltaml.context import StepContext, StepResult, event_tables
from deltaml.errors import StepInputError
from deltaml.features import FEATURES_COL, build_feature_stages
from deltaml.split import SPLIT_COL, TRAIN
from deltaml.windows import WindowFeatures

LOG = logging.getLogger(__name__)

LABEL_COL = "_label"
MODEL_ARTIFACT = "model"
_MLFLOW_TYPES = {
    T.IntegerType: "integer",
    T.LongType: "long",
    T.ShortType: "integer",
    T.ByteType: "integer",
    T.FloatType: "float",
    T.DoubleType: "double",
    T.StringType: "string",
    T.BooleanType: "boolean",
    T.DateType: "datetime",
    T.TimestampType: "datetime",
    T.TimestampNTZType: "datetime",
    T.DecimalType: "double",
}


def with_binary_label(label: str, positive: Any) -> Any:
    """Return a transform adding ``_label``: 1.0 where ``label`` equals the positive value, else 0.0."""

    def transform(df: DataFrame) -> DataFrame:
        return df.withColumn(LABEL_COL, F.when(F.col(label) == F.lit(positive), 1.0).otherwise(0.0))

    return transform


def build_training_pipeline(config: PipelineConfig) -> Pipeline:
    """Feature stages followed by the configured estimator, reading ``_label``."""
    params = dict(config.model.params)
    params.setdefault("threshold", config.evaluate.threshold)
    estimator = LogisticRegression(featuresCol=FEATURES_COL, labelCol=LABEL_COL)
    unknown = sorted(set(params) - {p.name for p in estimator.params})
    if unknown:
        raise StepInputError(
            f"step 'fit': model.params {unknown} are not params of {type(estimator).__name__}; "
            f"valid: {sorted(p.name for p in estimator.params)}"
        )
    for name, value in params.items():
        try:
            estimator.set(estimator.getParam(name), value)
        except (TypeError, ValueError) as exc:
            raise StepInputError(f"step 'fit': model.params.{name}={value!r} is invalid: {exc}") from None
    stages = build_feature_stages(config.features, events=event_tables(config))
    return Pipeline(stages=[*stages, estimator])


def fit_pipeline(pipeline: Pipeline, train: DataFrame) -> PipelineModel:
    """Fit ``pipeline`` like ``Pipeline.fit``, computing its leading window-feature joins once.

    ``Pipeline.fit`` hands every estimator the lazily transformed data, so each estimator
    (imputer, indexer, scaler, model) would re-run the point-in-time joins. Here the leading
    :class:`~deltaml.windows.WindowFeatures` stages transform once, the result is cached for
    the rest of the fit, and the fitted model is the same sequence of stages.
    """
    stages = pipeline.getStages()
    leading = 0
    while leading < len(stages) and isinstance(stages[leading], WindowFeatures):
        leading += 1
    if leading == 0:
        return pipeline.fit(train)
    windows = PipelineModel(stages=[s for s in stages[:leading] if isinstance(s, WindowFeatures)])
    enriched = windows.transform(train).cache()
    try:
        rest = Pipeline(stages=stages[leading:]).fit(enriched)
    finally:
        enriched.unpersist()
    return PipelineModel(stages=[*windows.stages, *rest.stages])


def model_signature(df: DataFrame, columns: list[str]) -> ModelSignature:
    """The model's input schema from the Spark schema; every column optional, since the pipeline imputes."""
    fields = {f.name: f for f in df.schema.fields}
    specs: list[ColSpec | TensorSpec] = []
    for column in columns:
        mlflow_type = _MLFLOW_TYPES.get(type(fields[column].dataType))
        if mlflow_type is None:
            raise StepInputError(f"step 'fit': column '{column}' has unsupported type {fields[column].dataType}")
        specs.append(ColSpec(mlflow_type, column, required=False))
    outputs = Schema([ColSpec("double", "prediction")])
    return ModelSignature(inputs=Schema(specs), outputs=outputs)


def model_requirements() -> list[str]:
    """The pip requirements of a logged Spark model, pinned to what trained it.

    Giving them explicitly spares MLflow its requirement inference, which re-imports the
    model in a subprocess and costs ~15 s per logged model.
    """
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in ("pyspark", "mlflow")]


def check_columns(df: DataFrame, columns: list[str], step: str, where: str) -> None:
    """Fail with one line if ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise StepInputError(
            f"step '{step}': {where} has no column(s) {missing}; present: {df.columns} "
            "(fix the features section or the source)"
        )


def run_fit(ctx: StepContext) -> StepResult:
    """Fit the pipeline on the train split of the split table and log it to the step's MLflow run."""
    cfg = ctx.config
    pipeline = build_training_pipeline(cfg)  # bad model params fail here, before any Spark work
    data, split_version = read_table(ctx.spark, ctx.tables.split, "fit")
    check_columns(data, [*cfg.features.columns, cfg.label.column, SPLIT_COL], "fit", f"split table {ctx.tables.split}")
    train = (
        data.where(F.col(SPLIT_COL) == TRAIN)
        .where(F.col(cfg.label.column).isNotNull())
        .transform(with_binary_label(cfg.label.column, cfg.label.positive))
        .select(*cfg.features.columns, LABEL_COL)
        .cache()
    )
    stats = train.agg(F.count("*").alias("n"), F.sum(LABEL_COL).alias("positives")).first()
    assert stats is not None
    rows, positives = int(stats["n"]), int(stats["positives"] or 0)
    if rows == 0 or positives in (0, rows):
        train.unpersist()
        raise StepInputError(
            f"step 'fit': the train split has {rows} rows and {positives} with label "
            f"{cfg.label.column}={cfg.label.positive!r}; both classes are needed (check label.positive)"
        )
    model = fit_pipeline(pipeline, train)
    example = train.select(*cfg.features.columns).limit(5).toPandas()
    train.unpersist()
    info = mlflow.spark.log_model(
        model,
        artifact_path=MODEL_ARTIFACT,
        signature=model_signature(data, cfg.features.columns),
        input_example=example,
        pip_requirements=model_requirements(),
        # The pipeline's cleaning stages are deltaml classes: the model carries their code, so
        # it loads wherever MLflow does, with or without deltaml installed.
        code_paths=[str(Path(deltaml.__file__).parent)],
    )
    ctx.outputs.update(model=model, model_uri=info.model_uri, split_version=split_version)
    return StepResult(
        metrics={
            "rows_train": float(rows),
            "positives_train": float(positives),
            "split_table_version": float(split_version),
        },
        tags={"model_uri": info.model_uri, "split_table": str(ctx.tables.split)},
        summary=f"fitted on {rows} train rows ({positives} positive), logged {info.model_uri}",
    )


def load_fitted_model(ctx: StepContext) -> tuple[PipelineModel, str]:
    """The model fitted earlier in this run, or the one logged by the latest finished fit run."""
    if "model" in ctx.outputs:
        return ctx.outputs["model"], ctx.outputs["model_uri"]
    from deltaml.tracking import latest_step_run

    run = latest_step_run(ctx.config, "fit")
    uri = run.data.tags.get("deltaml.model_uri") or f"runs:/{run.info.run_id}/{MODEL_ARTIFACT}"
    model = mlflow.spark.load_model(uri)
    ctx.outputs.update(model=model, model_uri=uri)
    return model, uri
