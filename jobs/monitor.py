"""spark-submit entry point: drift (and decay) of the latest scored predictions.

spark-submit --py-files deltaml.zip jobs/monitor.py conf/telco_churn.yml --env cluster
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from deltaml.cli import main as deltaml_main


def main(argv: Sequence[str]) -> int:
    """Run ``deltaml monitor`` with the job's arguments; returns the exit code."""
    return deltaml_main(["monitor", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
