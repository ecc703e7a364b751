"""A starter pipeline config inferred from a data profile (``deltaml init``): decide, then render commented YAML.

Pure Python on a :class:`DataProfile` (small aggregates of a sample, collected by
:mod:`deltaml.quality.source_profile`), so every rule is testable without Spark. :func:`plan_config`
decides each column's role (key, label, numeric or categorical feature, or excluded and why) and its
contract; :func:`render_config` writes the plan as YAML with a comment on each inferred choice.

The rules, with their thresholds (the constants below; docs/guides/configuration.md lists them):

- key: a column without nulls whose every sampled value is distinct, integer or string, named like an
  id (``id``, ``*_id``, ``key``, ``uuid``, ``rownames``, ``index``, ...), or else an integer one that
  is the first column or runs like a row number (``max - min + 1 <= 2 * rows``). Without one, a
  ``row_key`` is derived as ``xxhash64`` of every source column.
- label task: a string or boolean label is ``binary`` with 2 values and ``multiclass`` with up to
  :data:`MAX_CLASSES`; a numeric one is ``binary``/``multiclass`` when it holds whole numbers with at
  most :data:`MAX_INTEGER_CLASSES` values, else ``regression``. The positive value of a binary label is
  a yes-like value (``yes``, ``true``, ``1``, ...) if there is one, else the rarer value.
- features: numeric types are numeric features; strings with at most :data:`MAX_CATEGORIES` values
  are categorical; excluded (with a reason): the label, the key, other id-like columns (distinct
  share >= :data:`ID_DISTINCT_SHARE`), free text (mean length > :data:`TEXT_MIN_LENGTH` or mean
  words >= :data:`TEXT_MIN_WORDS`, with distinct share >= :data:`TEXT_DISTINCT_SHARE`), constant or
  all-null columns, dates and timestamps (offered for a time split), other high-cardinality strings
  and types a model cannot read.
- contract: every column's type; ``nullable: false`` where the sample had no null; numeric ranges
  widened by the observed span on each side and rounded outward to the span's order of magnitude (a
  column never negative in the sample keeps 0 as its floor); ``allowed`` for strings with at most
  :data:`MAX_ALLOWED_VALUES` values seen in at least :data:`ROWS_PER_ALLOWED_VALUE` rows each on
  average, and for 0/1 integer flags; ``unique`` on the key; ``min_rows`` a tenth of the sampled rows.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Literal

from deltaml.errors import ConfigError

Value = str | int | float | bool

# Spark SQL type names (``DataType.simpleString()``) by kind.
INTEGER_TYPES = frozenset({"tinyint", "smallint", "int", "bigint"})
FLOAT_TYPES = frozenset({"float", "double"})
TIME_TYPES = frozenset({"date", "timestamp", "timestamp_ntz"})

MAX_ALLOWED_VALUES = 20
"""A string column gets an ``allowed`` list when the sample shows at most this many values..."""
ROWS_PER_ALLOWED_VALUE = 10
"""...and at least this many non-null rows per value (fewer, and unseen valid values are likely)."""
MAX_CATEGORIES = 100
"""A string column with at most this many distinct values is a categorical feature."""
RARE_CATEGORIES_FROM = 20
"""A categorical feature with more values than this turns on grouping of rare levels."""
ID_DISTINCT_SHARE = 0.9
"""A string column whose distinct values are at least this share of its non-null rows is an identifier."""
TEXT_MIN_LENGTH = 30.0
"""A string column longer than this on average (and mostly distinct) is free text."""
TEXT_MIN_WORDS = 4.0
"""A string column with at least this many words on average (and mostly distinct) is free text."""
TEXT_DISTINCT_SHARE = 0.5
"""Free text must also be mostly distinct: at least this share of its non-null rows."""
MAX_CLASSES = 50
"""A string label with more distinct values than this is refused (not a classification label)."""
MAX_INTEGER_CLASSES = 10
"""A whole-number label with at most this many values is a class label; with more, a regression target."""
MIN_ROWS_SHARE = 0.1
"""``contract.min_rows``: this share of the sampled rows, rounded down to one significant digit."""
TOP_VALUES = 50
"""The profile lists the values (with counts) of columns with at most this many distinct values."""

_ID_NAME = re.compile(
    r"(^|[_\W])(id|key|uuid|guid|pk)($|[_\W])|^(rownames?|index|row_?(num|number|no))$",
    re.IGNORECASE,
)
_CAMEL_ID = re.compile(r"[a-z0-9](Id|ID|Key|Uuid)$")
_YES = ("yes", "y", "true", "t", "1", "1.0", "positive", "pos")
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null", "none", "~"})


@dataclass(frozen=True)
class ColumnProfile:
    """Small aggregates of one column over the sample.

    Attributes:
        name: The column name.
        type: Spark's ``simpleString()`` of its type (``int``, ``double``, ``string``, ``date``, ...).
        nulls: Null values in the sample (NaN counts as a value).
        distinct: Distinct non-null values (exact when ``values`` is set or the column looks unique).
        min: The smallest non-NaN value of a numeric column.
        max: The largest non-NaN value of a numeric column.
        first: The earliest value of a date or timestamp column, as ISO text.
        last: The latest value of a date or timestamp column, as ISO text.
        integral: Every value of a numeric column is a whole number.
        values: Value -> count, most frequent first, when the column has at most ``TOP_VALUES`` values.
        mean_length: The mean length of a string column's values.
        mean_words: The mean number of whitespace-separated words of a string column's values.
        distinct_exact: ``distinct`` is an exact count (else Spark's approximate one, within a few percent).
    """

    name: str
    type: str
    nulls: int
    distinct: int
    min: float | None = None
    max: float | None = None
    first: str | None = None
    last: str | None = None
    integral: bool = False
    values: list[tuple[Value, int]] | None = None
    mean_length: float | None = None
    mean_words: float | None = None
    distinct_exact: bool = True

    @property
    def is_numeric(self) -> bool:
        """An integer, floating-point or decimal column."""
        return self.type in INTEGER_TYPES or self.type in FLOAT_TYPES or self.type.startswith("decimal")

    @property
    def is_integer(self) -> bool:
        """An integer-typed column."""
        return self.type in INTEGER_TYPES


@dataclass(frozen=True)
class DataProfile:
    """The profile of a source sample: its row count, the sample's cap, and one profile per column, in order."""

    rows: int
    sample_rows: int
    columns: list[ColumnProfile]

    def column(self, name: str) -> ColumnProfile:
        """The profile of column ``name``."""
        return next(c for c in self.columns if c.name == name)


@dataclass(frozen=True)
class SourceSpec:
    """The ``source`` section to write: kind, path and reader options."""

    kind: Literal["csv", "parquet", "delta"]
    path: str
    options: dict[str, str] = field(default_factory=dict)


Role = Literal["key", "label", "numeric", "categorical", "excluded"]


@dataclass(frozen=True)
class ColumnPlan:
    """What the config does with one column: its role, why, and its contract."""

    name: str
    role: Role
    reason: str
    contract_type: str | None
    nullable: bool
    min: float | None = None
    max: float | None = None
    allowed: list[Value] | None = None
    note: str = ""


@dataclass(frozen=True)
class LabelPlan:
    """The label's task, positive value or classes, and why."""

    column: str
    task: Literal["binary", "multiclass", "regression"]
    reason: str
    positive: Value | None = None
    classes: list[Value] | None = None


@dataclass(frozen=True)
class ConfigPlan:
    """Every decision of a starter config, before it is rendered."""

    name: str
    source: SourceSpec
    profile: DataProfile
    key: str
    key_reason: str
    key_expression: str | None
    label: LabelPlan
    columns: list[ColumnPlan]
    min_rows: int
    time_columns: list[str]

    def role(self, role: Role) -> list[str]:
        """The columns with ``role``, in source order."""
        return [c.name for c in self.columns if c.role == role]


def check_label(columns: list[str], label: str) -> None:
    """Raise one line if ``label`` is not a column, naming the columns (and a case-insensitive match).

    Raises:
        ConfigError: The label is not one of ``columns``.
    """
    if label in columns:
        return
    same = [c for c in columns if c.lower() == label.lower()]
    hint = f"did you mean --label {same[0]}? " if same else ""
    raise ConfigError(f"deltaml init: --label {label} is not a column of the data; {hint}columns: {columns}")


def plan_config(profile: DataProfile, source: SourceSpec, label: str, name: str) -> ConfigPlan:
    """Decide the key, the label's task, each column's role and its contract from a sample's profile.

    Args:
        profile: The sample's profile.
        source: The ``source`` section to write.
        label: The label column.
        name: The pipeline's name.

    Returns:
        The plan; :func:`render_config` writes it.

    Raises:
        ConfigError: The label is not a column, is constant or all null, cannot be learned, or no
            column is left as a feature.
    """
    check_label([c.name for c in profile.columns], label)
    label_plan = _plan_label(profile, profile.column(label))
    key, key_reason = _find_key(profile, label)
    plans = [_plan_column(profile, c, label_plan, key) for c in profile.columns]
    if not any(p.role in ("numeric", "categorical") for p in plans):
        reasons = "; ".join(f"{p.name}: {p.reason}" for p in plans if p.role == "excluded")
        raise ConfigError(
            f"deltaml init: no column is left as a feature ({reasons or 'only the key and label'}); "
            "give data with numeric or low-cardinality string columns besides the label"
        )
    expression = None
    if key is None:
        key = _unused_name("row_key", [c.name for c in profile.columns])
        expression = "xxhash64({})".format(", ".join(_sql_name(c.name) for c in profile.columns))
        key_reason = "no column is a unique id in the sample, so a key is derived from every column's value"
    times = [c.name for c in profile.columns if c.type in TIME_TYPES and c.nulls == 0 and c.distinct > 1]
    return ConfigPlan(
        name=name,
        source=source,
        profile=profile,
        key=key,
        key_reason=key_reason,
        key_expression=expression,
        label=label_plan,
        columns=plans,
        min_rows=_min_rows(profile.rows),
        time_columns=times,
    )


def _plan_label(profile: DataProfile, column: ColumnProfile) -> LabelPlan:
    rows = profile.rows
    if column.distinct == 0:
        raise ConfigError(f"deltaml init: the label {column.name} is null in all {rows:,} sampled rows; pick another")
    if column.distinct == 1:
        raise ConfigError(
            f"deltaml init: the label {column.name} has one value in {rows:,} sampled rows; nothing to learn "
            "(pick another label, or a sample with both outcomes: --sample-rows)"
        )
    if column.type in TIME_TYPES or not (column.is_numeric or column.type in ("string", "boolean")):
        raise ConfigError(
            f"deltaml init: the label {column.name} is a {column.type} column; give a string, boolean or numeric label"
        )
    values = [v for v, _ in column.values or []]
    seen = f"{column.distinct:,} distinct values in {rows:,} sampled rows"
    discrete = column.type in ("string", "boolean") or (column.integral and column.distinct <= MAX_INTEGER_CLASSES)
    if not discrete:
        return LabelPlan(column.name, "regression", f"numeric with {seen}")
    if column.values is None or column.distinct > MAX_CLASSES:
        raise ConfigError(
            f"deltaml init: the label {column.name} is a {column.type} column with {seen}: too many for classes "
            f"(at most {MAX_CLASSES}); pick a label with few values, or a numeric one for regression"
        )
    if column.is_numeric:
        values = [int(v) if isinstance(v, float) else v for v in values]
    if column.distinct > 2 and column.type in FLOAT_TYPES:
        # Classes are matched on the label's text as Spark casts it: a double 1.0 reads "1.0", not "1".
        values = [repr(float(v)) for v in values]
    if column.distinct == 2:
        counts = dict(zip(values, (n for _, n in column.values), strict=True))
        yes = [v for v in values if str(v).lower() in _YES]
        if yes:
            positive, why = yes[0], "the yes-like value"
        else:
            positive = min(values, key=lambda v: (counts[v], str(v)))
            why = "the rarer value"
        share = counts[positive] / sum(counts.values())
        reason = f"2 values in {rows:,} sampled rows; positive: {why} ({share:.1%} of the rows)"
        return LabelPlan(column.name, "binary", reason, positive=positive)
    classes = sorted(values, key=lambda v: (str(type(v)), v))
    return LabelPlan(column.name, "multiclass", seen, classes=classes)


def _looks_like_id_name(name: str) -> bool:
    return bool(_ID_NAME.search(name) or _CAMEL_ID.search(name))


def _find_key(profile: DataProfile, label: str) -> tuple[str | None, str]:
    rows = profile.rows
    unique = [
        c
        for c in profile.columns
        if c.name != label and c.nulls == 0 and c.distinct == rows and (c.is_integer or c.type == "string")
    ]
    seen = f"{rows:,} distinct values in {rows:,} sampled rows, no nulls"
    for column in unique:
        if _looks_like_id_name(column.name):
            return column.name, f"named like an id; {seen}"
    for column in unique:
        if not column.is_integer or column.min is None or column.max is None:
            continue
        if column is profile.columns[0]:
            return column.name, f"the first column, a unique integer; {seen}"
        if column.max - column.min + 1 <= 2 * rows:
            return column.name, f"a unique integer that runs like a row number ({column.min:g}..{column.max:g}); {seen}"
    return None, ""


def _plan_column(profile: DataProfile, column: ColumnProfile, label: LabelPlan, key: str | None) -> ColumnPlan:
    rows = profile.rows
    present = rows - column.nulls
    contract_type = _contract_type(column.type)
    nullable = column.nulls > 0
    low, high = _widened_range(column) if column.is_numeric else (None, None)
    allowed = _allowed_values(column, present)
    if allowed is not None:
        low = high = None
    note = _describe(column, rows)

    def plan(role: Role, reason: str) -> ColumnPlan:
        return ColumnPlan(column.name, role, reason, contract_type, nullable, low, high, allowed, note)

    if column.name == label.column:
        if label.task != "regression":
            allowed = [v for v in label.classes or _label_values(column)] if column.type != "boolean" else None
            low = high = None
        return ColumnPlan(column.name, "label", label.reason, contract_type, nullable, low, high, allowed, note)
    if column.name == key:
        return ColumnPlan(column.name, "key", "the key", contract_type, False, note=note)
    if contract_type is None:
        return plan("excluded", f"a {column.type} column, which the model cannot read")
    if present == 0:
        return plan("excluded", "null in every sampled row")
    if column.distinct <= 1:
        return plan("excluded", f"constant ({_values_text(column)} in every non-null row)")
    if column.type in TIME_TYPES:
        span = f"{column.first} .. {column.last}"
        return plan(
            "excluded",
            f"a {column.type} ({span}): raw time is no feature; it can order a time split (see split) or "
            "give date_part/days_between derived features",
        )
    share = column.distinct / present
    if column.is_numeric:
        if column.is_integer and share >= ID_DISTINCT_SHARE and _looks_like_id_name(column.name):
            return plan("excluded", f"an identifier (named like one; {column.distinct:,} distinct in {present:,} rows)")
        return plan("numeric", note)
    if column.type == "boolean":
        return plan("numeric", "boolean, read as 0/1")
    words, length = column.mean_words or 0.0, column.mean_length or 0.0
    if share >= TEXT_DISTINCT_SHARE and (length > TEXT_MIN_LENGTH or words >= TEXT_MIN_WORDS):
        return plan(
            "excluded",
            f"free text (mean {length:.0f} characters, {words:.1f} words; {column.distinct:,} distinct in "
            f"{present:,} rows): no text features here; derive e.g. its length with source.derive",
        )
    if share >= ID_DISTINCT_SHARE and column.distinct > MAX_CATEGORIES:
        return plan("excluded", f"an identifier ({column.distinct:,} distinct values in {present:,} rows)")
    if column.distinct > MAX_CATEGORIES:
        return plan(
            "excluded",
            f"high cardinality ({column.distinct:,} distinct values): consider features.hashing or "
            "features.encodings.frequency",
        )
    return plan("categorical", note)


def _contract_type(spark_type: str) -> str | None:
    """The contract's type name for a Spark type (None: a type the contract and the model do not handle)."""
    if spark_type in ("tinyint", "smallint", "int"):
        return "int"
    if spark_type.startswith("decimal"):
        return "double"
    if spark_type == "timestamp_ntz":
        return "timestamp"
    known = {"bigint", "float", "double", "string", "boolean", "date", "timestamp"}
    return spark_type if spark_type in known else None


def _label_values(column: ColumnProfile) -> list[Value]:
    values = [v for v, _ in column.values or []]
    if column.is_numeric:
        values = [int(v) if isinstance(v, float) else v for v in values]
    if len(values) > 2 and column.type in FLOAT_TYPES:
        values = [repr(float(v)) for v in values]
    return sorted(values, key=lambda v: (str(type(v)), v))


def _allowed_values(column: ColumnProfile, present: int) -> list[Value] | None:
    if column.values is None or not column.values:
        return None
    values = [v for v, _ in column.values]
    if len(values) < 2:  # a constant column is left out of the features; a later second value is no error
        return None
    if column.is_integer and len(values) == 2 and set(values) == {0, 1}:
        return [0, 1]
    if column.type != "string":
        return None
    if len(values) <= MAX_ALLOWED_VALUES and present >= ROWS_PER_ALLOWED_VALUE * len(values):
        return values
    return None


def _widened_range(column: ColumnProfile) -> tuple[float | None, float | None]:
    """The observed range widened by its span on each side, rounded outward (a never-negative column keeps floor 0)."""
    if column.min is None or column.max is None or not math.isfinite(column.min) or not math.isfinite(column.max):
        return None, None  # an infinite value seen: no range rule (the contract's finite rule says more)
    low, high = column.min, column.max
    span = high - low
    if span <= 0:
        span = abs(high) or 1.0
    step = 10.0 ** math.floor(math.log10(span))
    if column.is_integer or column.integral:
        step = max(step, 1.0)
    lower = math.floor((low - span) / step) * step
    upper = math.ceil((high + span) / step) * step
    if low >= 0:
        lower = max(lower, 0.0)
    if high <= 0:
        upper = min(upper, 0.0)
    digits = max(0, -math.floor(math.log10(step)))
    return round(lower, digits), round(upper, digits)


def _min_rows(rows: int) -> int:
    target = rows * MIN_ROWS_SHARE
    if target < 1:
        return 1
    unit = 10 ** math.floor(math.log10(target))
    return int(target // unit * unit)


def _describe(column: ColumnProfile, rows: int) -> str:
    """A short comment on what the sample held."""
    parts = []
    if column.first is not None and column.last is not None:
        parts.append(f"{column.first} .. {column.last} seen")
    if column.is_numeric and column.min is not None and column.max is not None:
        parts.append(f"{_number(column.min)}..{_number(column.max)} seen")
    if column.values is not None and len(column.values) <= MAX_ALLOWED_VALUES:
        parts.append(f"{len(column.values)} distinct")
    else:
        parts.append(f"{'' if column.distinct_exact else '~'}{column.distinct:,} distinct")
    if column.nulls:
        parts.append(f"{column.nulls:,} null")
    return ", ".join(parts)


def _values_text(column: ColumnProfile) -> str:
    return _scalar(column.values[0][0]) if column.values else "one value"


def _unused_name(base: str, taken: list[str]) -> str:
    lowered = {t.lower() for t in taken}
    name, n = base, 1
    while name.lower() in lowered:
        n += 1
        name = f"{base}_{n}"
    return name


def _sql_name(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else "`" + name.replace("`", "``") + "`"


# --- rendering ---------------------------------------------------------------------------------------------


def _text(value: str) -> str:
    """A string as a YAML scalar: plain when that reads back as the same string, else double-quoted."""
    if _PLAIN.match(value) and value.lower() not in _YAML_WORDS and not re.fullmatch(r"[0-9._-]+", value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(float(value))
    if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 reads 1e-05 as text; 1.0e-05 is a number
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def _scalar(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    return _text(str(value))


def _flow(values: list[Value] | list[str], indent: int, width: int = 100) -> str:
    """A YAML flow list whose ``[`` is at column ``indent``, wrapped to ``width`` under its first item."""
    if not values:
        return "[]"
    items = [_scalar(v) for v in values]
    lines: list[str] = []
    line = "["
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "]")
        start = indent if not lines else 0
        if line.strip() not in ("[", "") and start + len(line) + 1 + len(piece) > width:
            lines.append(line)
            line = " " * (indent + 1) + piece
        else:
            line += ("" if line.endswith("[") else " ") + piece
    lines.append(line)
    return "\n".join(lines)


def _mapping(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"


def _column_contract(plan: ColumnPlan) -> str:
    pairs: list[tuple[str, str]] = []
    if plan.contract_type is not None:
        pairs.append(("type", plan.contract_type))
    if not plan.nullable:
        pairs.append(("nullable", "false"))
    if plan.min is not None:
        pairs.append(("min", _number(plan.min)))
    if plan.max is not None:
        pairs.append(("max", _number(plan.max)))
    if plan.allowed is not None:
        pairs.append(("allowed", _flow(plan.allowed, 0, width=10_000)))
    return _mapping(pairs)


def render_config(plan: ConfigPlan, schema_ref: str) -> str:
    """The plan as a commented pipeline YAML.

    Args:
        plan: What :func:`plan_config` decided.
        schema_ref: The JSON Schema path the first line names for editors (relative to the file).

    Returns:
        The YAML text, ending with a newline.
    """
    profile, label = plan.profile, plan.label
    rows = profile.rows
    limited = " (the --sample-rows cap)" if rows >= profile.sample_rows else ""
    name = plan.name
    out: list[str] = [
        f"# yaml-language-server: $schema={schema_ref}",
        f"# Written by `deltaml init` from {rows:,} sampled rows{limited} of {plan.source.path}.",
        "# Every inferred choice says why in a comment; review them, then `deltaml check-config` this file.",
        f"name: {_text(name)}",
        "seed: 42",
        f"# key: {plan.key_reason}",
        f"key: {_text(plan.key)}",
        "",
        "source:",
        f"  kind: {plan.source.kind}",
        f"  path: {_text(plan.source.path)}",
    ]
    if plan.source.kind == "csv":
        out.append("  # header: the first line names the columns; the contract's types below are the read schema.")
    if plan.source.options:
        out.append(f"  options: {_mapping([(k, _text(v)) for k, v in plan.source.options.items()])}")
    if plan.key_expression is not None:
        out += [
            "  # A key computed from the row's values (identical rows share it); replace it with a real id if any.",
            f"  derive: {{{plan.key}: {json.dumps(plan.key_expression)}}}",
        ]
    out += [
        "",
        "# Relative paths live under <state_dir>/warehouse; use `name:` for catalog tables.",
        "tables:",
        f"  raw: {{path: bronze/{name}}}",
        f"  clean: {{path: silver/{name}_clean}}",
        f"  quarantine: {{path: bronze/{name}_quarantine}}",
        f"  quality: {{path: quality/{name}_rules}}",
        f"  split: {{path: silver/{name}_split}}",
        f"  predictions: {{path: gold/{name}_predictions}}",
        "",
        f"# {label.task}: {label.reason}",
        "label:",
        f"  column: {_text(label.column)}",
        f"  task: {label.task}",
    ]
    if label.positive is not None:
        out.append(f"  positive: {_scalar(label.positive)}")
    if label.classes is not None:
        out.append(f"  classes: {_flow(label.classes, 11)}")
    out += _render_features(plan)
    out += _render_contract(plan)
    out += _render_split(plan)
    out += _render_models(plan)
    out += [
        "",
        "score:",
        "  model_alias: champion",
        "  input: clean",
        "",
        "mlflow:",
        f"  experiment: {_text('deltaml-' + name.replace('_', '-'))}",
        f"  registered_model: {_text(name)}",
    ]
    return "\n".join(out) + "\n"


def _render_features(plan: ConfigPlan) -> list[str]:
    numeric, categorical = plan.role("numeric"), plan.role("categorical")
    by_name = {c.name: c for c in plan.profile.columns}
    out = [
        "",
        "features:",
        "  # Numeric types: cast to double, imputed, scaled.",
        f"  numeric: {_flow(numeric, 11)}",
        f"  # Strings with at most {MAX_CATEGORIES} distinct values in the sample: indexed and one-hot encoded.",
        f"  categorical: {_flow(categorical, 15)}",
    ]
    excluded = [c for c in plan.columns if c.role in ("key", "label", "excluded")]
    if excluded:
        out.append("  # Not features:")
        for column in excluded:
            reason = {"key": "the key", "label": "the label"}.get(column.role, column.reason)
            out.append(f"  #   {column.name}: {reason}")
    with_nulls = [c for c in numeric if by_name[c].nulls > 0]
    if with_nulls:
        out.append(f"  # Nulls in the sample in {', '.join(with_nulls)}: the median fills them, an indicator says so.")
        out.append("  impute: {strategy: median, indicator: true}")
    else:
        out.append("  impute: {strategy: median, indicator: false}")
    many = [c for c in categorical if by_name[c].distinct > RARE_CATEGORIES_FROM]
    if many:
        out.append(f"  # {', '.join(many)}: more than {RARE_CATEGORIES_FROM} levels; levels under 1% become one.")
        out.append("  rare_categories: {min_frequency: 0.01}")
    out.append("  scale: true")
    return out


def _render_contract(plan: ConfigPlan) -> list[str]:
    profile = plan.profile
    out = [
        "",
        "# The data contract of the raw table: a row that breaks a rule goes to the quarantine table with the",
        "# rules it broke; the run fails if more than max_bad_fraction of the rows are bad. Inferred from the",
        "# sample: nullable: false where it had no null; numeric ranges are the observed range widened by its",
        "# span on each side, rounded outward (0 stays the floor of a never-negative column); allowed: the",
        f"# values of strings with at most {MAX_ALLOWED_VALUES} of them (and of 0/1 flags).",
        "contract:",
        "  max_bad_fraction: 0.05",
        "  schema_policy: {missing_column: fail, extra_column: warn, type_mismatch: coerce}",
    ]
    if plan.key_expression is None:
        out.append(f"  unique: {{columns: [{_text(plan.key)}], action: quarantine}}")
    out.append(f"  min_rows: {plan.min_rows}   # a tenth of the {profile.rows:,} sampled rows")
    if plan.label.task != "regression":
        values = (
            plan.label.classes if plan.label.classes is not None else _label_values(profile.column(plan.label.column))
        )
        if len(values) <= MAX_ALLOWED_VALUES:
            out.append(f"  labels_present: {_flow(values, 18)}")
    out.append("  columns:")
    width = max(len(_text(c.name)) for c in plan.columns)
    for column in plan.columns:
        key = _text(column.name) + ":"
        line = f"    {key.ljust(width + 1)} {_column_contract(column)}"
        out.append(f"{line}   # {column.note}" if column.note else line)
    if plan.key_expression is not None:
        out.append(f"    {plan.key}: {{type: bigint, nullable: false}}   # derived by source.derive")
    return out


def _render_split(plan: ConfigPlan) -> list[str]:
    strategy = "random" if plan.label.task == "regression" else "stratified"
    why = "a numeric label has no classes to stratify" if strategy == "random" else "each class keeps its share"
    out = [
        "",
        f"# {strategy}: {why}; hashed on (seed, key), so a row keeps its split.",
        "split:",
        f"  strategy: {strategy}",
        "  train: 0.7",
        "  validation: 0.15",
        "  test: 0.15",
    ]
    if plan.time_columns:
        column = plan.time_columns[0]
        out += [
            f"# Or train on the past and test on the future along {column}:",
            f"# split: {{strategy: time, column: {_text(column)}, train: 0.7, validation: 0.15, test: 0.15}}",
        ]
    return out


_BINARY_MODELS = [
    "  candidates:",
    "    - family: logistic_regression",
    "      params: {maxIter: 100}",
    "      search:",
    "        regParam: {loguniform: [0.0001, 0.1]}",
    "        elasticNetParam: {uniform: [0.0, 1.0]}",
]
_REGRESSION_MODELS = [
    "  candidates:",
    "    - family: linear_regression",
    "      params: {maxIter: 100}",
    "      search:",
    "        regParam: {loguniform: [0.0001, 1.0]}",
    "        elasticNetParam: {uniform: [0.0, 1.0]}",
]
_TREE_MODELS = [
    "    - family: random_forest",
    "      params: {numTrees: 50}",
    "      search:",
    "        maxDepth: {quniform: [4, 10, 1]}",
    "        minInstancesPerNode: {quniform: [1, 20, 1]}",
    "    # scikit-learn's HistGradientBoosting: each trial trains on one executor core.",
    "    - family: hist_gradient_boosting",
    "      params: {max_iter: 100}",
    "      search:",
    "        learning_rate: {loguniform: [0.02, 0.2]}",
    "        max_leaf_nodes: {quniform: [4, 31, 1]}",
    "        l2_regularization: {loguniform: [0.001, 10.0]}",
]


def _render_models(plan: ConfigPlan) -> list[str]:
    task = plan.label.task
    metric, gate = {"binary": ("auc_roc", "auc_roc"), "multiclass": ("f1", "accuracy")}.get(task, ("rmse", "rmse"))
    linear = _REGRESSION_MODELS if task == "regression" else _BINARY_MODELS
    out = [
        "",
        "# A linear model and two tree ensembles, each tuned with Hyperopt on the validation split; the best wins.",
        "# 4 trials each, 2 at once: minutes on a laptop. Raise max_evals for a better search.",
        "model:",
        *linear,
        *_TREE_MODELS,
        "",
        "tuning:",
        f"  metric: {metric}",
        "  max_evals: 4",
        "  parallelism: 2",
        "  timeout_seconds: 900",
    ]
    if task == "binary":
        out += ["", "evaluate:", "  threshold: 0.5   # or threshold_rule: max_f1, chosen on validation"]
    out += [
        "",
        "# The new version becomes @champion only if it beats the current one on the same test rows.",
        "register:",
        f"  gate: {{metric: {gate}}}",
    ]
    return out
