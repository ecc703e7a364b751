"""The ``deltaml`` command: parse arguments, load the config, run steps, print one line on failure."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from deltaml import __version__
from deltaml.errors import DeltamlError

LOG = logging.getLogger("deltaml")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``deltaml`` and its sub-commands."""
    from deltaml.context import STEP_NAMES

    parser = argparse.ArgumentParser(
        prog="deltaml",
        description="Declarative ML pipelines on Spark, Delta Lake and MLflow, from one YAML file.",
    )
    parser.add_argument("--version", action="version", version=f"deltaml {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print debug output and full error traces")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the pipeline, or some of its steps", description="Run a pipeline.")
    run.add_argument("config", metavar="CONF", help="pipeline YAML, e.g. conf/telco_churn.yml")
    run.add_argument(
        "--step",
        action="append",
        choices=list(STEP_NAMES),
        metavar="NAME",
        help=f"run only this step (repeatable); steps: {', '.join(STEP_NAMES)}",
    )
    _add_config_options(run)

    score = commands.add_parser("score", help="score the input table with the champion model (the score step)")
    score.add_argument("config", metavar="CONF")
    _add_config_options(score)

    jars = commands.add_parser(
        "setup-jars", help="fetch the Delta Lake jars into ~/.m2 with Maven (run by `make setup`)"
    )
    jars.add_argument(
        "--spark-jars",
        action="store_true",
        help="print only the comma-separated jar paths, for spark-submit --jars",
    )

    check = commands.add_parser("check-config", help="validate a config and print its effective form and hash")
    check.add_argument("config", metavar="CONF")
    _add_config_options(check)
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", metavar="NAME", help="environment overlay conf/env/NAME.yml (local, cluster, ...)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.params.regParam=0.1 (repeatable)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit code (0 on success, the error's code on failure)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.quiet, args.verbose)
    try:
        return _dispatch(args)
    except DeltamlError as exc:
        print(f"deltaml: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _dispatch(args: argparse.Namespace) -> int:
    import yaml

    from deltaml.config import load_config

    if args.command == "setup-jars":
        from deltaml.session import install_delta_jars

        paths = install_delta_jars()
        if args.spark_jars:
            print(",".join(str(p) for p in paths))
        else:
            for path in paths:
                print(f"Delta jar ready: {path}")
        return 0

    loaded = load_config(args.config, env=args.env, overrides=args.overrides)
    if args.command == "check-config":
        print(yaml.safe_dump(loaded.effective, sort_keys=False), end="")
        print(f"# config hash: {loaded.config_hash}")
        return 0
    from deltaml.runner import run_pipeline

    # MLflow sets its own logger to INFO when imported; its per-file DFS notes are noise here.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    steps = ["score"] if args.command == "score" else args.step
    run_pipeline(loaded, steps=steps)
    return 0


def _configure_logging(quiet: bool, verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s deltaml %(message)s", datefmt="%H:%M:%S"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    LOG.propagate = False


def console_main() -> None:
    """Entry point of the ``deltaml`` console script."""
    sys.exit(main())
