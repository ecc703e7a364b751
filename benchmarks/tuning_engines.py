"""Hyperopt against Optuna as deltaml's tuning engine, on the demo: same split, same spaces, same budget.

    .venv/bin/python benchmarks/tuning_engines.py [--max-evals N] [--seeds S ...]

For each seed, the demo config (``conf/telco_churn.yml``: four families and their search spaces) runs
``deltaml run`` from ingest to evaluate once per engine (``--set tuning.engine=...``) in one scratch
state folder, so both engines tune on the same split table (the second run's ingest, validate and
split are cache hits). It prints, per seed and engine, each family's best validation AUC-ROC, the
winner, its test AUC-ROC and the fit step's seconds, read from the MLflow runs. A benchmark: run it
with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from deltaml.cli import main as deltaml
from deltaml.columns import TAG_FAMILY, TAG_STEP

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "telco_churn.yml"
ENGINES = ("hyperopt", "optuna")


def latest_run(client: MlflowClient, experiment: str, step: str) -> Any:
    (run,) = client.search_runs(
        [experiment],
        filter_string=f"tags.`{TAG_STEP}` = '{step}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return run


def run_engine(state: Path, engine: str, seed: int, max_evals: int) -> dict[str, Any]:
    settings = [f"state_dir={state}", f"tuning.engine={engine}", f"seed={seed}", f"tuning.max_evals={max_evals}"]
    steps = ["ingest", "validate", "split", "fit", "evaluate"]
    argv = ["-q", "run", str(CONF), "--env", "local", *(a for s in settings for a in ("--set", s))]
    if deltaml([*argv, *(a for step in steps for a in ("--step", step))]) != 0:
        raise SystemExit(f"deltaml run failed with tuning.engine={engine}")
    client = MlflowClient()
    experiment = client.get_experiment_by_name("deltaml-telco-churn").experiment_id
    fit, evaluate = latest_run(client, experiment, "fit"), latest_run(client, experiment, "evaluate")
    trials = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{fit.info.run_id}'")
    best: dict[str, float] = {}
    for trial in trials:
        value = trial.data.metrics.get("validation_auc_roc")
        family = trial.data.tags[TAG_FAMILY]
        if value is not None:
            best[family] = max(best.get(family, 0.0), value)
    seconds = (fit.info.end_time - fit.info.start_time) / 1000
    return {
        "seed": seed,
        "engine": engine,
        "trials": len(trials),
        **{f"{family} validation AUC": round(value, 4) for family, value in sorted(best.items())},
        "winner": fit.data.tags["deltaml.winner_family"],
        "winner test AUC": round(evaluate.data.metrics["test_auc_roc"], 4),
        "fit seconds": round(seconds, 1),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-evals", type=int, default=12, help="trials per family (default 12)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="config seeds (default 42)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="deltaml-engines-") as scratch:
        for seed in args.seeds:
            state = Path(scratch) / f"seed-{seed}"
            rows += [run_engine(state, engine, seed, args.max_evals) for engine in ENGINES]
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
