"""Drift on a simulated shift, and the monitor step's time on 1M scored rows.

    .venv/bin/python benchmarks/monitor_drift.py STATE_DIR [ROWS]

Needs a Telco pipeline run in STATE_DIR whose champion has a reference profile (any run of this
deltaml: ``deltaml run conf/telco_churn.yml --env local --set state_dir=STATE_DIR``). Appends to
the clean table, in one process on one session:

1. the test split's rows under new keys with three features shifted (monthly charges x1.3 + 15,
   tenure + 24 months, every contract month-to-month), scores them (incremental: only they are
   new), runs ``deltaml monitor`` and prints the drift table of that window;
2. ROWS (default 1,000,000) rows in the Telco schema as one more batch, scores them, and times
   ``deltaml monitor`` on that window.
"""

from __future__ import annotations

import sys
import time

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from deltaml.cli import main as deltaml_main
from deltaml.columns import INGEST_BATCH_COL
from deltaml.config.loader import load_config
from deltaml.io.session import get_spark
from deltaml.io.tables import resolve_tables

CONF = "conf/telco_churn.yml"


def _append(spark: SparkSession, rows: DataFrame, path: str) -> None:
    columns = spark.read.format("delta").load(path).columns
    rows.select(*columns).write.format("delta").mode("append").save(path)


def _cli(command: str, state: str) -> float:
    started = time.perf_counter()
    code = deltaml_main(["-q", command, CONF, "--env", "local", "--set", f"state_dir={state}"])
    assert code == 0, f"deltaml {command} exited {code}"
    return time.perf_counter() - started


def _drift_table(spark: SparkSession, path: str) -> None:
    table = spark.read.format("delta").load(path)
    latest = table.where(F.col("monitored_at") == table.agg(F.max("monitored_at")).first()[0])
    wide = (
        latest.where(F.col("kind").isin("numeric", "categorical"))
        .groupBy("feature", "kind")
        .pivot("metric")
        .agg(F.first("value"))
        .join(
            latest.groupBy("feature").agg(F.max(F.col("drifted").cast("int")).alias("drifted")),
            "feature",
        )
        .orderBy(F.desc("drifted"), F.desc("psi"))
    )
    metrics = ["psi", "ks", "wasserstein", "chi2_pvalue", "js_distance", "null_rate_change"]
    print(f"{'feature':<20} {'kind':<11} " + " ".join(f"{m:>16}" for m in metrics) + "  drifted")
    for row in wide.collect():
        values = " ".join(f"{row[m]:>16.4g}" if m in row and row[m] is not None else f"{'':>16}" for m in metrics)
        print(f"{row['feature']:<20} {row['kind']:<11} {values}  {'yes' if row['drifted'] else ''}")
    share = latest.where("metric = 'drifted_share'").first()
    print(f"drifted share {share['value']:.3f} (limit {share['threshold']}), window drifted: {share['drifted']}")


def main(argv: list[str]) -> int:
    state = argv[0]
    rows = int(argv[1]) if len(argv) > 1 else 1_000_000
    cfg = load_config(CONF, env="local", overrides=[f"state_dir={state}"]).pipeline
    spark = get_spark(cfg)
    tables = resolve_tables(cfg)
    clean = spark.read.format("delta").load(tables.clean.ref)
    test = spark.read.format("delta").load(tables.split.ref).where("split = 'test'").drop("split")

    shifted = (
        test.withColumn(cfg.key, F.col(cfg.key) + 10_000_000)
        .withColumn(INGEST_BATCH_COL, F.lit("simulated-shift"))
        .withColumn("monthly_charges", F.col("monthly_charges") * 1.3 + 15)
        .withColumn("tenure", F.col("tenure") + 24)
        .withColumn("contract", F.lit("Month-to-month"))
    )
    _append(spark, shifted, tables.clean.ref)
    print(f"scored the shifted batch in {_cli('score', state):.1f} s")
    print(f"monitor on {test.count()} shifted rows: {_cli('monitor', state):.1f} s")
    _drift_table(spark, tables.monitoring.ref)

    in_order = Window.orderBy(F.monotonically_increasing_id())
    base = clean.drop(cfg.key).withColumn("_n", F.row_number().over(in_order) - 1).cache()
    count = base.count()
    ids = spark.range(20_000_000, 20_000_000 + rows).withColumn("_n", F.col("id") % count)
    generated = (
        ids.join(F.broadcast(base), "_n")
        .drop("_n")
        .withColumnRenamed("id", cfg.key)
        .withColumn(INGEST_BATCH_COL, F.lit(f"bench-{rows}"))
    )
    _append(spark, generated, tables.clean.ref)
    base.unpersist()
    print(f"scored {rows} new rows in {_cli('score', state):.1f} s")
    seconds = _cli("monitor", state)
    print(f"monitor on {rows} scored rows: {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
