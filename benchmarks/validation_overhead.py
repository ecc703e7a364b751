"""What the validate step costs: the Telco demo pipeline with and without its contract, same session.

    .venv/bin/python benchmarks/validation_overhead.py [ROUNDS]

Runs a warm-up, then alternates the two variants ROUNDS times (default 2), each in a fresh
state folder, and prints the median wall time of each and their ratio.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from deltaml.config.loader import load_config
from deltaml.io.session import get_spark
from deltaml.pipeline.runner import run_pipeline


def _run(state: str, with_contract: bool) -> tuple[float, float]:
    overrides = [f"state_dir={state}"] + ([] if with_contract else ["contract=null", "score.input=raw"])
    loaded = load_config("conf/telco_churn.yml", env="local", overrides=overrides)
    started = time.perf_counter()
    outcome = run_pipeline(loaded, spark=get_spark(loaded.pipeline))
    return time.perf_counter() - started, outcome.seconds.get("validate", 0.0)


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 2
    times: dict[bool, list[float]] = {True: [], False: []}
    validate: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        _run(f"{tmp}/warm-up", True)
        for i in range(rounds):
            for with_contract in (False, True):
                total, step = _run(f"{tmp}/{i}-{with_contract}", with_contract)
                times[with_contract].append(total)
                if with_contract:
                    validate.append(step)
    without, with_ = statistics.median(times[False]), statistics.median(times[True])
    print(f"rounds: {rounds}; pipeline without contract: {without:.1f} s, with contract: {with_:.1f} s")
    print(f"ratio with/without: {with_ / without:.2f}; validate step alone: {statistics.median(validate):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
