"""Cleaning stages: hand-computed outputs, statistics from fitted data only, save/load and MLflow round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from pyspark.ml import Estimator, Pipeline, PipelineModel, Transformer
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.param import Params
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from deltaml.errors import StepInputError
from deltaml.ml.cleaning import (
    ConstantImputer,
    MissingIndicator,
    OutlierCapper,
    OutlierCapperModel,
    RareCategoryGrouper,
    RareCategoryGrouperModel,
    TypeCoercer,
)

NAN = float("nan")
INF = float("inf")

# Pipeline data: amount arrives as text, city is a free-form category.
RAW_SCHEMA = "id int, amount string, city string"
TRAIN_ROWS = [
    (1, "1", "A"),
    (2, "2", "A"),
    (3, "3", "A"),
    (4, "4", "B"),
    (5, "5", "B"),
    (6, "6", "C"),
    (7, "n/a", None),
    (8, None, "A"),
]
SCORE_ROWS = [
    (10, "-50", "A"),
    (11, "3.5", "C"),
    (12, "9000", "Z"),
    (13, "oops", None),
    (14, None, "B"),
]


def assert_same(actual: DataFrame, expected: DataFrame) -> None:
    """assertDataFrameEqual, plus an exact comparison of the rows.

    assertDataFrameEqual compares floats with ``abs(a - b) > atol + rtol * abs(b)``, which is False
    whenever NaN or an infinity is involved: NaN equals any float, and any float equals +/-inf. The
    rows are therefore also compared by ``repr``, which tells ``nan``, ``inf`` and ``-inf`` apart.
    """
    assertDataFrameEqual(actual, expected)
    assert sorted(map(repr, actual.collect())) == sorted(map(repr, expected.collect()))


def _param_values(stage: Params) -> dict[str, Any]:
    return {p.name: stage.getOrDefault(p) for p in stage.params if stage.isDefined(p)}


def _pipeline() -> Pipeline:
    return Pipeline(
        stages=[
            TypeCoercer(inputCols=["amount"], targetTypes=["double"]),
            MissingIndicator(inputCols=["amount"], outputCols=["amount_missing"]),
            OutlierCapper(inputCols=["amount"], outputCols=["amount_capped"], lowerQuantile=0.2, upperQuantile=0.8),
            ConstantImputer(inputCols=["amount_capped"], outputCols=["amount_filled"], fillValue=-1.0),
            RareCategoryGrouper(inputCols=["city"], outputCols=["city_grouped"], minCount=2, minFrequency=0.0),
            # A JVM stage in the same pipeline: mixed pipelines are saved by pyspark's Python writer.
            VectorAssembler(inputCols=["amount_filled", "amount_missing"], outputCol="features"),
        ]
    )


def test_type_coercer_casts_in_place_and_nulls_what_does_not_parse(spark: SparkSession) -> None:
    data = spark.createDataFrame(
        [
            (1, "1.5", "7", 10),
            (2, "abc", "7.5", None),
            (3, "-Infinity", " 3 ", 4),
            (4, "NaN", None, 5),
        ],
        "id int, amount string, visits string, code int",
    )
    coercer = TypeCoercer(inputCols=["amount", "visits", "code"], targetTypes=["double", "bigint", "string"])
    expected = spark.createDataFrame(
        [
            (1, 1.5, 7, "10"),
            (2, None, None, None),
            (3, -INF, 3, "4"),
            (4, NAN, None, "5"),
        ],
        "id int, amount double, visits bigint, code string",
    )
    assert_same(coercer.transform(data), expected)


def test_constant_imputer_fills_null_and_nan_and_keeps_infinity(spark: SparkSession) -> None:
    data = spark.createDataFrame(
        [(1, 1.5, 3, 2.5), (2, None, None, NAN), (3, NAN, 4, None), (4, INF, 5, -INF)],
        "id int, a double, b int, c float",
    )
    imputer = ConstantImputer(inputCols=["a", "b", "c"], outputCols=["a_f", "b_f", "c"], fillValue=-1.0)
    expected = spark.createDataFrame(
        [
            (1, 1.5, 3, 2.5, 1.5, 3.0),
            (2, None, None, -1.0, -1.0, -1.0),
            (3, NAN, 4, -1.0, -1.0, 4.0),
            (4, INF, 5, -INF, INF, 5.0),
        ],
        "id int, a double, b int, c double, a_f double, b_f double",
    )
    assert_same(imputer.transform(data), expected)


def test_missing_indicator_flags_null_and_floating_nan_only(spark: SparkSession) -> None:
    data = spark.createDataFrame(
        [(1, 1.0, "x", 1), (2, NAN, "NaN", None), (3, None, None, 3), (4, -INF, "", 4)],
        "id int, a double, s string, n int",
    )
    indicator = MissingIndicator(inputCols=["a", "s", "n"], outputCols=["a_m", "s_m", "n_m"])
    expected = spark.createDataFrame(
        [
            (1, 1.0, "x", 1, 0.0, 0.0, 0.0),
            (2, NAN, "NaN", None, 1.0, 0.0, 1.0),
            (3, None, None, 3, 1.0, 1.0, 0.0),
            (4, -INF, "", 4, 0.0, 0.0, 0.0),
        ],
        "id int, a double, s string, n int, a_m double, s_m double, n_m double",
    )
    assert_same(indicator.transform(data), expected)


def test_outlier_capper_learns_quantile_bounds_from_the_fitted_data_only(spark: SparkSession) -> None:
    # Finite train values 1..10 (and 10..100); null, NaN and inf are not evidence for a bound.
    rows: list[tuple[float | None, int | None]] = [(float(i), 10 * i) for i in range(1, 11)]
    train = spark.createDataFrame([*rows, (None, None), (NAN, None), (INF, None)], "a double, b bigint")
    capper = OutlierCapper(
        inputCols=["a", "b"], outputCols=["a_c", "b_c"], lowerQuantile=0.2, upperQuantile=0.8, relativeError=0.0
    )
    model = capper.fit(train)
    # The p-quantile is the value at rank ceil(p * n) of the n = 10 sorted finite values: ranks 2 and 8.
    assert model.getLowerBounds() == [2.0, 20.0]
    assert model.getUpperBounds() == [8.0, 80.0]
    score = spark.createDataFrame(
        [(1, -1000.0, 5), (2, 1000.0, 500), (3, -INF, None), (4, INF, 20), (5, None, 79), (6, NAN, -7), (7, 5.5, 81)],
        "id int, a double, b bigint",
    )
    expected = spark.createDataFrame(
        [
            (1, -1000.0, 5, 2.0, 20.0),
            (2, 1000.0, 500, 8.0, 80.0),
            (3, -INF, None, 2.0, None),
            (4, INF, 20, 8.0, 20.0),
            (5, None, 79, None, 79.0),
            (6, NAN, -7, NAN, 20.0),
            (7, 5.5, 81, 5.5, 80.0),
        ],
        "id int, a double, b bigint, a_c double, b_c double",
    )
    assert_same(model.transform(score), expected)


def test_outlier_capper_iqr_bounds(spark: SparkSession) -> None:
    train = spark.createDataFrame([(float(i),) for i in range(1, 9)], "a double")
    model = OutlierCapper(inputCols=["a"], outputCols=["a"], method="iqr", iqrMultiplier=1.5).fit(train)
    # q1 = rank 2 of 8 = 2, q3 = rank 6 = 6, IQR = 4: bounds 2 - 6 and 6 + 6.
    assert (model.getLowerBounds(), model.getUpperBounds()) == ([-4.0], [12.0])
    score = spark.createDataFrame([(-100.0,), (0.0,), (100.0,)], "a double")
    assert_same(model.transform(score), spark.createDataFrame([(-4.0,), (0.0,), (12.0,)], "a double"))


GROUPER_TRAIN = [
    ("A", "X"),
    ("A", "X"),
    ("A", "X"),
    ("A", "Y"),
    ("A", "Y"),
    ("B", "X"),
    ("B", "Z"),
    ("B", None),
    ("C", "X"),
    ("D", None),
    (None, "X"),
    (None, "Z"),
]
GROUPER_SCORE = [("A", "Y"), ("C", "Z"), ("new", "W"), (None, None), ("B", "X")]


@pytest.mark.parametrize(
    ("min_frequency", "min_count", "kept", "grouped"),
    [
        # Shares of the non-null train values: city A .5, B .3, C .1, D .1; plan X .6, Y .2, Z .2 (0.2 is kept).
        (
            0.2,
            0,
            [["A", "B"], ["X", "Y", "Z"]],
            [("A", "Y"), ("OTHER", "Z"), ("OTHER", "OTHER"), (None, None), ("B", "X")],
        ),
        # Counts: city A 5, B 3, C 1, D 1; plan X 6, Y 2, Z 2.
        (
            0.0,
            3,
            [["A", "B"], ["X"]],
            [("A", "OTHER"), ("OTHER", "OTHER"), ("OTHER", "OTHER"), (None, None), ("B", "X")],
        ),
    ],
)
def test_rare_category_grouper_learns_categories_from_the_fitted_data_only(
    spark: SparkSession,
    min_frequency: float,
    min_count: int,
    kept: list[list[str]],
    grouped: list[tuple[str | None, str | None]],
) -> None:
    train = spark.createDataFrame(GROUPER_TRAIN, "city string, plan string")
    grouper = RareCategoryGrouper(
        inputCols=["city", "plan"],
        outputCols=["city_g", "plan_g"],
        minFrequency=min_frequency,
        minCount=min_count,
        otherLabel="OTHER",
    )
    model = grouper.fit(train)
    # Most frequent first, ties by value; "new" and "W" never occur in train and are grouped at scoring.
    assert model.getKeptCategories() == kept
    score = spark.createDataFrame(GROUPER_SCORE, "city string, plan string")
    expected = spark.createDataFrame(
        [(*row, *groups) for row, groups in zip(GROUPER_SCORE, grouped, strict=True)],
        "city string, plan string, city_g string, plan_g string",
    )
    assert_same(model.transform(score), expected)


# Train counts: city A 5, B 3, C 1, D 1; plan X 6, Y 2, Z 2.
@pytest.mark.parametrize(
    ("min_count", "max_categories", "kept", "grouped"),
    [
        # The top one by count.
        (0, 1, [["A"], ["X"]], [("A", "OTHER"), ("OTHER", "OTHER"), ("OTHER", "OTHER"), (None, None), ("OTHER", "X")]),
        # Ties by value: Y before Z, C before D.
        (
            0,
            2,
            [["A", "B"], ["X", "Y"]],
            [("A", "Y"), ("OTHER", "OTHER"), ("OTHER", "OTHER"), (None, None), ("B", "X")],
        ),
        (
            0,
            3,
            [["A", "B", "C"], ["X", "Y", "Z"]],
            [("A", "Y"), ("C", "Z"), ("OTHER", "OTHER"), (None, None), ("B", "X")],
        ),
        # The cap counts only categories that pass minCount: city has two, plan one.
        (3, 3, [["A", "B"], ["X"]], [("A", "OTHER"), ("OTHER", "OTHER"), ("OTHER", "OTHER"), (None, None), ("B", "X")]),
        (
            2,
            2,
            [["A", "B"], ["X", "Y"]],
            [("A", "Y"), ("OTHER", "OTHER"), ("OTHER", "OTHER"), (None, None), ("B", "X")],
        ),
        # 0 is no cap.
        (
            0,
            0,
            [["A", "B", "C", "D"], ["X", "Y", "Z"]],
            [("A", "Y"), ("C", "Z"), ("OTHER", "OTHER"), (None, None), ("B", "X")],
        ),
    ],
)
def test_rare_category_grouper_caps_the_kept_categories_at_the_most_frequent(
    spark: SparkSession,
    min_count: int,
    max_categories: int,
    kept: list[list[str]],
    grouped: list[tuple[str | None, str | None]],
) -> None:
    grouper = RareCategoryGrouper(
        inputCols=["city", "plan"],
        outputCols=["city_g", "plan_g"],
        minFrequency=0.0,
        minCount=min_count,
        maxCategories=max_categories,
        otherLabel="OTHER",
    )
    # The same categories whatever the row order and partitioning of the fitted data.
    for rows in (GROUPER_TRAIN, GROUPER_TRAIN[::-1]):
        model = grouper.fit(spark.createDataFrame(rows, "city string, plan string").repartition(2))
        assert model.getKeptCategories() == kept
        assert model.getMaxCategories() == max_categories
    score = spark.createDataFrame(GROUPER_SCORE, "city string, plan string")
    expected = spark.createDataFrame(
        [(*row, *groups) for row, groups in zip(GROUPER_SCORE, grouped, strict=True)],
        "city string, plan string, city_g string, plan_g string",
    )
    assert_same(model.transform(score), expected)


def test_rare_category_grouper_max_categories_survives_save_and_load(spark: SparkSession, tmp_path: Path) -> None:
    grouper = RareCategoryGrouper(inputCols=["city"], outputCols=["city_g"], minFrequency=0.0, maxCategories=2)
    grouper.save(str(tmp_path / "grouper"))
    loaded_grouper = RareCategoryGrouper.load(str(tmp_path / "grouper"))
    assert loaded_grouper.getMaxCategories() == 2
    assert _param_values(loaded_grouper) == _param_values(grouper)

    model = loaded_grouper.fit(spark.createDataFrame(GROUPER_TRAIN, "city string, plan string"))
    model.save(str(tmp_path / "model"))
    loaded = RareCategoryGrouperModel.load(str(tmp_path / "model"))
    assert (loaded.getMaxCategories(), loaded.getKeptCategories()) == (2, [["A", "B"]])
    assert _param_values(loaded) == _param_values(model)


def test_rare_category_grouper_model_saved_before_max_categories_loads_without_a_cap(
    spark: SparkSession, tmp_path: Path
) -> None:
    model = RareCategoryGrouper(inputCols=["city"], outputCols=["city_g"], minFrequency=0.0).fit(
        spark.createDataFrame(GROUPER_TRAIN, "city string, plan string")
    )
    model.save(str(tmp_path / "model"))
    # Rewrite the saved metadata as an older deltaml wrote it: without the maxCategories param.
    (part,) = [p for p in (tmp_path / "model" / "metadata").glob("part-*") if p.read_text().strip()]
    metadata = json.loads(part.read_text())
    assert metadata["defaultParamMap"].pop("maxCategories") == 0
    metadata["paramMap"].pop("maxCategories", None)
    part.write_text(json.dumps(metadata) + "\n")
    part.with_name(f".{part.name}.crc").unlink()  # Hadoop's checksum of the old text would fail the read.
    loaded = RareCategoryGrouperModel.load(str(tmp_path / "model"))
    assert (loaded.getMaxCategories(), loaded.getKeptCategories()) == (0, [["A", "B", "C", "D"]])


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (ConstantImputer(inputCols=["nope"], outputCols=["x"]), r"input columns \['nope'\] are not in the DataFrame"),
        (MissingIndicator(inputCols=["a", "s"], outputCols=["x"]), "outputCols has 1 entries but inputCols has 2"),
        (ConstantImputer(inputCols=["s"], outputCols=["x"]), r"must be numeric, got \{'s': 'string'\}"),
        (TypeCoercer(inputCols=["s"], targetTypes=["dubble"]), "target type 'dubble' for column 's' is not a Spark"),
        (OutlierCapper(inputCols=["a"], outputCols=["x"], method="zscore"), "method must be one of"),
        (OutlierCapper(inputCols=["a"], outputCols=["x"], lowerQuantile=0.9, upperQuantile=0.1), "lowerQuantile <="),
        (OutlierCapper(inputCols=["empty"], outputCols=["x"]), r"columns \['empty'\] have no finite values"),
        (RareCategoryGrouper(inputCols=["a"], outputCols=["x"]), "must be strings"),
        (RareCategoryGrouper(inputCols=["s"], outputCols=["x"], maxCategories=-1), "maxCategories must be >= 0"),
        (OutlierCapperModel(inputCols=["a"], outputCols=["x"]), "lowerBounds and upperBounds are not set"),
        (OutlierCapperModel(inputCols=["a"], outputCols=["x"], lowerBounds=None, upperBounds=[1.0]), "are not set"),
        (OutlierCapperModel(inputCols=["a"], outputCols=["x"], lowerBounds=[2.0], upperBounds=[1.0]), "lowerBound <="),
        (RareCategoryGrouperModel(inputCols=["s"], outputCols=["x"], keptCategories=[]), "keptCategories has 0"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(
    spark: SparkSession, stage: Estimator[Any] | Transformer, message: str
) -> None:
    data = spark.createDataFrame([(1.0, "x", None), (NAN, "y", INF)], "a double, s string, empty double")
    with pytest.raises(StepInputError, match=message):
        if isinstance(stage, Estimator):
            stage.fit(data)
        else:
            stage.transform(data)


def test_every_stage_survives_a_pipeline_save_and_load(spark: SparkSession, tmp_path: Path) -> None:
    train = spark.createDataFrame(TRAIN_ROWS, RAW_SCHEMA)
    score = spark.createDataFrame(SCORE_ROWS, RAW_SCHEMA)
    pipeline = _pipeline()
    pipeline.save(str(tmp_path / "pipeline"))
    unfitted = Pipeline.load(str(tmp_path / "pipeline"))
    assert [_param_values(s) for s in unfitted.getStages()] == [_param_values(s) for s in pipeline.getStages()]

    model = pipeline.fit(train)
    capper, grouper = model.stages[2], model.stages[4]
    # Train amounts 1..6 (n/a and null do not count): ranks ceil(0.2 * 6) = 2 and ceil(0.8 * 6) = 5.
    assert isinstance(capper, OutlierCapperModel)
    assert (capper.getLowerBounds(), capper.getUpperBounds()) == ([2.0], [5.0])
    assert isinstance(grouper, RareCategoryGrouperModel)
    assert grouper.getKeptCategories() == [["A", "B"]]
    model.save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))

    assert [type(s) for s in loaded.stages] == [type(s) for s in model.stages]
    assert [_param_values(s) for s in loaded.stages] == [_param_values(s) for s in model.stages]
    out = loaded.transform(score).drop("features")
    expected = spark.createDataFrame(
        [
            (10, -50.0, "A", 0.0, 2.0, 2.0, "A"),
            (11, 3.5, "C", 0.0, 3.5, 3.5, "__other__"),
            (12, 9000.0, "Z", 0.0, 5.0, 5.0, "__other__"),
            (13, None, None, 1.0, None, -1.0, None),
            (14, None, "B", 1.0, None, -1.0, "B"),
        ],
        "id int, amount double, city string, amount_missing double, amount_capped double, amount_filled double, "
        "city_grouped string",
    )
    assert_same(out, expected)
    assert_same(loaded.transform(score), model.transform(score))


def test_fitted_pipeline_round_trips_through_mlflow(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = mlflow.create_experiment("cleaning", artifact_location=(tmp_path / "art").as_uri())
    model = _pipeline().fit(spark.createDataFrame(TRAIN_ROWS, RAW_SCHEMA))
    score = spark.createDataFrame(SCORE_ROWS, RAW_SCHEMA)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.spark.log_model(
            model, artifact_path="model", pip_requirements=["pyspark"], dfs_tmpdir=str(tmp_path / "dfs")
        )
    loaded = mlflow.spark.load_model(info.model_uri, dfs_tmpdir=str(tmp_path / "dfs"))
    assert [type(s) for s in loaded.stages] == [type(s) for s in model.stages]
    assert_same(loaded.transform(score), model.transform(score))
