"""Cleaning and feature stages: the part of the Spark ML Pipeline that turns raw columns into a vector."""

from __future__ import annotations

from pyspark.ml.base import Estimator, Transformer
from pyspark.ml.feature import Imputer, OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler

from deltaml.cleaning import ConstantImputer, MissingIndicator, OutlierCapper, RareCategoryGrouper, TypeCoercer
from deltaml.config import FeaturesConfig

FEATURES_COL = "features"


def build_feature_stages(features: FeaturesConfig, output_col: str = FEATURES_COL) -> list[Estimator | Transformer]:
    """The stages that clean and encode the configured columns into one vector column.

    Numeric columns are cast to double (values that do not parse become missing), optionally
    flagged when missing, imputed, optionally capped at learned bounds and, if ``scale`` is set,
    standardised. Categorical columns optionally have rare levels grouped, then are
    string-indexed by frequency with unseen and null values kept in their own slot, then
    one-hot encoded. Every statistic is learned when the pipeline is fitted, i.e. on the
    training split only, and travels with the fitted PipelineModel to scoring.

    Args:
        features: The ``features`` section of the config.
        output_col: Name of the assembled vector column.

    Returns:
        Unfitted stages, in order.
    """
    stages: list[Estimator | Transformer] = []
    parts: list[str] = []
    if features.numeric:
        numeric = features.numeric
        stages.append(TypeCoercer(inputCols=numeric, targetTypes=["double"] * len(numeric)))
        indicators = [f"_missing_{c}" for c in numeric] if features.impute.indicator else []
        if indicators:
            stages.append(MissingIndicator(inputCols=numeric, outputCols=indicators))
        imputed = [f"_imputed_{c}" for c in numeric]
        if features.impute.strategy == "constant":
            stages.append(ConstantImputer(inputCols=numeric, outputCols=imputed, fillValue=features.impute.value))
        else:
            stages.append(Imputer(inputCols=numeric, outputCols=imputed, strategy=features.impute.strategy))
        cleaned = imputed
        if features.outliers is not None:
            capped_columns = set(features.outliers.columns or numeric)
            to_cap = [f"_imputed_{c}" for c in numeric if c in capped_columns]
            stages.append(
                OutlierCapper(
                    inputCols=to_cap,
                    outputCols=to_cap,
                    method=features.outliers.method,
                    lowerQuantile=features.outliers.lower_quantile,
                    upperQuantile=features.outliers.upper_quantile,
                    iqrMultiplier=features.outliers.iqr_multiplier,
                )
            )
        stages.append(VectorAssembler(inputCols=cleaned, outputCol="_numeric_vector", handleInvalid="error"))
        if features.scale:
            stages.append(StandardScaler(inputCol="_numeric_vector", outputCol="_numeric_scaled", withMean=True))
            parts.append("_numeric_scaled")
        else:
            parts.append("_numeric_vector")
        parts.extend(indicators)
    if features.categorical:
        categorical = features.categorical
        if features.rare_categories is not None:
            grouped = [f"_grouped_{c}" for c in categorical]
            stages.append(
                RareCategoryGrouper(
                    inputCols=categorical,
                    outputCols=grouped,
                    minFrequency=features.rare_categories.min_frequency,
                    minCount=features.rare_categories.min_count,
                    otherLabel=features.rare_categories.other_label,
                )
            )
            categorical = grouped
        indexed = [f"_indexed_{c}" for c in features.categorical]
        encoded = [f"_onehot_{c}" for c in features.categorical]
        stages.append(
            StringIndexer(
                inputCols=categorical,
                outputCols=indexed,
                handleInvalid="keep",
                stringOrderType="frequencyDesc",
            )
        )
        stages.append(OneHotEncoder(inputCols=indexed, outputCols=encoded, handleInvalid="keep", dropLast=True))
        parts.extend(encoded)
    stages.append(VectorAssembler(inputCols=parts, outputCol=output_col))
    return stages
