"""What a Spark or Delta failure says about a table: a corrupt log entry, a missing data file, a failed write.

Spark reports these as pages of JVM trace under ``Py4JJavaError: An error occurred while calling
o926.save.``; the cause and the file are at the bottom of the exception chain
(:func:`deltaml.errors.spark_cause`). This turns them into one line that names the table, the file
and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from deltaml.errors import READ_FAILED, WRITE_FAILED, SparkCause, one_line, spark_cause, without_credentials
from deltaml.io.catalog import recorded_table, sql_identifier

DELTA_LOG = "_delta_log"
_PARTITION_FOLDER = re.compile(r"^[^/=]+=[^/]*$")


def failure_clause(error: BaseException, tables: Iterable[str] = ()) -> str:
    """What follows "... failed" in an error line: the table, file and fix, or the kind and root cause of the error.

    `` reading Delta table /w/raw: its data file ... is missing ...`` or ``: IOException: No space left on device``;
    py4j's own type (``Py4JJavaError``) says nothing, the root cause's Java class does.

    Args:
        error: What Spark (or anything else) raised.
        tables: The tables the failing code read or meant to write, as for :func:`explain_table_failure`.
    """
    explained = explain_table_failure(error, tables)
    if explained is not None:
        return f" {explained}"
    kind = type(error).__name__
    cause = spark_cause(error)
    if cause is not None and kind.startswith("Py4J"):
        kind = cause.root.short_kind
    return f": {kind}: {one_line(error, 500)}"


def explain_table_failure(error: BaseException, tables: Iterable[str] = ()) -> str | None:
    """Why reading or writing a Delta table failed, naming the table, the file and the fix.

    Args:
        error: What Spark raised.
        tables: The tables the failing code had read or meant to write (as :class:`~deltaml.io.catalog.Table`
            text), to name the table a file belongs to; without them it is found from the file's path.

    Returns:
        ``reading <table>: ...`` or ``writing <table>: ...``, or None when the failure is not about a table's files.
    """
    cause = spark_cause(error)
    if cause is None:
        return None
    read = cause.path(READ_FAILED)
    if read is not None:
        return without_credentials(_read_failure(cause, _local(read), tables))
    written = cause.path(WRITE_FAILED)
    if written is not None:
        table = _table_of(_local(written), tables)
        return without_credentials(
            f"writing {table}: {cause.root.message or cause.root.short_kind}; nothing was committed to {table}, "
            "its last version stands"
        )
    return None


def _read_failure(cause: SparkCause, file: str, tables: Iterable[str]) -> str:
    root = cause.root.message or cause.root.short_kind
    if f"/{DELTA_LOG}/" in file:
        table, _, entry = file.rpartition(f"/{DELTA_LOG}/")
        return (
            f"reading Delta table {table}: its log entry {DELTA_LOG}/{entry} is corrupt ({root}); restore that file "
            "from a backup (the table cannot be read until then)"
        )
    table = _table_of(file, tables)
    missing = cause.first(f"{READ_FAILED}.FILE_NOT_EXIST") is not None or cause.root.short_kind == (
        "FileNotFoundException"
    )
    if not missing:
        return f"reading {table}: {root} (file {file})"
    name = file.removeprefix(table.rstrip("/") + "/")
    ident = sql_identifier(recorded_table(table))
    return (
        f"reading Delta table {table}: its data file {name} is missing, but the table's log still lists it; "
        f"restore the file, or drop it from the log and lose its rows: `FSCK REPAIR TABLE {ident}` on Databricks, "
        f"or with open-source Delta (no FSCK) `INSERT OVERWRITE {ident} SELECT * FROM {ident}` with "
        "spark.sql.files.ignoreMissingFiles=true"
    )


def _local(path: str) -> str:
    """A local file's path without ``file:`` (Spark writes ``file:/x`` and ``file:///x``); other URIs as they are."""
    if path.startswith("file:"):
        return "/" + path.removeprefix("file:").lstrip("/")
    return path


def _table_of(file: str, tables: Iterable[str]) -> str:
    """The table a file or folder belongs to: the longest of ``tables`` that holds it, else its folder."""
    holding = [t for t in (_local(t).rstrip("/") for t in tables) if file == t or file.startswith(t + "/")]
    if holding:
        return max(holding, key=len)
    if file.rsplit("/", 1)[-1].startswith("part-"):  # a data file: its table is the folder above the partitions
        parts = file.split("/")[:-1]
        while parts and _PARTITION_FOLDER.match(parts[-1]):
            parts.pop()
        return "/".join(parts) or file
    return file
