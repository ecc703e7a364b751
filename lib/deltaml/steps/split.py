"""The split step: a seeded, reproducible train/validation/test assignment stored as a column."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

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
