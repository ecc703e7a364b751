"""Point-in-time window aggregates over an event table, joined without leaking the future."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, Self, cast, get_args

from pyspark import keyword_only
from pyspark.ml.base import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DataType,
    DateType,
    IntegralType,
    NumericType,
    TimestampNTZType,
    TimestampType,
)

from deltaml.errors import StepInputError

LOG = logging.getLogger(__name__)


AggregateFunction = Literal["count", "sum", "mean", "min", "max", "count_distinct"]


AGGREGATE_FUNCTIONS: tuple[str, ...] = get_args(AggregateFunction)


# Functions that aggregate a column's values; ``count`` alone may count events (column None).
_NEEDS_COLUMN = frozenset({"sum", "mean", "min", "max", "count_distinct"})


_NEEDS_NUMBERS = frozenset({"sum", "mean"})


_TIME_TYPES = (DateType, TimestampType, TimestampNTZType)


# Internal column names of the joined frame. Entity columns travel inside one struct and event columns are
# selected under these names, so nothing the caller names can collide with them.
_ENTITY = "__window_entity"


_ROW_ID = "__window_row_id"


_KEY = "__window_key"


_REFERENCE = "__window_reference_time"


_EVENT_KEY = "__window_event_key"


_EVENT_TIME = "__window_event_time"


_EVENT_VALUE = "__window_event_value_{}"


_AS_OF = "__window_as_of"


@dataclass(frozen=True)
class WindowAggregate:
    """One aggregate of event values over the ``days`` before each entity's reference time.

    Attributes:
        column: The event column to aggregate; None only for ``count``, which then counts events
            (with a column, ``count`` counts its non-null values, as SQL ``COUNT(column)`` does).
        function: One of ``count``, ``sum``, ``mean``, ``min``, ``max``, ``count_distinct``.
        days: Window length in calendar days, at least 1.
    """

    column: str | None
    function: AggregateFunction
    days: int

    def __post_init__(self) -> None:
        if self.function not in AGGREGATE_FUNCTIONS:
            raise StepInputError(
                f"WindowAggregate: unknown function {self.function!r}; use one of {list(AGGREGATE_FUNCTIONS)}"
            )
        if isinstance(self.days, bool) or not isinstance(self.days, int) or self.days <= 0:
            raise StepInputError(f"WindowAggregate: days must be a positive whole number of days, got {self.days!r}")
        if self.column is None and self.function in _NEEDS_COLUMN:
            raise StepInputError(
                f"WindowAggregate: function {self.function!r} needs a column; set column=<event column>"
            )

    @property
    def name(self) -> str:
        """The aggregate's name without a prefix, e.g. ``amount_sum_30d`` or ``count_7d``."""
        parts = (
            [self.column, self.function, f"{self.days}d"]
            if self.column is not None
            else [self.function, f"{self.days}d"]
        )
        return "_".join(parts)

    def column_name(self, prefix: str = "events") -> str:
        """The output column name, e.g. ``events_amount_sum_30d`` or ``events_count_7d``.

        Args:
            prefix: What the events are, put in front of :py:attr:`name`.

        Returns:
            ``<prefix>_<name>``.
        """
        return f"{prefix}_{self.name}"


def _column(name: str) -> Column:
    """A top-level column by its exact name, even one that contains dots or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def _types(df: DataFrame, what: str, columns: list[str]) -> dict[str, DataType]:
    """The data type of each named column, or an error naming the missing and the present columns."""
    present = {field.name: field.dataType for field in df.schema.fields}
    missing = [c for c in dict.fromkeys(columns) if c not in present]
    if missing:
        raise StepInputError(f"point_in_time_aggregates: {what} has no column(s) {missing}; present: {list(present)}")
    return {c: present[c] for c in columns}


def _require_time(what: str, column: str, data_type: DataType) -> None:
    if not isinstance(data_type, _TIME_TYPES):
        raise StepInputError(
            f"point_in_time_aggregates: {what} column {column!r} must be timestamp or date, "
            f"got {data_type.simpleString()}; cast it first (e.g. F.to_timestamp)"
        )


def _comparable_time_type(entity_type: DataType, event_type: DataType) -> DataType:
    """The type both time columns are cast to before comparing: date only if both are dates.

    A date becomes midnight of that day. Mixed zone-aware and zone-less timestamps compare as zone-aware
    (the zone-less one read in the session time zone), which is what Spark's own coercion does.
    """
    types = {type(entity_type), type(event_type)}
    if types == {DateType}:
        return DateType()
    if TimestampType in types:
        return TimestampType()
    return TimestampNTZType()


def _validate(
    entities: DataFrame,
    events: DataFrame,
    *,
    entity_key: str,
    entity_time: str,
    event_key: str,
    event_time: str,
    aggregates: list[WindowAggregate],
    prefix: str,
) -> tuple[dict[str, DataType], DataType]:
    """Check the inputs; return the types of the aggregated event columns and the type to compare times in."""
    if not aggregates:
        raise StepInputError("point_in_time_aggregates: aggregates is empty; pass at least one WindowAggregate")
    entity_types = _types(entities, "entities", [entity_key, entity_time])
    value_columns = list(dict.fromkeys(a.column for a in aggregates if a.column is not None))
    event_types = _types(events, "events", [event_key, event_time, *value_columns])
    _require_time("entities", entity_time, entity_types[entity_time])
    _require_time("events", event_time, event_types[event_time])
    key_type, event_key_type = entity_types[entity_key], event_types[event_key]
    # Keys must match exactly: an implicit string/number cast would quietly match "007" to 7.
    if key_type != event_key_type and not (
        isinstance(key_type, IntegralType) and isinstance(event_key_type, IntegralType)
    ):
        raise StepInputError(
            f"point_in_time_aggregates: entity key {entity_key!r} is {key_type.simpleString()} but event key "
            f"{event_key!r} is {event_key_type.simpleString()}; cast one side to the other's type"
        )
    for aggregate in aggregates:
        if aggregate.function in _NEEDS_NUMBERS:
            assert aggregate.column is not None  # WindowAggregate requires it
            value_type = event_types[aggregate.column]
            if not isinstance(value_type, NumericType):
                raise StepInputError(
                    f"point_in_time_aggregates: {aggregate.function} needs a numeric column but events column "
                    f"{aggregate.column!r} is {value_type.simpleString()}; cast it or pick another column"
                )
    names = [a.column_name(prefix) for a in aggregates]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise StepInputError(
            f"point_in_time_aggregates: aggregates {repeated} are listed more than once; drop the repeats"
        )
    clash = [n for n in names if n in entities.columns]
    if clash:
        raise StepInputError(
            f"point_in_time_aggregates: output columns {clash} already exist in entities; pass another prefix"
        )
    time_type = _comparable_time_type(entity_types[entity_time], event_types[event_time])
    return {c: event_types[c] for c in value_columns}, time_type


def _window_start(days: int) -> Column:
    """The oldest event time still inside a window of ``days`` calendar days (inclusive)."""
    # A calendar interval subtracts days in the session time zone, so a day stays a day across a DST change and
    # a date minus days stays a date.
    return F.col(_REFERENCE) - F.make_interval(days=F.lit(days))


def _aggregate_column(aggregate: WindowAggregate, value: Column | None, value_type: DataType | None) -> Column:
    """The conditional aggregate over the joined rows whose event falls in this aggregate's window."""
    # The join already keeps only events strictly before the reference time and inside the longest window; a
    # row without a matching event (left join) has a null event time, so it is in no window.
    in_window = F.col(_EVENT_TIME) >= _window_start(aggregate.days)
    function = aggregate.function
    if function == "count":
        counted = value if value is not None else F.lit(1)
        return F.count(F.when(in_window, counted))
    assert value is not None and value_type is not None  # every other function has a column
    windowed = F.when(in_window, value)
    if function == "count_distinct":
        return F.count_distinct(windowed)
    if function == "sum":
        # No event in the window sums to zero, in the type Spark gives the sum (the coalesce widens to it).
        return F.coalesce(F.sum(windowed), F.lit(0).cast(value_type))
    if function == "mean":
        return F.avg(windowed)
    if function == "min":
        return F.min(windowed)
    return F.max(windowed)


def point_in_time_aggregates(
    entities: DataFrame,
    events: DataFrame,
    *,
    entity_key: str,
    entity_time: str,
    event_key: str,
    event_time: str,
    aggregates: list[WindowAggregate],
    prefix: str = "events",
) -> DataFrame:
    """Add, to each entity row, aggregates of its key's events in windows that end just before its reference time.

    An event counts towards a window of ``days`` when its key equals the entity's key and
    ``entity_time - days <= event_time < entity_time``: an event at exactly the reference time or
    later is excluded (it was not known yet), one exactly ``days`` earlier is included. Days are
    calendar days in the session time zone; a date column means midnight of that day, and if both
    time columns are dates the comparison is on dates. A null key or time matches no event.

    With no event in the window, ``count``, ``count_distinct`` and ``sum`` are 0 and ``mean``,
    ``min`` and ``max`` are null. Every entity row comes back exactly once, duplicates included,
    with its columns unchanged and one new column per aggregate, in order, named
    :py:meth:`WindowAggregate.column_name`. Row order is not kept.

    The work is one join of entities to events on the key, restricted to the longest window, and
    one aggregation per entity row with a conditional aggregate per window; nothing is collected.

    Args:
        entities: The rows to enrich, e.g. one row per customer and snapshot date.
        events: The event table, e.g. transactions.
        entity_key: Key column in ``entities``.
        entity_time: Reference-time column in ``entities`` (timestamp or date).
        event_key: Key column in ``events``; same type as ``entity_key`` (or both integers).
        event_time: Event-time column in ``events`` (timestamp or date).
        aggregates: The aggregates to add; at least one.
        prefix: First part of each output column name.

    Returns:
        ``entities`` with one column per aggregate.

    Raises:
        StepInputError: A column is missing, a time column is not a timestamp or date, the key
            types differ, ``sum``/``mean`` is asked of a non-numeric column, ``aggregates`` is
            empty or repeats itself, or an output column already exists in ``entities``.
    """
    value_types, time_type = _validate(
        entities,
        events,
        entity_key=entity_key,
        entity_time=entity_time,
        event_key=event_key,
        event_time=event_time,
        aggregates=aggregates,
        prefix=prefix,
    )
    value_names = {column: _EVENT_VALUE.format(i) for i, column in enumerate(value_types)}
    LOG.debug("Window aggregates %s over %s", [a.column_name(prefix) for a in aggregates], list(value_types))

    # Each entity row gets its own id BEFORE the join and the result is grouped by that id. Grouping by all
    # entity columns instead would merge duplicate entity rows into one group (one output row, every matching
    # event counted twice) and fails on map columns. monotonically_increasing_id is unique but not stable
    # across re-evaluations, so the entity row is carried through the join in a struct rather than joined
    # back by id afterwards: the ids are generated once, in one plan, and only need to be unique there.
    entity_side = entities.select(
        F.struct(*[_column(c) for c in entities.columns]).alias(_ENTITY),
        F.monotonically_increasing_id().alias(_ROW_ID),
        _column(entity_key).alias(_KEY),
        _column(entity_time).cast(time_type).alias(_REFERENCE),
    )
    event_side = events.select(
        _column(event_key).alias(_EVENT_KEY),
        _column(event_time).cast(time_type).alias(_EVENT_TIME),
        *[_column(column).alias(name) for column, name in value_names.items()],
    )
    longest = max(a.days for a in aggregates)
    matches = (
        (F.col(_KEY) == F.col(_EVENT_KEY))
        & (F.col(_EVENT_TIME) < F.col(_REFERENCE))
        & (F.col(_EVENT_TIME) >= _window_start(longest))
    )
    joined = entity_side.join(event_side, on=matches, how="left")
    outputs = [
        _aggregate_column(
            a,
            F.col(value_names[a.column]) if a.column is not None else None,
            value_types[a.column] if a.column is not None else None,
        ).alias(a.column_name(prefix))
        for a in aggregates
    ]
    # Grouping by the key as well as the id lets Spark reuse the join's partitioning by key: no second shuffle.
    grouped = joined.groupBy(_KEY, _ROW_ID).agg(F.any_value(F.col(_ENTITY)).alias(_ENTITY), *outputs)
    return grouped.select(f"{_ENTITY}.*", *[_column(a.column_name(prefix)) for a in aggregates])


def _as_of_literal(as_of: datetime | date, event_type: DataType | None) -> Column:
    """``as_of`` as a literal time column that compares with the event times as the caller means it."""
    if isinstance(event_type, TimestampNTZType) and isinstance(as_of, datetime):
        if as_of.tzinfo is not None:
            raise StepInputError(
                f"as_of_aggregates: as_of {as_of.isoformat()} has a time zone but the event times are "
                "timestamp_ntz (no zone); pass a naive datetime"
            )
        return F.lit(as_of.isoformat(sep=" ")).cast(TimestampNTZType())
    # A naive datetime is read in the Python process's local zone, as createDataFrame reads one.
    return F.lit(as_of)


def as_of_aggregates(
    entities: DataFrame,
    events: DataFrame,
    *,
    as_of: datetime | date,
    entity_key: str,
    event_key: str,
    event_time: str,
    aggregates: list[WindowAggregate],
    prefix: str = "events",
) -> DataFrame:
    """Scoring-time window aggregates: :func:`point_in_time_aggregates` with every reference time set to ``as_of``.

    Args:
        entities: The rows to enrich, e.g. the customers to score.
        events: The event table.
        as_of: The reference time; only events strictly before it count.
        entity_key: Key column in ``entities``.
        event_key: Key column in ``events``.
        event_time: Event-time column in ``events`` (timestamp or date).
        aggregates: The aggregates to add; at least one.
        prefix: First part of each output column name.

    Returns:
        ``entities`` with one column per aggregate.

    Raises:
        StepInputError: As for :func:`point_in_time_aggregates`, or ``as_of`` is not a datetime or
            date, or it has a time zone while the event times are ``timestamp_ntz``.
    """
    if not isinstance(as_of, date):
        raise StepInputError(f"as_of_aggregates: as_of must be a datetime or date, got {type(as_of).__name__}")
    event_type = {field.name: field.dataType for field in events.schema.fields}.get(event_time)
    reference = _AS_OF
    while reference in entities.columns:
        reference = "_" + reference
    enriched = point_in_time_aggregates(
        entities.withColumn(reference, _as_of_literal(as_of, event_type)),
        events,
        entity_key=entity_key,
        entity_time=reference,
        event_key=event_key,
        event_time=event_time,
        aggregates=aggregates,
        prefix=prefix,
    )
    return enriched.drop(reference)


class WindowFeatures(Transformer, DefaultParamsReadable["WindowFeatures"], DefaultParamsWritable):
    """A pipeline stage that adds point-in-time window aggregates of an event Delta table.

    At transform time it reads the event table (latest version) and calls
    :func:`point_in_time_aggregates` with each row's ``referenceCol`` as its reference time, or,
    when ``asOf`` is set (an ISO-8601 time), :func:`as_of_aggregates` as of that moment. Nothing
    is learned, so fitting a pipeline that contains it learns nothing from events either; the
    stage only saves where the events are and what to aggregate. Saved models record the class by
    its module path (``deltaml.ml.windows``; before the layering ``deltaml.windows``, still
    re-exported there): do not move or rename it.

    Params:
        eventsTable: The event table: a path, or a catalog name when ``eventsIsPath`` is false.
        eventsIsPath: Whether ``eventsTable`` is a path.
        entityKey: Key column of the rows being transformed.
        referenceCol: Reference-time column of the rows being transformed.
        eventKey: Key column of the events.
        eventTimeCol: Event-time column of the events.
        aggregates: One ``function:column:days`` string per aggregate (empty column: count events).
        prefix: First part of each output column name.
        asOf: Empty, or an ISO-8601 time that replaces every row's reference time.
    """

    _input_kwargs: dict[str, Any]

    eventsTable: Param[str] = Param(Params._dummy(), "eventsTable", "event table path or name", TypeConverters.toString)
    eventsIsPath: Param[bool] = Param(
        Params._dummy(), "eventsIsPath", "whether eventsTable is a path", TypeConverters.toBoolean
    )
    entityKey: Param[str] = Param(Params._dummy(), "entityKey", "key column of the rows", TypeConverters.toString)
    referenceCol: Param[str] = Param(
        Params._dummy(), "referenceCol", "reference-time column of the rows", TypeConverters.toString
    )
    eventKey: Param[str] = Param(Params._dummy(), "eventKey", "key column of the events", TypeConverters.toString)
    eventTimeCol: Param[str] = Param(
        Params._dummy(), "eventTimeCol", "event-time column of the events", TypeConverters.toString
    )
    aggregates: Param[list[str]] = Param(
        Params._dummy(), "aggregates", "function:column:days per aggregate", TypeConverters.toListString
    )
    prefix: Param[str] = Param(Params._dummy(), "prefix", "output column name prefix", TypeConverters.toString)
    asOf: Param[str] = Param(
        Params._dummy(), "asOf", "ISO-8601 time replacing the reference times, or empty", TypeConverters.toString
    )

    @keyword_only
    def __init__(
        self,
        *,
        eventsTable: str | None = None,
        eventsIsPath: bool = True,
        entityKey: str | None = None,
        referenceCol: str | None = None,
        eventKey: str | None = None,
        eventTimeCol: str | None = None,
        aggregates: list[str] | None = None,
        prefix: str = "events",
        asOf: str = "",
    ) -> None:
        """Create the stage; arguments as the params above."""
        super().__init__()
        self._setDefault(eventsIsPath=True, prefix="events", asOf="")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(
        self,
        *,
        eventsTable: str | None = None,
        eventsIsPath: bool = True,
        entityKey: str | None = None,
        referenceCol: str | None = None,
        eventKey: str | None = None,
        eventTimeCol: str | None = None,
        aggregates: list[str] | None = None,
        prefix: str = "events",
        asOf: str = "",
    ) -> Self:
        """Sets params for this WindowFeatures; arguments as for the constructor."""
        return self._set(**self._input_kwargs)

    def setEvents(self, table: str, is_path: bool) -> Self:
        """Point the stage at another event table, e.g. the scoring environment's."""
        return self._set(eventsTable=table, eventsIsPath=is_path)

    def setAsOf(self, value: str) -> Self:
        """Sets :py:attr:`asOf`: an ISO-8601 time, or empty for each row's reference time."""
        return self._set(asOf=value)

    def getEventsTable(self) -> str:
        """Gets the value of :py:attr:`eventsTable`."""
        return self.getOrDefault(self.eventsTable)

    def getPrefix(self) -> str:
        """Gets the value of :py:attr:`prefix`."""
        return self.getOrDefault(self.prefix)

    def window_aggregates(self) -> list[WindowAggregate]:
        """The ``aggregates`` param as :class:`WindowAggregate` objects."""
        parsed = []
        for item in self.getOrDefault(self.aggregates):
            function, column, days = item.split(":")
            parsed.append(WindowAggregate(column or None, cast(AggregateFunction, function), int(days)))
        return parsed

    def _transform(self, dataset: DataFrame) -> DataFrame:
        from deltaml.io.catalog import Table, read_table

        for param in (self.eventsTable, self.entityKey, self.referenceCol, self.eventKey, self.eventTimeCol):
            if not self.isDefined(param):
                raise StepInputError(f"WindowFeatures: param {param.name} is not set")
        table = Table(self.getOrDefault(self.eventsTable), is_path=self.getOrDefault(self.eventsIsPath))
        events, version = read_table(
            dataset.sparkSession,
            table,
            "features",
            missing=(
                f"it is the events table of window features '{self.getPrefix()}': create it, or fix "
                "features.windows[].events (raw and clean are this pipeline's own: run ingest and validate first)"
            ),
        )
        LOG.info("window features %s: events from %s v%d", self.getPrefix(), table, version)
        common: dict[str, Any] = {
            "entity_key": self.getOrDefault(self.entityKey),
            "event_key": self.getOrDefault(self.eventKey),
            "event_time": self.getOrDefault(self.eventTimeCol),
            "aggregates": self.window_aggregates(),
            "prefix": self.getPrefix(),
        }
        as_of_text = self.getOrDefault(self.asOf)
        if as_of_text:
            as_of = datetime.fromisoformat(as_of_text)
            event_type = {f.name: f.dataType for f in events.schema.fields}.get(common["event_time"])
            if isinstance(event_type, TimestampNTZType) and as_of.tzinfo is not None:
                # Zone-less event times are wall-clock times: compare them with the wall clock here.
                as_of = as_of.astimezone().replace(tzinfo=None)
            return as_of_aggregates(dataset, events, as_of=as_of, **common)
        return point_in_time_aggregates(dataset, events, entity_time=self.getOrDefault(self.referenceCol), **common)
