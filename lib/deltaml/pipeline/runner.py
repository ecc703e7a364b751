"""Runs the pipeline's steps in order: one MLflow parent run, a child run per step, progress on the console."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from deltaml._version import __version__
from deltaml.columns import (
    MANIFEST_ARTIFACT,
    STEP_LINEAGE_ARTIFACT,
    TAG_ATTEMPT_KEY,
    TAG_CACHED_FROM,
    TAG_CONFIG_FILES,
    TAG_CONFIG_HASH,
    TAG_FINGERPRINT,
    TAG_GIT_SHA,
    TAG_KEY,
    TAG_PIPELINE,
    TAG_PREFIX,
    TAG_RECORD,
    TAG_REUSED_STEPS,
    TAG_STEP,
    TAG_VERSION,
)
from deltaml.config.loader import LoadedConfig
from deltaml.config.schema import PipelineConfig
from deltaml.errors import ConfigError, DeltamlError, StepFailedError, one_line, redacted
from deltaml.io.failures import failure_clause
from deltaml.io.recording import TableAccess, recording, step_lineage
from deltaml.io.session import get_spark, session_lost_error
from deltaml.io.tracking import (
    check_tracking_server,
    close_runs_of_dead_processes,
    configure_tracking,
    git_sha,
    latest_step_run,
    log_datasets,
    log_dict,
    log_file,
    log_metrics,
    log_params,
    mlflow_client,
    package_versions,
    set_tags,
    tracked_run,
)
from deltaml.pipeline.cache import Reusable, commit_times, find_reusable, fingerprint, record_of, step_key
from deltaml.pipeline.lineage import build_manifest
from deltaml.steps import DEFAULT_STEPS, STEPS
from deltaml.steps.base import Step, StepContext, StepResult
from deltaml.steps.outputs import StepOutput

LOG = logging.getLogger(__name__)

OutputT = TypeVar("OutputT", bound=StepOutput)


@dataclass
class PipelineOutcome:
    """What a pipeline run did: its MLflow parent run, each step's result and duration."""

    run_id: str
    results: dict[str, StepResult] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: dict[type[StepOutput], StepOutput] = field(default_factory=dict)
    # The MLflow run of each step (for a skipped step, the earlier run it reused).
    run_ids: dict[str, str] = field(default_factory=dict)
    # Steps skipped because an earlier run of them is still valid: step name -> that run's id.
    reused: dict[str, str] = field(default_factory=dict)

    def output(self, kind: type[OutputT]) -> OutputT | None:
        """What the run's steps produced of this type (None if no step of this run produced it)."""
        found = self.outputs.get(kind)
        return found if isinstance(found, kind) else None


def check_config(loaded: LoadedConfig) -> None:
    """Every step's own config checks (:attr:`Step.check`): what the schema cannot see, found with no Spark session.

    Raises:
        ConfigError: One line naming each problem's config key, like the schema's errors.
    """
    problems = [f"'{where}': {problem}" for step in STEPS for where, problem in step.check(loaded.pipeline)]
    if problems:
        raise ConfigError(f"invalid config ({' + '.join(loaded.source_files)}): " + "; ".join(problems))


def scoring_steps(cfg: PipelineConfig, skip_ingest: bool = False) -> list[str]:
    """The steps a scheduled ``deltaml score`` runs: what brings new source rows to its input, then score.

    Scoring the pipeline's own raw, clean or split table first ingests what the source gained and (with a
    contract) validates it, so a scheduled job scores new data; each of those steps is skipped as usual when
    its source and tables are unchanged. ``score.table`` (a table deltaml does not write) is scored as it is.
    """
    if skip_ingest or cfg.score.table is not None:
        return ["score"]
    choice = cfg.score.input or ("clean" if cfg.contract is not None else "raw")
    steps = ["ingest"]
    if cfg.contract is not None and choice != "raw":
        steps.append("validate")
    if choice == "split":
        steps.append("split")
    return [*steps, "score"]


def run_pipeline(
    loaded: LoadedConfig,
    steps: Sequence[str] | None = None,
    spark: SparkSession | None = None,
    force: bool | Collection[str] = False,
    tags: dict[str, str] | None = None,
) -> PipelineOutcome:
    """Run the named steps (all, in order, by default) under one MLflow parent run.

    A step whose config, code and inputs are those of a finished earlier run of it is skipped and
    that run's outputs are reused (:mod:`deltaml.pipeline.cache`).

    Args:
        loaded: The validated config (see :func:`deltaml.config.load_config`).
        steps: Step names to run, in pipeline order (default: all but monitor); each reads its inputs from Delta/MLflow,
            so any step can run alone once its inputs exist.
        spark: A session to use; by default :func:`deltaml.io.session.get_spark` builds one.
        force: True to run every step even if unchanged, or the names of the steps to run regardless (the steps
            after them then run too, because their inputs are new).
        tags: Tags for the runs, over the defaults (``deltaml reproduce`` files its runs under another pipeline tag).

    Returns:
        The parent run id and each step's result.

    Raises:
        DeltamlError: A step's input broke its contract; the parent run is marked FAILED.
    """
    cfg = loaded.pipeline
    check_config(loaded)
    if steps:
        chosen = [s for s in STEPS if s.name in set(steps)]
    else:
        chosen = [s for s in STEPS if s.name in DEFAULT_STEPS and s.in_default_run(cfg)]
    check_tracking_server(cfg)  # in seconds, before the Spark session (MLflow's own retries take minutes)
    spark = spark or get_spark(cfg)
    forced = {s.name for s in STEPS} if force is True else set(force or ())
    try:
        return _run_steps(loaded, chosen, spark, forced, tags or {})
    except MlflowException as exc:  # the tracking server is unreachable, say; its message is one line
        raise StepFailedError(f"pipeline {cfg.name}: MLflow failed: {one_line(exc, 500)}") from exc


def _run_steps(
    loaded: LoadedConfig, chosen: list[Step], spark: SparkSession, forced: set[str], extra_tags: dict[str, str]
) -> PipelineOutcome:
    cfg = loaded.pipeline
    experiment_id = configure_tracking(cfg)
    close_runs_of_dead_processes(mlflow_client(), experiment_id)
    sha = git_sha()
    ctx = StepContext(spark=spark, loaded=loaded, git_sha=sha)
    run_name = f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    tags = {
        TAG_PIPELINE: cfg.name,
        TAG_CONFIG_HASH: loaded.config_hash,
        TAG_GIT_SHA: sha,
        TAG_VERSION: __version__,
        **extra_tags,
    }
    LOG.info("pipeline %s: steps %s (config hash %s)", cfg.name, ", ".join(s.name for s in chosen), loaded.config_hash)
    with tracked_run(run_name=run_name, tags={**tags, TAG_STEP: "pipeline"}) as parent:
        _log_config(loaded)
        log_params({f"package.{k}": v for k, v in package_versions().items()})
        outcome = PipelineOutcome(run_id=parent.info.run_id)
        packages = package_versions()
        accessed: dict[str, list[TableAccess]] = {}
        client = mlflow_client()
        for step in chosen:
            name = step.name
            started = time.perf_counter()
            key, reusable = _cached(ctx, client, experiment_id, tags[TAG_PIPELINE], step, forced)
            if key is not None and reusable is not None:
                accessed[name] = reusable.record.accesses
                outcome.results[name] = _reuse(step, reusable, ctx, tags, key)
                outcome.seconds[name] = time.perf_counter() - started
                outcome.reused[name] = reusable.run_id
                if step.headline:  # the reused run's values: the pipeline run still shows what it stands for
                    data = client.get_run(reusable.run_id).data
                    tags_of = {k.removeprefix(TAG_PREFIX): v for k, v in data.tags.items() if k.startswith(TAG_PREFIX)}
                    _log_headline(step, dict(data.metrics), tags_of)
                _log_manifest(loaded, accessed, packages, sha)
                continue
            with recording() as accesses:
                outcome.results[name], outcome.seconds[name] = _run_step(step, ctx, tags, accesses, key)
            _log_headline(step, outcome.results[name].metrics, outcome.results[name].tags)
            accessed[name] = accesses
            _log_manifest(loaded, accessed, packages, sha)
        log_metrics({f"seconds_{k}": v for k, v in outcome.seconds.items()})
        if outcome.reused:
            set_tags({TAG_REUSED_STEPS: ", ".join(outcome.reused)})
    outcome.outputs = dict(ctx.produced)
    outcome.run_ids = dict(ctx.run_ids)
    total = sum(outcome.seconds.values())
    skipped = f", {len(outcome.reused)} of {len(chosen)} steps reused" if outcome.reused else ""
    LOG.info("pipeline %s finished in %.1fs%s (MLflow run %s)", cfg.name, total, skipped, outcome.run_id)
    return outcome


def _log_headline(step: Step, metrics: dict[str, float], tags: dict[str, str]) -> None:
    """Put the step's headline metrics and tags on the pipeline's run (the active run between steps)."""
    log_metrics(step.headline_of(metrics))
    set_tags({f"{TAG_PREFIX}{k}": v for k, v in step.headline_of(tags).items()})


def _log_manifest(
    loaded: LoadedConfig, accessed: dict[str, list[TableAccess]], packages: dict[str, str], sha: str
) -> None:
    # Rewritten after every step, so a run that fails later still says what it read and wrote.
    manifest = build_manifest(
        accessed,
        config_hash=loaded.config_hash,
        effective_config=loaded.effective,
        seed=loaded.pipeline.seed,
        packages=packages,
        git_sha=sha,
        state_path=str(loaded.pipeline.state_path),
    )
    log_dict(manifest, MANIFEST_ARTIFACT)


def _cached(
    ctx: StepContext, client: MlflowClient, experiment_id: str, pipeline: str, step: Step, forced: set[str]
) -> tuple[str | None, Reusable | None]:
    """The step's cache key, and an earlier run to reuse if any (see :mod:`deltaml.pipeline.cache`).

    Failing to tell (a file system or the tracking server erring) costs one warning: the step runs.
    """
    if not step.cacheable:
        return None, None
    name = step.name
    try:
        key = step_key(ctx, step, {**step.key_inputs(ctx.for_step(step)), **_upstream_runs(ctx, step)})
        if name in forced:
            return key, None
        bypass = step.bypass_cache(ctx.config)
        if bypass:
            LOG.info("[%s] runs: %s", name, bypass)
            return key, None
        reusable, why = find_reusable(
            spark=ctx.spark,
            client=client,
            experiment_id=experiment_id,
            pipeline=pipeline,
            name=name,
            key=key,
            model=ctx.config.mlflow.registered_model,
        )
    except Exception as exc:  # the step itself reports a missing input better
        LOG.warning("[%s] runs: could not tell whether it is unchanged: %s", name, one_line(exc, 300))
        return None, None
    if reusable is None and why:
        LOG.info("[%s] runs: %s", name, why)
    return key, reusable


def _upstream_runs(ctx: StepContext, step: Step) -> dict[str, Any]:
    """The runs that produced the MLflow outputs (models, metrics) a step consumes: part of its cache key.

    A Delta input is keyed by its version (the cache checks it); an output that lives in MLflow by
    the run that produced it, from this pipeline run or else the latest finished run of its producer.
    """
    runs: dict[str, str | None] = {}
    for kind in step.consumes:
        if not kind.in_mlflow:
            continue
        producer = next(s.name for s in STEPS if s.produces is kind)
        run_id = ctx.run_ids.get(producer)
        if run_id is None:
            try:
                run_id = latest_step_run(ctx.config, producer).info.run_id
            except DeltamlError:
                run_id = None  # the step itself will say what is missing
        runs[producer] = run_id
    return {"upstream": runs} if runs else {}


def _reuse(step: Step, reusable: Reusable, ctx: StepContext, tags: dict[str, str], key: str) -> StepResult:
    """Skip a step: restore what later steps take from it, and leave a child run that points at the reused one."""
    name = step.name
    if step.produces is not None:
        ctx.publish(step.produces.from_json(reusable.record.restore))
    ctx.run_ids[name] = reusable.run_id
    if step.on_reuse is not None:
        step.on_reuse(ctx.for_step(step), reusable.run_id)
    print_key = fingerprint(key, reusable.record.inputs)
    with tracked_run(
        run_name=f"{name} (reused)",
        nested=True,
        tags={**tags, TAG_STEP: name, TAG_CACHED_FROM: reusable.run_id, TAG_FINGERPRINT: print_key},
    ):
        log_dict(step_lineage(reusable.record.accesses), STEP_LINEAGE_ARTIFACT)
        log_datasets(ctx.spark, reusable.record.accesses, context=name)
    summary = f"skipped: unchanged since run {reusable.run_id} (fingerprint {print_key[:12]})"
    LOG.info("[%s] %s", name, summary)
    return StepResult(tags={"cached_from": reusable.run_id}, summary=summary)


def _run_step(
    step: Step,
    ctx: StepContext,
    tags: dict[str, str],
    accesses: list[TableAccess],
    key: str | None,
) -> tuple[StepResult, float]:
    name = step.name
    LOG.info("[%s] started", name)
    started = time.perf_counter()
    attempt = {TAG_ATTEMPT_KEY: key} if key is not None else {}
    with tracked_run(run_name=name, nested=True, tags={**tags, TAG_STEP: name, **attempt}) as run:
        try:
            result = step.run(ctx.for_step(step))
        except DeltamlError:
            raise
        except Exception as exc:
            # Spark, Delta and MLflow errors run to pages of JVM trace; keep one line, chain the rest.
            LOG.debug("step %s failed", name, exc_info=True)
            lost = session_lost_error(ctx.spark, f"step '{name}'", exc)
            if lost is not None:
                raise lost from exc
            raise StepFailedError(f"step '{name}' failed{failure_clause(exc, [a.table for a in accesses])}") from exc
        if step.produces is not None and not isinstance(result.output, step.produces):
            raise StepFailedError(
                f"step '{name}' returned {type(result.output).__name__}, not the {step.produces.__name__} it declares"
            )
        if result.output is not None:
            ctx.publish(result.output)
        seconds = time.perf_counter() - started
        log_metrics({**result.metrics, "seconds": seconds})
        set_tags({f"{TAG_PREFIX}{k}": v for k, v in result.tags.items()})
        log_dict(step_lineage(accesses), STEP_LINEAGE_ARTIFACT)
        log_datasets(ctx.spark, accesses, context=name)  # the MLflow UI's dataset inputs, with Delta version
        ctx.run_ids[name] = run.info.run_id
        if key is not None:
            record = record_of(accesses, result.output)
            record = replace(record, committed=commit_times(ctx.spark, record))
            # Set last: only a step that finished carries the key a later run looks for.
            set_tags({TAG_FINGERPRINT: fingerprint(key, record.inputs), TAG_RECORD: record.to_tag(), TAG_KEY: key})
    LOG.info("[%s] done in %.1fs: %s", name, seconds, result.summary)
    return result, seconds


def _log_config(loaded: LoadedConfig) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yml"
        path.write_text(yaml.safe_dump(redacted(loaded.effective), sort_keys=False))
        log_file(str(path))
    flat = _flatten(redacted(loaded.effective))
    log_params({k: str(v)[:500] for k, v in flat.items()})
    set_tags({TAG_CONFIG_FILES: ", ".join(loaded.source_files)})


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
