"""Cleaning and feature stages: the part of the Spark ML Pipeline that turns raw columns into a vector."""

from __future__ import annotations

from pyspark.ml.base import Estimator, Transformer
from pyspark.ml.feature import Imputer, OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler

from deltaml.config import FeaturesConfig

FEATURES_COL = "features"


def build_feature_stages(features: FeaturesConfig, output_col: str = FEATURES_COL) -> list[Estimator | Transformer]:
    """The stages that clean and encode the configured columns into one vector column.

    Numeric columns are imputed (strategy from the config) and, if ``scale`` is set,
    standardised; categorical columns are string-indexed by frequency with unseen and null
    values kept in their own slot, then one-hot encoded. Every statistic is learned when the
    pipeline is fitted, i.e. on the training split only.

    Args:
        features: The ``features`` section of the config.
        output_col: Name of the assembled vector column.

    Returns:
        Unfitted stages, in order.
    """
    stages: list[Estimator | Transformer] = []
    parts: list[str] = []
    if features.numeric:
        imputed = [f"_imputed_{c}" for c in features.numeric]
        stages.append(Imputer(inputCols=features.numeric, outputCols=imputed, strategy=features.impute.strategy))
        stages.append(VectorAssembler(inputCols=imputed, outputCol="_numeric_vector", handleInvalid="error"))
        if features.scale:
            stages.append(StandardScaler(inputCol="_numeric_vector", outputCol="_numeric_scaled", withMean=True))
            parts.append("_numeric_scaled")
        else:
            parts.append("_numeric_vector")
    if features.categorical:
        indexed = [f"_indexed_{c}" for c in features.categorical]
        encoded = [f"_onehot_{c}" for c in features.categorical]
        stages.append(
            StringIndexer(
                inputCols=features.categorical,
                outputCols=indexed,
                handleInvalid="keep",
                stringOrderType="frequencyDesc",
            )
        )
        stages.append(OneHotEncoder(inputCols=indexed, outputCols=encoded, handleInvalid="keep", dropLast=True))
        parts.extend(encoded)
    stages.append(VectorAssembler(inputCols=parts, outputCol=output_col))
    return stages
