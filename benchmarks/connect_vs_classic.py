"""The Telco demo pipeline on a classic local session and through a local Spark Connect server, in one run.

    .venv/bin/python benchmarks/connect_vs_classic.py [WORK_DIR]

Starts a Spark Connect server (tests/connect.py: local[2], Delta), then runs `deltaml run
conf/telco_churn.yml` twice, each in its own process with its own state folder: `--env local`
(a local[*] session inside the process) and `--env local-connect` (the server's endpoint). Both
use the demo's full config (four families, tuned). Prints each run's wall time, the ratio, and
the test metrics of both with their largest difference. Run it alone: two Spark jobs at once on
two cores slow each other several-fold. The server's JVM runs while the classic run does too, but
it is idle then.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.connect import ConnectServer  # noqa: E402  (the repository's root on sys.path first)

METRICS = ("test_auc_roc", "test_auc_pr", "test_log_loss", "test_accuracy")


def run(env_name: str, state: Path, extra_env: dict[str, str]) -> float:
    """One `deltaml run` of the demo config in its own process; returns its wall time."""
    dropped = ("SPARK_REMOTE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {**{k: v for k, v in os.environ.items() if k not in dropped}, **extra_env}
    command = [str(ROOT / ".venv" / "bin" / "deltaml"), "run", "conf/telco_churn.yml", "--env", env_name]
    command += ["--set", f"state_dir={state}"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{env_name} run failed:\n{done.stderr[-3000:]}")
    print(next(line for line in done.stderr.splitlines() if "[evaluate] done" in line))
    return seconds


def test_metrics(state: Path) -> dict[str, float]:
    """The newest evaluate run's test metrics in a state folder's MLflow store."""
    client = MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("deltaml-telco-churn")
    assert experiment is not None
    (latest,) = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`deltaml.step` = 'evaluate'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return {name: latest.data.metrics[name] for name in METRICS}


def main(argv: list[str]) -> int:
    work = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="deltaml-connect-bench-"))
    server = ConnectServer(work / "server").start()
    try:
        classic_seconds = run("local", work / "classic", {})
        connect_seconds = run("local-connect", work / "connect", {"DELTAML_CONNECT": server.url})
    finally:
        server.stop()
    classic, connect = test_metrics(work / "classic"), test_metrics(work / "connect")
    print(f"classic session: {classic_seconds:.1f} s")
    print(f"Spark Connect:   {connect_seconds:.1f} s  (ratio {connect_seconds / classic_seconds:.2f})")
    for name in METRICS:
        print(f"{name:14s} classic {classic[name]:.6f}  connect {connect[name]:.6f}")
    print(f"largest difference: {max(abs(classic[n] - connect[n]) for n in METRICS):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
