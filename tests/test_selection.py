"""Feature slot selection: the pure keep rule, statistics from fitted data only, sparse input, pipeline save/load."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import VectorAssembler, VectorSlicer
from pyspark.ml.linalg import SparseVector, Vector, Vectors, VectorUDT
from pyspark.ml.param import Params
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import IntegerType, StructField, StructType
from pyspark.testing import assertDataFrameEqual

from deltaml.errors import StepInputError
from deltaml.ml.selection import FeatureSlotSelector, kept_slots

NAN = float("nan")
SCHEMA = StructType([StructField("id", IntegerType()), StructField("features", VectorUDT())])
OUT_SCHEMA = StructType([*SCHEMA.fields, StructField("selected", VectorUDT())])


def _vectors(spark: SparkSession, rows: list[list[float]]) -> DataFrame:
    """One dense vector per row, ids from 1."""
    return spark.createDataFrame([(i, Vectors.dense(r)) for i, r in enumerate(rows, start=1)], SCHEMA)


def _selected(data: DataFrame, rows: list[list[float]]) -> DataFrame:
    """``data`` with the expected ``selected`` vectors (dense), one per row in id order."""
    expected = [(*row, Vectors.dense(s)) for row, s in zip(data.orderBy("id").collect(), rows, strict=True)]
    return data.sparkSession.createDataFrame(expected, OUT_SCHEMA)


def _param_values(stage: Params) -> dict[str, Any]:
    return {p.name: stage.getOrDefault(p) for p in stage.params if stage.isDefined(p)}


# kept_slots: the rule without Spark.


@pytest.mark.parametrize(
    ("variances", "drop_constant", "tolerance", "kept"),
    [
        ([1.0, 0.0, 2.0], True, 1e-12, [0, 2]),
        ([1.0, 0.0, 2.0], False, 1e-12, [0, 1, 2]),
        # At the tolerance is constant, just above it is not.
        ([1e-12, 2e-12, 3.0], True, 1e-12, [1, 2]),
        ([0.5, 0.01, 3.0], True, 0.1, [0, 2]),
        # A NaN variance (NaN in the data) is not evidence of a constant slot.
        ([NAN, 0.0], True, 1e-12, [0]),
        ([0.0, 0.0], True, 1e-12, []),
        ([], True, 1e-12, []),
    ],
)
def test_kept_slots_drops_constant_slots(
    variances: list[float], drop_constant: bool, tolerance: float, kept: list[int]
) -> None:
    assert kept_slots(variances, None, drop_constant, 1.0, tolerance) == kept


# Candidate slots 0, 1, 2: 0 and 1 correlate at 0.95, 1 and 2 at -0.95, 0 and 2 at 0.5.
CHAIN = [[1.0, 0.95, 0.5], [0.95, 1.0, -0.95], [0.5, -0.95, 1.0]]


@pytest.mark.parametrize(
    ("correlation", "max_correlation", "kept"),
    [
        # 1 goes with 0; 2 is compared with the kept 0 only, not with the dropped 1, so it stays.
        (CHAIN, 0.9, [0, 2]),
        # At the threshold is dropped, below it is kept.
        (CHAIN, 0.95, [0, 2]),
        (CHAIN, 0.96, [0, 1, 2]),
        (CHAIN, 0.5, [0]),
        # 1 is off: even a perfect correlation keeps both slots.
        ([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], 1.0, [0, 1, 2]),
        # An exact negative copy is as redundant as an exact copy.
        ([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], 0.99, [0, 2]),
        # NaN (no variance, e.g. with dropConstant off) never drops a slot.
        ([[1.0, NAN, 1.0], [NAN, NAN, NAN], [1.0, NAN, 1.0]], 0.9, [0, 1]),
    ],
)
def test_kept_slots_walks_candidates_in_order_and_keeps_the_first_of_a_correlated_pair(
    correlation: list[list[float]], max_correlation: float, kept: list[int]
) -> None:
    assert kept_slots([1.0, 1.0, 1.0], correlation, True, max_correlation, 1e-12) == kept


def test_kept_slots_reads_the_correlation_matrix_over_the_non_constant_slots_only() -> None:
    # Slots 1 and 3 are constant; the matrix is over slots 0, 2, 4, where 4 copies 2.
    correlation = [[1.0, 0.1, 0.1], [0.1, 1.0, 1.0], [0.1, 1.0, 1.0]]
    assert kept_slots([2.0, 0.0, 3.0, 0.0, 6.0], correlation, True, 0.9, 1e-12) == [0, 2]


def test_kept_slots_rejects_a_matrix_that_does_not_match_the_candidates() -> None:
    with pytest.raises(ValueError, match=r"2 x 2 matrix over the candidate slots \[0, 2\], got 3 rows"):
        kept_slots([1.0, 0.0, 1.0], [[1.0, 0.0, 0.0]] * 3, True, 0.9, 1e-12)


# FeatureSlotSelector on Spark.


def test_selector_drops_constant_slots(spark: SparkSession, caplog: pytest.LogCaptureFixture) -> None:
    data = _vectors(spark, [[1.0, 5.0, 0.0, 7.0], [2.0, 5.0, 3.0, 7.0], [4.0, 5.0, 1.0, 7.0]])
    selector = FeatureSlotSelector(inputCol="features", outputCol="selected")
    with caplog.at_level(logging.INFO, logger="deltaml.ml.selection"):
        model = selector.fit(data)
    assert isinstance(model, VectorSlicer)
    assert model.getIndices() == [0, 2]
    assertDataFrameEqual(model.transform(data), _selected(data, [[1.0, 0.0], [2.0, 3.0], [4.0, 1.0]]))
    assert "keeps 2 of 4 slots; dropped 2 constant (variance <= 1e-12) [1, 3] and 0 correlated" in caplog.text


def test_selector_keeps_constant_slots_when_asked(spark: SparkSession) -> None:
    data = _vectors(spark, [[1.0, 5.0], [2.0, 5.0]])
    assert FeatureSlotSelector(inputCol="features", dropConstant=False).fit(data).getIndices() == [0, 1]


# a = 1, 2, 3, 4; b has |r| = 0.447 with a; c is uncorrelated with both.
# Slots: a, a (exact copy), b, -b (exact negative copy), c.
CORRELATED = [
    [1.0, 1.0, 1.0, -1.0, 2.0],
    [2.0, 2.0, -1.0, 1.0, 0.0],
    [3.0, 3.0, 1.0, -1.0, 0.0],
    [4.0, 4.0, -1.0, 1.0, 2.0],
]


@pytest.mark.parametrize(
    ("max_correlation", "kept"),
    [
        (0.95, [0, 2, 4]),
        # 0.447 >= 0.4: b (and its copy) go with a.
        (0.4, [0, 4]),
        # Off: copies are kept.
        (1.0, [0, 1, 2, 3, 4]),
    ],
)
def test_selector_drops_correlated_slots_and_keeps_the_first_of_each_pair(
    spark: SparkSession, max_correlation: float, kept: list[int]
) -> None:
    data = _vectors(spark, CORRELATED)
    model = FeatureSlotSelector(inputCol="features", outputCol="selected", maxCorrelation=max_correlation).fit(data)
    assert model.getIndices() == kept
    assertDataFrameEqual(model.transform(data), _selected(data, [[row[i] for i in kept] for row in CORRELATED]))


def test_selector_learns_on_the_fitted_data_only(spark: SparkSession) -> None:
    # In train, slot 1 is constant and slot 2 is 2 * slot 0; in the other data both vary freely.
    train = _vectors(spark, [[1.0, 7.0, 2.0, 0.0], [2.0, 7.0, 4.0, 5.0], [3.0, 7.0, 6.0, 1.0]])
    other = _vectors(spark, [[9.0, -1.0, 0.0, 3.0], [8.0, 4.0, 1.0, 2.0]])
    model = FeatureSlotSelector(inputCol="features", outputCol="selected", maxCorrelation=0.9).fit(train)
    assert model.getIndices() == [0, 3]
    out = model.transform(other)
    assertDataFrameEqual(out, _selected(other, [[9.0, 3.0], [8.0, 2.0]]))
    assert {row["selected"].size for row in out.collect()} == {2}


def test_selector_works_on_sparse_vectors(spark: SparkSession) -> None:
    # Slot 3 is always zero (never stored), slot 1 copies slot 0, slot 2 varies on its own.
    rows: list[Vector] = [
        Vectors.sparse(4, {0: 1.0, 1: 1.0}),
        Vectors.sparse(4, {2: 5.0}),
        Vectors.sparse(4, {0: 3.0, 1: 3.0, 2: 1.0}),
        Vectors.sparse(4, {}),
    ]
    data = spark.createDataFrame([(i, v) for i, v in enumerate(rows, start=1)], SCHEMA)
    model = FeatureSlotSelector(inputCol="features", outputCol="selected", maxCorrelation=0.99).fit(data)
    assert model.getIndices() == [0, 2]
    selected = [
        Vectors.sparse(2, {0: 1.0}),
        Vectors.sparse(2, {1: 5.0}),
        Vectors.sparse(2, {0: 3.0, 1: 1.0}),
        Vectors.sparse(2, {}),
    ]
    expected = spark.createDataFrame(
        [(i, v, s) for i, (v, s) in enumerate(zip(rows, selected, strict=True), start=1)], OUT_SCHEMA
    )
    out = model.transform(data)
    assertDataFrameEqual(out, expected)
    assert all(isinstance(row["selected"], SparseVector) for row in out.collect())


def test_selector_ignores_null_vectors(spark: SparkSession) -> None:
    data = spark.createDataFrame([(1, Vectors.dense([1.0, 0.0])), (2, None), (3, Vectors.dense([2.0, 0.0]))], SCHEMA)
    assert FeatureSlotSelector(inputCol="features").fit(data).getIndices() == [0]


@pytest.mark.parametrize(
    ("selector", "rows", "message"),
    [
        (
            FeatureSlotSelector(inputCol="features"),
            [[1.0, 0.0], [1.0, 0.0]],
            r"every slot of input column 'features' \(2 slots\) is constant on the training data \(2 rows",
        ),
        # One row has no variance at all.
        (FeatureSlotSelector(inputCol="features"), [[1.0, 2.0]], "is constant on the training data"),
        (FeatureSlotSelector(inputCol="features"), [], "'features' has no non-null vectors in the data being fitted"),
        (
            FeatureSlotSelector(inputCol="nope"),
            [[1.0]],
            r"input column 'nope' is not in the DataFrame; present columns",
        ),
        (FeatureSlotSelector(inputCol="id"), [[1.0]], "input column 'id' must be a vector column, got int"),
        (FeatureSlotSelector(), [[1.0]], "set inputCol"),
        (FeatureSlotSelector(inputCol="features", maxCorrelation=0.0), [[1.0]], r"maxCorrelation must be in \(0, 1\]"),
        (FeatureSlotSelector(inputCol="features", maxCorrelation=1.5), [[1.0]], r"maxCorrelation must be in \(0, 1\]"),
        (FeatureSlotSelector(inputCol="features", varianceTolerance=-1.0), [[1.0]], "varianceTolerance must be a"),
    ],
)
def test_selector_rejects_bad_input_with_a_clear_message(
    spark: SparkSession, selector: FeatureSlotSelector, rows: list[list[float]], message: str
) -> None:
    with pytest.raises(StepInputError, match=message):
        selector.fit(_vectors(spark, rows))


def test_selector_in_a_pipeline_survives_save_and_load(spark: SparkSession, tmp_path: Path) -> None:
    schema = "id int, a double, b double, c double, d double"
    # Train: b is constant, c is -2 * a. The scoring rows break both patterns.
    train = spark.createDataFrame(
        [(1, 1.0, 3.0, -2.0, 0.0), (2, 2.0, 3.0, -4.0, 1.0), (3, 4.0, 3.0, -8.0, 0.0)], schema
    )
    score = spark.createDataFrame([(10, 5.0, 1.0, 1.0, 2.0), (11, 0.0, 0.0, 0.0, 0.0)], schema)
    pipeline = Pipeline(
        stages=[
            VectorAssembler(inputCols=["a", "b", "c", "d"], outputCol="raw"),
            FeatureSlotSelector(inputCol="raw", outputCol="features", maxCorrelation=0.9, varianceTolerance=1e-9),
        ]
    )
    pipeline.save(str(tmp_path / "pipeline"))
    unfitted = Pipeline.load(str(tmp_path / "pipeline"))
    assert [type(s) for s in unfitted.getStages()] == [VectorAssembler, FeatureSlotSelector]
    assert [_param_values(s) for s in unfitted.getStages()] == [_param_values(s) for s in pipeline.getStages()]

    model = unfitted.fit(train)
    slicer = model.stages[1]
    assert isinstance(slicer, VectorSlicer)
    assert (slicer.getInputCol(), slicer.getOutputCol(), slicer.getIndices()) == ("raw", "features", [0, 3])
    model.save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))

    assert [type(s) for s in loaded.stages] == [VectorAssembler, VectorSlicer]
    out = loaded.transform(score).select("id", "features")
    expected = spark.createDataFrame(
        [(10, Vectors.dense([5.0, 2.0])), (11, Vectors.dense([0.0, 0.0]))],
        StructType([StructField("id", IntegerType()), StructField("features", VectorUDT())]),
    )
    assertDataFrameEqual(out, expected)
    assertDataFrameEqual(loaded.transform(score), model.transform(score))
