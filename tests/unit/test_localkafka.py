"""The local broker's pieces that need no broker: cluster ids, settings, the data-dir layout."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.dev import localserver
from pipeline.dev.localkafka import (
    BrokerInfo,
    ClusterInfo,
    LocalKafka,
    _Layout,
    _server_properties,
    new_cluster_id,
)
from pipeline.errors import BrokerError

# A UUID whose URL-safe base64 starts with "-": its first 6 bits are 62 (0b111110).
DASHED = bytes([0b11111000]) + bytes(15)


def _source(*draws: bytes) -> Callable[[], bytes]:
    it: Iterator[bytes] = iter(draws)
    return lambda: next(it)


def test_a_cluster_id_starting_with_a_dash_is_drawn_again() -> None:
    assert base64.urlsafe_b64encode(DASHED).decode().startswith("-")
    second = uuid.UUID(int=1).bytes

    cluster_id = new_cluster_id(_source(DASHED, DASHED, second))

    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAQ"


def test_a_cluster_id_is_22_url_safe_characters_of_the_uuid() -> None:
    raw = b"\x00" + uuid.uuid4().bytes[1:]  # a first byte of 0 encodes as "A", never "-"

    cluster_id = new_cluster_id(_source(raw))

    assert len(cluster_id) == 22
    assert base64.urlsafe_b64decode(cluster_id + "==") == raw


def _settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def _info(node_id: int = 1) -> BrokerInfo:
    return BrokerInfo(
        pid=0, port=39091 + node_id, controller_port=40000 + node_id,
        bootstrap=f"127.0.0.1:{39091 + node_id}", data_dir="/d", node_id=node_id,
    )  # fmt: skip


def test_a_single_node_replicates_nothing_and_is_its_own_quorum() -> None:
    settings = _settings(
        _server_properties(_info(), Path("/d/logs"), voters="1@127.0.0.1:40001", replicas=1)
    )

    assert settings["node.id"] == "1"
    assert settings["controller.quorum.voters"] == "1@127.0.0.1:40001"
    for name in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr",
        "default.replication.factor",
        "min.insync.replicas",
    ):
        assert settings[name] == "1", name


def test_a_cluster_node_replicates_three_times_and_needs_two_in_sync() -> None:
    layout = _Layout(3, 39092, (40001, 40002, 40003), "id")
    settings = _settings(_server_properties(_info(2), Path("/d"), voters=layout.voters, replicas=3))

    assert settings["node.id"] == "2"
    assert settings["controller.quorum.voters"] == (
        "1@127.0.0.1:40001,2@127.0.0.1:40002,3@127.0.0.1:40003"
    )
    assert settings["listeners"] == "PLAINTEXT://127.0.0.1:39093,CONTROLLER://127.0.0.1:40002"
    for name in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
        "default.replication.factor",
    ):
        assert settings[name] == "3", name
    for name in (
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
        "min.insync.replicas",
    ):
        assert settings[name] == "2", name
    assert settings["unclean.leader.election.enable"] == "false"


def test_a_cluster_bootstrap_lists_its_running_nodes() -> None:
    cluster = ClusterInfo(data_dir="/d", size=3, nodes=(_info(1), _info(3)))

    assert cluster.bootstrap == "127.0.0.1:39092,127.0.0.1:39094"


@pytest.mark.parametrize("nodes", [2, 4, 9])
def test_a_cluster_has_an_odd_number_of_nodes(tmp_path: Path, nodes: int) -> None:
    with pytest.raises(BrokerError, match=rf"3, 5, 7 nodes .* got {nodes}"):
        LocalKafka(data_dir=tmp_path).start_cluster(nodes=nodes)


def test_a_single_broker_data_dir_refuses_to_become_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "meta.properties").write_text("node.id=1\n")

    with pytest.raises(BrokerError, match=r"holds a single-node broker.*another --data-dir"):
        LocalKafka(data_dir=tmp_path).start_cluster(nodes=3)


def test_a_cluster_data_dir_refuses_a_single_broker_start(tmp_path: Path) -> None:
    _Layout(3, 39092, (1, 2, 3), "id").save(tmp_path / "cluster.json")

    with pytest.raises(BrokerError, match=r"holds a 3-node cluster.*--nodes 3"):
        LocalKafka(data_dir=tmp_path).start()


def test_one_node_alone_cannot_form_a_quorum(tmp_path: Path) -> None:
    _Layout(3, 39092, (1, 2, 3), "id").save(tmp_path / "cluster.json")
    kafka = LocalKafka(data_dir=tmp_path)

    with pytest.raises(BrokerError, match=r"quorum needs 2 of 3 .* only 0 other"):
        kafka.start_node(2)
    with pytest.raises(BrokerError, match="run from 1 to 3, got 4"):
        kafka.start_node(4)


def test_restarting_a_node_needs_a_cluster(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match=r"holds no local cluster.*--nodes 3"):
        LocalKafka(data_dir=tmp_path).start_node(1)


def test_a_cluster_keeps_its_ports(tmp_path: Path) -> None:
    _Layout(3, 39092, (1, 2, 3), "id").save(tmp_path / "cluster.json")

    with pytest.raises(BrokerError, match=r"ports 39092-39094, but 3 node.*port 40000"):
        LocalKafka(data_dir=tmp_path).start_cluster(nodes=3, port=40000)


def test_the_first_fetch_of_the_broker_jars_is_said_with_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.dev import localkafka

    def resolve(libs: Path) -> None:  # what mvn leaves: the jars in libs/
        libs.mkdir(parents=True)
        for name in ("kafka_2.13-4.3.1.jar", "kafka-clients-4.3.1.jar"):
            (libs / name).write_bytes(b"")

    monkeypatch.delenv("KAFKA_HOME", raising=False)
    monkeypatch.setattr(localkafka, "_CACHE_DIR", tmp_path)
    monkeypatch.setattr(localkafka, "_resolve_jars", resolve)
    heard: list[str] = []
    classpath = localkafka.broker_classpath(heard.append)
    assert classpath.startswith(str(tmp_path))
    assert heard[0].startswith("fetching the Kafka ") and "from Maven Central" in heard[0]
    assert re.fullmatch(r"fetched 2 jars in \d+\.\d s", heard[1]), heard
    heard.clear()
    localkafka.broker_classpath(heard.append)  # kept: nothing to fetch, nothing said
    assert heard == []


def test_free_ports_are_picked_below_the_ephemeral_range_and_bind() -> None:
    """Ports from the ephemeral range can be taken by any client's connection before the
    server they were picked for binds them; ports below it cannot."""
    low = localserver._ephemeral_low()
    for count in (1, 4):
        first = localserver.free_ports(count)
        if low - localserver._UNREACHED_LOW > 1000 + count:
            assert first >= localserver._UNREACHED_LOW and first + count <= low
        assert all(localserver.port_free(first + i) for i in range(count))


def test_a_start_names_the_steps_this_launch_reached_with_their_times(tmp_path: Path) -> None:
    """A node that never served says how far its start went (a slow step is visible), from
    its own launch's lines only: the log is appended to across restarts."""
    from pipeline.dev.localkafka import _Node

    node = _Node(1, tmp_path)
    node.log_file.write_text(
        "[2026-12-07 22:00:00,000] INFO [BrokerServer id=1] Transition from SHUTDOWN to "
        "STARTING (kafka.server.BrokerServer)\n"
        "[2026-12-07 22:00:01,000] INFO [KafkaRaftServer nodeId=1] Kafka Server started\n"
    )
    node.launched_at = node.log_file.stat().st_size  # a restart: the lines above are old
    with node.log_file.open("a") as log:
        log.write(
            "[2026-12-07 22:01:00,100] INFO Registered kafka:type=kafka.Log4jController\n"
            "[2026-12-07 22:01:02,200] INFO [BrokerServer id=1] Transition from SHUTDOWN to "
            "STARTING (kafka.server.BrokerServer)\n"
            "[2026-12-07 22:01:03,300] INFO [BrokerLifecycleManager id=1] Successfully "
            "registered broker 1 with broker epoch 136\n"
            "\tnum.recovery.threads.per.data.dir = 2\n"
            "[2026-12-07 22:02:30,400] INFO Loaded 38 logs in 87000ms (kafka.log.LogManager)\n"
            "[2026-12-07 22:02:31,500] INFO Setting new leader for topicId X, partition 0\n"
        )

    assert node.start_steps() == (
        "22:01:00,100 its first line; 22:01:02,200 broker starting; "
        "22:01:03,300 registered with the controller; 22:02:30,400 logs loaded; "
        "22:02:31,500 its last line"
    )
    assert _Node(2, tmp_path / "none").start_steps() == "no log"


def test_jvm_flags_reach_every_node_after_the_projects_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.dev import localkafka

    launched: list[list[str]] = []

    class Started:
        pid = 4242

        def __init__(self, command: list[str], **_: object) -> None:
            launched.append(command)

    monkeypatch.setattr(localkafka.subprocess, "Popen", Started)
    info = BrokerInfo(pid=0, port=1, controller_port=2, bootstrap="127.0.0.1:1", data_dir="d")
    for flags in ((), localkafka.SHORT_LIVED):
        kafka = LocalKafka(data_dir=tmp_path, jvm_flags=flags)
        kafka._launch("java", "cp", localkafka._Node(1, tmp_path), info, ("-Xmx1g",))

    default, short = launched
    assert "-XX:TieredStopAtLevel=1" not in default  # a benchmark's broker keeps C2
    assert short == [*default[:3], "-XX:TieredStopAtLevel=1", *default[3:]]
    assert default[1:3] == ["-Xmx1g", "-XX:+UseG1GC"]
