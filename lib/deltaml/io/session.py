"""Builds every SparkSession deltaml uses: local with offline Delta jars, or the cluster's own."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pyspark.sql import SparkSession

if TYPE_CHECKING:
    from pyspark import SparkConf

from deltaml.config.schema import PipelineConfig
from deltaml.errors import SessionLostError, SetupError

LOG = logging.getLogger(__name__)


DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


SCALA_VERSION = "2.13"


# Settings for a one-machine session. Delta's snapshot state is rebuilt with 50 partitions by
# default, which costs seconds per read on small tables; the UI is off so parallel test runs
# cannot collide on its port.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "4",
    "spark.default.parallelism": "4",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "2g",
    "spark.sql.debug.maxToStringFields": "200",
}


def delta_artifacts() -> list[tuple[str, str, str]]:
    """The Maven coordinates of the Delta jars matching the installed delta-spark and pyspark.

    Mirrors ``delta.pip_utils.configure_spark_with_delta_pip``: from Delta 4.1 the artifact name
    carries pyspark's major.minor version (``delta-spark_4.2_2.13``); Delta 4.0 (for Spark 4.0)
    has only the Scala suffix (``delta-spark_2.13``). The version is the delta-spark package's own.

    Returns:
        ``(group, artifact, version)`` for delta-spark and delta-storage.
    """
    import pyspark

    delta_version = importlib.metadata.version("delta-spark")
    spark_major_minor = ".".join(pyspark.__version__.split(".")[:2])
    major, minor = (int(part) for part in delta_version.split(".")[:2])
    suffix = SCALA_VERSION if (major, minor) < (4, 1) else f"{spark_major_minor}_{SCALA_VERSION}"
    return [
        ("io.delta", f"delta-spark_{suffix}", delta_version),
        ("io.delta", "delta-storage", delta_version),
    ]


def delta_jar_paths(maven_repo: Path | None = None) -> list[Path]:
    """Where set-up's ``mvn dependency:get`` puts the Delta jars in the local Maven repository.

    Args:
        maven_repo: The local repository; ``~/.m2/repository`` by default.

    Returns:
        One path per artifact of :func:`delta_artifacts`.
    """
    repo = maven_repo or Path.home() / ".m2" / "repository"
    return [
        repo.joinpath(*group.split("."), artifact, version, f"{artifact}-{version}.jar")
        for group, artifact, version in delta_artifacts()
    ]


def check_delta_jars(maven_repo: Path | None = None) -> list[Path]:
    """Return the Delta jar paths, or fail with one line naming the set-up command.

    Raises:
        SetupError: A jar is not in the local Maven repository.
    """
    paths = delta_jar_paths(maven_repo)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        coordinate = ":".join(delta_artifacts()[0])
        raise SetupError(
            f"Delta Lake jar not found: {missing[0]} ({coordinate}); run `make setup` "
            "(it fetches the jars with Maven) and try again"
        )
    return paths


def install_delta_jars(maven_repo: Path | None = None) -> list[Path]:
    """Fetch the Delta jars into the local Maven repository with the Maven client, if missing.

    Spark then starts with them from ``spark.jars`` and downloads nothing at run time.

    Returns:
        The jar paths, all present.

    Raises:
        SetupError: Maven is not installed or could not fetch a jar.
    """
    import shutil
    import subprocess

    missing = [
        (artifact, path)
        for artifact, path in zip(delta_artifacts(), delta_jar_paths(maven_repo), strict=True)
        if not path.is_file()
    ]
    if missing and shutil.which("mvn") is None:
        raise SetupError(
            "Maven (mvn) is not on PATH; install it (e.g. apt-get install maven) and run `make setup` again"
        )
    for (group, artifact, version), path in missing:
        coordinate = f"{group}:{artifact}:{version}"
        command = ["mvn", "--batch-mode", "--quiet", "dependency:get", f"-Dartifact={coordinate}", "-Dtransitive=false"]
        if maven_repo is not None:
            command.append(f"-Dmaven.repo.local={maven_repo}")
        LOG.info("fetching %s with Maven", coordinate)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not path.is_file():
            detail = (done.stdout + done.stderr).strip().splitlines()
            raise SetupError(f"Maven could not fetch {coordinate}: {detail[0] if detail else 'no output'}")
    return check_delta_jars(maven_repo)


CONNECT_SCHEME = "sc://"


def connect_endpoint(master: str | None) -> str | None:
    """The Spark Connect endpoint to use, if any: ``spark.master`` when it is ``sc://...``, else ``SPARK_REMOTE``.

    ``SPARK_REMOTE`` is pyspark's own variable for a Connect endpoint (a Databricks Connect or a
    ``start-connect-server`` address); the config wins over it so one file can pin the transport.
    """
    if master and master.startswith(CONNECT_SCHEME):
        return master
    remote = os.environ.get("SPARK_REMOTE", "")
    return remote if remote.startswith(CONNECT_SCHEME) else None


def is_connect(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect client session (no SparkContext, no RDDs, no JVM gateway)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


# What bounds the driver's memory in a deltaml run, for the line that says it ran out.
MEMORY_SETTINGS = (
    "give the driver more memory (spark.driver.memory, or a larger driver node), sample less for the single-node "
    "families (tuning.single_node_max_rows, tuning.single_node_max_mb), or group rare categories "
    "(features.rare_categories)"
)


def lost_session(spark: SparkSession) -> str | None:
    """Why the session's driver JVM can no longer run anything, or None while it answers.

    A JVM that runs out of heap usually dies, and every later call, in any thread, then fails with
    ``ConnectionRefusedError``; this tells that apart from a failed job. A Spark Connect client has no
    JVM of its own (the server's failures come back as errors), so it is never lost here.
    """
    if is_connect(spark):
        return None
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    process = getattr(gateway, "proc", None)  # set when pyspark launched the JVM itself
    if process is not None and process.poll() is not None:
        return f"the Spark driver JVM exited with code {process.returncode}"
    context = getattr(spark.sparkContext, "_jsc", None)
    if context is None:  # stopped on purpose (SparkContext.stop): the original error says enough
        return None
    try:
        context.sc().isStopped()
    except Exception as exc:  # a Py4J error or a refused connection: no answer either way
        return f"the Spark driver JVM stopped answering ({type(exc).__name__})"
    return None


def session_lost_error(spark: SparkSession, where: str, error: BaseException) -> SessionLostError | None:
    """The one line for ``error`` when it came from a lost driver JVM (see :func:`lost_session`), else None.

    Args:
        spark: The session the failed work ran on.
        where: What failed, as the line starts (``step 'fit'``).
        error: What the failed work raised (``ConnectionRefusedError``, a Py4J error).
    """
    lost = lost_session(spark)
    if lost is None:
        return None
    return SessionLostError(
        f"{where}: {lost}, most likely out of memory (look for java.lang.OutOfMemoryError above; the work saw "
        f"{type(error).__name__}); {MEMORY_SETTINGS}"
    )


def session_for_threads() -> Callable[[], None]:
    """A thread initializer giving new threads the calling thread's Spark Connect session.

    A Connect client's active session is thread-local, and pyspark's ML client reads the active
    one (``SparkSession.getActiveSession()``, not the default) to fit a model or read its
    attributes: a fit in a new thread fails with a bare ``AssertionError`` unless the session is
    made active there. A classic session needs nothing (its active session lives in the JVM).
    """
    spark = SparkSession.getActiveSession()
    if spark is None or not is_connect(spark):
        return lambda: None
    connect_class = type(spark)

    def activate() -> None:
        if connect_class.getActiveSession() is None:
            connect_class._set_default_and_active_session(spark)  # type: ignore[attr-defined]

    return activate


def default_parallelism(spark: SparkSession) -> int:
    """How many tasks a stage of the session runs at once by default (``SparkContext.defaultParallelism``).

    Over Spark Connect there is no SparkContext: ``spark.default.parallelism`` when set, else the
    partitions Spark gives a range without an explicit count (it uses the default parallelism).
    """
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    from pyspark.sql import functions as F

    return max(1, spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p")).distinct().count())


def connect_session(endpoint: str, config: PipelineConfig) -> SparkSession:
    """A Spark Connect client session on ``endpoint``, with the config's runtime ``spark.conf`` settings.

    The server owns the JVM: Delta's extension and catalog, memory and the master are its own
    settings (``make connect-up`` starts one with them). Settings a running server cannot change
    are reported, not failed on.
    """
    try:
        spark = SparkSession.builder.remote(endpoint).getOrCreate()
    except ImportError as exc:
        raise SetupError(
            f"Spark Connect needs pyspark's connect dependencies ({exc.name or exc}): install deltaml[spark,connect]"
        ) from exc
    _apply_runtime_conf(spark, config)
    if not LOG.isEnabledFor(logging.DEBUG):
        # The Connect client logs every failed query as a JSON record with the server's stack trace;
        # deltaml reports each failure in one line of its own (and the trace under --verbose).
        from pyspark.logger import PySparkLogger

        PySparkLogger.getLogger("DataFrameQueryContextLogger").setLevel(logging.CRITICAL)
    LOG.info("using Spark Connect at %s (Spark %s)", _endpoint_without_token(endpoint), spark.version)
    return spark


def _endpoint_without_token(endpoint: str) -> str:
    """``sc://host:port`` without its ``;token=...`` and other parameters (a token is a secret)."""
    return endpoint.split(";", 1)[0].split("/;", 1)[0]


def _apply_runtime_conf(spark: SparkSession, config: PipelineConfig) -> None:
    for key, value in config.spark.conf.items():
        if spark.conf.isModifiable(key):
            spark.conf.set(key, str(value))
        elif spark.conf.get(key, None) != str(value):
            LOG.warning(
                "spark.conf %s=%s cannot change in a running session; it stays %s",
                key,
                value,
                spark.conf.get(key, None),
            )


def _under_spark_submit() -> bool:
    """True when a JVM launched by spark-submit (or a pyspark shell) is waiting for this driver."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _spark_logs_by_default(submitted: SparkConf) -> bool:
    """Whether Spark logs with its built-in log4j config (INFO to the console): no level and no config file given.

    A ``spark.log.level``, a ``log4j2.properties`` in ``SPARK_CONF_DIR`` (or ``$SPARK_HOME/conf``), or a
    ``-Dlog4j.configurationFile`` in the driver's Java options means someone chose the logging: keep it.
    """
    if submitted.contains("spark.log.level"):
        return False
    if "log4j.configurationFile" in (submitted.get("spark.driver.extraJavaOptions", "") or ""):
        return False
    folders = [os.environ.get("SPARK_CONF_DIR", "")]
    if os.environ.get("SPARK_HOME"):
        folders.append(str(Path(os.environ["SPARK_HOME"]) / "conf"))
    return not any(folder and (Path(folder) / "log4j2.properties").is_file() for folder in folders)


def get_spark(config: PipelineConfig, maven_repo: Path | None = None) -> SparkSession:
    """Return the session for a pipeline: the active one, a Spark Connect one, spark-submit's, or a new local one.

    An active session (a notebook, a test fixture, a serverless or standard-access cluster's
    Connect session) and a Databricks runtime's session are reused; the config's ``spark.conf``
    settings that can change at run time are set on it, the others are reported. With no active
    session, ``spark.master: sc://host:port`` (or ``SPARK_REMOTE``) connects to that Spark Connect
    server. Under spark-submit, only settings spark-submit did not set are added (Delta's extension and
    catalog where absent, the config's ``spark.conf``). Otherwise a local session is built
    with the Delta jars from the local Maven repository, so nothing is downloaded.

    Args:
        config: The pipeline config; its ``spark`` section and ``state_dir`` are used.
        maven_repo: Local Maven repository holding the Delta jars (``~/.m2/repository``).

    Returns:
        A SparkSession with Delta Lake enabled.

    Raises:
        SetupError: Local mode and the Delta jars are missing.
    """
    endpoint = connect_endpoint(config.spark.master)
    active = SparkSession.getActiveSession()
    if active is None and endpoint is not None:
        return connect_session(endpoint, config)
    if active is None and "DATABRICKS_RUNTIME_VERSION" in os.environ:
        # A Databricks job's Python script: the runtime's session exists but may not be active in this
        # thread yet, and the cluster has no Delta jars in ~/.m2 to build a local one from.
        active = SparkSession.builder.getOrCreate()
    if active is not None:
        _apply_runtime_conf(active, config)
        return active
    app_name = config.spark.app_name or f"deltaml-{config.name}"
    builder = SparkSession.builder.appName(app_name)
    if _under_spark_submit():
        from pyspark import SparkConf, SparkContext

        # Connect to spark-submit's JVM first: only then does SparkConf() see its settings.
        SparkContext._ensure_initialized()
        submitted = SparkConf()
        wanted: dict[str, str] = {
            "spark.sql.extensions": DELTA_EXTENSION,
            "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
            **{k: str(v) for k, v in config.spark.conf.items()},
        }
        if _spark_logs_by_default(submitted):
            # Spark's default log4j config logs INFO to the console (tens of thousands of lines for one
            # pipeline run), burying deltaml's own lines; local sessions and the pyspark shell log WARN.
            wanted["spark.log.level"] = "WARN"
        for key, value in wanted.items():
            if not submitted.contains(key):
                builder = builder.config(key, value)
        kept = sorted(k for k in wanted if submitted.contains(k))
        LOG.info(
            "using spark-submit's session (master %s); kept spark-submit's %s",
            submitted.get("spark.master", "?"),
            ", ".join(f"{k}={submitted.get(k)}" for k in kept) or "nothing",
        )
        return builder.getOrCreate()
    return build_local_session(
        config.state_path,
        master=config.spark.master,
        conf={k: str(v) for k, v in config.spark.conf.items()},
        app_name=app_name,
        maven_repo=maven_repo,
    )


def build_local_session(
    state_path: Path,
    master: str = "local[*]",
    conf: dict[str, str] | None = None,
    app_name: str = "deltaml",
    maven_repo: Path | None = None,
) -> SparkSession:
    """Start a local Spark session with Delta Lake from jars installed by set-up.

    Args:
        state_path: The state folder; the Spark SQL warehouse goes below it.
        master: The Spark master, ``local[*]`` by default.
        conf: Extra Spark settings; they win over deltaml's local defaults.
        app_name: The application name shown by Spark.
        maven_repo: Local Maven repository holding the Delta jars.

    Returns:
        A new (or the already running) local SparkSession.

    Raises:
        SetupError: The Delta jars are missing.
    """
    jars = check_delta_jars(maven_repo)
    # Python workers must run this interpreter, or they miss deltaml's dependencies.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings: dict[str, str] = {
        **LOCAL_DEFAULTS,
        "spark.jars": ",".join(str(p) for p in jars),
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.warehouse.dir": str(state_path / "spark-warehouse"),
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={state_path / 'derby'}",
        **(conf or {}),
    }
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    LOG.info("started local Spark %s (%s) with Delta jars %s", spark.version, master, jars[0].name)
    return spark
