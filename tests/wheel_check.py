"""Checks that deltaml's wheel installs into this environment without changing a package it holds.

Run with the Python of a runtime-like environment (``make test-dbr-17.3`` does):
``python -m tests.wheel_check dist/deltaml-*.whl``. pip resolves the wheel's requirements against
what is installed only (``--no-index``, ``--dry-run``): a requirement the environment does not
satisfy, such as a newer MLflow than the runtime ships, fails the resolution, and the check says
so. Packages the environment lacks (hyperopt, which runtimes stopped shipping) may be added;
exit 0 when no installed package would be upgraded or downgraded.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Dry-run install the wheel given as the only argument; return 0 if nothing but deltaml would change."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m tests.wheel_check WHEEL", file=sys.stderr)
        return 2
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet", "--report", "-", args[0]],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = next((line for line in done.stderr.splitlines() if line.startswith("ERROR")), done.stderr.strip())
        print(f"wheel check: the wheel's requirements are not met by this environment: {reason}", file=sys.stderr)
        return 1
    report = json.loads(done.stdout)
    changed, added = [], []
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name.lower() == "deltaml":
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            added.append(f"{name} {version}")
            continue
        if installed != version:
            changed.append(f"{name} {installed} -> {version}")
    if changed:
        print(f"wheel check: installing the wheel would change {', '.join(sorted(changed))}", file=sys.stderr)
        return 1
    extra = f" (it adds {', '.join(sorted(added))})" if added else ""
    print(f"wheel check: {args[0]} installs here without changing an installed package{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
