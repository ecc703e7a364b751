"""Spark and Delta failures reach the user as one line with the root cause, the table, the file and the fix.

Real failures, no mocks: garbage in a Delta commit file, a deleted data file, a full file system (a
tmpfs of 256 KiB, where the test may mount one), and a Java exception with a cause raised through py4j.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.errors.exceptions.connect import SparkConnectGrpcException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from deltaml.cli import main
from deltaml.errors import one_line, spark_cause
from deltaml.io.catalog import Table, append_rows, read_table, table_version
from deltaml.io.failures import explain_table_failure
from tests.conftest import write_config

pytestmark = pytest.mark.usefixtures("restore_cli_logging")

SCHEMA = "id long, x double, cat string, y string"
ROWS = [(1, 1.0, "a", "Yes"), (2, 2.0, "b", "No"), (3, 3.0, "a", "No"), (4, 4.0, "b", "Yes")]


def _config(tmp_path: Path, split: str = "split") -> Path:
    """A pipeline without a contract: split reads the raw table, which the tests write themselves."""
    data: dict[str, Any] = {
        "name": "tiny",
        "state_dir": str(tmp_path / "state"),
        "key": "id",
        "source": {"kind": "parquet", "path": str(tmp_path / "unused")},
        "tables": {"raw": {"path": str(tmp_path / "raw")}, "split": {"path": split}, "predictions": {"path": "p"}},
        "label": {"column": "y", "positive": "Yes"},
        "features": {"numeric": ["x"], "categorical": ["cat"]},
        "mlflow": {"experiment": "tiny", "registered_model": "tiny"},
    }
    return write_config(tmp_path / "tiny.yml", data)


def _raw(spark: SparkSession, tmp_path: Path, commits: int = 1) -> Table:
    table = Table(str(tmp_path / "raw"), is_path=True)
    for n in range(commits):
        rows = [(key + 10 * n, x, cat, y) for key, x, cat, y in ROWS]
        append_rows(spark, spark.createDataFrame(rows, SCHEMA).coalesce(1), table)
    return table


def _split_fails(conf: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the split step, which must fail with exit code 1; its one error line."""
    assert main(["run", str(conf), "--step", "split"]) == 1
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("hadoop_checksum", [True, False], ids=["checksum-kept", "checksum-gone"])
def test_a_corrupt_commit_file_names_the_table_the_entry_and_the_cause(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], hadoop_checksum: bool
) -> None:
    raw = _raw(spark, tmp_path, commits=2)
    newest = Path(raw.ref) / "_delta_log" / "00000000000000000001.json"
    newest.write_text("garbage{not json\n")
    if not hadoop_checksum:  # as on object storage: no .crc beside the file, so the JSON parser meets the garbage
        (newest.parent / f".{newest.name}.crc").unlink()
    cause = (
        rf"Checksum error: file:{newest} at 0 exp: -?\d+ got: -?\d+"  # CRC32 as a signed int
        if hadoop_checksum
        else r"Unrecognized token 'garbage': was expecting .*"
    )
    line = _split_fails(_config(tmp_path), capsys)
    assert re.fullmatch(
        rf"deltaml: error: step 'split' failed reading Delta table {raw}: its log entry "
        rf"_delta_log/00000000000000000001.json is corrupt \({cause}\); restore that file from a backup "
        r"\(the table cannot be read until then\)",
        line,
    ), line


def test_a_deleted_data_file_names_the_table_the_file_and_a_fix_that_works(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = _raw(spark, tmp_path, commits=2)
    first_commit = spark.read.format("delta").option("versionAsOf", 0).load(raw.ref).inputFiles()
    assert len(first_commit) == 1
    gone = Path(first_commit[0].removeprefix("file:"))
    gone.unlink()
    ident = f"delta.`{raw}`"
    assert _split_fails(_config(tmp_path), capsys) == (
        f"deltaml: error: step 'split' failed reading Delta table {raw}: its data file {gone.name} is missing, but "
        "the table's log still lists it; restore the file, or drop it from the log and lose its rows: "
        f"`FSCK REPAIR TABLE {ident}` on Databricks, or with open-source Delta (no FSCK) "
        f"`INSERT OVERWRITE {ident} SELECT * FROM {ident}` with spark.sql.files.ignoreMissingFiles=true"
    )
    # The open-source fix, as the line gives it, makes the table readable: the other commit's rows are left.
    spark.conf.set("spark.sql.files.ignoreMissingFiles", "true")
    try:
        spark.sql(f"INSERT OVERWRITE {ident} SELECT * FROM {ident}")
    finally:
        spark.conf.unset("spark.sql.files.ignoreMissingFiles")
    expected = [(key + 10, x, cat, y) for key, x, cat, y in ROWS]
    assertDataFrameEqual(read_table(spark, raw, "test")[0], spark.createDataFrame(expected, SCHEMA))


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB file system (tmpfs): room for a small table, not for a large one. Mounting needs root."""
    folder = tmp_path / "tiny-disk"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True, text=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the chain test below still runs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _wide_rows(spark: SparkSession, count: int) -> DataFrame:
    """``count`` rows of hashes, which do not compress: about 70 bytes each on disk."""
    return spark.range(100, 100 + count).select(
        "id",
        F.rand(1).alias("x"),
        F.sha2(F.col("id").cast("string"), 256).alias("cat"),
        F.when(F.col("id") % 2 == 0, "Yes").otherwise("No").alias("y"),
    )


def test_a_full_disk_names_the_table_and_the_cause_and_keeps_the_last_version(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_disk: Path
) -> None:
    raw = _raw(spark, tmp_path)
    conf = _config(tmp_path, split=str(tiny_disk / "split"))
    assert main(["run", str(conf), "--step", "split"]) == 0
    split = Table(str(tiny_disk / "split"), is_path=True)
    before = read_table(spark, split, "test")[0].collect()
    append_rows(spark, _wide_rows(spark, 20_000).coalesce(1), raw)  # about 1.4 MB: the split table cannot hold it
    assert _split_fails(conf, capsys) == (
        f"deltaml: error: step 'split' failed writing {split}: No space left on device; "
        f"nothing was committed to {split}, its last version stands"
    )
    assert table_version(spark, split) == 0
    assertDataFrameEqual(read_table(spark, split, "test")[0], before)


def test_the_line_of_a_java_exception_is_its_root_cause(spark: SparkSession) -> None:
    # A real JVM exception with a cause, through py4j: ExecutionException <- IOException.
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    failed = jvm.java.util.concurrent.CompletableFuture.failedFuture(jvm.java.io.IOException("No space left on device"))
    with pytest.raises(Exception, match="An error occurred while calling") as raised:
        failed.get()
    assert one_line(raised.value) == "No space left on device"
    cause = spark_cause(raised.value)
    assert cause is not None
    assert [(e.kind, e.message) for e in cause.chain] == [
        ("java.util.concurrent.ExecutionException", "java.io.IOException: No space left on device"),
        ("java.io.IOException", "No space left on device"),
    ]


def test_the_line_of_a_spark_connect_error_is_the_last_cause_of_its_server_trace() -> None:
    # What the Connect client builds from the server's error details: no JVM on this side, only text.
    error = SparkConnectGrpcException(
        "[TASK_WRITE_FAILED] Task failed while writing rows to file:/data/split. SQLSTATE: 58030",
        errorClass="TASK_WRITE_FAILED",
        messageParameters={"path": "file:/data/split"},
        server_stacktrace=(
            "org.apache.spark.SparkException\n\tat org.apache.spark.X.y(X.scala:1)\n"
            "Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device\n\tat a.b(C:2)\n"
            "Caused by: java.io.IOException: No space left on device\n\tat d.e(F:3)"
        ),
    )
    assert one_line(error) == "No space left on device (writing file:/data/split)"
    assert explain_table_failure(error, ["/data/split"]) == (
        "writing /data/split: No space left on device; nothing was committed to /data/split, its last version stands"
    )


# A search whose JVM dies in its second trial, in a process of its own (the suite's session must live on).
_DEAD_JVM_SEARCH = """
import os, signal, sys
from pyspark.sql import SparkSession
from deltaml.errors import SessionLostError
from deltaml.ml.tuning import SearchBudget, search_family
from deltaml.steps.fit import _stops_when_the_session_is_lost

spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
calls = []

def train_trial(params):
    calls.append(params)
    if len(calls) == 2:  # what an out-of-memory death looks like from Python: the JVM is gone
        os.kill(spark.sparkContext._gateway.proc.pid, signal.SIGKILL)
        spark.sparkContext._gateway.proc.wait()
    return None, {"auc_roc": spark.range(10 * len(calls)).count() / 1000}

budget = SearchBudget(max_evals=8, parallelism=1, deadline=float("inf"), early_stop_rounds=0, seed=1)
try:
    search_family(
        "gbt", {"maxDepth": {"randint": [2, 9]}}, {}, _stops_when_the_session_is_lost(spark, "gbt", train_trial),
        metric="auc_roc", budget=budget,
    )
except SessionLostError as exc:
    print(f"trials {len(calls)}: {exc}")
    sys.exit(0)
sys.exit(f"no SessionLostError after {len(calls)} trials")
"""


def test_a_dead_driver_jvm_stops_the_search_and_says_out_of_memory(tmp_path: Path) -> None:
    """Before, each trial after the JVM died failed in a second with ConnectionRefusedError, and so did the step."""
    done = subprocess.run(
        [sys.executable, "-c", _DEAD_JVM_SEARCH], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith(
        "trials 2: step 'fit': a gbt trial: the Spark driver JVM exited with code -9, most likely out of memory "
        "(look for java.lang.OutOfMemoryError above; the work saw "
    ), line
    assert (
        "spark.driver.memory" in line and "tuning.single_node_max_rows" in line and "features.rare_categories" in line
    )


# A fit whose driver JVM dies in its third trial, in a process of its own (the suite's session must live on).
_FIT_DIES_IN_ITS_THIRD_TRIAL = """
import os, signal, sys, threading
import deltaml.steps.fit as fit
from deltaml.config.loader import load_config
from deltaml.errors import SessionLostError
from deltaml.io.session import get_spark
from deltaml.pipeline.runner import run_pipeline

loaded = load_config(sys.argv[1])
spark = get_spark(loaded.pipeline)
stages, calls = fit.model_stages, []

def dies_in_the_third(*args, **kwargs):
    if threading.current_thread().name.startswith("trial-"):
        calls.append(1)
    if len(calls) == 3:  # what an out-of-memory death looks like from Python: the JVM is gone
        os.kill(spark.sparkContext._gateway.proc.pid, signal.SIGKILL)
        spark.sparkContext._gateway.proc.wait()
    return stages(*args, **kwargs)

fit.model_stages = dies_in_the_third
try:
    run_pipeline(loaded, steps=["fit"], spark=spark)
except SessionLostError as exc:
    print(f"died after {len(calls)} trials: {exc}")
    sys.exit(0)
sys.exit(f"no SessionLostError after {len(calls)} trials")
"""


def test_a_fit_that_died_resumes_from_the_trials_it_logged(
    spark: SparkSession, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before, a fit that died after minutes of trials ran every trial again."""
    import mlflow

    from deltaml.config.loader import load_config
    from deltaml.pipeline.runner import run_pipeline

    conf = _config(tmp_path)
    data = {**__import__("yaml").safe_load(conf.read_text())}
    data["model"] = {
        "candidates": [{"family": "logistic_regression", "search": {"regParam": {"loguniform": [1e-4, 1.0]}}}]
    }
    data["tuning"] = {"max_evals": 5, "parallelism": 1}
    write_config(conf, data)
    rows = [(i, float(i % 7), "ab"[i % 2], "Yes" if i % 7 + (i * 13) % 5 > 5 else "No") for i in range(60)]
    append_rows(spark, spark.createDataFrame(rows, SCHEMA).coalesce(1), Table(str(tmp_path / "raw"), is_path=True))
    run_pipeline(load_config(conf), steps=["split"], spark=spark)

    died = subprocess.run(
        [sys.executable, "-c", _FIT_DIES_IN_ITS_THIRD_TRIAL, str(conf)], capture_output=True, text=True, timeout=600
    )
    assert died.returncode == 0, died.stderr[-3000:]
    assert died.stdout.strip().splitlines()[-1].startswith("died after 3 trials: step 'fit': "), died.stdout

    with caplog.at_level("INFO", logger="deltaml"):
        outcome = run_pipeline(load_config(conf), steps=["fit"], spark=spark)
    failed = mlflow.search_runs(
        experiment_names=["tiny"], filter_string="tags.`deltaml.step` = 'fit' and attributes.status = 'FAILED'"
    )
    assert len(failed) == 1
    first = failed["run_id"][0]
    assert (
        f"fit: resuming the search of run {first}, which did not finish: 2 trials logged (logistic_regression 2)"
        in (caplog.text)
    )
    trials = mlflow.search_runs(
        experiment_names=["tiny"], filter_string=f"tags.mlflow.parentRunId = '{outcome.run_ids['fit']}'"
    )
    assert len(trials) == 5
    # Each trial's record carries the search's progress (a terminal shows it as one live line).
    progress = [r.progress for r in caplog.records if hasattr(r, "progress")]
    assert [(p.done, p.total, p.family_done) for p in progress] == [(i, 5, i) for i in range(1, 6)]
    assert progress[-1].left == 0 and progress[-1].best is not None
    assert progress[-1].text().startswith("tuning 5/5 trials (logistic_regression 5/5), best validation auc_roc ")
    assert sorted(trials["tags.mlflow.runName"][trials["tags.deltaml.resumed_from"] == first]) == [
        "logistic_regression-001",
        "logistic_regression-002",
    ]
