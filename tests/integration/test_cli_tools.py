"""`pipeline produce` and `pipeline consume` against the real broker, as kcat users expect."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from pipeline import exitcodes

from .kafkaio import read_all, send, wait_until_loaded


def _pipeline(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_produce_sends_json_lines_keyed_by_id_and_raw_lines_unkeyed(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=2)
    lines = '{"id": "a", "features": [1]}\n\n{"id": "b", "features": [2]}\nnot json\n'
    done = _pipeline("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                     "--file", "-", stdin=lines)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"sent 3 events to {topic}" in done.stderr
    got = read_all(kafka_bootstrap, [topic], expect=3, settle_s=0.5)
    assert sorted(((r.key, r.value) for r in got), key=lambda kv: kv[0] or b"") == [
        (None, b"not json"),
        (b"a", b'{"id": "a", "features": [1]}'),
        (b"b", b'{"id": "b", "features": [2]}'),
    ]


def test_produce_synthetic_at_a_rate_then_consume_prints_json_lines_with_headers(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=1)
    done = _pipeline("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                     "--synthetic", "breast-cancer-mlp", "--count", "200", "--rate", "400")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"sent 200 events to {topic}" in done.stderr
    send(kafka_bootstrap, topic, [(b"k", b"\xff raw", [("pipeline.error.stage", b"decode")])])
    shown = _pipeline("consume", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                      "--from-beginning", "--count", "201", "--exit", "--timeout", "20")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    records = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert len(records) == 201
    first = records[0]
    assert first["value"]["model"] == "breast-cancer-mlp" and len(first["value"]["features"]) == 30
    assert first["key"].startswith("entity-") and first["offset"] == 0
    assert records[-1]["headers"] == {"pipeline.error.stage": "decode"}
    assert records[-1]["value"] == "\ufffd raw"  # not JSON: shown as text, replaced bytes marked


def _consume(bootstrap: str, topic: str, *args: str) -> list[dict[str, object]]:
    done = _pipeline("consume", "--bootstrap-servers", bootstrap, "--topic", topic, *args)
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


def test_consume_follows_until_interrupted_and_exits_0(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=2)
    send(kafka_bootstrap, topic, [(b"old", b'{"n": 0}')])
    command = [sys.executable, "-m", "pipeline", "consume", "--bootstrap-servers",
               kafka_bootstrap, "--topic", topic]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as reader:
        try:
            # It starts at the end, once it has found the end (seconds on a busy machine),
            # so a new record goes every half second until one is shown: the first line
            # must be a new one, never the old.
            assert reader.stdout is not None
            deadline = time.monotonic() + 60
            while not select.select([reader.stdout], [], [], 0.5)[0]:
                assert reader.poll() is None, "consume exited before it showed a record"
                assert time.monotonic() < deadline, "consume showed no new record in 60 s"
                send(kafka_bootstrap, topic, [(b"new", b'{"n": 1}')])
            line = reader.stdout.readline()
            assert orjson.loads(line)["key"] == "new"
            assert reader.poll() is None  # still running: it follows
            reader.send_signal(signal.SIGINT)
            assert reader.wait(30) == exitcodes.OK
        finally:
            if reader.poll() is None:
                reader.kill()


def test_a_ctrl_c_while_consume_starts_still_exits_0(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """Ctrl-C while it reaches the broker and assigns the partitions (a slow machine takes
    seconds) is kept and honoured once it can stop: exit 0, not 130. The signal goes as
    soon as the command has loaded the Kafka client (the command keeps stop signals from
    just before), with SIGINT's default action restored in the child (an xdist worker
    ignores it, and so would the child)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs /proc to see when the command has loaded the Kafka client")
    topic = make_topic(partitions=1)
    command = [sys.executable, "-m", "pipeline", "consume", "--bootstrap-servers",
               kafka_bootstrap, "--topic", topic]  # fmt: skip
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    try:
        wait_until_loaded(p.pid)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == exitcodes.OK, err.decode()[-2000:]
    assert b"Traceback" not in err


def test_consume_exit_stops_at_the_end_of_every_partition(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=3)
    send(kafka_bootstrap, topic, [(f"k{i}".encode(), b"{}") for i in range(9)])

    records = _consume(kafka_bootstrap, topic, "--from-beginning", "--exit")
    empty = _consume(kafka_bootstrap, topic, "--exit")  # from the end: nothing, and it stops

    assert len(records) == 9 and empty == []


def test_consume_partition_and_offsets(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=2)
    send(kafka_bootstrap, topic, [(b"a", f'{{"n": {i}}}'.encode()) for i in range(5)], partition=1)
    send(kafka_bootstrap, topic, [(b"b", b'{"n": 9}')], partition=0)

    exact = _consume(kafka_bootstrap, topic, "--partition", "1", "--offset", "3", "--exit")
    last_two = _consume(kafka_bootstrap, topic, "--offset", "-2", "--exit")
    later = _consume(
        kafka_bootstrap, topic, "--offset", f"s@{int(time.time() * 1000) + 60_000}", "--exit"
    )

    assert [(r["partition"], r["offset"]) for r in exact] == [(1, 3), (1, 4)]
    assert sorted((r["partition"], r["offset"]) for r in last_two) == [(0, 0), (1, 3), (1, 4)]
    assert later == []


def test_consume_in_a_group_commits_and_resumes(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=1)
    group = f"g-{uuid.uuid4().hex[:8]}"
    send(kafka_bootstrap, topic, [(None, f'{{"n": {i}}}'.encode()) for i in range(4)])

    first = _consume(kafka_bootstrap, topic, "--group", group, "--from-beginning", "--count", "3")
    rest = _consume(kafka_bootstrap, topic, "--group", group, "--exit", "--timeout", "30")

    assert [r["offset"] for r in first] == [0, 1, 2]
    assert [r["offset"] for r in rest] == [3]


def test_consume_prints_values_and_keys_like_kcat(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=1)
    send(kafka_bootstrap, topic, [(b"k1", b'{"a": 1}'), (None, b"plain")])

    done = _pipeline("consume", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                     "--from-beginning", "--exit", "--format", "value", "-K", "\t")  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['k1\t{"a": 1}', "\tplain"]


def test_produce_takes_keys_headers_and_a_partition(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=3)
    lines = 'one|{"id": "a"}\ntwo|{"id": "b"}\nno delimiter\n'

    done = _pipeline("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                     "--file", "-", "-K", "|", "-H", "traceparent=00-ab-cd-01", "-H", "team=x",
                     "--partition", "2", stdin=lines)  # fmt: skip

    assert done.returncode == 0, done.stderr
    got = read_all(kafka_bootstrap, [topic], expect=3, settle_s=0.5)
    assert {r.partition for r in got} == {2}
    assert [(r.key, r.value) for r in sorted(got, key=lambda r: r.offset)] == [
        (b"one", b'{"id": "a"}'), (b"two", b'{"id": "b"}'), (None, b"no delimiter"),
    ]  # fmt: skip
    assert all(r.headers == {"traceparent": b"00-ab-cd-01", "team": b"x"} for r in got)


def test_produce_and_consume_read_the_settings_file_like_run(
    kafka_bootstrap: str, make_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic = make_topic(partitions=1)
    config = tmp_path / "client.toml"
    config.write_text(
        f'bootstrap_servers = "{kafka_bootstrap}"\n[kafka]\n"client.id" = "from-the-file"\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}

    produced = subprocess.run(
        [sys.executable, "-m", "pipeline", "produce", "--config", str(config), "--topic", topic,
         "--synthetic", "breast-cancer-mlp", "--count", "3"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    shown = subprocess.run(
        [sys.executable, "-m", "pipeline", "consume", "--topic", topic, "--from-beginning",
         "--exit", "--timeout", "30"],
        capture_output=True, text=True, timeout=120, env={**env, "PIPELINE_CONFIG": str(config)},
    )  # fmt: skip

    assert produced.returncode == 0, produced.stderr
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == 3


def test_produce_that_cannot_deliver_exits_5(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    # The broker answers, but the topic has no partition 7: nothing can be delivered.
    done = _pipeline("produce", "--bootstrap-servers", kafka_bootstrap, "--topic",
                     make_topic(partitions=1), "--partition", "7", "--synthetic", "m",
                     "--count", "2", "-X", "message.timeout.ms=2000")  # fmt: skip

    assert done.returncode == exitcodes.DELIVERY_FAILED == 5, done.stderr
    assert "event 1 could not be sent" in done.stderr and "--partition" in done.stderr


def test_consume_in_a_group_commits_only_what_it_printed(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=5)
    group = f"g-{uuid.uuid4().hex[:8]}"
    for p in range(5):  # one record on each partition
        send(kafka_bootstrap, topic, [(None, f'{{"p": {p}}}'.encode())], partition=p)

    first = _consume(kafka_bootstrap, topic, "--group", group, "--from-beginning", "--count", "3")
    rest = _consume(kafka_bootstrap, topic, "--group", group, "--exit", "--timeout", "30")

    shown = sorted(r["partition"] for r in first + rest)  # type: ignore[type-var]
    assert (len(first), shown) == (3, [0, 1, 2, 3, 4]), (first, rest)


def test_topics_and_groups_show_what_is_held_and_each_partitions_lag(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    """Issue 26 item 11: a topic and consumer-group view with per-partition lag, as
    kcat -L and kafka-consumer-groups.sh --describe give."""
    topic = make_topic(partitions=2)
    group = f"g-{uuid.uuid4().hex[:8]}"
    for p, n in ((0, 3), (1, 2)):
        send(kafka_bootstrap, topic, [(None, b'{"x": 1}')] * n, partition=p)
    first = _consume(kafka_bootstrap, topic, "--group", group, "--from-beginning", "--count", "2",
                     "--partition", "0")  # fmt: skip
    assert len(first) == 2

    topics = _pipeline("topics", "--bootstrap-servers", kafka_bootstrap)
    assert topics.returncode == 0, topics.stderr
    row = next(line.split() for line in topics.stdout.splitlines() if line.startswith(topic))
    assert row == [topic, "2", "1", "5"]  # partitions, replicas, records held
    assert "__consumer_offsets" not in topics.stdout

    groups = _pipeline("groups", "--bootstrap-servers", kafka_bootstrap)
    assert groups.returncode == 0, groups.stderr
    listed = [line.split() for line in groups.stdout.splitlines()]
    assert [group, "classic", "empty"] in listed, groups.stdout  # the classic group protocol

    described = _pipeline("groups", "describe", group, "--bootstrap-servers", kafka_bootstrap)
    assert described.returncode == 0, described.stderr
    lines = described.stdout.splitlines()
    assert lines[0] == f"group {group}: empty, 0 members, lag 1"
    assert lines[1].split() == ["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER"]
    assert [line.split() for line in lines[2:]] == [[topic, "0", "2", "3", "1", "-"]]

    unknown = _pipeline("groups", "describe", "no-such-group", "--bootstrap-servers",
                        kafka_bootstrap)  # fmt: skip
    assert unknown.returncode == exitcodes.KAFKA_FATAL, unknown.stderr
    assert "has no committed offsets and no members" in unknown.stderr
