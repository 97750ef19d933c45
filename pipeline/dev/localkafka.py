"""The embedded local broker: a real Apache Kafka 4.x node in KRaft mode, without Docker.

Share groups (KIP-932) are enabled: the storage is formatted with ``share.version=1``.

`pipeline kafka start` obtains the broker jars (from ``$KAFKA_HOME/libs`` when set,
else resolved from Maven Central by ``mvn`` through ``pipeline/dev/_kafka/pom.xml`` into a
cache outside git), formats the storage for one combined broker+controller node, starts
it in the background bound to 127.0.0.1, and waits until it answers a metadata request.

State lives in the data directory::

    <data-dir>/server.properties   the broker's settings (written on every start)
    <data-dir>/broker.json         pid, ports and bootstrap address of the running broker
    <data-dir>/broker.log          the broker's own log
    <data-dir>/logs/               the Kafka log directory (topics, metadata)
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

from pipeline.errors import BrokerError

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_PORT",
    "BrokerInfo",
    "LocalKafka",
    "broker_classpath",
    "new_cluster_id",
]

DEFAULT_PORT = 9092
DEFAULT_DATA_DIR = (
    Path(os.environ.get("PIPELINE_HOME", Path.home() / ".local/share/pipeline")) / "kafka"
)
_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kafka-onnx-pipeline"
_HOST = "127.0.0.1"
_MIN_JAVA = 17
_START_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 30.0
_LOG_TAIL_LINES = 20


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What `start` records about a running broker."""

    pid: int
    port: int
    controller_port: int
    bootstrap: str
    data_dir: str
    sasl_port: int | None = None  # a SASL_PLAINTEXT listener with SCRAM-SHA-256/512, if asked


def _resource(name: str) -> Path:
    return Path(str(resources.files("pipeline.dev") / "_kafka" / name))


def _kafka_version() -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", _resource("pom.xml").read_text())
    if match is None:
        raise BrokerError(
            "pipeline/dev/_kafka/pom.xml has no <kafka.version>; reinstall the package"
        )
    return match.group(1)


def _java() -> str:
    """Return the java executable (JAVA_HOME first), after checking it is 17 or newer."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise BrokerError(
            f"Java {_MIN_JAVA}+ is needed to run the local Kafka broker, but no `java` was found; "
            "install a JDK (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < _MIN_JAVA:
        raise BrokerError(
            f"Kafka 4.x needs Java {_MIN_JAVA}+, but {java} is Java "
            f"{major or 'of unknown version'}; install a newer JDK or point JAVA_HOME at one"
        )
    return java


def broker_classpath() -> str:
    """Return the broker's Java classpath, resolving the jars with Maven on first use.

    Raises:
        BrokerError: KAFKA_HOME has no libs/, or Maven is missing or fails.
    """
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home:
        libs = Path(kafka_home) / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise BrokerError(
                f"KAFKA_HOME={kafka_home} should hold an Apache Kafka distribution with "
                f"libs/kafka_2.13-*.jar, but {libs} has none; unset KAFKA_HOME to use Maven"
            )
        return f"{libs}/*"
    libs = _CACHE_DIR / f"kafka-{_kafka_version()}" / "libs"
    if not libs.is_dir():
        _resolve_jars(libs)
    return f"{libs}/*"


def _resolve_jars(libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (`mvn`) is needed once to fetch the Kafka broker jars from Maven Central, "
            "but it is not on PATH; install it (e.g. `apt-get install maven`) or set KAFKA_HOME "
            "to an unpacked Apache Kafka 4.x distribution"
        )
    staging = libs.with_name(f"libs.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(_resource("pom.xml")),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
        raise BrokerError(
            f"Maven could not resolve the Kafka broker jars (exit {done.returncode}); check that "
            f"Maven Central is reachable, or set KAFKA_HOME.\n{tail}"
        )
    libs.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # another process may have won the race: keep its copy
        staging.rename(libs)
    shutil.rmtree(staging, ignore_errors=True)


def new_cluster_id(draw: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """Return a KRaft cluster id: a random UUID in URL-safe base64, not starting with "-".

    One id in 64 starts with "-", which ``StorageTool format -t`` would take for an option;
    like Kafka's own ``Uuid.randomUuid()``, such an id is drawn again.

    Args:
        draw: The source of 16 random bytes (tests pass their own).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(draw()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the broker binds: a port left in TIME_WAIT by a broker just stopped is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def _server_properties(info: BrokerInfo, log_dirs: Path) -> str:
    settings: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{_HOST}:{info.controller_port}",
        "listeners": f"PLAINTEXT://{_HOST}:{info.port},CONTROLLER://{_HOST}:{info.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{info.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        # One node: every internal topic has one replica, and transactions must work.
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "10",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        "log.retention.hours": "24",
    }
    if info.sasl_port is not None:
        settings["listeners"] += f",SASL_PLAINTEXT://{_HOST}:{info.sasl_port}"
        settings["advertised.listeners"] += f",SASL_PLAINTEXT://{_HOST}:{info.sasl_port}"
        settings["listener.security.protocol.map"] += ",SASL_PLAINTEXT:SASL_PLAINTEXT"
        settings["sasl.enabled.mechanisms"] = "SCRAM-SHA-256,SCRAM-SHA-512"
        jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        for mechanism in ("scram-sha-256", "scram-sha-512"):
            settings[f"listener.name.sasl_plaintext.{mechanism}.sasl.jaas.config"] = jaas
    return "".join(f"{k}={v}\n" for k, v in settings.items())


class LocalKafka:
    """Start, stop and inspect one local single-node broker kept in `data_dir`."""

    def __init__(self, *, data_dir: Path = DEFAULT_DATA_DIR) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self._state = self.data_dir / "broker.json"
        self.log_file = self.data_dir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None  # kept so the child is reaped on stop

    def running(self) -> BrokerInfo | None:
        """Return the recorded broker if its process is alive, else None."""
        try:
            info = BrokerInfo(**json.loads(self._state.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return info if _pid_alive(info.pid) else None

    def start(
        self,
        *,
        port: int = DEFAULT_PORT,
        timeout_s: float = _START_TIMEOUT_S,
        sasl_port: int | None = None,
        scram_users: Mapping[str, str] | None = None,
    ) -> tuple[BrokerInfo, bool]:
        """Start the broker unless it runs already; return it and whether this call started it.

        Args:
            port: The PLAINTEXT client port on 127.0.0.1.
            timeout_s: How long to wait for the broker to answer a metadata request.
            sasl_port: Also listen for SASL_PLAINTEXT (SCRAM-SHA-256 and -512) on this port.
            scram_users: User name to password: SCRAM credentials (both mechanisms) to
                create or update once the broker answers.

        Raises:
            BrokerError: Java or Maven missing, port taken, or no answer within `timeout_s`.
        """
        current = self.running()
        if current is not None:
            return current, False
        java = _java()
        for wanted, flag in ((port, "--port"), (sasl_port, "--sasl-port")):
            if wanted is not None and not _port_free(wanted):
                raise BrokerError(
                    f"port {_HOST}:{wanted} is already in use by another process; stop it or "
                    f"pass {flag} with a free port"
                )
        classpath = broker_classpath()
        info = BrokerInfo(
            pid=0,
            port=port,
            controller_port=self._controller_port(port),
            bootstrap=f"{_HOST}:{port}",
            data_dir=str(self.data_dir),
            sasl_port=sasl_port,
        )
        config = self._write_config(info)
        self._format(java, classpath, config)
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                [
                    java,
                    "-Xms256m",
                    "-Xmx1g",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._proc = proc
        info = BrokerInfo(**{**asdict(info), "pid": proc.pid})
        self._state.write_text(json.dumps(asdict(info)))
        self._wait_ready(proc, info, timeout_s)
        if scram_users:
            try:
                _add_scram_users(info.bootstrap, scram_users)
            except BrokerError:
                self.stop()
                raise
        return info, True

    def stop(self, *, timeout_s: float = _STOP_TIMEOUT_S) -> BrokerInfo | None:
        """Stop the recorded broker (SIGTERM, then SIGKILL); return what was stopped, or None."""
        info = self.running()
        if info is None:
            self._state.unlink(missing_ok=True)
            return None
        _terminate(info.pid, timeout_s)
        if self._proc is not None and self._proc.pid == info.pid:
            self._proc.wait()
            self._proc = None
        self._state.unlink(missing_ok=True)
        return info

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last lines of the broker log, or an empty string if there is none."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _controller_port(self, port: int) -> int:
        previous = self.data_dir / "controller.port"
        with contextlib.suppress(OSError, ValueError):
            recorded = int(previous.read_text())
            if recorded != port and _port_free(recorded):
                return recorded  # KRaft keeps the voter address: reuse it across restarts
        chosen = _free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        previous.write_text(str(chosen))
        return chosen

    def _write_config(self, info: BrokerInfo) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text(_server_properties(info, self.data_dir / "logs"))
        return config

    def _format(self, java: str, classpath: str, config: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").exists():
            return
        cluster_id = new_cluster_id()
        done = subprocess.run(
            [
                java,
                f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(config),
                # Share groups (KIP-932) are production-ready from Kafka 4.2 and on by default
                # there; naming the feature makes a KAFKA_HOME too old for them fail here.
                "--feature",
                "share.version=1",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
            raise BrokerError(f"formatting the Kafka storage in {self.data_dir} failed:\n{tail}")

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], info: BrokerInfo, timeout_s: float
    ) -> None:
        from confluent_kafka.admin import AdminClient

        # confluent-kafka accepts a logging.Logger under "logger"; its type stubs do not say so.
        admin = AdminClient(cast(Any, {"bootstrap.servers": info.bootstrap, "logger": _SILENT}))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                self._state.unlink(missing_ok=True)
                raise BrokerError(
                    f"the Kafka broker exited with code {proc.returncode} while starting; "
                    f"see {self.log_file}:\n{self.log_tail()}"
                )
            with contextlib.suppress(Exception):
                if admin.list_topics(timeout=2).brokers:
                    return
            time.sleep(0.2)
        _terminate(proc.pid, _STOP_TIMEOUT_S)
        proc.wait()
        self._state.unlink(missing_ok=True)
        raise BrokerError(
            f"the Kafka broker did not answer on {info.bootstrap} within {timeout_s:.0f} s and was "
            f"stopped; see {self.log_file}:\n{self.log_tail()}"
        )


# librdkafka logs "connection refused" while the broker boots; that is expected, not news.
_SILENT = logging.getLogger("pipeline.localkafka.librdkafka")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False


def _add_scram_users(bootstrap: str, users: Mapping[str, str]) -> None:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialAlteration,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient({"bootstrap.servers": bootstrap})
    # One request per mechanism: the broker refuses two changes to one user in a request.
    for mechanism in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512):
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(name, ScramCredentialInfo(mechanism, 8192), pw.encode())
            for name, pw in users.items()
        ]
        for name, future in admin.alter_user_scram_credentials(upserts).items():
            try:
                future.result(timeout=30)
            except Exception as exc:
                raise BrokerError(f"could not create the SCRAM user {name!r}: {exc}") from exc


def _terminate(pid: int, timeout_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            _reap(pid)
            return
        _reap(pid)
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our child, so no zombie stays behind."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
