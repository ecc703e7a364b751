"""Point-in-time window aggregates: hand-computed windows, boundaries, no leakage, no fan-out, input errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from deltaml.errors import StepInputError
from deltaml.ml.windows import WindowAggregate, WindowFeatures, as_of_aggregates, point_in_time_aggregates

REF = datetime(2024, 3, 31)  # customer a's first reference time
LATER = datetime(2024, 4, 6)  # customer a's second reference time
SECOND = timedelta(seconds=1)

ENTITY_SCHEMA = "row int, customer string, ref timestamp"
EVENT_SCHEMA = "customer string, event_time timestamp, amount double, merchant string"
# Amounts are powers of two times ten, so every sum names the events it took.
EVENTS = [
    ("a", REF, 1000.0, "m9"),  # exactly at REF: not known yet at REF
    ("a", REF - timedelta(days=1), 10.0, "m1"),
    ("a", REF - timedelta(days=7), 20.0, "m1"),  # exactly 7 days before REF: inside the 7-day window
    ("a", REF - timedelta(days=7) - SECOND, 40.0, "m2"),
    ("a", REF - timedelta(days=30), 80.0, "m3"),  # exactly 30 days before REF: inside the 30-day window
    ("a", REF - timedelta(days=30) - SECOND, 160.0, "m4"),  # just outside every window at REF
    ("a", datetime(2024, 4, 5), 320.0, "m5"),  # after REF, before LATER
    ("b", datetime(2024, 4, 10), 640.0, "m1"),  # b has only future events
    ("d", REF - timedelta(days=1), None, "m1"),  # d's one event has no amount
]
COUNTS_AND_SUMS = [
    WindowAggregate(None, "count", 7),
    WindowAggregate(None, "count", 30),
    WindowAggregate("amount", "sum", 7),
    WindowAggregate("amount", "sum", 30),
]
COUNTS_AND_SUMS_SCHEMA = (
    f"{ENTITY_SCHEMA}, events_count_7d bigint, events_count_30d bigint, "
    "events_amount_sum_7d double, events_amount_sum_30d double"
)


def _entities(spark: SparkSession, rows: list[tuple[Any, ...]]) -> DataFrame:
    return spark.createDataFrame(rows, ENTITY_SCHEMA)


def _events(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(EVENTS, EVENT_SCHEMA)


def _aggregate(entities: DataFrame, events: DataFrame, aggregates: list[WindowAggregate]) -> DataFrame:
    return point_in_time_aggregates(
        entities,
        events,
        entity_key="customer",
        entity_time="ref",
        event_key="customer",
        event_time="event_time",
        aggregates=aggregates,
    )


def test_window_aggregate_names() -> None:
    assert WindowAggregate("amount", "sum", 30).column_name() == "events_amount_sum_30d"
    assert WindowAggregate(None, "count", 7).column_name() == "events_count_7d"
    assert WindowAggregate("merchant", "count_distinct", 90).column_name("txn") == "txn_merchant_count_distinct_90d"
    assert WindowAggregate(None, "count", 7).name == "count_7d"


def test_windows_exclude_the_reference_time_and_the_future_and_include_the_oldest_day(spark: SparkSession) -> None:
    entities = _entities(spark, [(1, "a", REF), (2, "b", REF), (3, "c", REF)])

    actual = _aggregate(entities, _events(spark), COUNTS_AND_SUMS)

    expected = spark.createDataFrame(
        [
            # 7 days: 10 (1 day before) + 20 (exactly 7 days before). 30 days: also 40 and 80 (exactly 30 days
            # before). Never 1000 (at REF), 160 (30 days and a second before) or 320 (in the future).
            (1, "a", REF, 2, 4, 30.0, 150.0),
            (2, "b", REF, 0, 0, 0.0, 0.0),  # only future events
            (3, "c", REF, 0, 0, 0.0, 0.0),  # no events at all
        ],
        COUNTS_AND_SUMS_SCHEMA,
    )
    assertDataFrameEqual(actual, expected)


def test_same_key_at_two_reference_times_gets_its_own_windows(spark: SparkSession) -> None:
    entities = _entities(spark, [(1, "a", REF), (2, "a", LATER)])

    actual = _aggregate(entities, _events(spark), COUNTS_AND_SUMS)

    expected = spark.createDataFrame(
        [
            (1, "a", REF, 2, 4, 30.0, 150.0),
            # 7 days before LATER is REF - 1 day: 10 + 1000 + 320. 30 days adds 20 and 40; 80 is now too old.
            (2, "a", LATER, 3, 5, 1330.0, 1390.0),
        ],
        COUNTS_AND_SUMS_SCHEMA,
    )
    assertDataFrameEqual(actual, expected)


def test_mean_min_max_are_null_without_values_and_counts_are_zero(spark: SparkSession) -> None:
    entities = _entities(spark, [(1, "a", REF), (3, "c", REF), (4, "d", REF)])
    aggregates = [
        WindowAggregate("amount", "mean", 30),
        WindowAggregate("amount", "min", 30),
        WindowAggregate("amount", "max", 30),
        WindowAggregate("amount", "count", 30),
        WindowAggregate(None, "count", 30),
        WindowAggregate("merchant", "count_distinct", 30),
    ]

    actual = _aggregate(entities, _events(spark), aggregates)

    expected = spark.createDataFrame(
        [
            # a's 30-day window: 10 (m1), 20 (m1), 40 (m2), 80 (m3).
            (1, "a", REF, 37.5, 10.0, 80.0, 4, 4, 3),
            (3, "c", REF, None, None, None, 0, 0, 0),
            # d has one event, without an amount: counted as an event, not as a value.
            (4, "d", REF, None, None, None, 0, 1, 1),
        ],
        f"{ENTITY_SCHEMA}, events_amount_mean_30d double, events_amount_min_30d double, "
        "events_amount_max_30d double, events_amount_count_30d bigint, events_count_30d bigint, "
        "events_merchant_count_distinct_30d bigint",
    )
    assertDataFrameEqual(actual, expected)


def test_duplicate_entity_rows_stay_duplicates_without_double_counting(spark: SparkSession) -> None:
    entities = _entities(spark, [(1, "a", REF), (1, "a", REF), (3, "c", REF)])

    actual = _aggregate(entities, _events(spark), COUNTS_AND_SUMS)

    expected = spark.createDataFrame(
        [(1, "a", REF, 2, 4, 30.0, 150.0), (1, "a", REF, 2, 4, 30.0, 150.0), (3, "c", REF, 0, 0, 0.0, 0.0)],
        COUNTS_AND_SUMS_SCHEMA,
    )
    assertDataFrameEqual(actual, expected)


def test_date_reference_time_means_midnight(spark: SparkSession) -> None:
    entities = spark.createDataFrame([("a", date(2024, 3, 31))], "customer string, ref date")
    events = spark.createDataFrame(
        [
            ("a", datetime(2024, 3, 31), 1.0),  # midnight of the reference date: excluded
            ("a", datetime(2024, 3, 30, 23, 59, 59), 2.0),
            ("a", datetime(2024, 3, 24), 4.0),  # midnight 7 days before: included
            ("a", datetime(2024, 3, 23, 23, 59, 59), 8.0),
        ],
        "customer string, event_time timestamp, amount double",
    )

    actual = _aggregate(entities, events, [WindowAggregate("amount", "sum", 7)])

    expected = spark.createDataFrame(
        [("a", date(2024, 3, 31), 6.0)], "customer string, ref date, events_amount_sum_7d double"
    )
    assertDataFrameEqual(actual, expected)


def test_as_of_aggregates_use_one_reference_time_for_every_entity(spark: SparkSession) -> None:
    entities = spark.createDataFrame([("a", 10), ("b", 20), ("c", 30)], "customer string, segment int")

    actual = as_of_aggregates(
        entities,
        _events(spark),
        as_of=LATER,
        entity_key="customer",
        event_key="customer",
        event_time="event_time",
        aggregates=COUNTS_AND_SUMS,
        prefix="txn",
    )

    expected = spark.createDataFrame(
        [("a", 10, 3, 5, 1330.0, 1390.0), ("b", 20, 0, 0, 0.0, 0.0), ("c", 30, 0, 0, 0.0, 0.0)],
        "customer string, segment int, txn_count_7d bigint, txn_count_30d bigint, "
        "txn_amount_sum_7d double, txn_amount_sum_30d double",
    )
    assertDataFrameEqual(actual, expected)


@pytest.mark.parametrize(
    ("function", "column", "days", "match"),
    [
        ("count", None, 0, "days must be a positive"),
        ("count", None, -7, "days must be a positive"),
        ("median", "amount", 7, "unknown function 'median'"),
        ("sum", None, 7, "function 'sum' needs a column"),
        ("count_distinct", None, 7, "function 'count_distinct' needs a column"),
    ],
)
def test_invalid_window_aggregate_is_rejected(function: str, column: str | None, days: int, match: str) -> None:
    with pytest.raises(StepInputError, match=match):
        WindowAggregate(column, function, days)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "aggregates", "match"),
    [
        ({"entity_key": "client"}, COUNTS_AND_SUMS, r"entities has no column\(s\) \['client'\]"),
        ({"event_time": "ts"}, COUNTS_AND_SUMS, r"events has no column\(s\) \['ts'\]"),
        ({}, [WindowAggregate("price", "max", 7)], r"events has no column\(s\) \['price'\]"),
        ({"entity_time": "customer"}, COUNTS_AND_SUMS, "'customer' must be timestamp or date, got string"),
        ({"event_time": "merchant"}, COUNTS_AND_SUMS, "'merchant' must be timestamp or date, got string"),
        ({"event_key": "amount"}, COUNTS_AND_SUMS, "is string but event key 'amount' is double; cast one side"),
        ({}, [WindowAggregate("merchant", "sum", 7)], "sum needs a numeric column but events column 'merchant'"),
        ({}, [], "aggregates is empty"),
        ({}, [WindowAggregate(None, "count", 7)] * 2, "listed more than once"),
        ({"prefix": "ref"}, [WindowAggregate(None, "count", 7)], r"output columns \['ref_count_7d'\] already exist"),
    ],
)
def test_invalid_inputs_are_rejected(
    spark: SparkSession, overrides: dict[str, str], aggregates: list[WindowAggregate], match: str
) -> None:
    entities = _entities(spark, [(1, "a", REF)]).withColumn("ref_count_7d", F.lit(0))
    kwargs: dict[str, Any] = {
        "entity_key": "customer",
        "entity_time": "ref",
        "event_key": "customer",
        "event_time": "event_time",
        "aggregates": aggregates,
        **overrides,
    }
    with pytest.raises(StepInputError, match=match):
        point_in_time_aggregates(entities, _events(spark), **kwargs)


def test_as_of_with_a_time_zone_is_rejected_for_zoneless_event_times(spark: SparkSession) -> None:
    entities = spark.createDataFrame([("a",)], "customer string")
    events = _events(spark).withColumn("event_time", F.col("event_time").cast("timestamp_ntz"))

    with pytest.raises(StepInputError, match="has a time zone but the event times are timestamp_ntz"):
        as_of_aggregates(
            entities,
            events,
            as_of=LATER.replace(tzinfo=UTC),
            entity_key="customer",
            event_key="customer",
            event_time="event_time",
            aggregates=COUNTS_AND_SUMS,
        )


def _events_table(spark: SparkSession, tmp_path: Path) -> str:
    path = str(tmp_path / "events")
    _events(spark).write.format("delta").save(path)
    return path


def test_window_stage_reads_the_event_table_and_matches_the_function(spark: SparkSession, tmp_path: Path) -> None:
    entities = _entities(spark, [(1, "a", REF), (2, "a", LATER), (3, "c", REF)])
    stage = WindowFeatures(
        eventsTable=_events_table(spark, tmp_path),
        entityKey="customer",
        referenceCol="ref",
        eventKey="customer",
        eventTimeCol="event_time",
        aggregates=["count::7", "count::30", "sum:amount:7", "sum:amount:30"],
    )
    model = Pipeline(stages=[stage]).fit(entities)
    model.write().overwrite().save(str(tmp_path / "model"))
    loaded = PipelineModel.load(str(tmp_path / "model"))

    expected = _aggregate(entities, _events(spark), COUNTS_AND_SUMS)
    assertDataFrameEqual(loaded.transform(entities), expected)
    loaded_stage = loaded.stages[0]
    assert isinstance(loaded_stage, WindowFeatures)
    assert [a.column_name() for a in loaded_stage.window_aggregates()] == [a.column_name() for a in COUNTS_AND_SUMS]


def test_window_stage_as_of_replaces_every_reference_time(spark: SparkSession, tmp_path: Path) -> None:
    # Scoring as of LATER: a's row carries REF, but the events before LATER count.
    entities = _entities(spark, [(1, "a", REF)])
    stage = WindowFeatures(
        eventsTable=_events_table(spark, tmp_path),
        entityKey="customer",
        referenceCol="ref",
        eventKey="customer",
        eventTimeCol="event_time",
        aggregates=["count::7", "count::30", "sum:amount:7", "sum:amount:30"],
        asOf=LATER.isoformat(),
    )

    expected = spark.createDataFrame([(1, "a", REF, 3, 5, 1330.0, 1390.0)], COUNTS_AND_SUMS_SCHEMA)
    assertDataFrameEqual(stage.transform(entities), expected)


def test_window_stage_without_its_event_table_names_the_table(spark: SparkSession, tmp_path: Path) -> None:
    stage = WindowFeatures(
        eventsTable=str(tmp_path / "nowhere"),
        entityKey="customer",
        referenceCol="ref",
        eventKey="customer",
        eventTimeCol="event_time",
        aggregates=["count::7"],
    )
    # Not "run the step that writes it": an events table of its own is no step's output.
    with pytest.raises(
        StepInputError,
        match=r"nowhere does not exist; it is the events table of window features .*"
        r"fix features\.windows\[\]\.events",
    ) as raised:
        stage.transform(_entities(spark, [(1, "a", REF)]))
    assert "run the step that writes it" not in str(raised.value)
