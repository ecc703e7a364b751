"""Category encoders learned on the train split: frequency and smoothed target (mean) encoding."""

from __future__ import annotations

from typing import Any, Self

from pyspark import keyword_only
from pyspark.ml.base import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deltaml.columns import LABEL_COL
from deltaml.errors import StepInputError
from deltaml.ml.cleaning import _column, _InputOutputCols, _to_list_list_string, _value_or_none

# Like deltaml.ml.cleaning, saved models record ``deltaml.ml.encoders.<Class>`` (``deltaml.encoders`` before the
# layering, still re-exported there): do not move or rename.
ENCODING_METHODS = ("frequency", "target")


class _CategoryEncoderParams(_InputOutputCols):
    """Params shared by :py:class:`CategoryEncoder` and :py:class:`CategoryEncoderModel`."""

    method: Param[str] = Param(Params._dummy(), "method", "frequency or target", typeConverter=TypeConverters.toString)
    labelCol: Param[str] = Param(
        Params._dummy(), "labelCol", "numeric label column (target encoding)", typeConverter=TypeConverters.toString
    )
    smoothing: Param[float] = Param(
        Params._dummy(),
        "smoothing",
        "weight of the overall mean in a category's target mean, in rows (target encoding)",
        typeConverter=TypeConverters.toFloat,
    )

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._setDefault(method="frequency", labelCol=LABEL_COL, smoothing=10.0)

    def getMethod(self) -> str:
        """Gets the value of :py:attr:`method`."""
        return self.getOrDefault(self.method)

    def getLabelCol(self) -> str:
        """Gets the value of :py:attr:`labelCol`."""
        return self.getOrDefault(self.labelCol)

    def getSmoothing(self) -> float:
        """Gets the value of :py:attr:`smoothing`."""
        return self.getOrDefault(self.smoothing)


class CategoryEncoder(
    Estimator["CategoryEncoderModel"],
    _CategoryEncoderParams,
    DefaultParamsReadable["CategoryEncoder"],
    DefaultParamsWritable,
):
    """Learns one number per category of each input column, on the data it is fitted on.

    ``frequency``: the category's share of the rows (unseen or null at scoring: 0).
    ``target``: ``(sum of label + smoothing * mean label) / (rows + smoothing)`` for the
    category, pulled towards the overall mean when the category is rare (unseen or null: the
    overall mean). Fit it on the train split only; the label is not needed to transform.

    Params:
        inputCols, outputCols: Categorical columns and their double output columns.
        method: ``"frequency"`` (default) or ``"target"``.
        labelCol: The 0/1 (or numeric) label for ``"target"`` (default ``_label``).
        smoothing: Weight of the overall mean, in rows (default 10).
    """

    _input_kwargs: dict[str, Any]

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        method: str = "frequency",
        labelCol: str = LABEL_COL,
        smoothing: float = 10.0,
    ) -> None:
        """Create the encoder; see the class docstring for the arguments."""
        super().__init__()
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        method: str = "frequency",
        labelCol: str = LABEL_COL,
        smoothing: float = 10.0,
    ) -> Self:
        """Sets params for this CategoryEncoder; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def _fit(self, dataset: DataFrame) -> CategoryEncoderModel:
        pairs = self._column_pairs()
        method = self.getMethod()
        if method not in ENCODING_METHODS:
            raise StepInputError(f"CategoryEncoder: method must be one of {list(ENCODING_METHODS)}, got {method!r}")
        if self.getSmoothing() < 0:
            raise StepInputError(f"CategoryEncoder: smoothing must be >= 0, got {self.getSmoothing()}")
        missing = [c for c, _ in pairs if c not in dataset.columns]
        label = self.getLabelCol()
        if method == "target" and label not in dataset.columns:
            missing.append(label)
        if missing:
            raise StepInputError(f"CategoryEncoder: column(s) {missing} not found; present: {dataset.columns}")
        y = F.col(label).cast("double") if method == "target" else F.lit(0.0)
        # One pass: stack (column index, category, y) and aggregate per category; results are small.
        stacked = dataset.select(
            F.explode(
                F.array(
                    *[
                        F.struct(F.lit(i).alias("i"), _column(c).cast("string").alias("v"), y.alias("y"))
                        for i, (c, _) in enumerate(pairs)
                    ]
                )
            ).alias("s")
        ).select("s.*")
        totals = dataset.agg(F.count(F.lit(1)).alias("n"), F.avg(y).alias("mean")).first()
        assert totals is not None
        rows, prior = int(totals["n"]), float(totals["mean"] or 0.0)
        if rows == 0:
            raise StepInputError("CategoryEncoder: cannot fit on an empty DataFrame")
        per_category = (
            stacked.where(F.col("v").isNotNull())
            .groupBy("i", "v")
            .agg(F.count(F.lit(1)).alias("n"), F.sum("y").alias("sum_y"))
        )
        categories: list[list[str]] = [[] for _ in pairs]
        values: list[list[float]] = [[] for _ in pairs]
        smoothing = self.getSmoothing()
        for row in per_category.orderBy("i", "v").collect():
            categories[row["i"]].append(row["v"])
            if method == "frequency":
                values[row["i"]].append(row["n"] / rows)
            else:
                values[row["i"]].append((row["sum_y"] + smoothing * prior) / (row["n"] + smoothing))
        default = 0.0 if method == "frequency" else prior
        model = CategoryEncoderModel(
            inputCols=[c for c, _ in pairs],
            outputCols=[o for _, o in pairs],
            categories=categories,
            encodings=values,
            defaultValue=default,
        )
        return self._copyValues(model)


class CategoryEncoderModel(
    Model, _CategoryEncoderParams, DefaultParamsReadable["CategoryEncoderModel"], DefaultParamsWritable
):
    """Replaces each category by the number learned for it; unseen and null get ``defaultValue``.

    Params:
        categories: Learned categories, one list per input column.
        encodings: The number of each category, aligned with ``categories``.
        defaultValue: The number for unseen and null values.
    """

    _input_kwargs: dict[str, Any]

    categories: Param[list[list[str]]] = Param(
        Params._dummy(), "categories", "learned categories per input column", typeConverter=_to_list_list_string
    )
    encodings: Param[list[list[float]]] = Param(
        Params._dummy(), "encodings", "learned value per category", typeConverter=TypeConverters.toListListFloat
    )
    defaultValue: Param[float] = Param(
        Params._dummy(), "defaultValue", "value for unseen and null categories", typeConverter=TypeConverters.toFloat
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCols: list[str] | None = None,
        outputCols: list[str] | None = None,
        categories: list[list[str]] | None = None,
        encodings: list[list[float]] | None = None,
        defaultValue: float = 0.0,
    ) -> None:
        """Create the model; ``CategoryEncoder.fit`` and ``DefaultParamsReader`` are the usual callers."""
        super().__init__()
        self._set(**self._input_kwargs)

    def _transform(self, dataset: DataFrame) -> DataFrame:
        pairs = self._column_pairs()
        categories = _value_or_none(self, self.categories)
        encodings = _value_or_none(self, self.encodings)
        if categories is None or encodings is None:
            raise StepInputError("CategoryEncoderModel: categories are not set; fit a CategoryEncoder")
        default = F.lit(float(self.getOrDefault(self.defaultValue)))
        encoded = {}
        for (name, out), keys, numbers in zip(pairs, categories, encodings, strict=True):
            if not keys:
                encoded[out] = default
                continue
            lookup = F.create_map(*[item for k, v in zip(keys, numbers, strict=True) for item in (F.lit(k), F.lit(v))])
            encoded[out] = F.coalesce(F.try_element_at(lookup, _column(name).cast("string")), default)
        return dataset.withColumns(encoded)
