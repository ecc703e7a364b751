"""The whole pipeline on a generated table of any size: time per step and the driver's peak memory.

    .venv/bin/python benchmarks/pipeline_scale.py --rows 300000 [--max-evals 2] [--families ...]

The table has 40 columns like a census extract: 12 numeric, 26 low-cardinality categorical
(2 to 50 levels), 2 high-cardinality ones (5,000 and 20,000 levels, Zipf-distributed) and a
binary label with about 6% positives that depends on numbers, levels and one interaction. It is
written as Parquet (the source), then ``deltaml run`` takes it from ingest to score with the
configured families tuned. Prints each step's seconds (from its MLflow run), the whole run's,
and the peak resident memory of the driver's Python process during the run (the table's
generator before it is left out) and of its JVM (local mode: the driver and the executors).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from mlflow.tracking import MlflowClient

from deltaml.cli import main as deltaml

ROOT = Path(__file__).resolve().parents[1]
NUMERIC, LOW, HIGH = 12, 26, (5_000, 20_000)

SPACES: dict[str, dict[str, Any]] = {
    "logistic_regression": {"params": {"maxIter": 50}, "search": {"regParam": {"loguniform": [0.0001, 0.1]}}},
    "random_forest": {"params": {"numTrees": 40}, "search": {"maxDepth": {"quniform": [6, 10, 1]}}},
    "gbt": {"params": {"maxIter": 30}, "search": {"maxDepth": {"quniform": [3, 5, 1]}}},
    "hist_gradient_boosting": {
        "params": {"max_iter": 300, "early_stopping": True},
        "search": {"learning_rate": {"loguniform": [0.05, 0.3]}, "max_leaf_nodes": {"quniform": [15, 63, 1]}},
    },
    "lightgbm": {
        "params": {"n_estimators": 500, "early_stopping_round": 20},
        "search": {"learning_rate": {"loguniform": [0.05, 0.3]}, "num_leaves": {"quniform": [15, 63, 1]}},
    },
}


def write_table(path: Path, rows: int, seed: int = 0, chunk: int = 1_000_000) -> None:
    """The generated table as Parquet, written in chunks so the generator's memory stays flat."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=NUMERIC)
    level_effects = [rng.normal(scale=0.6, size=2 + (i * 48) // (LOW - 1)) for i in range(LOW)]
    high_effects = [rng.normal(scale=0.8, size=n) for n in HIGH]
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        numeric = rng.normal(size=(n, NUMERIC))
        numeric[rng.random((n, NUMERIC)) < 0.02] = np.nan  # some missing values
        score = np.nan_to_num(numeric) @ weights * 0.4 + 0.8 * np.nan_to_num(numeric[:, 0] * numeric[:, 1])
        columns: dict[str, Any] = {"row_id": np.arange(start, start + n, dtype=np.int64)}
        for i in range(NUMERIC):
            columns[f"num_{i}"] = numeric[:, i]
        for i, effects in enumerate(level_effects):
            levels = rng.integers(0, len(effects), size=n)
            score += effects[levels]
            columns[f"cat_{i}"] = np.char.add(f"c{i}_", levels.astype(str))
        for i, effects in enumerate(high_effects):
            levels = np.minimum(rng.zipf(1.3, size=n) - 1, len(effects) - 1)
            score += effects[levels]
            columns[f"id_{i}"] = np.char.add(f"h{i}_", levels.astype(str))
        probability = 1 / (1 + np.exp(-(score - np.quantile(score, 0.94)) * 1.5))
        columns["label"] = np.where(rng.random(n) < probability, "yes", "no")
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def config(source: Path, families: list[str], max_evals: int) -> dict[str, Any]:
    return {
        "name": "scale",
        "seed": 42,
        "key": "row_id",
        "source": {"kind": "parquet", "path": str(source)},
        "tables": {
            "raw": {"path": "bronze/scale"},
            "split": {"path": "silver/scale_split"},
            "predictions": {"path": "gold/scale_predictions"},
        },
        "label": {"column": "label", "positive": "yes"},
        "features": {
            "numeric": [f"num_{i}" for i in range(NUMERIC)],
            "categorical": [f"cat_{i}" for i in range(LOW)] + [f"id_{i}" for i in range(len(HIGH))],
            "impute": {"strategy": "median", "indicator": False},
            # What a user does with 20,000-level columns: keep the levels that carry rows.
            "rare_categories": {"min_count": 50, "max_categories": 200},
            "scale": True,
        },
        "split": {"strategy": "random", "train": 0.7, "validation": 0.15, "test": 0.15},
        "model": {"candidates": [{"family": f, **SPACES[f]} for f in families]},
        # Every family gets its trials at every size: at 10,000,000 rows the default 30-minute search budget
        # ran out before the single-node families started (2026-12-06).
        "tuning": {"max_evals": max_evals, "parallelism": 2, "timeout_seconds": 6 * 3600},
        "register": {"gate": {"enabled": False}},
        "mlflow": {"experiment": "deltaml-scale", "registered_model": "scale"},
    }


def peak_memory_mb(pid: int) -> float:
    """The peak resident memory (VmHWM) of a process, in MB; 0 if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reset_peak_memory() -> None:
    """Start this process's VmHWM afresh (Linux: writing 5 to clear_refs resets the peak resident size)."""
    Path("/proc/self/clear_refs").write_text("5")


def jvm_pid() -> int | None:
    """The driver's JVM: this process's java child."""
    for child in Path("/proc").glob("[0-9]*"):
        try:
            stat = (child / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and "java" in (child / "comm").read_text():
                return int(child.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--max-evals", type=int, default=2)
    parser.add_argument("--families", nargs="+", default=list(SPACES))
    parser.add_argument("--folder", help="keep the table and state here (default: a temporary folder)")
    parser.add_argument("--driver-memory", default="4g", help="spark.driver.memory (default 4g)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deltaml-scale-") as scratch:
        folder = Path(args.folder or scratch)
        (folder / "conf").mkdir(parents=True, exist_ok=True)
        if not (folder / "conf" / "env").exists():
            (folder / "conf" / "env").symlink_to(ROOT / "conf" / "env")
        source = folder / "scale.parquet"
        started = time.monotonic()
        write_table(source, args.rows)
        print(f"generated {args.rows} rows x 40 columns in {time.monotonic() - started:.0f} s")
        reset_peak_memory()  # the peak below is deltaml's, not the generator's
        conf = folder / "conf" / "scale.yml"
        conf.write_text(yaml.safe_dump(config(source, args.families, args.max_evals), sort_keys=False))
        started = time.monotonic()
        place = [
            "--set",
            f"state_dir={folder / 'state'}",
            "--set",
            f"spark.conf.spark.driver.memory={args.driver_memory}",
        ]
        code = deltaml(["run", str(conf), "--env", "local", *place])
        seconds = time.monotonic() - started
        java = jvm_pid()
        client = MlflowClient()
        experiment = client.get_experiment_by_name("deltaml-scale")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], filter_string="tags.`deltaml.step` != 'pipeline'")
        steps = {
            r.data.tags["deltaml.step"]: r.data.metrics["seconds"]
            for r in runs
            if "seconds" in r.data.metrics and "deltaml.family" not in r.data.tags
        }
        print(f"deltaml run exit {code} in {seconds:.0f} s ({args.rows} rows, families {', '.join(args.families)})")
        for step in ("ingest", "validate", "split", "fit", "evaluate", "register", "score"):
            if step in steps:
                print(f"  {step:9s} {steps[step]:8.1f} s")
        print(f"peak memory: driver Python {peak_memory_mb(os.getpid()):.0f} MB", end="")
        print(f", JVM {peak_memory_mb(java):.0f} MB" if java else "")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
