"""A Spark standalone cluster and an MLflow tracking server on 127.0.0.1, for the cluster tests and for people.

From the installed pyspark (pip's pyspark ships ``bin/spark-class`` but no ``sbin/start-*.sh``):
one master and two workers, 1 core and 2 GB each, on free loopback ports; and an ``mlflow
server`` with a SQLite backend that proxies artifacts over HTTP (``mlflow-artifacts:/``), so
the driver and executors need nothing but its URL. Every process is started in its own
session at nice 10 and stopped by its process id: SIGTERM, then SIGKILL after a timeout, its
descendants (executors, their Python workers, uvicorn workers) included.

    python -m tests.cluster up      # or `make cluster-up`: prints the master and tracking URLs
    python -m tests.cluster down    # or `make cluster-down`

``up`` records what it started in ``.deltaml/cluster/state.json``; ``down`` stops exactly those
processes, after checking each pid still runs the command it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = ROOT / ".deltaml" / "cluster" / "state.json"
NICENESS = 10
WORKER_CORES = 1
WORKER_MEMORY = "2g"
DAEMON_MEMORY = "512m"  # the master's and workers' own JVM heaps (Spark's default is 1g)
# Spark logs INFO to the console by default; warnings are enough to follow a run.
LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %p %c{1}: %m%n%ex
"""


def spark_home() -> Path:
    """The installed pyspark package: it holds ``bin/spark-class``, ``bin/spark-submit`` and the jars."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def niced(command: Sequence[str]) -> list[str]:
    """``command`` run at niceness 10 at least (``nice`` execs it, so the pid is the command's)."""
    current = os.nice(0)
    return [*command] if current >= NICENESS else ["nice", "-n", str(NICENESS - current), *command]


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document (the master's /json/, the driver's REST API)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode())


# -- processes ------------------------------------------------------------------------------------------------


@dataclass
class Started:
    """A process this module started: its pid and a string of its command line that proves the pid is still it."""

    name: str
    pid: int
    marker: str
    log: str
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    def running(self) -> bool:
        """Whether the process runs (not a zombie) and is still the command that was started."""
        if self._popen is not None:
            # Our own child cannot be replaced by another process before it is reaped; and just after
            # exec its /proc cmdline can read empty, so the marker would wrongly say it is gone.
            return self._popen.poll() is None
        return process_state(self.pid, self.marker) not in (None, "Z")

    def to_json(self) -> dict[str, Any]:
        """The fields worth keeping in the state file."""
        return {"name": self.name, "pid": self.pid, "marker": self.marker, "log": self.log}


def spawn(name: str, command: Sequence[str], log: Path, env: dict[str, str], marker: str) -> Started:
    """Start ``command`` at nice 10 in its own session (a terminal's Ctrl-C or hang-up does not reach it)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            niced(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log.parent,
            start_new_session=True,
        )
    return Started(name, popen.pid, marker, str(log), popen)


def process_state(pid: int, marker: str | None = None) -> str | None:
    """The state letter of ``pid`` (R, S, Z, ...) or None when it is gone or runs another command than ``marker``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if marker is not None and marker not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            return None
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _gone(pids: Sequence[int]) -> bool:
    return all(process_state(pid) in (None, "Z") for pid in pids)


def kill_tree(started: Started) -> list[int]:
    """SIGKILL the process and everything below it, at once (a machine lost); returns the pids signalled."""
    if not started.running():
        return []
    pids = [started.pid, *descendants(started.pid)]
    _signal(pids, signal.SIGKILL)
    _wait(lambda: _gone(pids), 10, f"{started.name} to die")
    _reap(started)
    return pids


def stop(started: Started, timeout: float = 20.0) -> None:
    """SIGTERM the process (Spark's daemons stop their executors, mlflow its workers), SIGKILL what is left."""
    if not started.running():
        _reap(started)
        return
    tree = descendants(started.pid)
    _signal([started.pid], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _gone([started.pid]):
        time.sleep(0.2)
    left = [pid for pid in [started.pid, *tree, *descendants(started.pid)] if process_state(pid) not in (None, "Z")]
    _signal(left, signal.SIGKILL)
    _wait(lambda: _gone(left), 10, f"{started.name} to die after SIGKILL")
    _reap(started)


def _reap(started: Started) -> None:
    if started._popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            started._popen.wait(timeout=10)


def _wait(condition: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _tail(path: str | Path, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# -- the Spark standalone cluster -----------------------------------------------------------------------------


@dataclass
class StandaloneCluster:
    """One master and its workers on 127.0.0.1, each a ``spark-class`` JVM of the installed pyspark.

    Attributes:
        root: Logs, the Spark conf folder and each worker's work folder (``worker-N/work``; an
            executor's Python workers run in ``worker-N/work/<app id>/<executor id>``).
        port: The master's RPC port (``spark://127.0.0.1:PORT``).
        webui_port: The master's web UI; ``/json/`` lists the workers and applications.
    """

    root: Path
    port: int = 0
    webui_port: int = 0
    master: Started | None = None
    workers: dict[str, Started] = field(default_factory=dict)

    @property
    def master_url(self) -> str:
        """``spark://127.0.0.1:PORT``, for spark-submit ``--master``."""
        return f"spark://127.0.0.1:{self.port}"

    @property
    def web_url(self) -> str:
        """The master's web UI."""
        return f"http://127.0.0.1:{self.webui_port}"

    @property
    def conf_dir(self) -> Path:
        """SPARK_CONF_DIR of every process: a log4j2 config that logs warnings to stderr."""
        return self.root / "conf"

    def environment(self) -> dict[str, str]:
        """The environment of the master, the workers and spark-submit."""
        return {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONF_DIR": str(self.conf_dir),
            "SPARK_LOG_DIR": str(self.root / "logs"),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "PYSPARK_PYTHON": sys.executable,
        }

    def start(self, workers: int = 2, timeout: float = 90.0) -> StandaloneCluster:
        """Start the master and ``workers`` workers and wait until every worker is registered ALIVE."""
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.conf_dir / "log4j2.properties").write_text(LOG4J2)
        self.port, self.webui_port = self.port or free_port(), self.webui_port or free_port()
        command = [str(spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.webui_port)]
        self.master = spawn(
            "master", command, self.root / "master" / "master.log", self.environment(), "deploy.master.Master"
        )
        try:
            _wait(self._master_answers, timeout, f"the Spark master at {self.web_url}\n{_tail(self.master.log)}")
            for number in range(1, workers + 1):
                self.start_worker(f"worker-{number}")
            self.wait_for_workers(workers, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(self, name: str) -> Started:
        """Start one worker (1 core, 2 GB for executors) with its own work folder; does not wait for it."""
        work = self.root / name / "work"
        work.mkdir(parents=True, exist_ok=True)
        command = [str(spark_home() / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker"]
        command += ["--cores", str(WORKER_CORES), "--memory", WORKER_MEMORY, "--host", "127.0.0.1"]
        command += ["--webui-port", str(free_port()), "--work-dir", str(work), self.master_url]
        env = {**self.environment(), "SPARK_WORKER_DIR": str(work)}
        # The work folder is in the command line, so the marker tells this worker from any other.
        self.workers[name] = spawn(name, command, self.root / name / "worker.log", env, str(work))
        return self.workers[name]

    def _master_answers(self) -> bool:
        if self.master is not None and not self.master.running():
            raise RuntimeError(f"the Spark master exited:\n{_tail(self.master.log)}")
        try:
            get_json(f"{self.web_url}/json/", timeout=2)
        except (OSError, ValueError):
            return False
        return True

    def status(self) -> dict[str, Any]:
        """The master's JSON: ``workers`` (with ``state``), ``activeapps``, ``completedapps``, ..."""
        return dict(get_json(f"{self.web_url}/json/"))

    def alive_workers(self) -> list[dict[str, Any]]:
        """The workers the master sees ALIVE."""
        return [w for w in self.status().get("workers", []) if w.get("state") == "ALIVE"]

    def wait_for_workers(self, count: int, timeout: float = 90.0) -> None:
        """Wait until the master counts ``count`` ALIVE workers."""

        def registered() -> bool:
            for started in self.workers.values():
                if not started.running():
                    raise RuntimeError(f"{started.name} exited:\n{_tail(started.log)}")
            return len(self.alive_workers()) == count

        _wait(registered, timeout, f"{count} ALIVE workers at {self.web_url}/json/")

    def worker_of(self, path: str | Path) -> str | None:
        """The worker whose work folder holds ``path`` (an executor's working directory), if any."""
        resolved, root = Path(path).resolve(), self.root.resolve()
        if not resolved.is_relative_to(root):
            return None
        parts = resolved.relative_to(root).parts
        return parts[0] if len(parts) > 1 and parts[1] == "work" else None

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker JVM and everything below it (its executor and their Python workers), by pid.

        Returns:
            The pids killed: the worker's first, then its descendants.
        """
        return kill_tree(self.workers.pop(name))

    def replace_worker(self, name: str, timeout: float = 90.0) -> Started:
        """Start a fresh worker under ``name`` (after :meth:`kill_worker`) and wait until all workers are ALIVE."""
        started = self.start_worker(name)
        self.wait_for_workers(len(self.workers), timeout)
        return started

    def stop(self) -> None:
        """Stop the workers (each stops its executors), then the master."""
        for started in self.workers.values():
            stop(started)
        if self.master is not None:
            stop(self.master)

    def to_json(self) -> dict[str, Any]:
        """What ``python -m tests.cluster down`` needs to stop this cluster."""
        return {
            "root": str(self.root),
            "port": self.port,
            "webui_port": self.webui_port,
            "master": self.master.to_json() if self.master else None,
            "workers": {k: v.to_json() for k, v in self.workers.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StandaloneCluster:
        """The cluster recorded by :meth:`to_json` (its processes are not children of this one)."""
        return cls(
            root=Path(data["root"]),
            port=data["port"],
            webui_port=data["webui_port"],
            master=Started(**data["master"]) if data.get("master") else None,
            workers={k: Started(**v) for k, v in data.get("workers", {}).items()},
        )


# -- spark-submit ---------------------------------------------------------------------------------------------


def build_package_zip(dest: Path) -> Path:
    """``lib/deltaml`` as a .zip for ``--py-files`` (executors import from a .zip, not from a .whl)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "zipfile", "-c", str(dest), "deltaml"], cwd=ROOT / "lib", check=True)
    return dest


@dataclass
class Submission:
    """A running ``spark-submit`` in client mode: the driver runs here, its log (stdout + stderr) in ``log``."""

    popen: subprocess.Popen[bytes]
    log: Path
    ui_port: int
    event_dir: Path
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        """What the driver printed so far (spark-submit merges the Python driver's stderr into it)."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float = 600.0) -> int:
        """Wait for the job to end; returns its exit code."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(Started("spark-submit", self.popen.pid, "SparkSubmit", str(self.log), self.popen))
            raise

    @property
    def seconds(self) -> float:
        """Seconds since the submission."""
        return time.monotonic() - self.started

    def wait_for_output(self, text: str, timeout: float = 300.0) -> None:
        """Wait until ``text`` appears in the driver's output (fails early if the job ends first)."""

        def seen() -> bool:
            if text in self.output():
                return True
            if self.popen.poll() is not None:
                raise RuntimeError(f"the job ended (exit {self.popen.returncode}) before {text!r}:\n{self.output()}")
            return False

        _wait(seen, timeout, f"{text!r} in {self.log}", interval=0.1)

    def busy_executors(self) -> list[str]:
        """Ids of the executors running a task now, from the driver's REST API ([] while it is not up)."""
        base = f"http://127.0.0.1:{self.ui_port}/api/v1/applications"
        try:
            apps = get_json(base, timeout=2)
            if not apps:
                return []
            executors = get_json(f"{base}/{apps[0]['id']}/executors", timeout=2)
        except (OSError, ValueError):
            return []
        return [e["id"] for e in executors if e["id"] != "driver" and e.get("activeTasks", 0) > 0]

    def events(self) -> list[dict[str, Any]]:
        """The Spark listener events of the application (its event log, one JSON object a line)."""
        logs = [p for p in sorted(self.event_dir.iterdir()) if not p.name.startswith(".")]
        if len(logs) != 1 or not logs[0].is_file():
            raise AssertionError(f"expected one event log file in {self.event_dir}, found {[p.name for p in logs]}")
        return [json.loads(line) for line in logs[0].read_text().splitlines() if line.strip()]


def spark_submit(
    cluster: StandaloneCluster,
    job: str,
    args: Sequence[str],
    *,
    package: Path,
    log: Path,
    env: dict[str, str],
    executor_memory: str = "1g",
    conf: dict[str, str] | None = None,
) -> Submission:
    """Submit ``jobs/<job>`` to the cluster in client mode with the package .zip and set-up's Delta jars.

    The driver's Spark UI gets a free port (its REST API shows which executors are busy) and the
    application writes an event log (executors added and lost, tasks and why they failed).
    """
    from deltaml.io.session import check_delta_jars

    ui_port = free_port()
    event_dir = log.parent / f"{log.stem}-events"
    event_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master",
        cluster.master_url,
        "--driver-memory",
        "1g",
        "--executor-memory",
        executor_memory,
        "--conf",
        f"spark.ui.port={ui_port}",
        "--conf",
        "spark.eventLog.enabled=true",
        "--conf",
        f"spark.eventLog.dir={event_dir.as_uri()}",
        "--conf",
        "spark.eventLog.compress=false",
        "--conf",
        "spark.eventLog.rolling.enabled=false",
        *(arg for key, value in (conf or {}).items() for arg in ("--conf", f"{key}={value}")),
        "--jars",
        ",".join(str(p) for p in check_delta_jars()),
        "--py-files",
        str(package),
        str(ROOT / "jobs" / job),
        *args,
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            niced(command), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
    return Submission(popen, log, ui_port, event_dir)


def executor_losses(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What an event log says about lost executors: which were removed and why, and the tasks they took down."""
    removed = {e["Executor ID"]: e.get("Removed Reason", "") for e in events if e["Event"].endswith("ExecutorRemoved")}
    added = [e["Executor ID"] for e in events if e["Event"].endswith("ExecutorAdded")]
    lost_tasks = [
        {"stage": e["Stage ID"], "task": e["Task Info"]["Task ID"], "executor": e["Task Info"]["Executor ID"]}
        for e in events
        if e["Event"].endswith("TaskEnd") and e.get("Task End Reason", {}).get("Reason") == "ExecutorLostFailure"
    ]
    return {"added": added, "removed": removed, "lost_tasks": lost_tasks}


# -- the MLflow tracking server -------------------------------------------------------------------------------


@dataclass
class MlflowServer:
    """``mlflow server`` with a SQLite backend store and proxied artifacts in a local folder.

    Experiments created through it get the artifact root ``mlflow-artifacts:/``: clients upload
    and download artifacts over HTTP through the server, which writes them under
    ``artifacts``. A client therefore needs only the URL, whatever machine it runs on; with a
    local path as ``--default-artifact-root`` instead, every client would write to that path
    itself and it would have to be a shared file system.
    """

    root: Path
    port: int = 0
    process: Started | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: MLFLOW_TRACKING_URI for the driver."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend(self) -> str:
        """The SQLite backend store URI (runs, metrics and the model registry)."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def command(self) -> list[str]:
        """The ``mlflow server`` command line."""
        return [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            self.backend,
            "--default-artifact-root",
            "mlflow-artifacts:/",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self, timeout: float = 90.0) -> MlflowServer:
        """Start the server (on the same port and store when restarted) and wait until ``/health`` says OK."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        # The server's background job runner is not needed for tracking and the registry.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = spawn("mlflow", self.command(), self.root / "mlflow-server.log", env, "mlflow")
        try:
            _wait(self.healthy, timeout, f"{self.url}/health\n{_tail(self.process.log)}", interval=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def healthy(self) -> bool:
        """Whether ``/health`` answers OK (raises if the server process exited)."""
        if self.process is not None and not self.process.running():
            raise RuntimeError(f"mlflow server exited:\n{_tail(self.process.log)}")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.read().decode().strip() == "OK"
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop the server and its workers."""
        if self.process is not None:
            stop(self.process)
            self.process = None

    def to_json(self) -> dict[str, Any]:
        """What ``python -m tests.cluster down`` needs to stop this server."""
        return {"root": str(self.root), "port": self.port, "process": self.process.to_json() if self.process else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MlflowServer:
        """The server recorded by :meth:`to_json`."""
        process = Started(**data["process"]) if data.get("process") else None
        return cls(root=Path(data["root"]), port=data["port"], process=process)


# -- pytest fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="cluster")
def cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    """A standalone cluster (master + two 1-core workers) for the tests of one module, stopped after them."""
    cluster = StandaloneCluster(tmp_path_factory.mktemp("spark-cluster")).start(workers=2)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module", name="mlflow_server")
def mlflow_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real ``mlflow server`` (SQLite backend, proxied artifacts) for the tests of one module."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server
    finally:
        server.stop()


# -- make cluster-up / cluster-down ---------------------------------------------------------------------------


def _up(state_file: Path) -> int:
    if state_file.exists():
        print(f"a cluster is already recorded in {state_file}; run `make cluster-down` first", file=sys.stderr)
        return 1
    root = Path(tempfile.mkdtemp(prefix="deltaml-cluster-"))
    cluster = StandaloneCluster(root / "spark").start(workers=2)
    try:
        server = MlflowServer(root / "mlflow").start()
    except BaseException:
        cluster.stop()
        raise
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"cluster": cluster.to_json(), "mlflow": server.to_json()}, indent=2) + "\n")
    print(f"Spark master   {cluster.master_url}  (web UI {cluster.web_url}, 2 workers x 1 core, 2g)")
    print(f"MLflow server  {server.url}  (store {server.backend}, artifacts {server.root / 'artifacts'})")
    print(f"logs and work  {root}")
    print(f"export SPARK_MASTER={cluster.master_url} MLFLOW_TRACKING_URI={server.url}")
    print(f"export SPARK_CONF_DIR={cluster.conf_dir} DELTAML_WAREHOUSE={root / 'warehouse'}")
    return 0


def _down(state_file: Path) -> int:
    if not state_file.exists():
        print(f"no cluster recorded in {state_file}; nothing to stop")
        return 0
    state = json.loads(state_file.read_text())
    cluster = StandaloneCluster.from_json(state["cluster"])
    server = MlflowServer.from_json(state["mlflow"])
    cluster.stop()
    server.stop()
    state_file.unlink()
    print(f"stopped the Spark master and {len(cluster.workers)} workers at {cluster.master_url}, and {server.url}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``up``: start a cluster and an MLflow server and record them; ``down``: stop what ``up`` recorded."""
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=main.__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--state-file", type=Path, default=STATE_FILE, help=f"default {STATE_FILE}")
    args = parser.parse_args(argv)
    return _up(args.state_file) if args.action == "up" else _down(args.state_file)


if __name__ == "__main__":
    sys.exit(main())
