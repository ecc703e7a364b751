"""Building and fitting the training pipeline: feature stages, the model, and the stages that finish it."""

from __future__ import annotations

from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame

from deltaml.config.schema import PipelineConfig
from deltaml.io.tables import event_tables
from deltaml.ml.features import build_feature_stages
from deltaml.ml.models import (
    ClassLabels,
    DecisionThreshold,
    model_stages,
)
from deltaml.ml.windows import WindowFeatures


def build_training_pipeline(config: PipelineConfig) -> Pipeline:
    """Feature stages, the first candidate's model with its fixed params, and the decision threshold.

    The untuned pipeline of a binary label, for one fit of one family; ``run_fit`` tunes the
    candidates instead.
    """
    candidate = config.model.all_candidates[0]
    model = model_stages(candidate.family, candidate.params, seed=config.seed)
    features = build_feature_stages(config.features, events=event_tables(config))
    return Pipeline(stages=[*features, *model, DecisionThreshold(threshold=config.evaluate.threshold)])


def finishing_stages(config: PipelineConfig, threshold: float, classes: list[str] | None) -> list[Any]:
    """The stages after the model: the decision threshold (binary) or the class labels (multiclass)."""
    if config.label.task == "binary":
        return [DecisionThreshold(threshold=threshold)]
    if config.label.task == "multiclass":
        return [ClassLabels(labels=list(classes or []))]
    return []


def leading_windows(stages: list[Any]) -> tuple[PipelineModel, list[Any]]:
    """The leading :class:`~deltaml.ml.windows.WindowFeatures` stages (nothing to fit) and the stages after them."""
    leading = 0
    while leading < len(stages) and isinstance(stages[leading], WindowFeatures):
        leading += 1
    return PipelineModel(stages=[s for s in stages[:leading] if isinstance(s, WindowFeatures)]), stages[leading:]


def fit_pipeline(pipeline: Pipeline, train: DataFrame) -> PipelineModel:
    """Fit ``pipeline`` like ``Pipeline.fit``, computing its leading window-feature joins once.

    ``Pipeline.fit`` hands every estimator the lazily transformed data, so each estimator
    (imputer, indexer, scaler, model) would re-run the point-in-time joins. Here the leading
    :class:`~deltaml.ml.windows.WindowFeatures` stages transform once, the result is cached for
    the rest of the fit, and the fitted model is the same sequence of stages.
    """
    windows, rest = leading_windows(pipeline.getStages())
    if not windows.stages:
        return pipeline.fit(train)
    enriched = windows.transform(train).cache()
    try:
        fitted = Pipeline(stages=rest).fit(enriched)
    finally:
        enriched.unpersist()
    return PipelineModel(stages=[*windows.stages, *fitted.stages])
