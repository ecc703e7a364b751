"""spark-submit entry point: run a deltaml pipeline (all steps, or those named with --step).

spark-submit --py-files deltaml.zip jobs/run_pipeline.py conf/telco_churn.yml --env cluster
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deltaml.cli import main as deltaml_main


def main(argv: Sequence[str]) -> int:
    """Run ``deltaml run`` with the job's arguments; returns the exit code."""
    return deltaml_main(["run", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
