"""The retraining policy: triggers (drift, decay, new rows, model age), a cooldown, a dry run, and a log.

``deltaml retrain CONF`` reads the latest monitoring window and the registry, decides, and when a
trigger fires outside the cooldown runs the whole pipeline on the current data; the pipeline's
champion/challenger gate decides whether the new version serves. Every decision, taken or not,
is appended to the retraining Delta table and logged as an MLflow run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deltaml.columns import (
    CHAMPION,
    MODEL_NAME_COL,
    MODEL_VERSION_COL,
    TAG_PIPELINE,
    TAG_RETRAIN_ACTION,
    TAG_RETRAIN_REASONS,
    TAG_STEP,
    TAG_TRAINING_TABLE,
    TAG_TRAINING_TABLE_VERSION,
)
from deltaml.config.loader import LoadedConfig
from deltaml.config.schema import PipelineConfig
from deltaml.errors import DeltamlError, StepFailedError, one_line
from deltaml.io.catalog import Table, append_rows, read_table, recorded_table, table_exists
from deltaml.io.failures import failure_clause
from deltaml.io.moved_state import relocated, state_moves
from deltaml.io.registry import alias_version, aliased_version, newest_version
from deltaml.io.session import get_spark
from deltaml.io.tables import resolve_tables
from deltaml.io.tracking import configure_tracking, log_dict, mlflow_client, set_tags, tracked_run
from deltaml.quality.profile import WINDOW_FEATURE
from deltaml.steps.outputs import RegisterOutput

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainDecision:
    """What ``deltaml retrain`` decided and did."""

    decided_at: datetime
    fired: list[str]
    checks: dict[str, str]
    action: str  # "retrained", "dry_run", "cooldown", "no_trigger" or "failed"
    champion_before: int | None = None
    new_version: int | None = None
    promoted: bool | None = None
    champion_after: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line for the console."""
        why = "; ".join(self.fired) if self.fired else "no trigger fired"
        if self.action == "retrained":
            gate = "promoted to @champion" if self.promoted else f"kept version {self.champion_after} as @champion"
            return f"retrained ({why}): version {self.new_version}, {gate}"
        if self.action == "dry_run":
            verdict = "would retrain" if self.fired and not self.notes else "would not retrain"
            return f"dry run: {verdict} ({why}{'; ' + '; '.join(self.notes) if self.notes else ''})"
        if self.action == "cooldown":
            return f"not retrained ({why}): {'; '.join(self.notes)}"
        return f"not retrained: {why}"


def evaluate_triggers(
    spark: SparkSession, cfg: PipelineConfig, client: MlflowClient, now: datetime
) -> tuple[list[str], dict[str, str], list[str], int | None]:
    """Which triggers fire, what each check saw, why the cooldown blocks (empty if not), and the champion.

    Returns:
        ``(fired, checks, blocked, champion_version)``.
    """
    policy = cfg.retrain
    name = cfg.mlflow.registered_model
    tables = resolve_tables(cfg)
    fired: list[str] = []
    checks: dict[str, str] = {}
    champion = aliased_version(client, name, CHAMPION)
    if champion is None:
        return ["no @champion yet"], {"champion": "none"}, [], None
    version = int(champion.version)

    latest = _latest_window(spark, tables.monitoring, name, version)
    if policy.drift_share is not None:
        share = latest.get("drifted_share")
        checks["drift_share"] = "no monitoring yet" if share is None else f"{share:.3f} (limit {policy.drift_share})"
        if share is not None and share > policy.drift_share:
            fired.append(f"drifted share {share:.2f} > {policy.drift_share}")
    if policy.performance_drop is not None:
        decay = next((v for k, v in latest.items() if k.endswith("_decay")), None)
        checks["performance_drop"] = (
            "no labelled window yet" if decay is None else f"{decay:+.4f} (limit {policy.performance_drop})"
        )
        if decay is not None and decay > policy.performance_drop:
            fired.append(f"performance decay {decay:+.4f} > {policy.performance_drop}")
    newest = newest_version(client, name)
    if policy.new_rows is not None:
        # Since the last training (the newest version, promoted or not), so a rejected challenger does not
        # leave the trigger firing on the same rows after every cooldown.
        added = _new_rows(spark, cfg, client, newest.tags if newest is not None else champion.tags)
        checks["new_rows"] = "unknown" if added is None else f"{added} (limit {policy.new_rows})"
        if added is not None and added >= policy.new_rows:
            fired.append(f"{added} new rows >= {policy.new_rows}")
    if policy.max_age_days is not None:
        age = now - datetime.fromtimestamp(champion.creation_timestamp / 1000, tz=UTC)
        days = age.total_seconds() / 86400
        checks["max_age_days"] = f"{days:.2f} (limit {policy.max_age_days})"
        if days > policy.max_age_days:
            fired.append(f"champion v{version} is {days:.1f} days old > {policy.max_age_days}")

    blocked: list[str] = []
    trained = _last_attempt(spark, tables.retraining, name, newest)
    if trained is not None and policy.cooldown_hours > 0:
        since = now - trained
        if since < timedelta(hours=policy.cooldown_hours):
            blocked.append(
                f"cooldown: the last training (or failed retraining) was {since.total_seconds() / 3600:.1f} h ago "
                f"(retrain.cooldown_hours {policy.cooldown_hours:g})"
            )
    return fired, checks, blocked, version


def _latest_window(spark: SparkSession, table: Table, name: str, version: int) -> dict[str, float]:
    """The window-level rows (drifted share, decay) of the most recent monitoring of this model version."""
    if not table_exists(spark, table):
        return {}
    rows, _ = read_table(spark, table, "retrain")
    mine = rows.where(
        (F.col(MODEL_NAME_COL) == name) & (F.col(MODEL_VERSION_COL) == version) & (F.col("feature") == WINDOW_FEATURE)
    )
    newest = mine.agg(F.max("monitored_at").alias("_newest"))
    latest = mine.join(F.broadcast(newest), F.col("monitored_at") == F.col("_newest")).select("metric", "value")
    return {r["metric"]: float(r["value"]) for r in latest.collect()}


def _new_rows(spark: SparkSession, cfg: PipelineConfig, client: MlflowClient, tags: dict[str, str]) -> int | None:
    """Rows in the training source now minus the rows the champion's split table held when it trained."""
    table, version = tags.get(TAG_TRAINING_TABLE), tags.get(TAG_TRAINING_TABLE_VERSION)
    if not table or version is None:
        return None
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    table = relocated(table, state_moves(client, experiment.experiment_id) if experiment else [])
    tables = resolve_tables(cfg)
    source = tables.clean if cfg.contract is not None else tables.raw
    if not table_exists(spark, source):
        return None
    trained, _ = read_table(spark, recorded_table(table), "retrain", version=int(version))
    now, _ = read_table(spark, source, "retrain")
    return int(now.count()) - int(trained.count())


def _last_attempt(spark: SparkSession, table: Table, name: str, newest: ModelVersion | None) -> datetime | None:
    """When training was last attempted: the newest version's registration, or a later failed retraining."""
    times = [datetime.fromtimestamp(int(newest.creation_timestamp) / 1000, tz=UTC)] if newest is not None else []
    if table_exists(spark, table):
        log, _ = read_table(spark, table, "retrain")
        failed = log.where((F.col(MODEL_NAME_COL) == name) & (F.col("action") == "failed")).agg(
            F.max("decided_at").alias("t")
        )
        row = failed.first()
        if row is not None and row["t"] is not None:
            times.append(row["t"].astimezone(UTC))
    return max(times) if times else None


def retrain(loaded: LoadedConfig, dry_run: bool = False, spark: SparkSession | None = None) -> RetrainDecision:
    """Evaluate the policy; retrain when a trigger fires outside the cooldown (not in a dry run); record it."""
    from deltaml.pipeline.runner import run_pipeline

    cfg = loaded.pipeline
    spark = spark or get_spark(cfg)
    configure_tracking(cfg)
    client = mlflow_client()
    now = datetime.now(UTC)
    try:
        fired, checks, blocked, champion = evaluate_triggers(spark, cfg, client, now)
    except DeltamlError:
        raise
    except Exception as exc:
        raise StepFailedError(f"retrain: reading the triggers failed{failure_clause(exc)}") from exc
    for check, seen in checks.items():
        LOG.info("retrain check %s: %s", check, seen)
    if dry_run:
        decision = RetrainDecision(now, fired, checks, "dry_run", champion, notes=blocked)
    elif not fired:
        decision = RetrainDecision(now, fired, checks, "no_trigger", champion)
    elif blocked:
        decision = RetrainDecision(now, fired, checks, "cooldown", champion, notes=blocked)
    else:
        LOG.info("retraining: %s", "; ".join(fired))
        try:
            # Ingest, validate and split are reused when the source has not changed; training always runs.
            outcome = run_pipeline(loaded, spark=spark, force=("fit",))
        except Exception as exc:
            # Recorded, so the cooldown also spaces out retries of a training that keeps failing.
            reason = one_line(exc, 500)
            _record(spark, cfg, RetrainDecision(now, fired, checks, "failed", champion, notes=[reason]))
            raise
        after = alias_version(client, cfg.mlflow.registered_model, CHAMPION)
        registered = outcome.output(RegisterOutput)
        decision = RetrainDecision(
            now,
            fired,
            checks,
            "retrained",
            champion,
            new_version=registered.model_version if registered else None,
            promoted=registered.promoted if registered else None,
            champion_after=after,
        )
    _record(spark, cfg, decision)
    return decision


def _record(spark: SparkSession, cfg: PipelineConfig, decision: RetrainDecision) -> None:
    schema = (
        "decided_at timestamp, pipeline string, model_name string, action string, triggered boolean, "
        "reasons string, checks string, champion_before int, new_version int, promoted boolean, champion_after int"
    )
    row = (
        decision.decided_at,
        cfg.name,
        cfg.mlflow.registered_model,
        decision.action,
        bool(decision.fired),
        "; ".join([*decision.fired, *decision.notes]),
        "; ".join(f"{k}: {v}" for k, v in decision.checks.items()),
        decision.champion_before,
        decision.new_version,
        decision.promoted,
        decision.champion_after,
    )
    append_rows(spark, spark.createDataFrame([row], schema), resolve_tables(cfg).retraining)
    with tracked_run(run_name=f"{cfg.name}-retrain-{decision.decided_at:%Y%m%d-%H%M%S}") as run:
        set_tags(
            {
                TAG_PIPELINE: cfg.name,
                TAG_STEP: "retrain",
                TAG_RETRAIN_ACTION: decision.action,
                TAG_RETRAIN_REASONS: "; ".join([*decision.fired, *decision.notes])[:5000],
            }
        )
        log_dict({**decision.checks, "summary": decision.summary}, "retrain_decision.json")
        LOG.info("retrain decision %s logged (MLflow run %s)", decision.action, run.info.run_id)
