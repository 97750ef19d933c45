"""One benchmark run of one contender against a real broker, and what every run shares.

`broker` starts the project's local broker for the benchmark unless one is given;
`BenchTopics` creates the topics (4 partitions each) and deletes them afterwards;
`preload` fills an input topic once with one set of events
(`pipeline.dev.bench.events`) that every run then reads from the start under a fresh
consumer group.

`run_contender` starts a contender's processes, watches the end offsets of its output
topics (one `list_offsets` request every few milliseconds: exact, and cheap for the
broker), and measures throughput as every output record divided by the window from the
last look that found no output to the first look that found them all (`window`), so
start-up and group joins are left out and the window can never be empty: a contender
that writes all its outputs between two looks is timed over that one polling interval
(about 20 ms, so such a figure is a lower bound, as in a quick run), never reported as
0 events/s. A run whose first look already found outputs has no such window and is
"not measured" (a `BenchError`, so its row says why). CPU seconds over the same window
and peak RSS come from `pipeline.dev.bench.procstats`. Once every output is there, the
processes get SIGTERM and are waited for.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from confluent_kafka import IsolationLevel, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    NewTopic,
    OffsetSpec,
)

from pipeline.dev.bench.contenders import Contender, RunTopics
from pipeline.dev.bench.events import Dataset
from pipeline.dev.bench.procstats import ProcessTreeSampler
from pipeline.dev.bench.settings import LOAD_PRODUCER
from pipeline.dev.localkafka import LocalKafka
from pipeline.dev.localserver import free_port
from pipeline.errors import PipelineError

__all__ = [
    "PARTITIONS",
    "BenchError",
    "BenchTopics",
    "Launch",
    "Look",
    "OutputCounter",
    "RunFigures",
    "broker",
    "cluster",
    "preload",
    "run_contender",
    "run_once",
    "window",
]

PARTITIONS: Final = 4
"""Partitions of every topic the benchmark creates."""

_POLL_S = 0.02
_FIRST_OUTPUT_TIMEOUT_S = 120.0
_STOP_TIMEOUT_S = 30.0


class BenchError(PipelineError):
    """A contender failed, or the benchmark's broker or topics could not be set up."""


@contextlib.contextmanager
def broker(bootstrap_servers: str | None) -> Iterator[str]:
    """Yield a bootstrap address: the one given, or a local broker started for the run.

    A broker this starts lives in a temporary directory and is stopped and removed after.
    """
    if bootstrap_servers:
        yield bootstrap_servers
        return
    data_dir = Path(tempfile.mkdtemp(prefix="pipeline-bench-kafka-"))
    local = LocalKafka(data_dir=data_dir)
    info, _ = local.start(port=free_port())
    try:
        yield info.bootstrap
    finally:
        local.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def cluster(nodes: int = 3) -> Iterator[str]:
    """Yield the bootstrap addresses of a local cluster of `nodes` nodes started for the run
    (each broker and controller, on free ports), stopped and removed after."""
    data_dir = Path(tempfile.mkdtemp(prefix="pipeline-bench-cluster-"))
    local = LocalKafka(data_dir=data_dir)
    info, _ = local.start_cluster(nodes=nodes, port=0)
    try:
        yield info.bootstrap
    finally:
        local.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


class BenchTopics:
    """Creates uniquely named topics for one benchmark and deletes them all at the end."""

    def __init__(self, bootstrap: str, *, replication: int = 1) -> None:
        self.bootstrap = bootstrap
        self.replication = replication
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._prefix = f"bench-{uuid.uuid4().hex[:8]}"
        self._created: dict[str, int] = {}

    def create(self, name: str, partitions: int = PARTITIONS) -> str:
        """Create ``<prefix>-<name>-<n>``, wait until it can be read, and return its name."""
        topic = f"{self._prefix}-{name}-{len(self._created)}"
        # replicated as production starts: every replica, and a write needs all but one
        config = {"min.insync.replicas": str(self.replication - 1)} if self.replication > 1 else {}
        new = NewTopic(topic, partitions, self.replication, config=config)
        future = self.admin.create_topics([new], operation_timeout=30)
        future[topic].result(timeout=60)
        self._created[topic] = partitions
        started = time.monotonic()
        while True:  # a new topic's leaders take a moment to be known everywhere
            try:
                self.counter([topic]).count()
                return topic
            except KafkaException:
                waited = time.monotonic() - started
                if waited > 60:
                    raise
                if waited > 5:
                    # Seen once in CI: "No leaders found" for 30 s from one admin client
                    # while the topic was fine; a new client asks the broker afresh.
                    self.admin = AdminClient({"bootstrap.servers": self.bootstrap})
                time.sleep(0.2)

    def counter(self, topics: Sequence[str]) -> OutputCounter:
        """An `OutputCounter` over some of the topics this object created."""
        return OutputCounter(self.admin, {t: self._created[t] for t in topics})

    def group(self, name: str) -> str:
        """A fresh consumer group id."""
        return f"{self._prefix}-{name}-{uuid.uuid4().hex[:6]}"

    def delete(self, *topics: str) -> None:
        """Delete some of the topics this object created (errors are ignored)."""
        mine = [t for t in topics if t in self._created]
        if not mine:
            return
        with contextlib.suppress(Exception):
            for future in self.admin.delete_topics(mine, operation_timeout=30).values():
                future.result(timeout=60)
        for topic in mine:
            del self._created[topic]

    def delete_all(self) -> None:
        """Delete every topic this object created (errors are ignored)."""
        if not self._created:
            return
        with contextlib.suppress(Exception):
            for future in self.admin.delete_topics(
                list(self._created), operation_timeout=30
            ).values():
                future.result(timeout=60)
        self._created.clear()


def preload(
    bootstrap: str,
    topic: str,
    count: int,
    dataset: Dataset,
    encode: Callable[[bytes], bytes] | None = None,
) -> float:
    """Produce `count` events of `dataset` (each JSON value through `encode` first, if
    given: Avro framing, say); return the seconds it took.

    Raises:
        BenchError: Not every event was acknowledged.
    """
    producer = Producer({**LOAD_PRODUCER, "bootstrap.servers": bootstrap})
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    started = time.monotonic()
    tag = uuid.uuid4().hex[:8]
    for key, text in dataset.events(tag, count, time.time_ns() // 1_000_000):
        value = encode(text) if encode else text
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(120)
    if failed or remaining:
        raise BenchError(f"pre-loading {topic} failed: {remaining} unacknowledged, {failed[:1]}")
    return time.monotonic() - started


class OutputCounter:
    """Counts the records on some topics from their end offsets (one request per call).

    Args:
        admin: An admin client of the broker.
        topics: Topic name -> its number of partitions.
    """

    def __init__(self, admin: AdminClient, topics: Mapping[str, int]) -> None:
        self._admin = admin
        self._request = {
            TopicPartition(t, p): OffsetSpec.latest()  # type: ignore[no-untyped-call]
            for t, partitions in topics.items()
            for p in range(partitions)
        }

    def count(self) -> int:
        """The number of records on the topics now."""
        # read_committed: an exactly-once contender's records count once their transaction
        # commits (each commit also adds one marker offset per partition it wrote).
        futures = self._admin.list_offsets(
            self._request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=10
        )
        return sum(f.result().offset for f in futures.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFigures:
    """One run of one contender.

    Attributes:
        events: Output records that appeared within the measured window (all of them).
        seconds: The window: from the last look that found no output to the first look
            that found every output (see `window`).
        throughput: ``events / seconds``.
        cpu_s_per_100k: CPU seconds of the contender's processes in the window, per 100k.
        peak_rss_mb: The largest peak RSS of any one of its processes, MiB.
        peak_rss_sum_mb: Its processes' peak RSS added up, MiB.
        startup_s: From starting the processes to the first output record.
        exit_codes: Each process's exit code after SIGTERM.
    """

    events: int
    seconds: float
    throughput: float
    cpu_s_per_100k: float
    peak_rss_mb: float
    peak_rss_sum_mb: float
    startup_s: float
    exit_codes: list[int]


@dataclass(frozen=True, slots=True)
class Look:
    """One read of the output count.

    Attributes:
        at: When (``time.monotonic()``, the middle of the request).
        count: Output records on the topics then.
        cpu_s: CPU seconds the contender's processes had used then (0 where not sampled).
    """

    at: float
    count: int
    cpu_s: float = 0.0


def window(start: Look | None, end: Look) -> tuple[int, float, float]:
    """The measured window from `start` to `end`: (events, seconds, CPU seconds).

    Args:
        start: The last look that found no output yet; None when the first look already
            found some (then nothing bounds when the outputs began).
        end: The first look that found every output.

    Raises:
        BenchError: "not measured": no look before the first output, or no output or no
            time between the two looks. Never a window of 0 events or 0 seconds.
    """
    if start is None:
        raise BenchError(
            f"not measured: the first look at the output topics already found {end.count} "
            "outputs, so nothing bounds when they began; run more events"
        )
    events, seconds = end.count - start.count, end.at - start.at
    if events <= 0 or seconds <= 0:
        raise BenchError(
            f"not measured: {events} outputs in {seconds:.6f} s between the last look "
            f"without output ({start}) and the last look ({end})"
        )
    return events, seconds, end.cpu_s - start.cpu_s


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start a contender: one command per process, the environment, where to log."""

    commands: list[list[str]]
    env: Mapping[str, str]
    log_path: Path
    cwd: Path | None = None


def run_contender(
    launch: Launch,
    counter: OutputCounter,
    *,
    count: int,
    timeout_s: float,
    before_stop: Callable[[], object] | None = None,
) -> RunFigures:
    """Start the processes, wait until `count` outputs exist, stop them; return the figures.

    `before_stop`, if given, is called once every output exists, before the processes are
    stopped (to read something from them while they run).

    Raises:
        BenchError: No output within the start-up timeout, not all outputs within
            `timeout_s`, or every process exited before the outputs were complete.
    """
    launch.log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **launch.env}
    with launch.log_path.open("ab") as log:
        started = time.monotonic()
        procs = [
            subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=launch.cwd)
            for cmd in launch.commands
        ]
        try:
            with ProcessTreeSampler([p.pid for p in procs]) as sampler:
                before, first = _wait_for(
                    procs,
                    counter,
                    1,
                    started + _FIRST_OUTPUT_TIMEOUT_S,
                    launch.log_path,
                    cpu=sampler.cpu_seconds,
                )
                _, end = _wait_for(procs, counter, count, started + timeout_s, launch.log_path)
                end = replace(end, cpu_s=sampler.cpu_seconds())
                if before_stop is not None:
                    before_stop()
                codes = _stop(procs)
                tree = sampler.figures()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    events, seconds, cpu_s = window(before, end)
    return RunFigures(
        events=events,
        seconds=seconds,
        throughput=events / seconds,
        cpu_s_per_100k=cpu_s / events * 100_000,
        peak_rss_mb=tree.peak_rss_mb,
        peak_rss_sum_mb=tree.peak_rss_sum_mb,
        startup_s=first.at - started,
        exit_codes=codes,
    )


def _wait_for(
    procs: list[subprocess.Popen[bytes]],
    counter: OutputCounter,
    target: int,
    deadline: float,
    log_path: Path,
    *,
    cpu: Callable[[], float] | None = None,
) -> tuple[Look | None, Look]:
    """Poll the output count until it reaches `target`; return the last look short of it
    (None if the first look reached it) and the first look that reached it.

    `cpu`, if given, is read after every look short of `target` (the window's start).

    Raises:
        BenchError: The deadline passed, or every process exited short of `target`.
    """
    short: Look | None = None
    while True:
        asked = time.monotonic()
        n = counter.count()
        now = time.monotonic()
        if n >= target:
            return short, Look((asked + now) / 2, n)
        short = Look((asked + now) / 2, n, cpu() if cpu is not None else 0.0)
        if all(p.poll() is not None for p in procs) and counter.count() < target:
            raise BenchError(
                f"the contender exited (codes {[p.returncode for p in procs]}) after {n} of "
                f"{target} outputs; see {log_path}:\n{_tail(log_path)}"
            )
        if now > deadline:
            raise BenchError(
                f"only {n} of {target} outputs before the timeout; see {log_path}:\n"
                f"{_tail(log_path)}"
            )
        time.sleep(_POLL_S)


def _stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every process still running, wait for each, SIGKILL a straggler."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(_STOP_TIMEOUT_S))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def run_once(
    c: Contender,
    topics: BenchTopics,
    source: str,
    count: int,
    model: str,
    log_path: Path,
    *,
    slowest_events_per_s: float,
    before_stop: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """One run of `c` from `source` into output and DLQ topics of its own, deleted after.

    The run may take 120 s plus `count` events at `slowest_events_per_s`; a failed run is a
    row with its error and log, not an exception, so the other contenders still run.
    """
    run = RunTopics(
        bootstrap=topics.bootstrap,
        input=source,
        output=topics.create(c.key),
        dlq=topics.create(f"{c.key}-dlq"),
        group=topics.group(c.key),
    )
    launch = Launch(c.commands(run, count, model), c.env, log_path, cwd=c.root)
    try:
        figures = run_contender(
            launch,
            topics.counter([run.output, run.dlq]),
            count=count,
            timeout_s=120 + count / slowest_events_per_s,
            before_stop=before_stop,
        )
    except BenchError as exc:
        return {"events_target": count, "error": str(exc), "log": str(log_path)}
    finally:
        topics.delete(run.output, run.dlq)  # the broker's disk holds one run's outputs
    return {"events_target": count, **asdict(figures), "log": str(log_path)}
