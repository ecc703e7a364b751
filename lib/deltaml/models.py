"""Model families: Spark ML classifiers built from config params, and the stages that finish every model.

Every family's fitted stages end with the same two columns, so evaluation, the gate and scoring
treat them alike: ``probability`` (a vector whose slot 1 is the positive class) and
``prediction`` (0/1 at the model's stored decision threshold, see :class:`DecisionThreshold`).
Saved models record ``deltaml.models.<Class>``: do not move or rename the stages.
"""

from __future__ import annotations

from typing import Any, Self

from pyspark import keyword_only
from pyspark.ml.base import Estimator, Transformer
from pyspark.ml.classification import (
    GBTClassifier,
    LinearSVC,
    LogisticRegression,
    MultilayerPerceptronClassifier,
    RandomForestClassifier,
)
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from deltaml.errors import StepInputError
from deltaml.features import FEATURES_COL

LABEL_COL = "_label"
WEIGHT_COL = "_weight"
PROBABILITY_COL = "probability"
PREDICTION_COL = "prediction"

_ESTIMATORS: dict[str, Any] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gbt": GBTClassifier,
    "linear_svc": LinearSVC,
    "mlp": MultilayerPerceptronClassifier,
}
# Params deltaml sets itself: a config that sets them would silently be overridden.
_RESERVED = {"featuresCol", "labelCol", "weightCol", "predictionCol", "probabilityCol", "rawPredictionCol", "layers"}


def positive_probability(probability_col: str = PROBABILITY_COL) -> Column:
    """The positive class's probability: slot 1 of a model's probability vector, as a double column."""
    return vector_to_array(F.col(probability_col))[1]


class DecisionThreshold(Transformer, DefaultParamsReadable["DecisionThreshold"], DefaultParamsWritable):
    """Sets ``prediction`` to 1.0 where the positive-class probability is at least ``threshold``, else 0.0.

    The last stage of every deltaml model, so the decision threshold (fixed, or chosen on the
    validation split) travels with the model whatever the family.
    """

    _input_kwargs: dict[str, Any]

    threshold: Param[float] = Param(
        Params._dummy(), "threshold", "positive when probability >= threshold", TypeConverters.toFloat
    )

    @keyword_only
    def __init__(self, *, threshold: float = 0.5) -> None:
        """Create the stage with a threshold in (0, 1)."""
        super().__init__()
        self._setDefault(threshold=0.5)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, threshold: float = 0.5) -> Self:
        """Sets params for this DecisionThreshold."""
        return self._set(**self._input_kwargs)

    def getThreshold(self) -> float:
        """Gets the value of :py:attr:`threshold`."""
        return self.getOrDefault(self.threshold)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        positive = positive_probability()
        return dataset.withColumn(PREDICTION_COL, (positive >= F.lit(self.getThreshold())).cast("double"))


class MarginToProbability(Transformer, DefaultParamsReadable["MarginToProbability"], DefaultParamsWritable):
    """A ``probability`` column for a margin classifier (LinearSVC): the logistic sigmoid of its margin.

    The result ranks rows exactly as the margin does (AUC is unchanged) but is not calibrated;
    log-loss of such a model says little.
    """

    def _transform(self, dataset: DataFrame) -> DataFrame:
        margin = vector_to_array(F.col("rawPrediction"))[1]
        positive = F.lit(1.0) / (F.lit(1.0) + F.exp(-margin))
        return dataset.withColumn(PROBABILITY_COL, array_to_vector(F.array(F.lit(1.0) - positive, positive)))


def model_stages(
    family: str,
    params: dict[str, Any],
    *,
    seed: int,
    num_features: int | None = None,
    weighted: bool = False,
) -> list[Estimator[Any] | Transformer]:
    """The unfitted stages of one model family, reading ``features`` and ``_label``.

    Args:
        family: One of ``logistic_regression``, ``random_forest``, ``gbt``, ``linear_svc``, ``mlp``.
        params: Spark ML params in Spark's camelCase; ``hidden_layers`` (a list of sizes) for ``mlp``.
        seed: Seed for families that draw random numbers.
        num_features: Size of the feature vector; needed by ``mlp`` for its input layer.
        weighted: Read per-row weights from ``_weight`` (families without weight support ignore it).

    Returns:
        The estimator, followed by :class:`MarginToProbability` for ``linear_svc``.

    Raises:
        StepInputError: An unknown family, an unknown or reserved param, or an invalid value.
    """
    if family not in _ESTIMATORS:
        raise StepInputError(f"step 'fit': unknown model family {family!r}; use one of {sorted(_ESTIMATORS)}")
    estimator = _ESTIMATORS[family](featuresCol=FEATURES_COL, labelCol=LABEL_COL)
    params = dict(params)
    hidden = params.pop("hidden_layers", None)
    if family == "mlp":
        if num_features is None:
            raise StepInputError("step 'fit': mlp needs the feature vector size; build it after the feature stages")
        sizes = [int(h) for h in (hidden if isinstance(hidden, list | tuple) else [hidden] if hidden else [16])]
        estimator.set(estimator.getParam("layers"), [num_features, *sizes, 2])
    elif hidden is not None:
        raise StepInputError(f"step 'fit': hidden_layers is a param of mlp only, not of {family}")
    valid = sorted(p.name for p in estimator.params if p.name not in _RESERVED)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise StepInputError(
            f"step 'fit': {unknown} are not params of {type(estimator).__name__} ({family}); valid: {valid}"
        )
    if estimator.hasParam("seed") and "seed" not in params:
        params["seed"] = seed
    for name, value in params.items():
        try:
            estimator.set(estimator.getParam(name), value)
        except (TypeError, ValueError) as exc:
            raise StepInputError(f"step 'fit': {family} param {name}={value!r} is invalid: {exc}") from None
    if weighted and estimator.hasParam("weightCol"):
        estimator.set(estimator.getParam("weightCol"), WEIGHT_COL)
    stages: list[Estimator[Any] | Transformer] = [estimator]
    if family == "linear_svc":
        stages.append(MarginToProbability())
    return stages


def supports_weights(family: str) -> bool:
    """Whether the family's estimator reads per-row weights."""
    return _ESTIMATORS[family]().hasParam("weightCol")


def class_weights(label_col: str = LABEL_COL) -> Any:
    """A transform adding ``_weight``: ``rows / (2 * rows of the row's class)``, from the data it is applied to.

    The two counts come from one aggregation of the (train) rows the transform receives.
    """

    def transform(df: DataFrame) -> DataFrame:
        row = df.agg(F.count("*").alias("n"), F.sum(label_col).alias("pos")).first()
        assert row is not None
        n, pos = int(row["n"]), int(row["pos"] or 0)
        if pos in (0, n):
            return df.withColumn(WEIGHT_COL, F.lit(1.0))
        positive, negative = n / (2.0 * pos), n / (2.0 * (n - pos))
        return df.withColumn(WEIGHT_COL, F.when(F.col(label_col) == 1.0, positive).otherwise(negative))

    return transform
