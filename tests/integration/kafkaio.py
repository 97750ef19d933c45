"""Test helpers that talk to the real broker: send events, read topics back, run workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer

from pipeline.dev.localserver import free_port as free_port  # the tests' port picker

ROOT = Path(__file__).resolve().parents[2]
R = TypeVar("R")

# A killed member holds its partitions until its session times out (45 s by default), so
# every kill would stall the suite for that long. 6 s is the broker's smallest allowed
# session timeout; heartbeats run on librdkafka's own threads, so a busy machine does not
# make a live worker miss them.
FAST_FAILOVER = ("-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=1500")


def wait_until_loaded(pid: int, library: str = "confluent_kafka", timeout_s: float = 60) -> None:
    """Wait until process `pid` has mapped `library` (it is past its imports), or until
    `timeout_s`: a Ctrl-C sent earlier interrupts Python's imports, which takes more than a
    few seconds on a loaded machine. Returns at once where there is no /proc."""
    maps = Path(f"/proc/{pid}/maps")
    deadline = time.monotonic() + timeout_s
    while maps.exists() and time.monotonic() < deadline:
        try:
            if library in maps.read_text():
                return
        except OSError:  # the process is gone
            return
        time.sleep(0.005)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes | None]

    @property
    def json(self) -> Any:
        return orjson.loads(self.value) if self.value else None


# One idempotent producer per broker for the whole test process: a fresh one spends about
# 0.5 s before its first acknowledgement (its producer id), which a test that sends in
# chunks, such as a paced background stream, paid on every chunk.
_PRODUCERS: dict[str, Producer] = {}


def drop_producers(bootstrap: str) -> None:
    """Close the cached producers of a broker (or cluster) that is going away for good, so
    they do not log a refused connection every second for the rest of the process."""
    gone = set(bootstrap.split(","))
    for key in [k for k in _PRODUCERS if gone & set(k.split(","))]:
        _PRODUCERS.pop(key).flush(0)


def send(
    bootstrap: str,
    topic: str,
    events: Iterable[
        tuple[bytes | None, bytes | None]
        | tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]
    ],
    *,
    partition: int | None = None,
) -> int:
    """Produce events (key, value[, headers]) and wait until all are acknowledged."""
    producer = _PRODUCERS.get(bootstrap)
    if producer is None:
        producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
        )
        _PRODUCERS[bootstrap] = producer
    failed: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _: Message) -> None:
        if err is not None:
            failed.append(err)

    n = 0
    for event in events:
        key, value = event[0], event[1]
        headers = event[2] if len(event) > 2 else None  # type: ignore[misc]
        kwargs: dict[str, Any] = {"headers": headers, "on_delivery": on_delivery}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, value, key, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        producer.poll(0)
    unsent = producer.flush(60)
    if unsent or failed:
        # a broker that went away or a refused send (fault tests) must not leave later tests
        # a stuck or fenced producer
        _PRODUCERS.pop(bootstrap, None)
    assert unsent == 0, f"{unsent} events not acknowledged by {bootstrap} within 60 s"
    return n


def good_events(
    n: int, *, model: str | None = "breast-cancer-mlp", run: str | None = None, **extra: Any
) -> list[tuple[bytes, bytes]]:
    """`n` valid events with unique ids and real breast-cancer rows; keys cycle over 50 entities."""
    from pipeline.dev.tools import _sample_rows

    rows = _sample_rows()
    run = run or uuid.uuid4().hex[:8]
    out = []
    for i in range(n):
        event: dict[str, Any] = {"id": f"{run}-{i}", "features": rows[i % len(rows)], **extra}
        if model is not None:
            event["model"] = model
        out.append((f"entity-{i % 50}".encode(), orjson.dumps(event)))
    return out


def verify_consumer(bootstrap: str, topics: Sequence[str]) -> Consumer:
    """A consumer in a fresh group, reading `topics` from the beginning, read_committed."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # topics the worker has yet to create show up within a second, not five minutes
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    consumer.subscribe(list(topics))
    return consumer


def checked(msgs: Iterable[Message]) -> Iterator[Message]:
    """The records among `msgs`. A reader may subscribe before the worker created its output
    topics; the broker's "unknown topic" answer then is expected, and the reader keeps
    waiting. Any other consumer error fails the test."""
    for m in msgs:
        error = m.error()
        if error is None:
            yield m
        elif error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise AssertionError(f"the verifying consumer failed: {error}")


def read_settled(
    bootstrap: str,
    topics: Sequence[str],
    *,
    convert: Callable[[Message], R],
    complete: Callable[[list[R]], bool],
    timeout_s: float,
    settle_s: float,
) -> list[R]:
    """Read `topics` from the beginning (read_committed), each record through `convert`,
    until `complete` (given each turn's new records) says all wanted records came and then
    `settle_s` passed with nothing new (to catch duplicates), or `timeout_s` passed."""
    consumer = verify_consumer(bootstrap, topics)
    records: list[R] = []
    deadline = time.monotonic() + timeout_s
    quiet_since: float | None = None
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, 0.2)
            new = [convert(m) for m in checked(msgs)]
            records += new
            if not complete(new):
                continue
            if msgs or quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= settle_s:
                break
    finally:
        consumer.close()
    return records


def read_all(
    bootstrap: str,
    topics: Sequence[str],
    *,
    expect: int,
    timeout_s: float = 60.0,
    settle_s: float = 1.5,
) -> list[Record]:
    """Read topics from the beginning (read_committed) until `expect` records came and then
    `settle_s` passed with nothing new (to catch duplicates), or `timeout_s` passed."""
    count = 0

    def complete(new: list[Record]) -> bool:
        nonlocal count
        count += len(new)
        return count >= expect

    def convert(m: Message) -> Record:
        headers = dict(m.headers() or [])
        return Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), headers)

    return read_settled(
        bootstrap, topics, convert=convert, complete=complete, timeout_s=timeout_s,
        settle_s=settle_s,
    )  # fmt: skip


def wait_for_outputs(bootstrap: str, topic: str, n: int, timeout_s: float = 60.0) -> None:
    """Wait until `topic` holds at least `n` records (read_committed): work is flowing."""
    consumer = verify_consumer(bootstrap, [topic])
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < n:
            assert time.monotonic() < deadline, f"{seen} of {n} records on {topic} in {timeout_s} s"
            seen += sum(1 for _ in checked(consumer.consume(1000, 0.2)))
    finally:
        consumer.close()


@dataclass
class Accounting:
    """Where each input id ended: predictions and dead letters, with duplicates counted."""

    predicted: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, predictions: Iterable[Record], dead_letters: Iterable[Record]) -> Accounting:
        acc = cls()
        for r in predictions:
            acc.predicted[r.json["id"]] += 1
        for r in dead_letters:
            acc.dead[dead_letter_identity(r)] += 1
        return acc

    def lost(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if i not in self.predicted and i not in self.dead]

    def duplicates(self) -> int:
        both = set(self.predicted) & set(self.dead)
        return (
            sum(c - 1 for c in self.predicted.values())
            + sum(c - 1 for c in self.dead.values())
            + len(both)
        )


def dead_letter_identity(r: Record) -> str:
    """A dead letter's event id if its value parses with one, else its source position."""
    try:
        value = orjson.loads(r.value or b"")
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return value["id"]
    except orjson.JSONDecodeError:
        pass
    h = r.headers
    return f"{h['pipeline.source.topic'].decode()}:{h['pipeline.source.partition'].decode()}:{h['pipeline.source.offset'].decode()}"  # type: ignore[union-attr]


class WorkerProcess:
    """`pipeline run` in a subprocess, its log kept in a file for the test to read."""

    command: tuple[str, ...] = ("-m", "pipeline", "run")  # after the interpreter

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.command, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Kill the worker if the test left it running (say, an assertion failed)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str | re.Pattern[str], timeout_s: float = 30.0) -> None:
        """Wait for `text` (a substring, or a compiled pattern to search for) in the log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text.search(self.log) if isinstance(text, re.Pattern) else text in self.log:
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited {self.proc.returncode} before {text!r}:\n{self.log[-3000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(
            f"no {text!r} in the worker log within {timeout_s} s:\n{self.log[-3000:]}"
        )

    def wait(self, timeout_s: float) -> int:
        """Wait for the worker to exit by itself; return its exit code."""
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> tuple[int, float]:
        """Send `sig`, wait; return (exit code, seconds it took)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"worker did not exit within {timeout_s} s of {sig}:\n{self.log[-3000:]}"
            ) from None
        finally:
            self._log.close()
        return code, time.monotonic() - started
