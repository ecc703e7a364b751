"""Cleaning stages: saveable Spark ML stages that impute, cap outliers, coerce types and group rare categories."""

from __future__ import annotations

import logging
from typing import Any, Self, TypeVar

from pyspark import keyword_only
from pyspark.errors import AnalysisException
from pyspark.ml.base import Estimator, Model, Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCols, HasOutputCols
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, DoubleType, FloatType, NumericType, StringType

from deltaml.errors import StepInputError

LOG = logging.getLogger(__name__)


# Every stage here is pure Python: a saved PipelineModel records each one as ``deltaml.ml.cleaning.<Class>``
# (``deltaml.cleaning.<Class>`` before the layering; that module still re-exports them) and PipelineModel.load
# imports that path, so these classes must not move or be renamed. Only built-in
# Column expressions run on the executors, which therefore never need deltaml installed.

CAPPING_METHODS = ("quantile", "iqr")


_IQR_PROBABILITIES = [0.25, 0.75]


_INFINITY = float("inf")


_T = TypeVar("_T")


def _to_list_list_string(value: Any) -> list[list[str]]:
    """TypeConverter for a list of lists of strings; pyspark has ``toListListFloat`` but no string twin."""
    return [TypeConverters.toListString(item) for item in TypeConverters.toList(value)]


def _value_or_none(stage: Params, param: Param[_T]) -> _T | None:
    """The param's value, or None when it is neither set nor defaulted (or was set to None)."""
    return stage.getOrDefault(param) if stage.isDefined(param) else None


def _column(name: str) -> Column:
    """A top-level column by its exact name, even one that contains dots or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def _is_floating(data_type: DataType) -> bool:
    return isinstance(data_type, FloatType | DoubleType)


def _missing(name: str, data_type: DataType) -> Column:
    """True where the value is null, or NaN in a float/double column."""
    value = _column(name)
    return value.isNull() | F.isnan(value) if _is_floating(data_type) else value.isNull()


def _input_types(stage: Params, dataset: DataFrame, columns: list[str]) -> dict[str, DataType]:
    """The data type of each input column, or an error naming the missing and the present columns."""
    present = {field.name: field.dataType for field in dataset.schema.fields}
    missing = [c for c in columns if c not in present]
    if missing:
        raise StepInputError(
            f"{type(stage).__name__}: input columns {missing} are not in the DataFrame; "
            f"present columns: {list(present)}"
        )
    return {c: present[c] for c in columns}


def _require_types(stage: Params, types: dict[str, DataType], expected: type[DataType], what: str) -> None:
    wrong = {c: t.simpleString() for c, t in types.items() if not isinstance(t, expected)}
    if wrong:
        raise StepInputError(
            f"{type(stage).__name__}: input columns must be {what}, got {wrong} "
            "(cast them first, e.g. with TypeCoercer)"
        )


def _require_input_cols(stage: HasInputCols) -> list[str]:
    columns = _value_or_none(stage, stage.inputCols)
    if not columns:
        raise StepInputError(f"{type(stage).__name__}: set inputCols to a non-empty list of column names")
    if len(set(columns)) != len(columns):
        raise StepInputError(f"{type(stage).__name__}: inputCols has duplicates: {columns}")
    return list(columns)


def _require_same_length(stage: Params, name: str, values: list[Any], columns: list[str]) -> None:
    if len(values) != len(columns):
        raise StepInputError(
            f"{type(stage).__name__}: {name} has {len(values)} entries but inputCols has {len(columns)} "
            f"({columns}); give one per input column"
        )


class _InputOutputCols(HasInputCols, HasOutputCols):
    """Mixin for stages that map each of ``inputCols`` to the ``outputCols`` entry at the same position.

    An output column may be its own input column (replaced in place); any other existing column of
    that name is replaced too.
    """

    def setInputCols(self, value: list[str]) -> Self:
        """Sets the value of :py:attr:`inputCols`."""
        return self._set(inputCols=value)

    def setOutputCols(self, value: list[str]) -> Self:
        """Sets the value of :py:attr:`outputCols`."""
        return self._set(outputCols=value)

    def _column_pairs(self) -> list[tuple[str, str]]:
        """``(input, output)`` pairs, checked: both lists set, equally long, no duplicate names."""
        inputs = _require_input_cols(self)
        outputs = _value_or_none(self, self.outputCols)
        if not outputs:
            raise StepInputError(f"{type(self).__name__}: set outputCols, one output column per input column")
        _require_same_length(self, "outputCols", outputs, inputs)
        if len(set(outputs)) != len(outputs):
            raise StepInputError(f"{type(self).__name__}: outputCols has duplicates: {outputs}")
        return list(zip(inputs, outputs, strict=True))


class TypeCoercer(Transformer, HasInputCols, DefaultParamsReadable["TypeCoercer"], DefaultParamsWritable):
    """Casts each input column, in place, to a Spark SQL type; values that do not parse become null.

    Uses ``try_cast`` semantics whatever ``spark.sql.ansi.enabled`` says, so ``"12 months"`` cast to
    ``double`` gives null instead of failing the job.

    Params:
        inputCols: The columns to cast; each keeps its name and position.
        targetTypes: One Spark SQL type name per input column, e.g. ``"double"``, ``"bigint"``, ``"string"``.
    """

    _input_kwargs: dict[str, Any]

    targetTypes: Param[list[str]] = Param(
        Params._dummy(),
        "targetTypes",
        "Spark SQL type name for each input column, e.g. 'double', 'bigint', 'string', 'date'",
        typeConverter=TypeConverters.toListString,
    )

    @keyword_only
    def __init__(self, *, inputCols: list[str] | None = None, targetTypes: list[str] | None = None) -> None:
        """Create the stage.

        Args:
            inputCols: The columns to cast in place.
            targetTypes: One Spark SQL type name per input column.
        """
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCols: list[str] | None = None, targetTypes: list[str] | None = None) -> Self:
        """Sets params for this TypeCoercer; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def setInputCols(self, value: list[str]) -> Self:
        """Sets the value of :py:attr:`inputCols`."""
        return self._set(inputCols=value)

    def setTargetTypes(self, value: list[str]) -> Self:
        """Sets the value of :py:attr:`targetTypes`."""
        return self._set(targetTypes=value)

    def getTargetTypes(self) -> list[str]:
        """Gets the value of :py:attr:`targetTypes`."""
        return self.getOrDefault(self.targetTypes)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        columns = _require_input_cols(self)
        types = _value_or_none(self, self.targetTypes) or []
        _require_same_length(self, "targetTypes", types, columns)
        _input_types(self, dataset, columns)
        casts: dict[str, Column] = {}
        for name, type_name in zip(columns, types, strict=True):
            try:
                casts[name] = _column(name).try_cast(type_name)
            except AnalysisException as exc:
                raise StepInputError(
                    f"TypeCoercer: target type {type_name!r} for column {name!r} is not a Spark SQL type "
                    f"(use a name such as 'double', 'bigint', 'string', 'date'): {exc.getMessage()}"
                ) from None
        return dataset.withColumns(casts)


class ConstantImputer(Transformer, _InputOutputCols, DefaultParamsReadable["ConstantImputer"], DefaultParamsWritable):
    """Replaces missing numeric values with one constant: null, and NaN in float/double columns.

    Outputs are double columns. Unlike ``pyspark.ml.feature.Imputer`` nothing is learned, so the
    stage needs no fitting and cannot leak statistics from scoring data.

    Params:
        inputCols: Numeric columns to fill.
        outputCols: One output column per input column.
        fillValue: The value written where the input is missing (default 0.0).
    """

    _input_kwargs: dict[str, Any]

    fillValue: Param[float] = Param(
        Params._dummy(),
        "fillValue",
        "value used where the input is null or NaN",
        typeConverter=TypeConverters.toFloat,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        fillValue: float = 0.0,
    ) -> None:
        """Create the stage.

        Args:
            inputCols: Numeric columns to fill.
            outputCols: One output column per input column.
            fillValue: The value written where the input is null or NaN.
        """
        super().__init__()
        self._setDefault(fillValue=0.0)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        fillValue: float = 0.0,
    ) -> Self:
        """Sets params for this ConstantImputer; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def setFillValue(self, value: float) -> Self:
        """Sets the value of :py:attr:`fillValue`."""
        return self._set(fillValue=value)

    def getFillValue(self) -> float:
        """Gets the value of :py:attr:`fillValue`."""
        return self.getOrDefault(self.fillValue)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        pairs = self._column_pairs()
        types = _input_types(self, dataset, [c for c, _ in pairs])
        _require_types(self, types, NumericType, "numeric")
        fill = F.lit(self.getFillValue())
        return dataset.withColumns(
            {out: F.when(_missing(c, types[c]), fill).otherwise(_column(c).cast("double")) for c, out in pairs}
        )


class MissingIndicator(Transformer, _InputOutputCols, DefaultParamsReadable["MissingIndicator"], DefaultParamsWritable):
    """Flags missing values: 1.0 where the input is null (or NaN in a float/double column), else 0.0.

    Params:
        inputCols: Columns of any type.
        outputCols: One double output column per input column.
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(self, *, inputCols: list[str] | None = None, outputCols: list[str] | None = None) -> None:
        """Create the stage.

        Args:
            inputCols: Columns of any type.
            outputCols: One output column per input column.
        """
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCols: list[str] | None = None, outputCols: list[str] | None = None) -> Self:
        """Sets params for this MissingIndicator; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        pairs = self._column_pairs()
        types = _input_types(self, dataset, [c for c, _ in pairs])
        return dataset.withColumns(
            {out: F.when(_missing(c, types[c]), F.lit(1.0)).otherwise(F.lit(0.0)) for c, out in pairs}
        )


class _OutlierCapperParams(_InputOutputCols):
    """Params shared by :py:class:`OutlierCapper` and :py:class:`OutlierCapperModel`."""

    method: Param[str] = Param(
        Params._dummy(),
        "method",
        "how bounds are learned: 'quantile' (the lowerQuantile and upperQuantile values) or 'iqr' "
        "(q1 - iqrMultiplier * IQR, q3 + iqrMultiplier * IQR)",
        typeConverter=TypeConverters.toString,
    )
    lowerQuantile: Param[float] = Param(
        Params._dummy(),
        "lowerQuantile",
        "probability of the lower bound, for method 'quantile'",
        typeConverter=TypeConverters.toFloat,
    )
    upperQuantile: Param[float] = Param(
        Params._dummy(),
        "upperQuantile",
        "probability of the upper bound, for method 'quantile'",
        typeConverter=TypeConverters.toFloat,
    )
    iqrMultiplier: Param[float] = Param(
        Params._dummy(),
        "iqrMultiplier",
        "how many interquartile ranges beyond q1 and q3 the bounds lie, for method 'iqr'",
        typeConverter=TypeConverters.toFloat,
    )
    relativeError: Param[float] = Param(
        Params._dummy(),
        "relativeError",
        "relative target precision of DataFrame.approxQuantile (0 computes exact quantiles, at a cost)",
        typeConverter=TypeConverters.toFloat,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(method="quantile", lowerQuantile=0.01, upperQuantile=0.99, iqrMultiplier=1.5)
        self._setDefault(relativeError=0.001)

    def getMethod(self) -> str:
        """Gets the value of :py:attr:`method`."""
        return self.getOrDefault(self.method)

    def getLowerQuantile(self) -> float:
        """Gets the value of :py:attr:`lowerQuantile`."""
        return self.getOrDefault(self.lowerQuantile)

    def getUpperQuantile(self) -> float:
        """Gets the value of :py:attr:`upperQuantile`."""
        return self.getOrDefault(self.upperQuantile)

    def getIqrMultiplier(self) -> float:
        """Gets the value of :py:attr:`iqrMultiplier`."""
        return self.getOrDefault(self.iqrMultiplier)

    def getRelativeError(self) -> float:
        """Gets the value of :py:attr:`relativeError`."""
        return self.getOrDefault(self.relativeError)


class OutlierCapper(
    Estimator["OutlierCapperModel"],
    _OutlierCapperParams,
    DefaultParamsReadable["OutlierCapper"],
    DefaultParamsWritable,
):
    """Learns lower and upper bounds per numeric column; the model clips values to them (winsorising).

    Bounds come from one ``DataFrame.approxQuantile`` call over the fitted data, ignoring null, NaN
    and +/-infinity (an infinite value is an outlier to be capped, not evidence for a bound).

    Params:
        inputCols: Numeric columns to cap.
        outputCols: One double output column per input column.
        method: ``"quantile"`` (default) or ``"iqr"``.
        lowerQuantile: Probability of the lower bound for ``"quantile"`` (default 0.01).
        upperQuantile: Probability of the upper bound for ``"quantile"`` (default 0.99).
        iqrMultiplier: ``k`` in ``[q1 - k * IQR, q3 + k * IQR]`` for ``"iqr"`` (default 1.5).
        relativeError: Precision of ``approxQuantile`` (default 0.001; 0 is exact).
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        method: str = "quantile",
        lowerQuantile: float = 0.01,
        upperQuantile: float = 0.99,
        iqrMultiplier: float = 1.5,
        relativeError: float = 0.001,
    ) -> None:
        """Create the estimator.

        Args:
            inputCols: Numeric columns to cap.
            outputCols: One output column per input column.
            method: ``"quantile"`` or ``"iqr"``.
            lowerQuantile: Probability of the lower bound for ``"quantile"``.
            upperQuantile: Probability of the upper bound for ``"quantile"``.
            iqrMultiplier: How many IQRs beyond the quartiles the bounds lie, for ``"iqr"``.
            relativeError: Precision of ``approxQuantile``.
        """
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        method: str = "quantile",
        lowerQuantile: float = 0.01,
        upperQuantile: float = 0.99,
        iqrMultiplier: float = 1.5,
        relativeError: float = 0.001,
    ) -> Self:
        """Sets params for this OutlierCapper; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def setMethod(self, value: str) -> Self:
        """Sets the value of :py:attr:`method`."""
        return self._set(method=value)

    def setLowerQuantile(self, value: float) -> Self:
        """Sets the value of :py:attr:`lowerQuantile`."""
        return self._set(lowerQuantile=value)

    def setUpperQuantile(self, value: float) -> Self:
        """Sets the value of :py:attr:`upperQuantile`."""
        return self._set(upperQuantile=value)

    def setIqrMultiplier(self, value: float) -> Self:
        """Sets the value of :py:attr:`iqrMultiplier`."""
        return self._set(iqrMultiplier=value)

    def setRelativeError(self, value: float) -> Self:
        """Sets the value of :py:attr:`relativeError`."""
        return self._set(relativeError=value)

    def _probabilities(self) -> list[float]:
        method = self.getMethod()
        if method not in CAPPING_METHODS:
            raise StepInputError(f"OutlierCapper: method must be one of {list(CAPPING_METHODS)}, got {method!r}")
        if not 0.0 <= self.getRelativeError() <= 1.0:
            raise StepInputError(f"OutlierCapper: relativeError must be in [0, 1], got {self.getRelativeError()}")
        if method == "iqr":
            if not self.getIqrMultiplier() >= 0.0:
                raise StepInputError(f"OutlierCapper: iqrMultiplier must be >= 0, got {self.getIqrMultiplier()}")
            return list(_IQR_PROBABILITIES)
        lower, upper = self.getLowerQuantile(), self.getUpperQuantile()
        if not 0.0 <= lower <= upper <= 1.0:
            raise StepInputError(
                f"OutlierCapper: need 0 <= lowerQuantile <= upperQuantile <= 1, got {lower} and {upper}"
            )
        return [lower, upper]

    def _fit(self, dataset: DataFrame) -> OutlierCapperModel:
        pairs = self._column_pairs()
        probabilities = self._probabilities()
        inputs = [c for c, _ in pairs]
        types = _input_types(self, dataset, inputs)
        _require_types(self, types, NumericType, "numeric")
        finite = []
        for index, name in enumerate(inputs):
            value = _column(name).cast("double")
            usable = value.isNotNull() & ~F.isnan(value) & (F.abs(value) != F.lit(_INFINITY))
            finite.append(F.when(usable, value).alias(f"_c{index}"))
        quantiles = dataset.select(*finite).approxQuantile(
            [f"_c{i}" for i in range(len(inputs))], probabilities, self.getRelativeError()
        )
        empty = [name for name, found in zip(inputs, quantiles, strict=True) if not found]
        if empty:
            raise StepInputError(
                f"OutlierCapper: columns {empty} have no finite values in the data being fitted, so no bounds "
                "can be learned (drop them from inputCols or impute them first)"
            )
        lower_bounds, upper_bounds = [], []
        for low, high in quantiles:
            if self.getMethod() == "iqr":
                spread = self.getIqrMultiplier() * (high - low)
                low, high = low - spread, high + spread
            lower_bounds.append(low)
            upper_bounds.append(high)
        LOG.debug("OutlierCapper bounds: lower %s, upper %s for %s", lower_bounds, upper_bounds, inputs)
        model = OutlierCapperModel(lowerBounds=lower_bounds, upperBounds=upper_bounds)
        return self._copyValues(model)


class OutlierCapperModel(
    Model, _OutlierCapperParams, DefaultParamsReadable["OutlierCapperModel"], DefaultParamsWritable
):
    """Clips each input column to its learned ``[lowerBound, upperBound]``; null and NaN pass through.

    Params:
        lowerBounds: Learned lower bound per input column.
        upperBounds: Learned upper bound per input column.
        (and the params of :py:class:`OutlierCapper`, copied from the estimator that was fitted)
    """

    _input_kwargs: dict[str, Any]

    lowerBounds: Param[list[float]] = Param(
        Params._dummy(), "lowerBounds", "learned lower bound per input column", typeConverter=TypeConverters.toListFloat
    )
    upperBounds: Param[list[float]] = Param(
        Params._dummy(), "upperBounds", "learned upper bound per input column", typeConverter=TypeConverters.toListFloat
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        lowerBounds: list[float] | None = None,
        upperBounds: list[float] | None = None,
    ) -> None:
        """Create the model; ``OutlierCapper.fit`` and ``DefaultParamsReader`` are the usual callers.

        Args:
            inputCols: Numeric columns to cap.
            outputCols: One output column per input column.
            lowerBounds: Lower bound per input column.
            upperBounds: Upper bound per input column.
        """
        super().__init__()
        self._set(**self._input_kwargs)

    def getLowerBounds(self) -> list[float]:
        """Gets the value of :py:attr:`lowerBounds`."""
        return self.getOrDefault(self.lowerBounds)

    def getUpperBounds(self) -> list[float]:
        """Gets the value of :py:attr:`upperBounds`."""
        return self.getOrDefault(self.upperBounds)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        pairs = self._column_pairs()
        inputs = [c for c, _ in pairs]
        lower_bounds, upper_bounds = _value_or_none(self, self.lowerBounds), _value_or_none(self, self.upperBounds)
        if lower_bounds is None or upper_bounds is None:
            raise StepInputError("OutlierCapperModel: lowerBounds and upperBounds are not set; fit an OutlierCapper")
        _require_same_length(self, "lowerBounds", lower_bounds, inputs)
        _require_same_length(self, "upperBounds", upper_bounds, inputs)
        unordered = [c for c, lo, hi in zip(inputs, lower_bounds, upper_bounds, strict=True) if not lo <= hi]
        if unordered:
            raise StepInputError(
                f"OutlierCapperModel: columns {unordered} need lowerBound <= upperBound (and neither NaN); "
                f"got lowerBounds={lower_bounds}, upperBounds={upper_bounds}"
            )
        types = _input_types(self, dataset, inputs)
        _require_types(self, types, NumericType, "numeric")
        capped: dict[str, Column] = {}
        for (name, out), low, high in zip(pairs, lower_bounds, upper_bounds, strict=True):
            value = _column(name).cast("double")
            # greatest/least skip null arguments, so without the guard a null would become the lower bound.
            clipped = F.least(F.greatest(value, F.lit(low)), F.lit(high))
            capped[out] = F.when(value.isNull() | F.isnan(value), value).otherwise(clipped)
        return dataset.withColumns(capped)


class _RareCategoryGrouperParams(_InputOutputCols):
    """Params shared by :py:class:`RareCategoryGrouper` and :py:class:`RareCategoryGrouperModel`."""

    minFrequency: Param[float] = Param(
        Params._dummy(),
        "minFrequency",
        "smallest share of a column's non-null values a category needs to be kept",
        typeConverter=TypeConverters.toFloat,
    )
    minCount: Param[int] = Param(
        Params._dummy(),
        "minCount",
        "smallest number of rows a category needs to be kept",
        typeConverter=TypeConverters.toInt,
    )
    maxCategories: Param[int] = Param(
        Params._dummy(),
        "maxCategories",
        "most categories kept per column, the most frequent first (ties by value); 0 means no cap",
        typeConverter=TypeConverters.toInt,
    )
    otherLabel: Param[str] = Param(
        Params._dummy(),
        "otherLabel",
        "value written for rare categories and for categories never seen when fitting",
        typeConverter=TypeConverters.toString,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(minFrequency=0.01, minCount=0, maxCategories=0, otherLabel="__other__")

    def getMinFrequency(self) -> float:
        """Gets the value of :py:attr:`minFrequency`."""
        return self.getOrDefault(self.minFrequency)

    def getMinCount(self) -> int:
        """Gets the value of :py:attr:`minCount`."""
        return self.getOrDefault(self.minCount)

    def getMaxCategories(self) -> int:
        """Gets the value of :py:attr:`maxCategories`."""
        return self.getOrDefault(self.maxCategories)

    def getOtherLabel(self) -> str:
        """Gets the value of :py:attr:`otherLabel`."""
        return self.getOrDefault(self.otherLabel)


class RareCategoryGrouper(
    Estimator["RareCategoryGrouperModel"],
    _RareCategoryGrouperParams,
    DefaultParamsReadable["RareCategoryGrouper"],
    DefaultParamsWritable,
):
    """Learns which categories of each string column are frequent; the model maps the rest to one label.

    A category is kept when it occurs in at least ``minCount`` rows and in at least ``minFrequency``
    of the column's non-null rows and, when ``maxCategories`` is positive, is among the
    ``maxCategories`` most frequent of those (equal counts are ordered by category value, so the
    same data always keeps the same categories). Counting is one aggregation over all input columns
    stacked together; only the kept categories and their counts reach the driver.

    Params:
        inputCols: String columns to group.
        outputCols: One string output column per input column.
        minFrequency: Smallest share of non-null values to keep a category (default 0.01).
        minCount: Smallest row count to keep a category (default 0).
        maxCategories: Most categories kept per column, the most frequent first (default 0: no cap).
        otherLabel: Label for rare and unseen categories (default ``"__other__"``).
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        minFrequency: float = 0.01,
        minCount: int = 0,
        maxCategories: int = 0,
        otherLabel: str = "__other__",
    ) -> None:
        """Create the estimator.

        Args:
            inputCols: String columns to group.
            outputCols: One output column per input column.
            minFrequency: Smallest share of non-null values to keep a category.
            minCount: Smallest row count to keep a category.
            maxCategories: Most categories kept per column, the most frequent first; 0 means no cap.
            otherLabel: Label for rare and unseen categories.
        """
        super().__init__()
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        minFrequency: float = 0.01,
        minCount: int = 0,
        maxCategories: int = 0,
        otherLabel: str = "__other__",
    ) -> Self:
        """Sets params for this RareCategoryGrouper; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def setMinFrequency(self, value: float) -> Self:
        """Sets the value of :py:attr:`minFrequency`."""
        return self._set(minFrequency=value)

    def setMinCount(self, value: int) -> Self:
        """Sets the value of :py:attr:`minCount`."""
        return self._set(minCount=value)

    def setMaxCategories(self, value: int) -> Self:
        """Sets the value of :py:attr:`maxCategories`."""
        return self._set(maxCategories=value)

    def setOtherLabel(self, value: str) -> Self:
        """Sets the value of :py:attr:`otherLabel`."""
        return self._set(otherLabel=value)

    def _fit(self, dataset: DataFrame) -> RareCategoryGrouperModel:
        pairs = self._column_pairs()
        min_frequency, min_count, max_categories = self.getMinFrequency(), self.getMinCount(), self.getMaxCategories()
        if not 0.0 <= min_frequency <= 1.0:
            raise StepInputError(f"RareCategoryGrouper: minFrequency must be in [0, 1], got {min_frequency}")
        if min_count < 0:
            raise StepInputError(f"RareCategoryGrouper: minCount must be >= 0, got {min_count}")
        if max_categories < 0:
            raise StepInputError(
                f"RareCategoryGrouper: maxCategories must be >= 0 (0 means no cap), got {max_categories}"
            )
        inputs = [c for c, _ in pairs]
        types = _input_types(self, dataset, inputs)
        _require_types(self, types, StringType, "strings")
        stacked = F.array(*[F.struct(F.lit(i).alias("index"), _column(c).alias("value")) for i, c in enumerate(inputs)])
        counts = (
            dataset.select(F.inline(stacked))
            .where(F.col("value").isNotNull())
            .groupBy("index", "value")
            .count()
            .withColumn("total", F.sum("count").over(Window.partitionBy("index")))
        )
        frequent = counts.where((F.col("count") >= min_count) & (F.col("count") / F.col("total") >= min_frequency))
        if max_categories > 0:
            # Spark orders strings by code point, as Python does, so the cap agrees with the sort below.
            rank = F.row_number().over(Window.partitionBy("index").orderBy(F.desc("count"), F.asc("value")))
            frequent = frequent.withColumn("rank", rank).where(F.col("rank") <= max_categories)
        kept_rows = frequent.collect()
        kept: list[list[tuple[int, str]]] = [[] for _ in inputs]
        for row in kept_rows:
            kept[row["index"]].append((-row["count"], row["value"]))
        # Most frequent first, ties by value: the same data always gives the same Param.
        categories = [[value for _, value in sorted(found)] for found in kept]
        LOG.debug("RareCategoryGrouper keeps %s", dict(zip(inputs, categories, strict=True)))
        return self._copyValues(RareCategoryGrouperModel(keptCategories=categories))


class RareCategoryGrouperModel(
    Model, _RareCategoryGrouperParams, DefaultParamsReadable["RareCategoryGrouperModel"], DefaultParamsWritable
):
    """Keeps the learned categories of each column, maps every other non-null value to ``otherLabel``.

    Null stays null, so a later stage can still tell "missing" from "rare".

    Params:
        keptCategories: Learned categories to keep, one list per input column.
        (and the params of :py:class:`RareCategoryGrouper`, copied from the estimator that was fitted)
    """

    _input_kwargs: dict[str, Any]

    keptCategories: Param[list[list[str]]] = Param(
        Params._dummy(),
        "keptCategories",
        "learned categories to keep, one list per input column, most frequent first",
        typeConverter=_to_list_list_string,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        keptCategories: list[list[str]] | None = None,
        otherLabel: str = "__other__",
    ) -> None:
        """Create the model; ``RareCategoryGrouper.fit`` and ``DefaultParamsReader`` are the usual callers.

        Args:
            inputCols: String columns to group.
            outputCols: One output column per input column.
            keptCategories: Categories to keep, one list per input column.
            otherLabel: Label for every other non-null value.
        """
        super().__init__()
        self._set(**self._input_kwargs)

    def getKeptCategories(self) -> list[list[str]]:
        """Gets the value of :py:attr:`keptCategories`."""
        return self.getOrDefault(self.keptCategories)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        pairs = self._column_pairs()
        inputs = [c for c, _ in pairs]
        kept = _value_or_none(self, self.keptCategories)
        if kept is None:
            raise StepInputError("RareCategoryGrouperModel: keptCategories is not set; fit a RareCategoryGrouper")
        _require_same_length(self, "keptCategories", kept, inputs)
        types = _input_types(self, dataset, inputs)
        _require_types(self, types, StringType, "strings")
        other = F.lit(self.getOtherLabel())
        grouped: dict[str, Column] = {}
        for (name, out), categories in zip(pairs, kept, strict=True):
            value = _column(name)
            grouped[out] = F.when(value.isNull() | value.isin(categories), value).otherwise(other)
        return dataset.withColumns(grouped)
