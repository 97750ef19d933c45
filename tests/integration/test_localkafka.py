"""`pipeline kafka start|status|stop` drives a real broker, or a real cluster of three, and
leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Message, Producer, ShareConsumer
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from pipeline.dev.localkafka import LocalKafka, _Node, _pid_alive
from pipeline.kafka.topics import ensure_topics

from .kafkaio import free_port


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "kafka", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_start_status_second_start_stop(tmp_path: Path) -> None:
    port = free_port()
    data = str(tmp_path / "kafka")
    started = _cli("start", "--port", str(port), "--data-dir", data)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"127.0.0.1:{port}"
    # the wait is said on stderr, so a person knows what the seconds are for
    assert f"waiting up to 90 s for it to answer at 127.0.0.1:{port}" in started.stderr
    try:
        brokers = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert list(brokers.brokers) == [1]
        again = _cli("start", "--port", str(port), "--data-dir", data)
        assert again.returncode == 0
        assert "already running" in again.stdout
        status = _cli("status", "--data-dir", data)
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout
        assert (tmp_path / "kafka" / "broker.log").stat().st_size > 0
        # What a start that never serves would report: Kafka still logs each step we look for
        steps = _Node(1, tmp_path / "kafka").start_steps()
        for step in ("broker starting", "registered", "caught up", "logs loaded", "unfenced"):
            assert f" {step}" in steps, steps
        pid = LocalKafka(data_dir=tmp_path / "kafka").running()
        assert pid is not None
        _clients_find_the_local_broker(tmp_path, f"127.0.0.1:{port}")
    finally:
        stopped = _cli("stop", "--data-dir", data)
    assert stopped.returncode == 0
    assert not _pid_alive(pid.pid)
    assert _cli("status", "--data-dir", data).returncode == 1


def _clients_find_the_local_broker(home: Path, bootstrap: str) -> None:
    """With no bootstrap given, `run`, `produce` and `consume` use the broker that
    `pipeline kafka start` runs in the default data dir ($PIPELINE_HOME/kafka), and say so
    (issue 26 item 4): not 127.0.0.1:9092, where someone else's broker may listen."""
    env = {k: v for k, v in os.environ.items() if "BOOTSTRAP_SERVERS" not in k}
    env["PIPELINE_HOME"] = str(home)

    def pipeline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                              text=True, timeout=120, check=False, env=env)  # fmt: skip

    config = pipeline("run", "--print-config")
    assert config.returncode == 0, config.stderr
    assert f'"bootstrap_servers": "{bootstrap}"' in config.stdout
    topic = f"found-{uuid.uuid4().hex[:8]}"
    sent = pipeline("produce", "--topic", topic, "--synthetic", "breast-cancer-mlp", "--count", "3")
    assert sent.returncode == 0, sent.stderr
    assert f"using the local broker at {bootstrap}" in sent.stderr
    read = pipeline("consume", "--topic", topic, "--from-beginning", "--exit", "--format", "value")
    assert read.returncode == 0, read.stderr
    assert len(read.stdout.splitlines()) == 3, read.stdout


def test_port_taken_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli("start", "--port", str(port), "--data-dir", str(tmp_path / "k"))
    assert done.returncode != 0
    assert done.stderr.startswith(f"error: port 127.0.0.1:{port} is already in use")
    assert "--port" in done.stderr


@pytest.mark.parametrize("missing", ["java"])
def test_missing_java_says_what_to_do(tmp_path: Path, missing: str) -> None:
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "kafka",
            "start",
            "--data-dir",
            str(tmp_path / "k"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "Java 17+" in done.stderr and "JAVA_HOME" in done.stderr


def _node_pids(status: str) -> dict[int, int]:
    return {
        int(n): int(pid) for n, pid in re.findall(r"^node (\d) at \S+ \(pid (\d+)\)", status, re.M)
    }


def _replicas_once_known(admin: AdminClient, topic: str) -> list[list[int]]:
    """The replica lists of `topic`'s partitions, asked until the node that answers knows the
    topic: the controller confirms a creation before every node has heard of it."""
    deadline = time.monotonic() + 30
    while True:
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        if (meta.error is None and meta.partitions) or time.monotonic() > deadline:
            return [sorted(p.replicas) for p in meta.partitions.values()]
        time.sleep(0.2)


def test_three_node_cluster_survives_a_node_down_and_takes_it_back(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    started = _cli("start", "--nodes", "3", "--port", "0", "--data-dir", str(data))
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    port = int(bootstrap.split(",")[0].rpartition(":")[2])  # --port 0: free ones, consecutive
    assert bootstrap == ",".join(f"127.0.0.1:{port + i}" for i in range(3))
    pids: dict[int, int] = {}
    try:
        status = _cli("status", "--data-dir", str(data)).stdout
        first, *nodes = status.splitlines()
        assert first == f"running at {bootstrap} (3 nodes, data dir {data})"
        # what the Makefile's sed takes from the first line: a usable bootstrap list
        assert re.sub(r"^running at ([^ ]+).*", r"\1", first) == bootstrap
        pids = _node_pids(status)
        assert sorted(pids) == [1, 2, 3] and len(nodes) == 3

        admin = AdminClient({"bootstrap.servers": bootstrap})
        assert sorted(admin.list_topics(timeout=10).brokers) == [1, 2, 3]
        topic = f"rf-{uuid.uuid4().hex[:8]}"
        admin.create_topics([NewTopic(topic, 2)])[topic].result(timeout=30)  # broker defaults
        assert _replicas_once_known(admin, topic) == [[1, 2, 3], [1, 2, 3]]
        # the worker's own set-up answers with counts the cluster knows, not an empty topic
        made = [f"made-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        assert ensure_topics(admin, bootstrap, made, create=True, partitions=4) == {
            t: 4 for t in made
        }

        os.kill(pids[2], signal.SIGKILL)  # kill -9 by the pid status shows
        down = _cli("status", "--data-dir", str(data)).stdout
        assert down.splitlines()[0].startswith(
            f"running at 127.0.0.1:{port},127.0.0.1:{port + 2} (2 of 3"
        )
        assert f"node 2 at 127.0.0.1:{port + 1} stopped" in down
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
        producer.produce(topic, b"with one node down")
        assert producer.flush(60) == 0, "2 of 3 replicas in sync must take an acks=all write"

        again = _cli("start", "--node", "2", "--data-dir", str(data))
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(f"node 2 started at 127.0.0.1:{port + 1}")
        cluster = LocalKafka(data_dir=data)
        deadline = time.monotonic() + 60
        while cluster.under_replicated() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert cluster.under_replicated() == [], "node 2 never caught up after its restart"
        pids = _node_pids(_cli("status", "--data-dir", str(data)).stdout)
        stopped = _cli("stop", "--node", "3", "--data-dir", str(data))
        assert stopped.stdout.strip() == f"stopped node 3 at 127.0.0.1:{port + 2} (pid {pids[3]})"
        assert not _pid_alive(pids[3])
    finally:
        stopped = _cli("stop", "--data-dir", str(data))
    assert stopped.returncode == 0
    assert not any(_pid_alive(pid) for pid in pids.values())
    assert _cli("status", "--data-dir", str(data)).returncode == 1


@pytest.fixture
def started_broker(tmp_path: Path) -> Iterator[str]:
    """A broker started by `pipeline kafka start` for this test alone; stopped after."""
    port, data = free_port(), str(tmp_path / "kafka")
    started = _cli("start", "--port", str(port), "--data-dir", data)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        _cli("stop", "--data-dir", data)


def _share_group_from_earliest(admin: AdminClient, group: str) -> None:
    """A share group starts at the latest offset by default; this one reads from the start."""
    reset = ConfigEntry(
        "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET
    )
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[reset])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def _take(consumer: ShareConsumer, into: list[Message]) -> None:
    """Poll once; acknowledge (explicitly) and commit whatever arrived."""
    msgs = [m for m in consumer.poll(0.2) if m.error() is None]
    for m in msgs:
        consumer.acknowledge(m)
    if msgs:
        consumer.commit_sync(30)
    into.extend(msgs)


def test_two_share_consumers_split_one_partition(started_broker: str) -> None:
    """Share groups (KIP-932) are on: two members of one share group both read records of a
    single partition, which a consumer group would give to one member only."""
    admin = AdminClient({"bootstrap.servers": started_broker})
    topic, group = f"share-{uuid.uuid4().hex[:8]}", f"share-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    _share_group_from_earliest(admin, group)
    settings = {
        "bootstrap.servers": started_broker,
        "group.id": group,
        "share.acknowledgement.mode": "explicit",
    }
    members = [ShareConsumer(settings), ShareConsumer(settings)]
    received: list[list[Message]] = [[], []]
    producer = Producer({"bootstrap.servers": started_broker})
    sent = 0
    try:
        for member in members:
            member.subscribe([topic])
        deadline = time.monotonic() + 90
        # Records keep coming in small rounds until both members got some, so neither can
        # take every record in one fetch before the other has joined.
        while not all(received) and time.monotonic() < deadline:
            for _ in range(20):
                producer.produce(topic, str(sent).encode())
                sent += 1
            producer.flush(30)
            for member, into in zip(members, received, strict=True):
                _take(member, into)
        while sum(map(len, received)) < sent and time.monotonic() < deadline:
            for member, into in zip(members, received, strict=True):
                _take(member, into)
    finally:
        for member in members:
            member.close()
    counts = [len(r) for r in received]
    assert all(counts), f"one share-group member received nothing: {counts} of {sent} records"
    values = sorted(int(m.value() or b"-1") for r in received for m in r)
    assert values == list(range(sent)), f"{counts} records for {sent} sent, not each one once"
    assert {m.delivery_count() for r in received for m in r} == {1}
