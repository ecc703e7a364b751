"""Feature selection: drops constant and highly correlated slots of an assembled vector, learned on the train split."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Self

from pyspark import keyword_only
from pyspark.ml.base import Estimator
from pyspark.ml.feature import VectorSlicer
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.stat import Correlation, Summarizer
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame

from deltaml.errors import StepInputError
from deltaml.ml.cleaning import _column

LOG = logging.getLogger(__name__)


# The estimator is recorded as ``deltaml.ml.selection.FeatureSlotSelector`` in a saved Pipeline (``deltaml.selection``
# before the layering, still re-exported there): do not move or rename it. Its fitted model is pyspark's own
# VectorSlicer, so a fitted PipelineModel needs no deltaml class.

# Temporary column names, used only on the one-column frame the statistics are computed on.
_SLOTS = "slots"


_CANDIDATES = "candidates"


def _candidate_slots(variances: Sequence[float], drop_constant: bool, tolerance: float) -> list[int]:
    """The slots the constant rule keeps, in slot order; a NaN variance is not constant."""
    if not drop_constant:
        return list(range(len(variances)))
    return [slot for slot, variance in enumerate(variances) if not variance <= tolerance]


def kept_slots(
    variances: Sequence[float],
    correlation: Sequence[Sequence[float]] | None,
    drop_constant: bool,
    max_correlation: float,
    tolerance: float,
) -> list[int]:
    """The slots a :py:class:`FeatureSlotSelector` keeps, given statistics of the data it is fitted on.

    First, when ``drop_constant`` is true, a slot whose variance is ``<= tolerance`` is dropped as
    constant. Then, when ``max_correlation < 1``, the remaining (candidate) slots are walked in slot
    order and a slot is dropped when its absolute Pearson correlation with a slot already kept is
    ``>= max_correlation``; so of two correlated slots the first one is kept.

    Args:
        variances: Variance of every slot, in slot order.
        correlation: Pearson correlation matrix of the candidate slots only (the slots the constant
            rule keeps, in slot order; all slots when ``drop_constant`` is false), or None when the
            correlation rule is off. A NaN entry (a slot without variance) counts as uncorrelated.
        drop_constant: Whether constant slots are dropped.
        max_correlation: Correlation threshold in (0, 1]; 1 switches the correlation rule off.
        tolerance: Largest variance that still counts as constant.

    Returns:
        The kept slot indices, ascending; empty when every slot is constant.

    Raises:
        ValueError: ``correlation`` is not a square matrix over the candidate slots.
    """
    candidates = _candidate_slots(variances, drop_constant, tolerance)
    if correlation is None or max_correlation >= 1.0:
        return candidates
    if len(correlation) != len(candidates) or any(len(row) != len(candidates) for row in correlation):
        raise ValueError(
            f"correlation must be a {len(candidates)} x {len(candidates)} matrix over the candidate slots "
            f"{candidates}, got {len(correlation)} rows of lengths {sorted({len(row) for row in correlation})}"
        )
    kept_positions: list[int] = []
    for position in range(len(candidates)):
        # abs(NaN) >= threshold is False: an undefined correlation never drops a slot.
        if not any(abs(correlation[position][k]) >= max_correlation for k in kept_positions):
            kept_positions.append(position)
    return [candidates[position] for position in kept_positions]


class FeatureSlotSelector(
    Estimator[VectorSlicer],
    HasInputCol,
    HasOutputCol,
    DefaultParamsReadable["FeatureSlotSelector"],
    DefaultParamsWritable,
):
    """Learns which slots of a vector column carry information; the fitted stage keeps only those.

    A slot is constant when its (sample) variance over the fitted rows is at most
    ``varianceTolerance``; such slots are dropped when ``dropConstant`` is set. When
    ``maxCorrelation`` is below 1, the other slots are walked in slot order and a slot whose
    absolute Pearson correlation with a slot already kept is at least ``maxCorrelation`` is
    dropped, so the first slot of a correlated pair stays (see :py:func:`kept_slots`).

    Variances come from one ``Summarizer`` pass; the correlation matrix, over the non-constant
    slots only, from ``Correlation.corr``, computed only when ``maxCorrelation < 1``. Rows whose
    vector is null are ignored. Only the statistics (one number per slot, or per pair of
    non-constant slots) reach the driver. Fit it on the train split only.

    ``fit`` returns pyspark's own :py:class:`~pyspark.ml.feature.VectorSlicer` with the kept
    ``indices``, so a fitted PipelineModel saves and loads with built-in classes only; read the
    kept slots with ``VectorSlicer.getIndices()``.

    Params:
        inputCol: The vector column (dense or sparse), e.g. the output of a VectorAssembler.
        outputCol: The vector column of kept slots.
        dropConstant: Drop slots that are constant on the fitted data (default True).
        maxCorrelation: Drop a slot whose absolute correlation with a kept slot is at least this;
            in (0, 1], 1 (the default) switches the correlation rule off.
        varianceTolerance: Largest variance that still counts as constant (default 1e-12).
    """

    _input_kwargs: dict[str, Any]

    dropConstant: Param[bool] = Param(
        Params._dummy(),
        "dropConstant",
        "whether slots that are constant on the fitted data are dropped",
        typeConverter=TypeConverters.toBoolean,
    )
    maxCorrelation: Param[float] = Param(
        Params._dummy(),
        "maxCorrelation",
        "drop a slot whose absolute Pearson correlation with a kept slot is >= this, in (0, 1]; 1 is off",
        typeConverter=TypeConverters.toFloat,
    )
    varianceTolerance: Param[float] = Param(
        Params._dummy(),
        "varianceTolerance",
        "largest variance of a slot that still counts as constant",
        typeConverter=TypeConverters.toFloat,
    )

    @keyword_only
    def __init__(
        self,
        *,
        inputCol: str | None = None,
        outputCol: str | None = None,
        dropConstant: bool = True,
        maxCorrelation: float = 1.0,
        varianceTolerance: float = 1e-12,
    ) -> None:
        """Create the estimator.

        Args:
            inputCol: The vector column to select slots from.
            outputCol: The vector column of kept slots.
            dropConstant: Whether constant slots are dropped.
            maxCorrelation: Correlation threshold in (0, 1]; 1 switches the correlation rule off.
            varianceTolerance: Largest variance that still counts as constant.
        """
        super().__init__()
        self._setDefault(dropConstant=True, maxCorrelation=1.0, varianceTolerance=1e-12)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        inputCol: str | None = None,
        outputCol: str | None = None,
        dropConstant: bool = True,
        maxCorrelation: float = 1.0,
        varianceTolerance: float = 1e-12,
    ) -> Self:
        """Sets params for this FeatureSlotSelector; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def setInputCol(self, value: str) -> Self:
        """Sets the value of :py:attr:`inputCol`."""
        return self._set(inputCol=value)

    def setOutputCol(self, value: str) -> Self:
        """Sets the value of :py:attr:`outputCol`."""
        return self._set(outputCol=value)

    def setDropConstant(self, value: bool) -> Self:
        """Sets the value of :py:attr:`dropConstant`."""
        return self._set(dropConstant=value)

    def setMaxCorrelation(self, value: float) -> Self:
        """Sets the value of :py:attr:`maxCorrelation`."""
        return self._set(maxCorrelation=value)

    def setVarianceTolerance(self, value: float) -> Self:
        """Sets the value of :py:attr:`varianceTolerance`."""
        return self._set(varianceTolerance=value)

    def getDropConstant(self) -> bool:
        """Gets the value of :py:attr:`dropConstant`."""
        return self.getOrDefault(self.dropConstant)

    def getMaxCorrelation(self) -> float:
        """Gets the value of :py:attr:`maxCorrelation`."""
        return self.getOrDefault(self.maxCorrelation)

    def getVarianceTolerance(self) -> float:
        """Gets the value of :py:attr:`varianceTolerance`."""
        return self.getOrDefault(self.varianceTolerance)

    def _check_params(self) -> str:
        """The input column name, after checking that every param is usable."""
        name = self.getInputCol() if self.isDefined(self.inputCol) else None
        if not name:
            raise StepInputError("FeatureSlotSelector: set inputCol to the name of a vector column")
        max_correlation = self.getMaxCorrelation()
        if not 0.0 < max_correlation <= 1.0:
            raise StepInputError(
                f"FeatureSlotSelector: maxCorrelation must be in (0, 1] (1 switches it off), got {max_correlation}"
            )
        tolerance = self.getVarianceTolerance()
        if not (tolerance >= 0.0 and math.isfinite(tolerance)):
            raise StepInputError(
                f"FeatureSlotSelector: varianceTolerance must be a finite number >= 0, got {tolerance}"
            )
        return name

    def _vectors(self, dataset: DataFrame, name: str) -> DataFrame:
        """The input column alone, renamed to ``_SLOTS``, without null rows; an error unless it is a vector."""
        present = {field.name: field.dataType for field in dataset.schema.fields}
        if name not in present:
            raise StepInputError(
                f"FeatureSlotSelector: input column {name!r} is not in the DataFrame; present columns: {list(present)}"
            )
        if not isinstance(present[name], VectorUDT):
            raise StepInputError(
                f"FeatureSlotSelector: input column {name!r} must be a vector column, got "
                f"{present[name].simpleString()} (assemble the features first, e.g. with VectorAssembler)"
            )
        return dataset.select(_column(name).alias(_SLOTS)).where(_column(_SLOTS).isNotNull())

    def _fit(self, dataset: DataFrame) -> VectorSlicer:
        name = self._check_params()
        vectors = self._vectors(dataset, name)
        if vectors.isEmpty():
            raise StepInputError(
                f"FeatureSlotSelector: input column {name!r} has no non-null vectors in the data being fitted, "
                "so no slot can be judged (check the train split)"
            )
        summary = vectors.select(Summarizer.metrics("count", "variance").summary(_column(_SLOTS)).alias("s"))
        stats = summary.collect()[0]["s"]
        variances = [float(v) for v in stats["variance"].toArray()]
        drop_constant, max_correlation = self.getDropConstant(), self.getMaxCorrelation()
        tolerance = self.getVarianceTolerance()
        candidates = _candidate_slots(variances, drop_constant, tolerance)
        if not candidates:
            raise StepInputError(
                f"FeatureSlotSelector: every slot of input column {name!r} ({len(variances)} slots) is constant "
                f"on the training data ({stats['count']} rows, variance <= {tolerance}); check the feature "
                "columns and the train split, or set dropConstant=False"
            )
        correlation = None
        if max_correlation < 1.0 and len(candidates) > 1:
            if len(candidates) < len(variances):
                slicer = VectorSlicer(inputCol=_SLOTS, outputCol=_CANDIDATES, indices=candidates)
                columns, column = slicer.transform(vectors).select(_CANDIDATES), _CANDIDATES
            else:
                columns, column = vectors, _SLOTS
            correlation = Correlation.corr(columns, column, "pearson").collect()[0][0].toArray().tolist()
        kept = kept_slots(variances, correlation, drop_constant, max_correlation, tolerance)
        constant = sorted(set(range(len(variances))) - set(candidates))
        correlated = sorted(set(candidates) - set(kept))
        LOG.info(
            "FeatureSlotSelector on %r: keeps %d of %d slots; dropped %d constant (variance <= %g) %s and "
            "%d correlated (|r| >= %g with a kept slot) %s",
            name,
            len(kept),
            len(variances),
            len(constant),
            tolerance,
            constant,
            len(correlated),
            max_correlation,
            correlated,
        )
        return VectorSlicer(inputCol=name, outputCol=self.getOutputCol(), indices=kept)
