"""Cleaning and feature stages: the part of the Spark ML Pipeline that turns raw columns into a vector."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.ml.base import Estimator, Transformer
from pyspark.ml.feature import (
    Bucketizer,
    FeatureHasher,
    Imputer,
    OneHotEncoder,
    QuantileDiscretizer,
    SQLTransformer,
    StandardScaler,
    StringIndexer,
    StringIndexerModel,
    VectorAssembler,
    VectorSlicer,
)

from deltaml.columns import FEATURES_COL, TREE_FEATURES_COL
from deltaml.config.schema import DerivedFeature, FeaturesConfig, WindowFeaturesConfig
from deltaml.io.catalog import Table
from deltaml.ml.cleaning import ConstantImputer, MissingIndicator, OutlierCapper, RareCategoryGrouper, TypeCoercer
from deltaml.ml.encoders import CategoryEncoder
from deltaml.ml.selection import FeatureSlotSelector
from deltaml.ml.windows import WindowFeatures

_DATE_PART_SQL = {
    "hour": "hour",
    "day_of_week": "dayofweek",
    "day_of_month": "dayofmonth",
    "day_of_year": "dayofyear",
    "week_of_year": "weekofyear",
    "month": "month",
    "year": "year",
}


def derived_sql(feature: DerivedFeature) -> list[tuple[str, str]]:
    """The Spark SQL expression(s) of a row-wise derived feature, as ``(output, expression)`` pairs.

    Undefined results (log of a non-positive number, a zero denominator) are NULL, so the
    imputer treats them as missing instead of the model seeing NaN or infinity.
    """
    cols = [f"`{c}`" for c in feature.columns]
    first = cols[0]
    kind = feature.kind
    if kind == "log":
        return [(feature.name, f"CASE WHEN {first} > 0 THEN ln({first}) END")]
    if kind == "log1p":
        return [(feature.name, f"CASE WHEN {first} > -1 THEN log1p({first}) END")]
    if kind == "ratio":
        return [(feature.name, f"CASE WHEN {cols[1]} <> 0 THEN {first} / {cols[1]} END")]
    if kind == "difference":
        return [(feature.name, f"{first} - {cols[1]}")]
    if kind == "power":
        return [(feature.name, f"power({first}, {feature.exponent!r})")]
    if kind == "clip":
        clipped = first
        if feature.min is not None:
            clipped = f"greatest({clipped}, {feature.min!r})"
        if feature.max is not None:
            clipped = f"least({clipped}, {feature.max!r})"
        return [(feature.name, f"CASE WHEN {first} IS NOT NULL THEN {clipped} END")]
    if kind == "interaction":
        return [(feature.name, " * ".join(f"CAST({c} AS DOUBLE)" for c in cols))]
    if kind == "date_part":
        assert feature.part is not None
        return [(feature.name, f"{_DATE_PART_SQL[feature.part]}({first})")]
    if kind == "days_between":
        return [(feature.name, f"datediff({cols[1]}, {first})")]
    if kind == "cyclical":
        angle = f"2 * pi() * {first} / {feature.period!r}"
        return [(f"{feature.name}_sin", f"sin({angle})"), (f"{feature.name}_cos", f"cos({angle})")]
    if kind == "sql":
        assert feature.expression is not None
        return [(feature.name, feature.expression)]
    return []  # bucket: learned or fixed splits, not a SQL expression


def _derived_stages(features: FeaturesConfig) -> list[Estimator[Any] | Transformer]:
    stages: list[Estimator[Any] | Transformer] = []
    expressions = [f"{expr} AS `{name}`" for d in features.derived for name, expr in derived_sql(d)]
    if expressions:
        stages.append(SQLTransformer(statement=f"SELECT *, {', '.join(expressions)} FROM __THIS__"))
    for feature in features.derived:
        if feature.kind != "bucket":
            continue
        source = feature.columns[0]
        if feature.splits is not None:
            splits = [float("-inf"), *feature.splits, float("inf")]
            stages.append(Bucketizer(inputCol=source, outputCol=feature.name, splits=splits, handleInvalid="keep"))
        else:
            assert feature.quantiles is not None  # DerivedFeature requires splits or quantiles
            stages.append(
                QuantileDiscretizer(
                    inputCol=source, outputCol=feature.name, numBuckets=feature.quantiles, handleInvalid="keep"
                )
            )
    return stages


def window_stage(window: WindowFeaturesConfig, events: Table) -> WindowFeatures:
    """The pipeline stage that adds one window group's aggregates, reading ``events``."""
    return WindowFeatures(
        eventsTable=events.ref,
        eventsIsPath=events.is_path,
        entityKey=window.entity_column,
        referenceCol=window.reference_time,
        eventKey=window.key,
        eventTimeCol=window.time,
        aggregates=[f"{a.function}:{a.column or ''}:{d}" for a in window.aggregates for d in a.days],
        prefix=window.prefix,
    )


def build_feature_stages(
    features: FeaturesConfig,
    output_col: str = FEATURES_COL,
    events: list[Table] | None = None,
    *,
    tree_features: bool = False,
) -> list[Estimator[Any] | Transformer]:
    """The stages that clean and encode the configured columns into one vector column.

    Window aggregates come first (one stage per group, reading the event table ``events[i]``),
    so derived features may use them. Numeric columns are cast to double (values that do not
    parse become missing), optionally flagged when missing, imputed, optionally capped at
    learned bounds and, if ``scale`` is set, standardised. Categorical columns optionally have
    rare levels grouped, then are string-indexed by frequency with unseen and null values kept
    in their own slot, then one-hot encoded. Every statistic is learned when the pipeline is
    fitted, i.e. on the training split only, and travels with the fitted PipelineModel to
    scoring.

    High-cardinality columns under ``hashing`` are hashed into a fixed number of slots. With
    ``selection``, slots constant or nearly duplicated on the train split are dropped last.

    With ``tree_features``, a second vector, :data:`~deltaml.columns.TREE_FEATURES_COL`, is assembled
    for tree families that split categories themselves (see :func:`tree_layout`): the imputed numeric
    columns unscaled, their missing indicators, each categorical column as its string index (one
    slot, the frequency rank of its level) and the hashed slots. One-hot slots cost those families
    accuracy (a split sees one level against all others) and memory (hundreds of dense columns).

    Args:
        features: The ``features`` section of the config.
        output_col: Name of the assembled vector column.
        events: The resolved event table of each window group, in order.
        tree_features: Also assemble the tree families' vector.

    Returns:
        Unfitted stages, in order.
    """
    stages: list[Estimator[Any] | Transformer] = []
    parts: list[str] = []
    tree_parts: list[str] = []
    if len(events or []) != len(features.windows):
        raise ValueError(f"{len(features.windows)} window group(s) need as many event tables, got {events}")
    stages.extend(window_stage(w, t) for w, t in zip(features.windows, events or [], strict=True))
    if features.numeric:
        stages.append(TypeCoercer(inputCols=features.numeric, targetTypes=["double"] * len(features.numeric)))
    stages.extend(_derived_stages(features))
    encodings = features.encodings
    for method, columns, suffix in (
        ("frequency", encodings.frequency, "_freq"),
        ("target", encodings.target, "_target"),
    ):
        if columns:
            stages.append(
                CategoryEncoder(
                    inputCols=columns,
                    outputCols=[f"{c}{suffix}" for c in columns],
                    method=method,
                    smoothing=encodings.target_smoothing,
                )
            )
    derived_numeric = features.model_numeric[len(features.numeric) :]
    if derived_numeric:
        stages.append(TypeCoercer(inputCols=derived_numeric, targetTypes=["double"] * len(derived_numeric)))
    if features.model_numeric:
        numeric = features.model_numeric
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
        tree_parts.extend(["_numeric_vector", *indicators])
        if features.scale:
            stages.append(StandardScaler(inputCol="_numeric_vector", outputCol="_numeric_scaled", withMean=True))
            parts.append("_numeric_scaled")
        else:
            parts.append("_numeric_vector")
        parts.extend(indicators)
    if features.model_categorical:
        categorical = features.model_categorical
        derived_categorical = categorical[len(features.categorical) :]
        if derived_categorical:
            # Buckets and date parts are numbers; as categories they are their text ("3", "1.0").
            stages.append(TypeCoercer(inputCols=derived_categorical, targetTypes=["string"] * len(derived_categorical)))
        if features.rare_categories is not None:
            grouped = [f"_grouped_{c}" for c in categorical]
            stages.append(
                RareCategoryGrouper(
                    inputCols=categorical,
                    outputCols=grouped,
                    minFrequency=features.rare_categories.min_frequency,
                    minCount=features.rare_categories.min_count,
                    maxCategories=features.rare_categories.max_categories,
                    otherLabel=features.rare_categories.other_label,
                )
            )
            categorical = grouped
        indexed = [f"_indexed_{c}" for c in features.model_categorical]
        encoded = [f"_onehot_{c}" for c in features.model_categorical]
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
        tree_parts.extend(indexed)
    if features.hashing is not None:
        hashed = features.hashing.columns
        stages.append(
            FeatureHasher(
                inputCols=hashed,
                categoricalCols=hashed,
                numFeatures=features.hashing.num_features,
                outputCol="_hashed",
            )
        )
        parts.append("_hashed")
        tree_parts.append("_hashed")
    if tree_features:
        stages.append(VectorAssembler(inputCols=tree_parts, outputCol=TREE_FEATURES_COL))
    if features.selection is None:
        stages.append(VectorAssembler(inputCols=parts, outputCol=output_col))
        return stages
    stages.append(VectorAssembler(inputCols=parts, outputCol="_assembled"))
    stages.append(
        FeatureSlotSelector(
            inputCol="_assembled",
            outputCol=output_col,
            dropConstant=features.selection.drop_constant,
            maxCorrelation=features.selection.max_correlation,
        )
    )
    return stages


def feature_names(model: PipelineModel, features: FeaturesConfig) -> list[str]:
    """Human-readable names of the slots of the assembled feature vector, in order.

    Numeric features keep their names, missing indicators read ``missing(x)``, and each one-hot
    slot reads ``column=level`` with the levels the fitted StringIndexer learned, followed by
    ``column=<unseen or null>``, and hashed slots read ``hash(a,b)[i]``. Slots the selection stage
    dropped are left out.

    Args:
        model: A pipeline fitted from :func:`build_feature_stages` (plus a model stage).
        features: The config the stages were built from.

    Returns:
        One name per slot of the ``features`` vector.
    """
    names = list(features.model_numeric)
    if features.impute.indicator:
        names += [f"missing({c})" for c in features.model_numeric]
    indexers = [s for s in model.stages if isinstance(s, StringIndexerModel)]
    buckets = bucket_splits(model)
    if features.model_categorical and indexers:
        for column, labels in zip(features.model_categorical, indexers[0].labelsArray, strict=True):
            # StringIndexer(handleInvalid="keep") adds one index for unseen and null values, and
            # the encoder keeps its slot (dropLast drops the encoder's own invalid slot).
            names += [*(_level_name(column, label, buckets.get(column)) for label in labels)]
            names.append(f"{column}=<unseen or null>")
    if features.hashing is not None:
        hashed = f"hash({','.join(features.hashing.columns)})"
        names += [f"{hashed}[{i}]" for i in range(features.hashing.num_features)]
    slicers = [s for s in model.stages if isinstance(s, VectorSlicer) and s.getOutputCol() == FEATURES_COL]
    if slicers:
        names = [names[i] for i in slicers[0].getIndices()]
    return names


def bucket_splits(model: PipelineModel) -> dict[str, list[float]]:
    """The splits of each fitted bucket feature of a model, by the bucket's column."""
    return {s.getOutputCol(): list(s.getSplits()) for s in model.stages if isinstance(s, Bucketizer)}


def bucket_range(label: str, splits: list[float]) -> str | None:
    """A bucket's index as text (``"1.0"``) as the range of the source column it stands for (``[6, 15)``).

    ``<missing>`` for the extra bucket of ``Bucketizer(handleInvalid="keep")`` (NaN and null); None when
    ``label`` is no bucket index of these splits.
    """
    try:
        index = int(float(label))
    except ValueError:
        return None
    if not 0 <= index <= len(splits) - 1 or str(float(index)) != label:
        return None
    if index == len(splits) - 1:
        return "<missing>"
    low, high = splits[index], splits[index + 1]
    if low == float("-inf"):
        return f"<{high:.4g}"
    if high == float("inf"):
        return f">={low:.4g}"
    return f"[{low:.4g}, {high:.4g})"


def _level_name(column: str, label: str, splits: list[float] | None) -> str:
    """``column=level``; a bucket's level is its range of the source column (``tenure_band=[6, 15)``, not ``=1.0``)."""
    shown = bucket_range(label, splits) if splits is not None else None
    return f"{column}={shown if shown is not None else label}"


def tree_layout(features: FeaturesConfig) -> tuple[list[str], list[int]]:
    """The names of the slots of :data:`~deltaml.columns.TREE_FEATURES_COL` and which slots are categorical.

    Numeric features keep their names, missing indicators read ``missing(x)``, a categorical
    column is one slot under its own name (its value is the level's frequency rank, the last rank
    for unseen and null values), hashed slots read ``hash(a,b)[i]``.
    """
    names = list(features.model_numeric)
    if features.impute.indicator:
        names += [f"missing({c})" for c in features.model_numeric]
    categorical = list(range(len(names), len(names) + len(features.model_categorical)))
    names += list(features.model_categorical)
    if features.hashing is not None:
        hashed = f"hash({','.join(features.hashing.columns)})"
        names += [f"{hashed}[{i}]" for i in range(features.hashing.num_features)]
    return names, categorical


def category_values(model: PipelineModel) -> int:
    """The most values a categorical slot of the tree vector takes in a fitted feature pipeline.

    A column's levels learned by its StringIndexer, plus one for unseen and null values; 0 without
    categorical columns. Spark's tree families need ``maxBins`` at least this large.
    """
    indexers = [s for s in model.stages if isinstance(s, StringIndexerModel)]
    return max((len(labels) + 1 for s in indexers for labels in s.labelsArray), default=0)


def bind_window_stages(
    model: PipelineModel,
    windows: list[WindowFeaturesConfig],
    events: list[Table],
    as_of: datetime | None = None,
) -> None:
    """Point a loaded model's window stages at this environment's event tables, and set their as-of time.

    A model carries the event table location it was trained with; scoring in another
    environment (another state dir, a cluster, Databricks) reads the tables its config names.
    Stages are matched to window groups by prefix; a stage with no matching group keeps its
    saved location. ``as_of`` None keeps each row's reference time.
    """
    by_prefix = {w.prefix: table for w, table in zip(windows, events, strict=True)}
    for stage in model.stages:
        if not isinstance(stage, WindowFeatures):
            continue
        table = by_prefix.get(stage.getPrefix())
        if table is not None:
            stage.setEvents(table.ref, table.is_path)
        stage.setAsOf(as_of.isoformat() if as_of is not None else "")
