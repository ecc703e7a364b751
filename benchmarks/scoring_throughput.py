"""Batch scoring throughput: `deltaml score` against hand-written transform and `mlflow.pyfunc.spark_udf`.

    .venv/bin/python benchmarks/scoring_throughput.py STATE_DIR [ROWS ...] [--udf-rows N]

Needs a pipeline run in STATE_DIR with a registered ``@champion`` (for a Spark ML model:
``deltaml run conf/telco_churn.yml --env local --set state_dir=STATE_DIR --set 'model.candidates=[]'``).
For each ROWS (default 1000000), generates that many rows in the Telco schema (the clean table's
7,043 customers repeated under new keys) as a Delta table, then measures in one process:

(a) ``deltaml score`` (the score step, through the CLI's main, on the same session);
(b) hand-written: ``mlflow.spark.load_model`` + ``PipelineModel.transform`` + the same columns
    written to Delta (the time of loading the model is printed too, since (a) loads it as well);
(c) ``mlflow.pyfunc.spark_udf`` on the same model + Delta write, on the first ``--udf-rows`` rows
    (default 100000; it is far slower) and compared per row.

Then (a) again with nothing new, and after 1% more rows arrive as a new ingest batch (incremental).

Prints rows per second, the ratios a/b and a/c, and the driver's memory after each run of (a):
the JVM heap in use after a GC, and the Python process's peak resident size.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.spark
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from deltaml.cli import main as deltaml_main
from deltaml.columns import INGEST_BATCH_COL
from deltaml.config.loader import load_config
from deltaml.io.flavor import positive_probability
from deltaml.io.session import get_spark
from deltaml.io.tables import resolve_tables
from deltaml.io.tracking import resolve_tracking_uri

CONF = "conf/telco_churn.yml"


def _generate(
    spark: SparkSession, clean: DataFrame, key: str, rows: int, path: str, offset: int = 0, batch: str | None = None
) -> None:
    """``rows`` rows: the clean table's rows repeated, each with a new unique key (from ``offset``), as a
    Delta table; with ``batch``, appended to it as that ingest batch."""
    base = clean.drop(key).withColumn("_n", F.row_number().over(_window()) - 1).cache()
    count = base.count()
    ids = spark.range(offset, offset + rows).withColumn("_n", F.col("id") % count)
    data = ids.join(F.broadcast(base), on="_n").drop("_n").withColumnRenamed("id", key)
    if batch is None:
        data.write.format("delta").mode("overwrite").save(path)
    else:
        data.withColumn(INGEST_BATCH_COL, F.lit(batch)).write.format("delta").mode("append").save(path)
    base.unpersist()


def _window() -> object:
    from pyspark.sql import Window

    return Window.orderBy(F.monotonically_increasing_id())


def _driver_memory(spark: SparkSession) -> tuple[float, float]:
    """JVM heap in use after a GC (MiB) and this Python process's peak resident size (MiB)."""
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    jvm.java.lang.System.gc()
    runtime = jvm.java.lang.Runtime.getRuntime()
    heap = (runtime.totalMemory() - runtime.freeMemory()) / 2**20
    peak = next(
        int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines() if "VmHWM" in line
    )
    return heap, peak


def main(argv: list[str]) -> int:
    udf_rows = 100_000
    if "--udf-rows" in argv:
        at = argv.index("--udf-rows")
        udf_rows = int(argv[at + 1])
        argv = argv[:at] + argv[at + 2 :]
    state, sizes = argv[0], [int(a) for a in argv[1:]] or [1_000_000]
    overrides = [f"state_dir={state}"]
    cfg = load_config(CONF, env="local", overrides=overrides).pipeline
    spark = get_spark(cfg)
    mlflow.set_tracking_uri(resolve_tracking_uri(cfg))
    tables = resolve_tables(cfg)
    clean = spark.read.format("delta").load(tables.clean.ref)
    uri = f"models:/{cfg.mlflow.registered_model}@champion"
    stages = [type(s).__name__ for s in mlflow.spark.load_model(uri).stages]
    print(f"model {uri}: {len(stages)} stages, ending {stages[-3:]}")
    work = tempfile.mkdtemp(prefix="deltaml-score-bench-")

    def score_with_deltaml(source: str, out: str) -> float:
        started = time.perf_counter()
        code = deltaml_main(
            [
                "score",
                CONF,
                "--env",
                "local",
                "--set",
                f"state_dir={state}",
                "--set",
                f"tables.clean={{path: {source}}}",
                "--set",
                f"tables.predictions={{path: {out}}}",
            ]
        )
        assert code == 0, f"deltaml score exited {code}"
        return time.perf_counter() - started

    def score_by_hand(source: str, out: str) -> tuple[float, float]:
        """The job a user would write: load the champion, transform, write; (whole time, load time)."""
        started = time.perf_counter()
        model = mlflow.spark.load_model(uri)
        loaded = time.perf_counter() - started
        scored = model.transform(spark.read.format("delta").load(source)).select(
            cfg.key,
            positive_probability().alias("probability"),
            "prediction",
            F.lit(cfg.mlflow.registered_model).alias("model_name"),
            F.current_timestamp().alias("scored_at"),
        )
        scored.write.format("delta").mode("overwrite").save(out)
        return time.perf_counter() - started, loaded

    # Warm-up on a small table, so neither method pays the JVM's and the model's first use.
    _generate(spark, clean, cfg.key, 20_000, f"{work}/warm")
    score_with_deltaml(f"{work}/warm", f"{work}/warm_a")
    score_by_hand(f"{work}/warm", f"{work}/warm_b")
    for rows in sizes:
        source = f"{work}/input_{rows}"
        _generate(spark, clean, cfg.key, rows, source)
        out = f"{work}/out_{rows}"
        b, load = score_by_hand(source, f"{out}_b")
        a = score_with_deltaml(source, f"{out}_a")
        heap, peak = _driver_memory(spark)
        # Incremental: a run with nothing new, then one after 1% more rows arrive as a new batch.
        nothing = score_with_deltaml(source, f"{out}_a")
        extra = max(rows // 100, 1)
        _generate(spark, clean, cfg.key, extra, source, offset=rows, batch="bench-extra")
        increment = score_with_deltaml(source, f"{out}_a")
        scored = spark.read.format("delta").load(f"{out}_a")
        assert scored.count() == scored.select(cfg.key).distinct().count() == rows + extra

        udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="double")
        sample = spark.read.format("delta").load(source).limit(udf_rows)
        started = time.perf_counter()
        sample.select(cfg.key, udf(F.struct(*cfg.features.columns)).alias("prediction")).write.format("delta").mode(
            "overwrite"
        ).save(f"{out}_c")
        c = time.perf_counter() - started
        c_rows = spark.read.format("delta").load(f"{out}_c").count()

        rate_a, rate_b, rate_c = rows / a, rows / b, c_rows / c
        print(f"rows {rows}: (a) deltaml score {a:.1f} s = {rate_a:,.0f} rows/s")
        print(
            f"rows {rows}: (b) load model + transform + Delta write {b:.1f} s = {rate_b:,.0f} rows/s "
            f"(loading the model {load:.1f} s; without it {rows / (b - load):,.0f} rows/s)"
        )
        print(f"rows {c_rows}: (c) pyfunc.spark_udf + Delta write {c:.1f} s = {rate_c:,.0f} rows/s")
        print(f"a/b = {rate_a / rate_b:.2f}, a/c = {rate_a / rate_c:.1f}")
        print(
            f"incremental on {rows} rows: nothing new {nothing:.1f} s; {extra} new rows {increment:.1f} s "
            f"({increment / a:.2f} of the full run)"
        )
        print(f"driver after (a) on {rows} rows: JVM heap in use {heap:.0f} MiB, Python peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
