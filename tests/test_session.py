"""Session building: the Delta coordinate matches delta-spark, missing jars fail in one line, Delta works."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from delta import configure_spark_with_delta_pip
from pyspark.sql import SparkSession

from deltaml.config.loader import load_config
from deltaml.errors import SetupError
from deltaml.io.session import check_delta_jars, delta_artifacts, delta_jar_paths, get_spark
from tests.conftest import TELCO_CONF


def test_coordinate_matches_delta_pip_utils() -> None:
    builder = configure_spark_with_delta_pip(SparkSession.builder)
    expected = builder._options["spark.jars.packages"]
    assert ":".join(delta_artifacts()[0]) == expected


def test_jar_paths_follow_the_maven_layout(tmp_path: Path) -> None:
    group, artifact, version = delta_artifacts()[1]
    assert delta_jar_paths(tmp_path)[1] == tmp_path / "io" / "delta" / artifact / version / f"{artifact}-{version}.jar"
    assert group == "io.delta"


def test_missing_jars_fail_with_one_line_naming_make_setup(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match=r"Delta Lake jar not found: .*delta-spark_.*run `make setup`") as caught:
        check_delta_jars(tmp_path)
    assert "\n" not in str(caught.value)


def test_session_runs_delta_with_this_interpreter(spark: SparkSession, tmp_path: Path) -> None:
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    assert spark.conf.get("spark.sql.extensions") == "io.delta.sql.DeltaSparkSessionExtension"
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"
    path = str(tmp_path / "t")
    spark.range(3).write.format("delta").save(path)
    spark.range(3, 5).write.format("delta").mode("append").save(path)
    assert sorted(r.id for r in spark.read.format("delta").option("versionAsOf", 0).load(path).collect()) == [0, 1, 2]
    assert spark.read.format("delta").load(path).count() == 5
    # Python UDF workers start with the same interpreter as the driver.
    executable = spark.range(1).rdd.map(lambda _: __import__("sys").executable).collect()[0]
    assert executable == sys.executable


def test_get_spark_reuses_the_active_session(spark: SparkSession) -> None:
    assert get_spark(load_config(TELCO_CONF).pipeline) is spark


def test_get_spark_on_a_databricks_runtime_takes_its_session(
    spark: SparkSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Databricks job script may start with no session active in its thread, and a cluster has no Delta
    # jars in a local Maven repository (tmp_path is empty): the runtime's session must be taken, not built.
    monkeypatch.setattr(SparkSession, "getActiveSession", classmethod(lambda cls: None))
    config = load_config(TELCO_CONF).pipeline
    with pytest.raises(SetupError):
        get_spark(config, maven_repo=tmp_path)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    assert get_spark(config, maven_repo=tmp_path) is spark


def test_spark_submit_logs_warnings_unless_logging_was_chosen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyspark import SparkConf

    from deltaml.io.session import _spark_logs_by_default

    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    monkeypatch.delenv("SPARK_HOME", raising=False)
    assert _spark_logs_by_default(SparkConf(loadDefaults=False))
    assert not _spark_logs_by_default(SparkConf(loadDefaults=False).set("spark.log.level", "INFO"))
    chosen = SparkConf(loadDefaults=False).set("spark.driver.extraJavaOptions", "-Dlog4j.configurationFile=x.xml")
    assert not _spark_logs_by_default(chosen)
    (tmp_path / "log4j2.properties").write_text("rootLogger.level = info\n")
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert not _spark_logs_by_default(SparkConf(loadDefaults=False))
