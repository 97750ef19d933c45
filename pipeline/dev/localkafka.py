"""The embedded local broker: real Apache Kafka 4.x nodes in KRaft mode, without Docker.

`pipeline kafka start` obtains the broker jars (from ``$KAFKA_HOME/libs`` when set,
else resolved from Maven Central by ``mvn`` through ``pipeline/dev/_kafka/pom.xml`` into a
cache outside git), formats the storage, starts combined broker+controller nodes in the
background bound to 127.0.0.1, and waits until each answers a metadata request. One node
is the default. ``nodes=3`` runs a cluster of three in one KRaft quorum, on consecutive
client ports, with every internal topic replicated three times, so tests can stop, kill,
freeze and restart one node at a time. Share groups (KIP-932) are on: the storage is
formatted with ``share.version=1``.

One node keeps its state in the data directory itself::

    <data-dir>/server.properties   the broker's settings (written on every start)
    <data-dir>/broker.json         pid, ports and bootstrap address of the running broker
    <data-dir>/broker.log          the broker's own log
    <data-dir>/controller.port     its KRaft controller port, kept across restarts
    <data-dir>/logs/               the Kafka log directory (topics, metadata)

A cluster keeps the same files per node, and its shape beside them::

    <data-dir>/cluster.json        node count, client and controller ports, cluster id
    <data-dir>/node-<id>/          server.properties, broker.json, broker.log, logs/
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
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, cast

from pipeline.dev.localserver import find_java, free_port, free_ports, port_free
from pipeline.errors import BrokerError

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_PORT",
    "SHORT_LIVED",
    "BrokerInfo",
    "ClusterInfo",
    "LocalBootstrap",
    "LocalKafka",
    "broker_classpath",
    "new_cluster_id",
]

DEFAULT_PORT = 9092
DEFAULT_DATA_DIR = (
    Path(os.environ.get("PIPELINE_HOME", Path.home() / ".local/share/pipeline")) / "kafka"
)
# JVM heap of a single node, and of each node of a cluster: three of those, beside the
# tests, fit a machine of 2 cores and a few GiB.
_SINGLE_HEAP = ("-Xms256m", "-Xmx1g")
_NODE_HEAP = ("-Xms256m", "-Xmx512m")
_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kafka-onnx-pipeline"
_HOST = "127.0.0.1"
_MIN_JAVA = 17
_START_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 30.0
_LOG_TAIL_LINES = 20
# A node that lives for minutes compiles more than it runs: the C1 compiler alone (no C2)
# took the four three-node-cluster fault tests from 468-538 to 305 CPU s, and from 275-310
# to 202 s, on this 2-core machine (their event rate is 200/s). A benchmark's broker keeps
# C2, which runs its hot loops faster once compiled.
SHORT_LIVED = ("-XX:TieredStopAtLevel=1",)
# The lines that mark a node's way to serving (Kafka 4.x), and what each means.
_START_STEPS = (
    ("Transition from SHUTDOWN to STARTING", "broker starting"),
    ("Successfully registered broker", "registered with the controller"),
    ("Transitioning from STARTING to RECOVERY", "caught up with the metadata"),
    (" logs in ", "logs loaded"),
    ("Transitioning from RECOVERY to RUNNING", "unfenced"),
    ("Kafka Server started", "started"),
)
_LOG_TIME = re.compile(r"\[\d{4}-\d\d-\d\d (\d\d:\d\d:\d\d,\d{3})\]")
_CLUSTER_SIZES = (3, 5, 7)
_LAYOUT_FILE = "cluster.json"


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """What `start` records about a running node."""

    pid: int
    port: int
    controller_port: int
    bootstrap: str  # this node's own address
    data_dir: str  # this node's directory
    sasl_port: int | None = None  # a SASL_PLAINTEXT listener with SCRAM-SHA-256/512, if asked
    node_id: int = 1


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """The running nodes of a local cluster; a single node is a cluster of one."""

    data_dir: str
    size: int  # the nodes the cluster has, running or not
    nodes: tuple[BrokerInfo, ...]  # the running ones, by node id

    @property
    def bootstrap(self) -> str:
        """The running nodes' addresses, comma-separated, for ``bootstrap.servers``."""
        return ",".join(node.bootstrap for node in self.nodes)


class LocalBootstrap:
    """Where no flag, variable or file names the bootstrap servers, the address of the
    broker (or cluster) `pipeline kafka start` runs with its default data dir, so `run`,
    `produce` and `consume` find it (a `local_broker` for `load_settings`); `found` is
    what it gave, and `said` the line that tells the user."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir or DEFAULT_DATA_DIR
        self.found: str | None = None

    def __call__(self) -> str | None:
        cluster = LocalKafka(data_dir=self.data_dir).cluster()
        self.found = cluster.bootstrap if cluster else None
        return self.found

    def said(self) -> str | None:
        if self.found is None:
            return None
        return (
            f"no bootstrap servers given: using the local broker at {self.found} that "
            f"`pipeline kafka start` runs (data dir {self.data_dir}); give "
            "--bootstrap-servers for another"
        )


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
    return find_java(_MIN_JAVA, "the local Kafka broker (Kafka 4.x)", BrokerError)


def broker_classpath(progress: Callable[[str], None] = lambda _: None) -> str:
    """Return the broker's Java classpath, resolving the jars with Maven on first use (which
    takes a while: `progress` hears when it starts and how long it took).

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
        progress(
            f"fetching the Kafka {_kafka_version()} broker jars from Maven Central with mvn "
            f"(once: they are kept in {libs.parent})"
        )
        started = time.monotonic()
        _resolve_jars(libs)
        jars = len(list(libs.glob("*.jar")))
        progress(f"fetched {jars} jars in {time.monotonic() - started:.1f} s")
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


def _check_ports(wanted: Iterable[tuple[int | None, str]]) -> None:
    """Raise if a port is taken; each comes with what to do about it."""
    for port, remedy in wanted:
        if port is not None and not port_free(port):
            raise BrokerError(
                f"port {_HOST}:{port} is already in use by another process; stop it or {remedy}"
            )


def _pid_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kafka.Kafka" in cmdline


def _replication(replicas: int) -> dict[str, str]:
    """Replication of the internal topics and of topics created without a factor.

    One node: one replica of everything. A cluster: three replicas, and a write needs two
    of them in sync, so one node may fail without losing an acknowledged record.
    """
    factor, min_isr = str(replicas), str(min(replicas, 2))
    return {
        "offsets.topic.replication.factor": factor,
        "transaction.state.log.replication.factor": factor,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": factor,
        "share.coordinator.state.topic.min.isr": min_isr,
        "default.replication.factor": factor,
        "min.insync.replicas": min_isr,
    }


def _server_properties(info: BrokerInfo, log_dirs: Path, *, voters: str, replicas: int) -> str:
    settings: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(info.node_id),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{_HOST}:{info.port},CONTROLLER://{_HOST}:{info.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{_HOST}:{info.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        **_replication(replicas),
        "offsets.topic.num.partitions": "10",
        "transaction.state.log.num.partitions": "10",
        "share.coordinator.state.topic.num.partitions": "10",
        "unclean.leader.election.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        # A share group may shorten its record lock (share.record.lock.duration.ms) down to
        # 1 s, so a test of redelivery need not wait the default 30 s; groups that do not
        # ask keep the default.
        "group.share.min.record.lock.duration.ms": "1000",
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


@dataclass(frozen=True, slots=True)
class _Layout:
    """The shape of a cluster, fixed when it is first formatted; kept in cluster.json."""

    size: int
    port: int  # node N listens for clients on port + N - 1
    controller_ports: tuple[int, ...]
    cluster_id: str

    @property
    def voters(self) -> str:
        return ",".join(f"{i}@{_HOST}:{p}" for i, p in enumerate(self.controller_ports, 1))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> _Layout | None:
        try:
            raw = json.loads(path.read_text())
            return cls(**{**raw, "controller_ports": tuple(raw["controller_ports"])})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise BrokerError(
                f"{path} should describe a local cluster (size, ports, cluster id) but cannot "
                f"be read ({exc}); remove {path.parent} to start afresh"
            ) from exc


class _Node:
    """One node's files: its settings, the record of its process, its log and its data."""

    def __init__(self, node_id: int, home: Path) -> None:
        self.node_id = node_id
        self.home = home
        self.state = home / "broker.json"
        self.log_file = home / "broker.log"
        self.config = home / "server.properties"
        self.log_dirs = home / "logs"
        self.launched_at = 0  # where this launch's lines begin in log_file (it is appended to)

    def running(self) -> BrokerInfo | None:
        """The recorded process if it is alive (stopped by SIGSTOP counts), else None."""
        try:
            info = BrokerInfo(**json.loads(self.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return info if _pid_alive(info.pid) else None

    def formatted(self) -> bool:
        return (self.log_dirs / "meta.properties").exists()

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start_steps(self) -> str:
        """The steps of its start that this launch reached, each with its log's time: where a
        slow start spent its time, which the log's last lines (often one step's chatter) hide."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(self.launched_at)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return "no log"
        stamped = [(m[1], line) for line in lines if (m := _LOG_TIME.match(line))]
        if not stamped:
            return "no line logged"
        reached = [f"{stamped[0][0]} its first line"]
        reached += [
            f"{stamp} {step}"
            for stamp, line in stamped
            for pattern, step in _START_STEPS
            if pattern in line
        ]
        reached.append(f"{stamped[-1][0]} its last line")
        return "; ".join(reached)

    def quorum_leader(self) -> tuple[int, int] | None:
        """(epoch, leader id) of the KRaft quorum as this node last recorded it, if known."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            state = json.loads(
                (self.log_dirs / "__cluster_metadata-0" / "quorum-state").read_text()
            )
            if int(state["leaderId"]) >= 0:
                return int(state["leaderEpoch"]), int(state["leaderId"])
        return None


def _format_command(java: str, classpath: str, node: _Node, cluster_id: str) -> list[str]:
    return [
        java,
        # A tool that runs for two seconds: the C1 compiler alone and the serial collector
        # cut its CPU by a third (3.0-3.2 -> 1.8-2.0 s here), which every new node pays.
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}",
        "-cp",
        classpath,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id,
        "-c",
        str(node.config),
        # Share groups (KIP-932) are production-ready from Kafka 4.2 and on by default
        # there; naming the feature makes a KAFKA_HOME too old for them fail here.
        "--feature",
        "share.version=1",
    ]


def _format(java: str, classpath: str, nodes: Sequence[_Node], cluster_id: str) -> None:
    """Format the storage of `nodes` (those not formatted yet) with one cluster id, at once."""
    todo = [node for node in nodes if not node.formatted()]
    running = [
        subprocess.Popen(
            _format_command(java, classpath, node, cluster_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in todo
    ]
    for node, proc in zip(todo, running, strict=True):
        out, _ = proc.communicate()
        if proc.returncode != 0:
            tail = "\n".join(out.strip().splitlines()[-_LOG_TAIL_LINES:])
            raise BrokerError(f"formatting the Kafka storage in {node.home} failed:\n{tail}")


class LocalKafka:
    """Start, stop and inspect the local broker, or local cluster, kept in `data_dir`.

    A data dir holds one node (`start`) or a cluster (`start_cluster`), whichever it was
    first started as. The node-level methods (`start_node`, `stop(node=...)`, `kill_node`,
    `freeze_node`, `thaw_node`) are for fault tests.

    `jvm_flags` go to each node's `java` after the project's own: `SHORT_LIVED` for a broker
    that lives for one test and never serves a benchmark.
    """

    def __init__(
        self,
        *,
        data_dir: Path = DEFAULT_DATA_DIR,
        progress: Callable[[str], None] = lambda _: None,
        jvm_flags: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self._progress = progress  # hears the steps that take seconds (a person waits on them)
        self._jvm_flags = tuple(jvm_flags)
        self.log_file = self.data_dir / "broker.log"  # a single node's log
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # kept so children are reaped

    # -- what runs ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """How many nodes the data dir's broker has: 1 unless it holds a cluster."""
        layout = self._layout()
        return 1 if layout is None else layout.size

    def running(self) -> BrokerInfo | None:
        """Return the lowest-numbered running node, or None if none runs."""
        info = self.cluster()
        return info.nodes[0] if info else None

    def cluster(self) -> ClusterInfo | None:
        """Return the running nodes (a single node is a cluster of one), or None if none."""
        live = [info for node in self._nodes() if (info := node.running())]
        if not live:
            return None
        return ClusterInfo(data_dir=str(self.data_dir), size=self.size, nodes=tuple(live))

    def node(self, node_id: int) -> BrokerInfo | None:
        """Return node `node_id` if it runs (a frozen node runs), else None."""
        return self._node(node_id).running()

    def address(self, node_id: int) -> str | None:
        """Node `node_id`'s client address, running or not (None: a single node, stopped)."""
        layout = self._layout()
        if layout is None:
            info = self.node(node_id)
            return info.bootstrap if info else None
        return self._planned(layout, self._node(node_id)).bootstrap

    def node_log(self, node_id: int = 1) -> Path:
        """The path of node `node_id`'s own log."""
        return self._node(node_id).log_file

    def log_tail(self, lines: int = _LOG_TAIL_LINES, *, node_id: int = 1) -> str:
        """Return the last lines of a node's log, or an empty string if there is none."""
        return self._node(node_id).log_tail(lines)

    # -- one node -------------------------------------------------------------------------

    def start(
        self,
        *,
        port: int = DEFAULT_PORT,
        timeout_s: float = _START_TIMEOUT_S,
        sasl_port: int | None = None,
        scram_users: Mapping[str, str] | None = None,
    ) -> tuple[BrokerInfo, bool]:
        """Start the single-node broker unless it runs already; return it and whether this
        call started it.

        Args:
            port: The PLAINTEXT client port on 127.0.0.1 (0: any free one).
            timeout_s: How long to wait for the broker to answer a metadata request.
            sasl_port: Also listen for SASL_PLAINTEXT (SCRAM-SHA-256 and -512) on this port.
            scram_users: User name to password: SCRAM credentials (both mechanisms) to
                create or update once the broker answers.

        Raises:
            BrokerError: Java or Maven missing, port taken, no answer within `timeout_s`,
                or the data dir holds a cluster.
        """
        layout = self._layout()
        if layout is not None:
            raise BrokerError(
                f"{self.data_dir} holds a {layout.size}-node cluster, not a single broker; start "
                f"it with `pipeline kafka start --nodes {layout.size}`, or use another --data-dir"
            )
        node = _Node(1, self.data_dir)
        current = node.running()
        if current is not None:
            return current, False
        java = _java()
        port = port or free_port()
        _check_ports(
            [(port, "pass --port with a free port"), (sasl_port, "pass a free --sasl-port")]
        )
        classpath = broker_classpath(self._progress)
        controller_port = self._controller_port(port)
        info = BrokerInfo(
            pid=0,
            port=port,
            controller_port=controller_port,
            bootstrap=f"{_HOST}:{port}",
            data_dir=str(self.data_dir),
            sasl_port=sasl_port,
        )
        self._configure(node, info, voters=f"1@{_HOST}:{controller_port}", replicas=1)
        _format(java, classpath, [node], new_cluster_id())
        info = self._launch(java, classpath, node, info, _SINGLE_HEAP)
        self._progress(
            f"broker started (pid {info.pid}, log {node.log_file}); waiting up to "
            f"{timeout_s:.0f} s for it to answer at {info.bootstrap}"
        )
        self._wait_ready([(node, info)], timeout_s)
        if scram_users:
            try:
                _add_scram_users(info.bootstrap, scram_users)
            except BrokerError:
                self.stop()
                raise
        return info, True

    # -- a cluster ------------------------------------------------------------------------

    def start_cluster(
        self, *, nodes: int = 3, port: int | None = None, timeout_s: float = _START_TIMEOUT_S
    ) -> tuple[ClusterInfo, bool]:
        """Start every node of a cluster that is not running; return the cluster and whether
        this call started any node.

        The first start fixes the cluster's shape: `nodes` nodes, node N on client port
        ``port + N - 1``, controller ports chosen free, one cluster id. Later starts reuse it.

        Args:
            nodes: How many nodes: 3, 5 or 7 (each is broker and controller).
            port: Node 1's client port (default: the recorded one, else 9092; 0: any free
                consecutive ports).
            timeout_s: How long to wait for every node to be registered and unfenced.

        Raises:
            BrokerError: Java or Maven missing, a port taken, no answer within `timeout_s`,
                or the data dir holds a single broker or a cluster of another shape.
        """
        layout = self._cluster_layout(nodes, port)
        members = self._nodes(layout)
        stopped = [node for node in members if node.running() is None]
        if stopped:
            java = _java()
            self._check_cluster_ports(layout, stopped)
            classpath = broker_classpath(self._progress)
            layout.save(self.data_dir / _LAYOUT_FILE)
            self._start_nodes(java, classpath, layout, stopped, timeout_s)
        current = self.cluster()
        if current is None:
            raise BrokerError(f"the nodes of {self.data_dir} stopped right after starting")
        return current, bool(stopped)

    def start_node(
        self, node_id: int, *, timeout_s: float = _START_TIMEOUT_S
    ) -> tuple[BrokerInfo, bool]:
        """Start one stopped node of the cluster, with its data; return it and whether this
        call started it.

        Raises:
            BrokerError: No cluster in the data dir, no such node, its ports taken, too few
                other nodes running to form a quorum, or no answer within `timeout_s`.
        """
        layout = self._layout()
        if layout is None:
            raise BrokerError(
                f"{self.data_dir} holds no local cluster, so there is no node {node_id} to "
                "start; start a cluster with `pipeline kafka start --nodes 3`"
            )
        node = self._node(node_id)
        current = node.running()
        if current is not None:
            return current, False
        others = sum(1 for n in self._nodes(layout) if n.running())
        if others + 1 <= layout.size // 2:
            raise BrokerError(
                f"node {node_id} cannot join: a quorum needs {layout.size // 2 + 1} of "
                f"{layout.size} controllers and only {others} other node(s) run; start the "
                "whole cluster with `pipeline kafka start` instead"
            )
        java = _java()
        self._check_cluster_ports(layout, [node])
        self._start_nodes(java, broker_classpath(self._progress), layout, [node], timeout_s)
        info = node.running()
        if info is None:
            raise BrokerError(f"node {node_id} stopped right after starting; see {node.log_file}")
        return info, True

    # -- stopping and faults --------------------------------------------------------------

    def stop(
        self, *, node: int | None = None, timeout_s: float = _STOP_TIMEOUT_S
    ) -> list[BrokerInfo]:
        """Stop every node, or only node `node` (SIGTERM, then SIGKILL after `timeout_s`);
        return the nodes that were running and are now stopped."""
        targets = self._nodes() if node is None else [self._node(node)]
        live = [(n, info) for n in targets if (info := n.running())]
        _terminate([info.pid for _, info in live], timeout_s)
        for n in targets:
            self._forget(n)
        return [info for _, info in live]

    def kill_node(self, node_id: int) -> BrokerInfo:
        """SIGKILL node `node_id` (no clean shutdown), wait until it is gone; return it."""
        node, info = self._live(node_id)
        os.kill(info.pid, signal.SIGKILL)
        _wait_gone(info.pid, self._procs.get(node_id))
        self._forget(node)
        return info

    def freeze_node(self, node_id: int) -> BrokerInfo:
        """SIGSTOP node `node_id`: it keeps its sockets but answers nothing until thawed."""
        _, info = self._live(node_id)
        os.kill(info.pid, signal.SIGSTOP)
        return info

    def thaw_node(self, node_id: int) -> BrokerInfo:
        """SIGCONT node `node_id` after `freeze_node`."""
        _, info = self._live(node_id)
        os.kill(info.pid, signal.SIGCONT)
        return info

    # -- who leads ------------------------------------------------------------------------

    def partition_leaders(self, topic: str, *, timeout_s: float = 15.0) -> dict[int, int]:
        """Map each partition of `topic` to the node id leading it (-1: none right now).

        A topic created a moment ago may be unknown yet to the node that answers; it is
        asked again until `timeout_s`.

        Raises:
            BrokerError: No node runs, or the cluster does not know `topic` in time.
        """
        admin = self._admin()
        deadline = time.monotonic() + timeout_s
        while True:
            meta = admin.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if meta is not None and meta.error is None:
                return {p: part.leader for p, part in meta.partitions.items()}
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"the cluster in {self.data_dir} does not know topic {topic!r} "
                    f"({meta.error if meta else 'no metadata'}); create it first"
                )
            time.sleep(0.2)

    def under_replicated(self, *, timeout_s: float = 15.0) -> list[str]:
        """Return ``topic[partition]`` for every partition with fewer in-sync replicas than
        replicas, internal topics included: empty once every restarted node caught up."""
        topics = self._admin().list_topics(timeout=timeout_s).topics
        return sorted(
            f"{name}[{p}]"
            for name, meta in topics.items()
            for p, part in meta.partitions.items()
            if len(part.isrs) < len(part.replicas)
        )

    def active_controller(self, *, timeout_s: float = 30.0) -> int:
        """Return the node id of the active controller (the KRaft quorum's leader).

        The brokers' DescribeCluster answer names a random broker as "controller" in KRaft,
        and librdkafka has no DescribeQuorum; so this reads the quorum state each running
        node keeps on disk and takes the leader of the highest epoch, once that leader runs.

        Raises:
            BrokerError: No running node agrees on a running leader within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            known = [s for n in self._nodes() if n.running() and (s := n.quorum_leader())]
            epoch, leader = max(known, default=(-1, -1))
            if leader > 0 and self._node(leader).running():
                return leader
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"no running node of {self.data_dir} names a running KRaft leader after "
                    f"{timeout_s:.0f} s (last seen: node {leader} at epoch {epoch}); see the "
                    "nodes' broker.log"
                )
            time.sleep(0.2)

    # -- internals ------------------------------------------------------------------------

    def _admin(self) -> Any:
        """An admin client bootstrapping from the running nodes."""
        current = self.cluster()
        if current is None:
            raise BrokerError(f"no Kafka node of {self.data_dir} is running; start it first")
        return _admin(current.bootstrap)

    def _layout(self) -> _Layout | None:
        return _Layout.load(self.data_dir / _LAYOUT_FILE)

    def _nodes(self, layout: _Layout | None = None) -> list[_Node]:
        layout = layout or self._layout()
        if layout is None:
            return [_Node(1, self.data_dir)]
        return [_Node(i, self.data_dir / f"node-{i}") for i in range(1, layout.size + 1)]

    def _node(self, node_id: int) -> _Node:
        nodes = self._nodes()
        if not 1 <= node_id <= len(nodes):
            raise BrokerError(
                f"node ids of the broker in {self.data_dir} run from 1 to {len(nodes)}, "
                f"got {node_id}"
            )
        return nodes[node_id - 1]

    def _live(self, node_id: int) -> tuple[_Node, BrokerInfo]:
        node = self._node(node_id)
        info = node.running()
        if info is None:
            raise BrokerError(f"node {node_id} of {self.data_dir} is not running; start it first")
        return node, info

    def _forget(self, node: _Node) -> None:
        """Drop what was recorded of a node's process, once that process is gone."""
        proc = self._procs.pop(node.node_id, None)
        if proc is not None:
            proc.wait()
        node.state.unlink(missing_ok=True)

    def _cluster_layout(self, nodes: int, port: int | None) -> _Layout:
        """The recorded layout if it matches `nodes` and `port`, else a new one (unsaved)."""
        if nodes not in _CLUSTER_SIZES:
            raise BrokerError(
                f"a local cluster has {', '.join(map(str, _CLUSTER_SIZES))} nodes (an odd "
                f"number, for a KRaft majority), got {nodes}; use 1 node for a single broker"
            )
        if _Node(1, self.data_dir).formatted():
            raise BrokerError(
                f"{self.data_dir} holds a single-node broker; a cluster needs a data dir of "
                "its own: pass another --data-dir, or remove this one"
            )
        layout = self._layout()
        if layout is None:
            first = DEFAULT_PORT if port is None else port or free_ports(nodes)
            taken = set(range(first, first + nodes))
            controllers: list[int] = []
            while len(controllers) < nodes:
                if (candidate := free_port()) not in taken:
                    taken.add(candidate)
                    controllers.append(candidate)
            return _Layout(nodes, first, tuple(controllers), new_cluster_id())
        if layout.size != nodes or port not in (None, 0, layout.port):
            raise BrokerError(
                f"{self.data_dir} holds a {layout.size}-node cluster on ports "
                f"{layout.port}-{layout.port + layout.size - 1}, but {nodes} node(s) from port "
                f"{port or layout.port} were asked; drop --nodes/--port to start it as it is, "
                "or use another --data-dir"
            )
        return layout

    def _check_cluster_ports(self, layout: _Layout, nodes: Iterable[_Node]) -> None:
        fixed = self._layout() is not None
        for node in nodes:
            remedy = (
                f"remove {self.data_dir} to form the cluster on other ports (node "
                f"{node.node_id} must keep them)"
                if fixed
                else f"pass --port with {layout.size} free consecutive ports"
            )
            client = layout.port + node.node_id - 1
            _check_ports([(client, remedy), (layout.controller_ports[node.node_id - 1], remedy)])

    def _start_nodes(
        self,
        java: str,
        classpath: str,
        layout: _Layout,
        nodes: Sequence[_Node],
        timeout_s: float,
    ) -> None:
        """Configure, format if new, launch `nodes` together, and wait until each is ready."""
        for node in nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            self._configure(node, self._planned(layout, node), voters=layout.voters, replicas=3)
        _format(java, classpath, nodes, layout.cluster_id)
        started = [
            (node, self._launch(java, classpath, node, self._planned(layout, node), _NODE_HEAP))
            for node in nodes
        ]
        self._progress(
            f"{len(started)} node(s) started; waiting up to {timeout_s:.0f} s for them to answer "
            f"at {', '.join(info.bootstrap for _, info in started)}"
        )
        self._wait_ready(started, timeout_s)

    @staticmethod
    def _planned(layout: _Layout, node: _Node) -> BrokerInfo:
        port = layout.port + node.node_id - 1
        return BrokerInfo(
            pid=0,
            port=port,
            controller_port=layout.controller_ports[node.node_id - 1],
            bootstrap=f"{_HOST}:{port}",
            data_dir=str(node.home),
            node_id=node.node_id,
        )

    def _controller_port(self, port: int) -> int:
        previous = self.data_dir / "controller.port"
        with contextlib.suppress(OSError, ValueError):
            recorded = int(previous.read_text())
            if recorded != port and port_free(recorded):
                return recorded  # KRaft keeps the voter address: reuse it across restarts
        chosen = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        previous.write_text(str(chosen))
        return chosen

    @staticmethod
    def _configure(node: _Node, info: BrokerInfo, *, voters: str, replicas: int) -> None:
        node.home.mkdir(parents=True, exist_ok=True)
        node.config.write_text(
            _server_properties(info, node.log_dirs, voters=voters, replicas=replicas)
        )

    def _launch(
        self, java: str, classpath: str, node: _Node, info: BrokerInfo, heap: Sequence[str]
    ) -> BrokerInfo:
        with node.log_file.open("ab") as log:
            node.launched_at = log.tell()
            proc = subprocess.Popen(
                [
                    java,
                    *heap,
                    "-XX:+UseG1GC",
                    *self._jvm_flags,
                    "-Djava.awt.headless=true",
                    f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(node.config),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[node.node_id] = proc
        info = replace(info, pid=proc.pid)
        node.state.write_text(json.dumps(asdict(info)))
        return info

    def _wait_ready(self, started: Sequence[tuple[_Node, BrokerInfo]], timeout_s: float) -> None:
        """Wait until each started node is a registered, unfenced broker in its own metadata;
        on failure stop every node started with it and raise."""
        deadline = time.monotonic() + timeout_s
        for node, info in started:
            admin = _admin(info.bootstrap)
            while not _lists_broker(admin, info.node_id):
                proc = self._procs[node.node_id]
                if proc.poll() is not None:
                    what = f"exited with code {proc.returncode} while starting"
                elif time.monotonic() > deadline:
                    what = f"did not answer on {info.bootstrap} within {timeout_s:.0f} s"
                else:
                    time.sleep(0.2)
                    continue
                self._stop_started(started)
                name = (
                    "the Kafka broker" if len(self._nodes()) == 1 else f"Kafka node {info.node_id}"
                )
                load = os.getloadavg()[0]
                raise BrokerError(
                    f"{name} {what} and was stopped (this machine's load average: {load:.1f}); "
                    f"the steps of its start it reached: {node.start_steps()}; see "
                    f"{node.log_file}:\n{node.log_tail()}"
                )

    def _stop_started(self, started: Sequence[tuple[_Node, BrokerInfo]]) -> None:
        _terminate([info.pid for _, info in started], _STOP_TIMEOUT_S)
        for node, _ in started:
            self._forget(node)


# librdkafka logs "connection refused" while a broker boots; that is expected, not news.
_SILENT = logging.getLogger("pipeline.localkafka.librdkafka")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    settings = {
        "bootstrap.servers": bootstrap,
        # confluent-kafka accepts a logging.Logger here; its type stubs do not say so.
        "logger": _SILENT,
        # A node that is still booting refuses connections: ask again soon, not after the
        # default backoff of up to 10 s.
        "reconnect.backoff.max.ms": 500,
    }
    return AdminClient(cast(Any, settings))


def _lists_broker(admin: Any, node_id: int) -> bool:
    """Whether a metadata answer lists `node_id` among the (unfenced) brokers."""
    try:
        return node_id in admin.list_topics(timeout=2).brokers
    except Exception:  # not listening yet, or no answer within 2 s: ask again
        return False


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


def _terminate(pids: Sequence[int], timeout_s: float) -> None:
    """SIGTERM every pid at once (and SIGCONT, in case it is frozen); SIGKILL those still
    alive after `timeout_s`; reap them all."""
    for pid in pids:
        for sig in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        for pid in alive:
            _reap(pid)
        alive = [pid for pid in alive if _pid_alive(pid)]
        if alive:
            time.sleep(0.1)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, None)


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    """Wait until a killed process is gone (reaped, if it is our child)."""
    if proc is not None:
        proc.wait()
        return
    while _pid_alive(pid):
        _reap(pid)
        time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our child, so no zombie stays behind."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
