"""``deltaml score`` on a trained Telco champion: incremental runs, --full, the serving table, and kill -9 mid-write;
on a one-feature model: a copied state folder, and two score runs at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from delta.tables import DeltaTable
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

import deltaml.steps.score
from deltaml.cli import main
from deltaml.config.loader import load_config
from deltaml.io.tracking import configure_tracking
from deltaml.steps.base import StepContext, StepResult
from deltaml.steps.monitor import scored_inputs, select_window
from deltaml.steps.score import ScoringPlan, run_score
from tests.conftest import register_tiny_model, telco_config_dict, write_config

pytestmark = pytest.mark.slow

CLEAN = "warehouse/silver/telco_churn_clean"
PREDICTIONS = "warehouse/gold/telco_churn_predictions"
SERVING = "warehouse/gold/telco_churn_serving"


@pytest.fixture(scope="module")
def trained(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One Telco run with a single untuned logistic regression, a serving table, and its first scoring done."""
    folder = tmp_path_factory.mktemp("scoring")
    data = telco_config_dict()
    data["state_dir"] = str(folder / "state")
    data["tables"]["serving"] = {"path": "gold/telco_churn_serving"}
    data["model"] = {"family": "logistic_regression", "params": {"regParam": 0.01, "maxIter": 20}}
    data["tuning"] = {"max_evals": 1}
    data["register"] = {"gate": {"enabled": False}}
    conf = write_config(folder / "telco_churn.yml", data)
    assert main(["run", str(conf)]) == 0
    yield conf


def _state(conf: Path) -> Path:
    return conf.parent / "state"


def _latest_version(spark: SparkSession, path: Path) -> int:
    last_commit = DeltaTable.forPath(spark, str(path)).history(1).first()
    assert last_commit is not None
    return int(last_commit["version"])


def _load(spark: SparkSession, path: Path) -> DataFrame:
    return spark.read.format("delta").load(str(path))


def _append_batch(spark: SparkSession, conf: Path, batch: str, copies: int, offset: int, partitions: int = 2) -> int:
    """Append ``copies`` copies of the clean table's first batch under new keys, as batch ``batch``."""
    clean = _load(spark, _state(conf) / CLEAN)
    first_batch = clean.select(F.min("_ingest_batch_id")).first()
    assert first_batch is not None
    first = clean.where(F.col("_ingest_batch_id") == first_batch[0])
    copied = first.crossJoin(spark.range(copies).withColumnRenamed("id", "_copy"))
    extra = (
        copied.withColumn("customer_id", F.col("customer_id") + F.lit(offset) + F.col("_copy") * 100_000)
        .drop("_copy")
        .withColumn("_ingest_batch_id", F.lit(batch))
        .repartition(partitions)
    )
    extra.write.format("delta").mode("append").save(str(_state(conf) / CLEAN))
    return extra.count()


def test_score_is_incremental_and_full_rescores(
    spark: SparkSession, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _state(trained)
    predictions = _load(spark, state / PREDICTIONS)
    assert predictions.count() == predictions.select("customer_id").distinct().count() == 7043
    version = _latest_version(spark, state / PREDICTIONS)

    # Nothing new: nothing written, and it says so.
    capsys.readouterr()
    assert main(["score", str(trained)]) == 0
    assert "nothing to score: " in capsys.readouterr().err
    assert _latest_version(spark, state / PREDICTIONS) == version

    # New rows: only they are scored; the earlier predictions keep their scoring time.
    before = {r["scored_at"] for r in _load(spark, state / PREDICTIONS).select("scored_at").distinct().collect()}
    added = _append_batch(spark, trained, "extra-1", copies=1, offset=1_000_000)
    assert main(["score", str(trained)]) == 0
    assert "7043 rows of " in capsys.readouterr().err
    after = _load(spark, state / PREDICTIONS)
    assert after.count() == after.select("customer_id").distinct().count() == 7043 + added
    assert {r["scored_at"] for r in after.where("batch_id <> 'extra-1'").select("scored_at").distinct().collect()} == (
        before
    )
    serving = _load(spark, state / SERVING)
    assert serving.count() == serving.select("customer_id").distinct().count() == 7043 + added

    # --full: every row rescored in one commit, no row duplicated.
    assert main(["score", str(trained), "--full"]) == 0
    rescored = _load(spark, state / PREDICTIONS)
    assert rescored.count() == rescored.select("customer_id").distinct().count() == 7043 + added
    assert rescored.select("scored_at").distinct().count() == 1
    assert _latest_version(spark, state / PREDICTIONS) == version + 2
    latest_row = rescored.select(F.max("scored_at")).first()
    assert latest_row is not None
    latest = latest_row[0]
    assert _load(spark, state / SERVING).where(F.col("scored_at") == latest).count() == 7043 + added


def _uncommitted_files(folder: Path, committed: set[str]) -> list[Path]:
    return [p for p in folder.glob("*.parquet") if p.name not in committed]


def test_score_killed_mid_write_leaves_the_table_and_the_rerun_scores_once(
    spark: SparkSession, trained: Path, tmp_path: Path
) -> None:
    state = _state(trained)
    added = _append_batch(spark, trained, "big-1", copies=40, offset=5_000_000, partitions=8)
    table = state / PREDICTIONS
    version, rows = _latest_version(spark, table), _load(spark, table).count()
    committed = {Path(f).name for f in _load(spark, table).inputFiles()}

    command = [str(Path(sys.executable).parent / "deltaml"), "score", str(trained)]
    log = (tmp_path / "score.log").open("w")
    job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _uncommitted_files(table, committed):
            assert job.poll() is None, f"score finished before it was killed: {(tmp_path / 'score.log').read_text()}"
            assert time.monotonic() < deadline, "score never started writing"
            time.sleep(0.02)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        log.close()
    assert job.returncode == -signal.SIGKILL
    # Files were being written, but no commit: the table is exactly as it was.
    assert _uncommitted_files(table, committed)
    assert _latest_version(spark, table) == version
    assert _load(spark, table).count() == rows

    # The next run scores the killed batch, exactly once.
    assert main(["score", str(trained)]) == 0
    done = _load(spark, table)
    assert done.count() == done.select("customer_id").distinct().count() == rows + added
    assert done.where("batch_id = 'big-1'").count() == added
    assert _latest_version(spark, table) == version + 1


# -- a one-feature model: what a score run does with its state folder and with another run -----------------------

TINY_SCHEMA = "id long, x double, outcome string, _ingest_batch_id string"


def _tiny_config(state: Path) -> Path:
    """A pipeline that scores its raw table (``state/warehouse/raw``) with registered model ``tiny`` version 1."""
    data = {
        "name": "tiny",
        "state_dir": str(state),
        "key": "id",
        "source": {"kind": "parquet", "path": str(state.parent / "unused")},
        "tables": {
            "raw": {"path": "raw"},
            "split": {"path": "split"},
            "predictions": {"path": "predictions"},
            "serving": {"path": "serving"},
        },
        "label": {"column": "outcome", "positive": "yes"},
        "features": {"numeric": ["x"]},
        "score": {"model_version": 1},
        "mlflow": {"experiment": "tiny", "registered_model": "tiny"},
    }
    return write_config(state.parent / "tiny.yml", data)


@pytest.fixture(scope="module")
def tiny_state(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state folder whose MLflow store holds ``tiny`` version 1; each test scores in a copy of it."""
    state = tmp_path_factory.mktemp("tiny") / "state"
    configure_tracking(load_config(_tiny_config(state)).pipeline)
    register_tiny_model(spark, "tiny")
    return state


def _add_batches(spark: SparkSession, state: Path, batches: dict[str, range]) -> None:
    """Append rows to the raw table, one ingest batch per entry (keys from its range)."""
    rows = [(i, float(i % 10), None, batch) for batch, keys in batches.items() for i in keys]
    spark.createDataFrame(rows, TINY_SCHEMA).write.format("delta").mode("append").save(str(state / "warehouse/raw"))


def _tiny_pipeline(spark: SparkSession, template: Path, folder: Path, batches: dict[str, range]) -> Path:
    """A copy of the template state folder under ``folder``, its raw table holding ``batches``; returns its config."""
    state = folder / "state"
    shutil.copytree(template, state)
    _add_batches(spark, state, batches)
    return _tiny_config(state)


def test_a_copied_state_folder_scores_nothing_again_and_keeps_one_prediction_per_key(
    spark: SparkSession, tiny_state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = _tiny_pipeline(spark, tiny_state, tmp_path / "before", {"b1": range(0, 4), "b2": range(4, 8)})
    assert main(["score", str(conf), "--skip-ingest"]) == 0
    before = tmp_path / "before" / "state"

    # Restored from a backup, or a renamed checkout: every table now has another absolute path.
    after = tmp_path / "after" / "state"
    shutil.copytree(before, after)
    moved = _tiny_config(after)
    capsys.readouterr()
    assert main(["score", str(moved), "--skip-ingest"]) == 0
    assert f"nothing to score: {after / 'warehouse/raw'} v0 was already scored" in capsys.readouterr().err
    assertDataFrameEqual(_load(spark, after / "warehouse/predictions"), _load(spark, before / "warehouse/predictions"))
    assert _latest_version(spark, after / "warehouse/predictions") == 0

    # A new batch after the move: only it is scored, and each key still has one prediction.
    _add_batches(spark, after, {"b3": range(8, 10)})
    assert main(["score", str(moved), "--skip-ingest"]) == 0
    assert "2 rows of " in capsys.readouterr().err
    predictions = _load(spark, after / "warehouse/predictions")
    assert sorted((r["id"], r["batch_id"]) for r in predictions.collect()) == [
        (i, "b1" if i < 4 else "b2" if i < 8 else "b3") for i in range(10)
    ]
    serving = _load(spark, after / "warehouse/serving")
    assert serving.count() == serving.select("id").distinct().count() == 10


def test_the_monitor_finds_the_scored_rows_in_a_moved_state_folder(
    spark: SparkSession, tiny_state: Path, tmp_path: Path
) -> None:
    conf = _tiny_pipeline(spark, tiny_state, tmp_path / "before", {"b1": range(0, 3)})
    assert main(["score", str(conf), "--skip-ingest"]) == 0
    shutil.move(tmp_path / "before", tmp_path / "after")
    cfg = load_config(_tiny_config(tmp_path / "after" / "state")).pipeline

    # The predictions name the table by its old path, which is gone: it is found by its Delta table id.
    window = select_window(_load(spark, tmp_path / "after/state/warehouse/predictions"), "all", datetime.now(UTC))
    inputs = scored_inputs(spark, window, cfg)
    assertDataFrameEqual(inputs, spark.createDataFrame([(0.0,), (1.0,), (2.0,)], "x double"))


def test_a_moved_state_folder_loads_its_model_from_where_the_artifacts_are_now(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its own model this time, not a copy of the template's, whose artifacts would still be where recorded.
    before = tmp_path / "before" / "state"
    before.mkdir(parents=True)
    configure_tracking(load_config(_tiny_config(before)).pipeline)
    register_tiny_model(spark, "tiny")
    _add_batches(spark, before, {"b1": range(0, 3)})
    assert main(["score", str(_tiny_config(before)), "--skip-ingest"]) == 0
    # Moved, not copied: the absolute artifact paths MLflow's store recorded no longer exist.
    shutil.move(tmp_path / "before", tmp_path / "after")
    after = tmp_path / "after" / "state"
    capsys.readouterr()

    assert main(["score", str(_tiny_config(after)), "--full", "--skip-ingest"]) == 0

    err = capsys.readouterr().err
    assert f"moved or copied from {before} to {after}" in err, err[-2000:]
    assert "3 rows of " in err
    store = f"sqlite:///{after / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    assert str(client.get_model_version("tiny", "1").source).startswith((after / "mlartifacts").as_uri() + "/")


def _score_at_once(spark: SparkSession, conf: Path, monkeypatch: pytest.MonkeyPatch) -> list[StepResult]:
    """Two score runs of ``conf`` in two threads of the one session, each writing only once both have planned.

    Both plan from the same predictions table version and then write together, so their Delta
    transactions overlap: the second to commit meets a real Delta conflict.
    """
    both_planned = threading.Barrier(2, timeout=300)
    waited = threading.local()

    def wait_for_the_other(plan: ScoringPlan) -> None:
        if not getattr(waited, "once", False):  # a retry does not wait again
            waited.once = True
            both_planned.wait()

    monkeypatch.setattr(deltaml.steps.score, "before_write", wait_for_the_other)
    results: dict[int, StepResult] = {}
    errors: list[BaseException] = []

    def score(run: int) -> None:
        try:
            results[run] = run_score(StepContext(spark=spark, loaded=load_config(conf)))
        except BaseException as exc:  # the test fails on it below, with its message
            errors.append(exc)

    threads = [threading.Thread(target=score, args=(run,)) for run in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, [f"{type(e).__name__}: {e}"[:600] for e in errors]
    return [results[0], results[1]]


def _assert_one_prediction_per_key(spark: SparkSession, state: Path, batches: dict[str, range]) -> None:
    expected = sorted((i, batch) for batch, keys in batches.items() for i in keys)
    predictions = _load(spark, state / "warehouse/predictions")
    assert sorted((r["id"], r["batch_id"]) for r in predictions.collect()) == expected
    serving = _load(spark, state / "warehouse/serving")
    assert sorted((r["id"], r["batch_id"]) for r in serving.collect()) == expected


def test_two_score_runs_at_once_write_each_prediction_once(
    spark: SparkSession, tiny_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = {"b1": range(0, 20), "b2": range(20, 40)}
    conf = _tiny_pipeline(spark, tiny_state, tmp_path, batches)
    state = tmp_path / "state"
    configure_tracking(load_config(conf).pipeline)

    # The first scoring: both runs create the predictions table; then both replace the same new batch.
    for new, rows in (({}, 40), ({"b3": range(40, 50)}, 10)):
        if new:
            _add_batches(spark, state, new)
            batches.update(new)
        runs = _score_at_once(spark, conf, monkeypatch)
        _assert_one_prediction_per_key(spark, state, batches)
        # One run wrote at once; the other met a Delta conflict, planned again, and found nothing left to score.
        attempts_and_rows = sorted((r.metrics["write_attempts"], r.metrics["rows_scored"]) for r in runs)
        assert attempts_and_rows == [(1.0, float(rows)), (2.0, 0.0)]
        assert "planned again after another run's commit" in min(runs, key=lambda r: r.metrics["rows_scored"]).summary


def test_the_scheduled_scoring_job_scores_exactly_the_rows_appended_to_the_source(
    spark: SparkSession, tiny_state: Path, tmp_path: Path
) -> None:
    """The shipped entry point (jobs/score.py) on a growing source: ingest (append), then only the new rows scored."""
    state = tmp_path / "state"
    shutil.copytree(tiny_state, state)
    source = tmp_path / "source"
    data = {
        "name": "tiny",
        "state_dir": str(state),
        "key": "id",
        "source": {"kind": "parquet", "path": str(source)},
        "ingest": {"mode": "append"},
        "tables": {"raw": {"path": "raw"}, "split": {"path": "split"}, "predictions": {"path": "predictions"}},
        "label": {"column": "outcome", "positive": "yes"},
        "features": {"numeric": ["x"]},
        "score": {"model_version": 1},
        "mlflow": {"experiment": "tiny", "registered_model": "tiny"},
    }
    conf = write_config(tmp_path / "tiny.yml", data)

    def arrive(keys: range) -> None:
        rows = [(i, float(i % 10), None) for i in keys]
        spark.createDataFrame(rows, "id long, x double, outcome string").coalesce(1).write.mode("append").parquet(
            str(source)
        )

    def scored() -> dict[int, datetime]:
        predictions = _load(spark, state / "warehouse/predictions")
        rows = predictions.select("id", "scored_at").collect()
        assert len(rows) == len({r["id"] for r in rows}), "a key was scored twice"
        return {int(r["id"]): r["scored_at"] for r in rows}

    arrive(range(0, 20))
    assert main(["score", str(conf)]) == 0
    first = scored()
    assert sorted(first) == list(range(20))

    arrive(range(20, 27))  # a new file in the source folder, as a daily drop would be
    job = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "jobs" / "score.py"), str(conf)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "[ingest] done" in job.stderr and "7 new rows as batch src-" in job.stderr
    second = scored()
    assert sorted(second) == list(range(27))
    assert {k for k in second if second[k] != first.get(k)} == set(range(20, 27))
    raw = _load(spark, state / "warehouse/raw")
    assert raw.count() == raw.select("id").distinct().count() == 27

    # Nothing new: the source is unchanged, ingest is skipped and nothing is scored again.
    assert main(["score", str(conf)]) == 0
    assert scored() == second
