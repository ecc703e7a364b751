"""Model families: Spark ML estimators built from config params, and the stages that finish every model.

Every family's fitted stages end with the same columns, so evaluation, the gate and scoring
treat them alike. Classifiers give ``probability`` (a vector whose slot ``i`` is class ``i``;
slot 1 is the positive class of a binary label) and ``prediction`` (the class index; for a
binary label 0/1 at the model's stored decision threshold, see :class:`DecisionThreshold`).
Regressors give ``prediction``. Multiclass models end with :class:`ClassLabels`, which adds
``predicted_label``. Saved models record ``deltaml.ml.models.<Class>`` (``deltaml.models`` before the
layering, still re-exported there): do not move or rename the stages.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
from pyspark.ml.regression import GBTRegressor, LinearRegression, RandomForestRegressor
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from deltaml.columns import (
    FEATURES_COL,
    LABEL_COL,
    PREDICTED_LABEL_COL,
    PREDICTION_COL,
    PROBABILITY_COL,
    RAW_PREDICTION_COL,
    TREE_FEATURES_COL,
    WEIGHT_COL,
)
from deltaml.config.schema import LabelConfig
from deltaml.errors import StepInputError
from deltaml.io.flavor import positive_probability

_CLASSIFIERS: dict[str, Any] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "gbt": GBTClassifier,
    "linear_svc": LinearSVC,
    "mlp": MultilayerPerceptronClassifier,
}


_REGRESSORS: dict[str, Any] = {
    "linear_regression": LinearRegression,
    "random_forest": RandomForestRegressor,
    "gbt": GBTRegressor,
}


# Spark's tree families: with the tree vector they split each categorical column as one feature
# (its levels grouped), where one-hot slots would cost them accuracy and, converted to Spark's dense
# binned rows, about 4 bytes per slot per row (1,100 slots at 700,000 rows: 3 GB per trial).
SPARK_TREE_FAMILIES = frozenset({"random_forest", "gbt"})


# Params deltaml sets itself: a config that sets them would silently be overridden.
_RESERVED = {"featuresCol", "labelCol", "weightCol", "predictionCol", "probabilityCol", "rawPredictionCol", "layers"}


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
        margin = vector_to_array(F.col(RAW_PREDICTION_COL))[1]
        positive = F.lit(1.0) / (F.lit(1.0) + F.exp(-margin))
        return dataset.withColumn(PROBABILITY_COL, array_to_vector(F.array(F.lit(1.0) - positive, positive)))


def spark_param_problem(family: str, task: str, names: Collection[str]) -> str | None:
    """What is wrong with the param names a config gives a Spark family, or None; no JVM is needed.

    The names are read from the estimator's class (pyspark declares each param as a class
    attribute), so ``check-config`` can refuse a misspelt param before any Spark session starts.

    Args:
        family: A Spark ML family that can learn ``task``.
        task: ``binary``, ``multiclass`` or ``regression``.
        names: The params the config sets or searches (``hidden_layers`` is ``mlp``'s own).
    """
    estimators = _REGRESSORS if task == "regression" else _CLASSIFIERS
    estimator = estimators[family]
    valid = sorted(
        name for name in dir(estimator) if isinstance(getattr(estimator, name), Param) and name not in _RESERVED
    )
    own = {"hidden_layers"} if family == "mlp" else set()
    unknown = sorted(set(names) - set(valid) - own)
    if unknown:
        return f"{unknown} are not params of {estimator.__name__} ({family}); valid: {sorted([*valid, *own])}"
    return None


def model_stages(
    family: str,
    params: dict[str, Any],
    *,
    seed: int,
    num_features: int | None = None,
    weighted: bool = False,
    task: str = "binary",
    num_classes: int = 2,
    categories: int | None = None,
) -> list[Estimator[Any] | Transformer]:
    """The unfitted stages of one Spark ML model family, reading ``features`` and ``_label``.

    With ``categories``, the families of :data:`SPARK_TREE_FAMILIES` read the tree vector
    (:data:`~deltaml.columns.TREE_FEATURES_COL`) instead, whose categorical slots carry Spark's nominal
    metadata, and their ``maxBins`` is raised to ``categories`` where it is lower (Spark needs a bin
    for every value of a categorical feature).

    Args:
        family: A Spark ML family: ``logistic_regression``, ``random_forest``, ``gbt``,
            ``linear_svc``, ``mlp`` (classification) or ``linear_regression``, ``random_forest``,
            ``gbt`` (regression).
        params: Spark ML params in Spark's camelCase; ``hidden_layers`` (a list of sizes) for ``mlp``.
        seed: Seed for families that draw random numbers.
        num_features: Size of the feature vector; needed by ``mlp`` for its input layer.
        weighted: Read per-row weights from ``_weight`` (families without weight support ignore it).
        task: ``binary``, ``multiclass`` or ``regression``.
        num_classes: Classes of a classification label (the size of ``mlp``'s output layer).
        categories: The most values a categorical slot of the tree vector has (levels plus one for
            unseen and null), when the feature stages build that vector.

    Returns:
        The estimator, followed by :class:`MarginToProbability` for ``linear_svc``.

    Raises:
        StepInputError: An unknown family, an unknown or reserved param, or an invalid value.
    """
    estimators = _REGRESSORS if task == "regression" else _CLASSIFIERS
    if family not in estimators:
        raise StepInputError(
            f"step 'fit': model family {family!r} cannot learn a {task} label; use one of {sorted(estimators)}"
        )
    tree_vector = categories is not None and family in SPARK_TREE_FAMILIES
    estimator = estimators[family](featuresCol=TREE_FEATURES_COL if tree_vector else FEATURES_COL, labelCol=LABEL_COL)
    params = dict(params)
    hidden = params.pop("hidden_layers", None)
    if family == "mlp":
        if num_features is None:
            raise StepInputError("step 'fit': mlp needs the feature vector size; build it after the feature stages")
        sizes = [int(h) for h in (hidden if isinstance(hidden, list | tuple) else [hidden] if hidden else [16])]
        estimator.set(estimator.getParam("layers"), [num_features, *sizes, num_classes])
    elif hidden is not None:
        raise StepInputError(f"step 'fit': hidden_layers is a param of mlp only, not of {family}")
    problem = spark_param_problem(family, task, params)
    if problem:
        raise StepInputError(f"step 'fit': {problem}")
    if estimator.hasParam("seed") and "seed" not in params:
        params["seed"] = seed
    for name, value in params.items():
        try:
            estimator.set(estimator.getParam(name), value)
        except (TypeError, ValueError) as exc:
            raise StepInputError(f"step 'fit': {family} param {name}={value!r} is invalid: {exc}") from None
    if weighted and estimator.hasParam("weightCol"):
        estimator.set(estimator.getParam("weightCol"), WEIGHT_COL)
    if tree_vector and estimator.getOrDefault("maxBins") < (categories or 0):
        estimator.set(estimator.getParam("maxBins"), categories)
    stages: list[Estimator[Any] | Transformer] = [estimator]
    if family == "linear_svc":
        stages.append(MarginToProbability())
    return stages


def supports_weights(family: str, task: str = "binary") -> bool:
    """Whether the family's estimator reads per-row weights."""
    estimators = _REGRESSORS if task == "regression" else _CLASSIFIERS
    return family not in estimators or estimators[family]().hasParam("weightCol")


def label_text(value: Any) -> str:
    """A label value as Spark's ``cast('string')`` writes it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def encode_label(label: LabelConfig, classes: Sequence[str] | None = None) -> Column:
    """The numeric label the models learn: 0/1 (binary), the class index (multiclass) or the value.

    Rows whose label is not one of ``classes`` (multiclass) or not a number (regression) get null.
    """
    column = F.col(label.column)
    if label.task == "binary":
        return F.when(column == F.lit(label.positive), 1.0).otherwise(0.0)
    if label.task == "regression":
        return column.try_cast("double")
    names = list(classes) if classes is not None else [label_text(c) for c in label.classes or []]
    if not names:
        raise StepInputError("a multiclass label needs its classes (label.classes, or those of the trained model)")
    position = F.array_position(F.array(*[F.lit(n) for n in names]), column.cast("string"))
    return F.when(position > 0, (position - 1).cast("double"))


class ClassLabels(Transformer, DefaultParamsReadable["ClassLabels"], DefaultParamsWritable):
    """Adds ``predicted_label``: the label value of the predicted class index (multiclass models).

    The list of labels is the class order the model was trained with, so it also tells
    evaluation and the gate how to encode the label of new rows.
    """

    _input_kwargs: dict[str, Any]

    labels: Param[list[str]] = Param(
        Params._dummy(), "labels", "label value of each class index", TypeConverters.toListString
    )

    @keyword_only
    def __init__(self, *, labels: list[str] | None = None) -> None:
        """Create the stage with the label of each class index."""
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, labels: list[str] | None = None) -> Self:
        """Sets params for this ClassLabels."""
        return self._set(**self._input_kwargs)

    def getLabels(self) -> list[str]:
        """Gets the value of :py:attr:`labels`."""
        return self.getOrDefault(self.labels)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        names = F.array(*[F.lit(n) for n in self.getLabels()])
        index = F.col(PREDICTION_COL).cast("int")
        return dataset.withColumn(PREDICTED_LABEL_COL, F.element_at(names, index + 1))


def model_classes(stages: Sequence[Any]) -> list[str] | None:
    """The class labels stored in a multiclass model's :class:`ClassLabels` stage, or None."""
    found = [s for s in stages if isinstance(s, ClassLabels)]
    return found[-1].getLabels() if found else None


def class_weights(label_col: str = LABEL_COL) -> Any:
    """A transform adding ``_weight``: ``rows / (classes * rows of the row's class)``, from the data it gets.

    The class counts come from one aggregation of the (train) rows the transform receives.
    """

    def transform(df: DataFrame) -> DataFrame:
        counts = {float(r[0]): int(r[1]) for r in df.groupBy(label_col).count().collect() if r[0] is not None}
        if len(counts) < 2:
            return df.withColumn(WEIGHT_COL, F.lit(1.0))
        n = sum(counts.values())
        weight = F.lit(1.0)
        for value, count in counts.items():
            weight = F.when(F.col(label_col) == F.lit(value), n / (len(counts) * count)).otherwise(weight)
        return df.withColumn(WEIGHT_COL, weight)

    return transform
