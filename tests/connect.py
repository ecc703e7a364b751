"""A Spark Connect server on 127.0.0.1, from the installed pyspark, for the Connect tests and for people.

Serverless compute and standard-access clusters on Databricks run Python over Spark Connect.
This starts the same kind of server locally: ``spark-submit`` runs pyspark's own
``SparkConnectServer`` class (pip's pyspark ships its jar, not ``sbin/start-connect-server.sh``)
with Delta's extension and catalog and the Delta jars from ``~/.m2``, so nothing is downloaded.
Its Python workers run this interpreter, so they import deltaml and scikit-learn like the client.
The server and the client share this machine's file system: the tables, MLflow's model files
(``MLFLOW_DFS_TMP``) and the state folder are seen the same way by both.

    python -m tests.connect up      # or `make connect-up`: prints sc://127.0.0.1:15002
    python -m tests.connect down    # or `make connect-down`

``up`` records the process in ``.deltaml/connect-server/state.json``; ``down`` stops exactly it.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deltaml.io.session import DELTA_CATALOG, DELTA_EXTENSION, check_delta_jars
from tests.cluster import LOG4J2, Started, _tail, _wait, free_port, spark_home, spawn, stop

ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = ROOT / ".deltaml" / "connect-server" / "state.json"
DEFAULT_PORT = 15002  # Spark Connect's usual port, the one conf/env/local-connect.yml names
SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


@dataclass
class ConnectServer:
    """One ``SparkConnectServer`` (a local[2] Spark driver with Delta) listening on 127.0.0.1.

    Attributes:
        root: Its log, its Spark conf folder (warnings only) and its warehouse.
        port: The gRPC port (``sc://127.0.0.1:PORT``).
    """

    root: Path
    port: int = 0
    process: Started | None = None

    @property
    def url(self) -> str:
        """The endpoint for ``spark.master`` or ``SPARK_REMOTE``."""
        return f"sc://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """``spark-submit`` running the server class, with Delta and settings for one small machine."""
        jars = ",".join(str(p) for p in check_delta_jars())
        settings = {
            "spark.sql.extensions": DELTA_EXTENSION,
            "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.memory": "2g",
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "4",
            "spark.databricks.delta.snapshotPartitions": "2",
            "spark.sql.session.timeZone": "UTC",
            "spark.sql.warehouse.dir": str(self.root / "spark-warehouse"),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={self.root / 'derby'}",
        }
        command = [str(spark_home() / "bin" / "spark-submit"), "--class", SERVER_CLASS]
        command += ["--name", f"deltaml-connect-{self.port}", "--master", "local[2]", "--jars", jars]
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        return [*command, "spark-internal"]

    def environment(self) -> dict[str, str]:
        """The server's environment: quiet logs, loopback only, this interpreter for Python workers."""
        return {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_CONF_DIR": str(self.root / "conf"),
            "SPARK_LOCAL_IP": "127.0.0.1",
            "PYSPARK_PYTHON": sys.executable,
        }

    def start(self, timeout: float = 120.0) -> ConnectServer:
        """Start the server and wait until its port accepts connections."""
        (self.root / "conf").mkdir(parents=True, exist_ok=True)
        (self.root / "conf" / "log4j2.properties").write_text(LOG4J2)
        self.port = self.port or free_port()
        # The port is in the command line, so the marker tells this server from any other.
        self.process = spawn(
            "connect-server", self.command(), self.root / "server.log", self.environment(), f"binding.port={self.port}"
        )
        try:
            _wait(self._answers, timeout, f"the Spark Connect server at {self.url}\n{_tail(self.process.log)}")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        if self.process is not None and not self.process.running():
            raise RuntimeError(f"the Spark Connect server exited:\n{_tail(self.process.log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        """SIGTERM the server (it stops its Python workers), SIGKILL what is left."""
        if self.process is not None:
            stop(self.process)

    def to_json(self) -> dict[str, Any]:
        """What ``python -m tests.connect down`` needs."""
        return {"root": str(self.root), "port": self.port, "process": self.process.to_json() if self.process else None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConnectServer:
        """The server recorded by :meth:`to_json` (not a child of this process)."""
        process = Started(**data["process"]) if data.get("process") else None
        return cls(root=Path(data["root"]), port=data["port"], process=process)


@pytest.fixture(scope="module", name="connect_server")
def connect_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConnectServer]:
    """A Spark Connect server for the tests of one module, stopped after them."""
    server = ConnectServer(tmp_path_factory.mktemp("connect-server")).start()
    try:
        yield server
    finally:
        server.stop()


def _up(state_file: Path, port: int) -> int:
    if state_file.exists():
        print(f"a server is already recorded in {state_file}; run `make connect-down` first", file=sys.stderr)
        return 1
    server = ConnectServer(Path(tempfile.mkdtemp(prefix="deltaml-connect-")), port=port).start()
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(server.to_json(), indent=2) + "\n")
    print(f"Spark Connect  {server.url}  (local[2], Delta; log {server.root / 'server.log'})")
    print(f"run through it: deltaml run conf/telco_churn.yml --env local-connect   (or SPARK_REMOTE={server.url})")
    return 0


def _down(state_file: Path) -> int:
    if not state_file.exists():
        print(f"no server recorded in {state_file}", file=sys.stderr)
        return 0
    ConnectServer.from_json(json.loads(state_file.read_text())).stop()
    state_file.unlink()
    print("stopped the Spark Connect server")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``up`` or ``down``."""
    parser = argparse.ArgumentParser(prog="python -m tests.connect", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    return _up(STATE_FILE, args.port) if args.action == "up" else _down(STATE_FILE)


if __name__ == "__main__":
    sys.exit(main())
