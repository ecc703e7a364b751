"""The split step: train/validation/test (hashed, named by a column, or by time), stored as a column."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, DateType, TimestampNTZType, TimestampType

from deltaml.columns import SPLIT_COL, TEST, TRAIN, VALIDATION
from deltaml.config.schema import SplitConfig
from deltaml.errors import StepInputError
from deltaml.io.catalog import overwrite_table, read_table
from deltaml.steps.base import Step, StepContext, StepResult
from deltaml.steps.outputs import SplitOutput

_HASH_MODULUS = 2_147_483_647  # a prime below 2**31


def split_uniform(key: str, seed: int) -> Column:
    """A number in [0, 1) that depends only on the key and the seed.

    Unlike ``rand(seed)``, it does not depend on partitioning or row order, so the same rows
    land in the same split on any cluster and in any rerun.
    """
    hashed = F.xxhash64(F.lit(seed), F.col(key).cast("string"))
    return F.pmod(hashed, F.lit(_HASH_MODULUS)).cast("double") / float(_HASH_MODULUS)


def assign_split(key: str, label: str, seed: int, split: SplitConfig) -> Callable[[DataFrame], DataFrame]:
    """Return a transform that adds the ``split`` column.

    ``random`` cuts the key-hash uniform at the configured fractions: a key keeps its split
    however much data is added, and each label is split in the configured proportions in
    expectation. ``stratified`` cuts it at per-label quantiles (one small aggregation, joined
    back by broadcast), so every label value is split in exactly the configured proportions;
    when rows are added the cuts move, and keys close to a cut can change split.
    """
    train_cut, validation_cut = split.train, split.train + split.validation

    def label_split(u: Column, first: Column | float, second: Column | float) -> Column:
        return F.when(u <= first, F.lit(TRAIN)).when(u <= second, F.lit(VALIDATION)).otherwise(F.lit(TEST))

    if split.strategy == "column":
        return _by_column(key, seed, split)
    if split.strategy == "time":
        return _by_time(split)

    def transform(df: DataFrame) -> DataFrame:
        with_u = df.withColumn("_u", split_uniform(key, seed))
        if split.strategy == "random":
            return with_u.withColumn(SPLIT_COL, label_split(F.col("_u"), train_cut, validation_cut)).drop("_u")
        cuts = with_u.groupBy(F.col(label).alias("_cut_label")).agg(
            F.percentile_approx("_u", [train_cut, validation_cut], 100_000).alias("_cuts")
        )
        joined = with_u.join(F.broadcast(cuts), F.col(label).eqNullSafe(F.col("_cut_label")), "left").drop("_cut_label")
        assigned = label_split(F.col("_u"), F.col("_cuts")[0], F.col("_cuts")[1])
        return joined.withColumn(SPLIT_COL, assigned).drop("_u", "_cuts")

    return transform


def _named_split(split: SplitConfig) -> Column:
    """The split ``split.values`` gives each row's ``split.column`` value (compared as text); null for none."""
    assert split.column is not None
    text = F.col(f"`{split.column}`").cast("string")
    named: Column = F.lit(None).cast("string")
    for name, values in split.names().items():
        if values:
            named = F.when(text.isin(values), F.lit(name)).otherwise(named)
    return named


def _by_column(key: str, seed: int, split: SplitConfig) -> Callable[[DataFrame], DataFrame]:
    """Each row's split from its ``split.column``; without validation values, a hashed share of train is validation."""
    carve = split.validation / (split.train + split.validation) if not split.names().get("validation") else 0.0

    def transform(df: DataFrame) -> DataFrame:
        named = _named_split(split)
        if carve > 0:
            carved = (named == F.lit(TRAIN)) & (split_uniform(key, seed) < F.lit(carve))
            named = F.when(carved, F.lit(VALIDATION)).otherwise(named)
        return df.withColumn(SPLIT_COL, named)

    return transform


def _by_time(split: SplitConfig) -> Callable[[DataFrame], DataFrame]:
    """Past to future along ``split.column``: train, then validation, then test.

    The cuts are ``validation_from`` and ``test_from`` when given; otherwise the time quantiles at the
    train and train + validation shares (of the rows before ``test_from`` when only it is given), found
    in one aggregation and joined back by broadcast. Rows at one time never straddle a cut.
    """
    column = split.column
    assert column is not None
    time = F.col(f"`{column}`")

    def at(value: datetime | date, like: DataType) -> Column:
        return F.lit(value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()).cast(like)

    def transform(df: DataFrame) -> DataFrame:
        kind = df.schema[column].dataType
        if split.test_from is not None and split.validation_from is not None:
            validation_cut, test_cut = at(split.validation_from, kind), at(split.test_from, kind)
            assigned = (
                F.when(time < validation_cut, F.lit(TRAIN))
                .when(time < test_cut, F.lit(VALIDATION))
                .otherwise(F.lit(TEST))
            )
            return df.withColumn(SPLIT_COL, assigned)
        if split.test_from is not None:  # validation: the latest share of the rows before test_from
            test_cut = at(split.test_from, kind)
            share = split.train / (split.train + split.validation)
            cuts = df.where(time < test_cut).agg(F.percentile_approx(time, [share], 100_000)[0].alias("_cut"))
            joined = df.crossJoin(F.broadcast(cuts))
            assigned = (
                F.when(time >= test_cut, F.lit(TEST))
                .when(time <= F.col("_cut"), F.lit(TRAIN))
                .otherwise(F.lit(VALIDATION))
            )
            return joined.withColumn(SPLIT_COL, assigned).drop("_cut")
        shares = [split.train, split.train + split.validation]
        cuts = df.agg(F.percentile_approx(time, shares, 100_000).alias("_cuts"))
        joined = df.crossJoin(F.broadcast(cuts))
        assigned = (
            F.when(time <= F.col("_cuts")[0], F.lit(TRAIN))
            .when(time <= F.col("_cuts")[1], F.lit(VALIDATION))
            .otherwise(F.lit(TEST))
        )
        return joined.withColumn(SPLIT_COL, assigned).drop("_cuts")

    return transform


def _check_split_column(df: DataFrame, split: SplitConfig, source: object) -> None:
    """The ``column`` and ``time`` strategies' column: present, of the right type, and placing every row.

    Raises:
        StepInputError: It is missing, not a timestamp or date (``time``), null in some rows (``time``), or
            holds values that ``split.values`` does not name (``column``), which the message lists.
    """
    column = split.column
    if column is None:
        return
    if column not in df.columns:
        raise StepInputError(
            f"step 'split': split.column '{column}' is not a column of {source}; columns are {df.columns}"
        )
    if split.strategy == "time":
        kind = df.schema[column].dataType
        if not isinstance(kind, TimestampType | TimestampNTZType | DateType):
            raise StepInputError(
                f"step 'split': split.column '{column}' is {kind.simpleString()}, not a timestamp or date; "
                "derive one in source.derive (e.g. to_timestamp(...)) and split on it"
            )
        nulls = df.where(F.col(f"`{column}`").isNull()).count()
        if nulls:
            raise StepInputError(
                f"step 'split': {nulls} rows of {source} have no {column}, so they are neither past nor future; "
                "filter them out (source.filter) or fill the column"
            )
        return
    unnamed = df.where(_named_split(split).isNull()).select(F.col(f"`{column}`").cast("string").alias("v"))
    found = [r["v"] for r in unnamed.distinct().limit(6).collect()]
    if found:
        raise StepInputError(
            f"step 'split': values of split.column '{column}' that split.values does not name: "
            f"{found[:5]}{' ...' if len(found) > 5 else ''}; name each in split.values (train, validation or test)"
        )


def run_split(ctx: StepContext) -> StepResult:
    """Read the clean table (raw without a contract) and write it, with the split column, to the split table."""
    cfg = ctx.config
    source = ctx.training_source
    raw, raw_version = read_table(ctx.spark, source, "split")
    missing = [c for c in (cfg.key, cfg.label.column) if c not in raw.columns]
    if missing:
        raise StepInputError(
            f"step 'split': input table {source} has no column(s) {missing}; columns are {raw.columns} "
            "(check 'key' and 'label.column')"
        )
    _check_split_column(raw, cfg.split, source)
    split_df = raw.transform(assign_split(cfg.key, cfg.label.column, cfg.seed, cfg.split))
    written = overwrite_table(ctx.spark, split_df, ctx.tables.split)
    stored, _ = read_table(ctx.spark, ctx.tables.split, "split", written.version)
    counts = {row[SPLIT_COL]: int(row["count"]) for row in stored.groupBy(SPLIT_COL).count().collect()}
    return StepResult(
        output=SplitOutput(split_version=written.version),
        metrics={
            "rows_written": float(written.rows_written),
            "input_table_version": float(raw_version),
            "split_table_version": float(written.version),
            **{f"rows_{name}": float(n) for name, n in counts.items()},
        },
        tags={"input_table": str(source), "split_table": str(ctx.tables.split)},
        summary=", ".join(f"{name} {counts.get(name, 0)}" for name in (TRAIN, VALIDATION, TEST))
        + f" -> {ctx.tables.split} v{written.version}",
    )


STEP = Step(
    name="split",
    run=run_split,
    phase="train",
    sections=("split", "key", "label", "seed"),
    tables=lambda ctx: [ctx.training_source, ctx.tables.split],
    produces=SplitOutput,
)
