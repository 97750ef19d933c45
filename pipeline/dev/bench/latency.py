"""Event-to-prediction latency of the worker under an open-loop producer.

For one way of batching (a ``--max-wait-ms``, or a ``--latency-target-ms``) the worker
is started on fresh topics, and once its group has its partitions, a producer in a
separate process sends events at a fixed rate for each phase in turn (lowest load
first; a phase may first leave the worker idle, to show how it wakes up). It does not
slow down when the worker falls behind (open loop): event ``n`` of a phase is due
``n / rate`` seconds after the phase starts, and its ``ts`` field is that due time, so
a producer that lags shows up as latency instead of hiding it. A consumer of the output
topic takes, for every prediction, its receive time (when ``consume`` returned it) minus
``ts``: the end-to-end latency. The worker's own ``predicted_at - ts`` is kept beside
it, and so is how busy the machine's CPUs were (worker, broker, producer and this
reader share them). The first ``warmup_s`` of each phase is left out. The worker serves
``/metrics``, scraped before and after each phase: its stage histograms
(`pipeline.dev.bench.stages`) say where the time went. A phase may split its measured
seconds into windows, each with its own percentiles: a tail target holds in every window,
not only over the whole.

The reader keeps Python's cyclic garbage collector off while it collects a phase: it
holds a tuple per prediction, and a full collection over them (40 ms once, seen here)
delays its receive times, which would count against the worker.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import orjson
import psutil
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition

from pipeline.dev.bench import stages
from pipeline.dev.bench.contenders import RunTopics, worker_contender
from pipeline.dev.bench.events import Dataset, dataset
from pipeline.dev.bench.procstats import ProcessTreeSampler
from pipeline.dev.bench.runner import PARTITIONS, BenchError, BenchTopics
from pipeline.dev.bench.settings import LOAD_PRODUCER
from pipeline.dev.localserver import free_port

__all__ = ["Batching", "LatencyPoint", "Phase", "Window", "measure_latency", "open_loop"]

_GROUP_READY_TIMEOUT_S = 60.0
_DRAIN_TIMEOUT_S = 20.0
# the reader may see a prediction before the worker has handled its acknowledgement
_ACKS_COUNTED_S = 0.5
_TIMES = re.compile(rb'"ts":(\d+),"predicted_at":(\d+)')


class Window(TypedDict):
    """One window of a phase's measured seconds; latencies end to end, in milliseconds."""

    events: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None


class LatencyPoint(TypedDict):
    """One (batching, phase) point; latencies in milliseconds."""

    batching: str
    max_wait_ms: float
    latency_target_ms: float | None
    phase: str
    load: float | None
    rate: float
    events: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    worker_p50_ms: float | None
    worker_p99_ms: float | None
    produced_rate: float
    producer_max_lag_ms: float
    missing: int
    worker_peak_rss_mb: float
    machine_cpu_busy: float
    worker_cpu_cores: float
    stages: dict[str, dict[str, Any]]
    window_s: float | None
    windows: list[Window]


@dataclass(frozen=True, slots=True)
class Batching:
    """How the worker batches: a fixed ``--max-wait-ms``, or a ``--latency-target-ms``."""

    max_wait_ms: float = 5.0
    latency_target_ms: float | None = None

    @property
    def label(self) -> str:
        if self.latency_target_ms:
            return f"--latency-target-ms {self.latency_target_ms:g}"
        return f"--max-wait-ms {self.max_wait_ms:g}"


@dataclass(frozen=True, slots=True)
class Phase:
    """One load step.

    Attributes:
        label: What the table calls it (``50%``, ``2,000 events/s``, ...).
        rate: Events per second.
        load: The rate's share of the worker's measured maximum, if it is one.
        seconds: Seconds measured, after `warmup_s`.
        warmup_s: Seconds sent first and left out.
        idle_before_s: Seconds the worker is left without events before the phase.
        windows: Equal windows the measured seconds are split into, each with its own
            percentiles (1: the phase as a whole only).
    """

    label: str
    rate: float
    load: float | None
    seconds: float
    warmup_s: float
    idle_before_s: float = 0.0
    windows: int = 1


_PRODUCERS: dict[str, Producer] = {}  # the load producer per broker, kept by its process


def _load_producer(bootstrap: str) -> Producer:
    producer = _PRODUCERS.get(bootstrap)
    if producer is None:
        producer = _PRODUCERS[bootstrap] = Producer(
            {**LOAD_PRODUCER, "bootstrap.servers": bootstrap}
        )
    return producer


def warm_up(bootstrap: str, topic: str, events: str = "full") -> None:
    """Connect the process's load producer and send one event (id ``warm-up-0``, which no
    phase counts), before the first phase and any idle spell.

    A new producer's first events wait for its metadata and its idempotent producer id:
    about half a second here, which, counted against the worker, was most of the
    "after an idle spell" figure (about 550 ms in every way of batching) and of the
    first half second of every phase.
    """
    producer = _load_producer(bootstrap)
    producer.produce(topic, dataset(events).maker("warm-up")(0, time.time_ns() // 1_000_000))
    if producer.flush(30):
        raise BenchError(f"the load producer could not deliver to {topic} within 30 s")


def open_loop(
    bootstrap: str, topic: str, tag: str, rate: float, seconds: float, events: str = "full"
) -> dict[str, float]:
    """Send ``rate * seconds`` events of the set named `events` at `rate`, ids
    ``<tag>-<n>``, ``ts`` = due time (ms), with the process's load producer (`warm_up`
    connects it first).

    Returns:
        ``sent``, ``seconds`` taken, and ``max_lag_ms``: how far the producer fell behind.
    """
    make = dataset(events).maker(tag)
    producer = _load_producer(bootstrap)
    total = int(rate * seconds)
    start_wall_ms = time.time_ns() / 1e6
    start = time.monotonic()
    sent, max_lag = 0, 0.0
    while sent < total:
        elapsed = time.monotonic() - start
        due = min(total, int(elapsed * rate) + 1)
        if due <= sent:
            time.sleep(max(0.0, min(0.001, sent / rate - elapsed)))
            continue
        max_lag = max(max_lag, elapsed - sent / rate)
        for n in range(sent, due):
            value = make(n, round(start_wall_ms + n * 1000 / rate))
            while True:
                try:
                    producer.produce(topic, value, f"entity-{n % 1000}".encode())
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
        sent = due
    producer.flush(30)
    return {"sent": sent, "seconds": time.monotonic() - start, "max_lag_ms": max_lag * 1000}


def measure_latency(
    topics: BenchTopics,
    batching: Batching,
    phases: Sequence[Phase],
    *,
    events: Dataset,
    log_path: Path,
) -> list[LatencyPoint]:
    """Run ``pipeline run`` (1 process, batching as `batching` says) on fresh topics and
    measure each phase in turn.

    Raises:
        BenchError: The worker did not get its partitions, or exited.
    """
    run = RunTopics(
        bootstrap=topics.bootstrap,
        input=topics.create("lat-in"),
        output=topics.create("lat-out"),
        dlq=topics.create("lat-dlq"),
        group=topics.group("lat"),
    )
    port = free_port()
    worker = worker_contender(
        1,
        batching.max_wait_ms,
        latency_target_ms=batching.latency_target_ms,
        extra_args=("--metrics-port", str(port)),
    )
    (command,) = worker.commands(run, 0)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        env = {**os.environ, **worker.env}
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with ProcessTreeSampler([proc.pid]) as sampler, _output_reader(run) as reader:
            _wait_for_assignment(topics, run.group, proc)
            points: list[LatencyPoint] = []
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                pool.submit(warm_up, run.bootstrap, run.input, events.key).result()
                for phase in phases:
                    time.sleep(phase.idle_before_s)
                    before = stages.scrape(port)
                    measured = _phase(pool, run, reader, proc, sampler, phase, events.key)
                    time.sleep(_ACKS_COUNTED_S)
                    after = stages.scrape(port)
                    figures = stages.stage_figures(before, after)
                    points.append(_point(batching, phase, *measured, sampler, figures))
            return points
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _phase(
    pool: ProcessPoolExecutor,
    run: RunTopics,
    reader: _OutputReader,
    proc: subprocess.Popen[bytes],
    sampler: ProcessTreeSampler,
    phase: Phase,
    events: str,
) -> tuple[dict[str, float], list[tuple[int, float, float]], float, float]:
    """Produce one phase in the pool while reading its predictions.

    Returns:
        What the producer reports, what the reader got, the share of the machine's CPU
        time that was busy, and the CPU cores the worker used, on average.
    """
    tag = f"p{uuid.uuid4().hex[:6]}"
    total_s = phase.seconds + phase.warmup_s
    psutil.cpu_percent()  # starts the phase's measurement of the machine
    started, worker_cpu = time.monotonic(), sampler.cpu_seconds()
    sending = pool.submit(open_loop, run.bootstrap, run.input, tag, phase.rate, total_s, events)
    got = reader.collect(tag, int(phase.rate * total_s), proc)
    busy = psutil.cpu_percent() / 100
    worker_cores = (sampler.cpu_seconds() - worker_cpu) / (time.monotonic() - started)
    return sending.result(), got, busy, worker_cores


def _wait_for_assignment(topics: BenchTopics, group: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait until the group's members hold every input partition."""
    deadline = time.monotonic() + _GROUP_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the worker exited with code {proc.returncode} while starting")
        with contextlib.suppress(Exception):
            desc = topics.admin.describe_consumer_groups([group])[group].result(timeout=10)
            held = sum(len(m.assignment.topic_partitions) for m in desc.members)
            if held >= PARTITIONS:
                return
        time.sleep(0.2)
    raise BenchError(f"group {group} did not get its {PARTITIONS} partitions in time")


class _OutputReader:
    """Reads predictions from the output topic and keeps each phase's latencies."""

    def __init__(self, run: RunTopics) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": run.bootstrap,
                "group.id": f"lat-reader-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.min.bytes": 1,
            }
        )
        self._consumer.assign(
            [TopicPartition(run.output, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )

    def collect(
        self, tag: str, expected: int, proc: subprocess.Popen[bytes]
    ) -> list[tuple[int, float, float]]:
        """Read until `expected` predictions of phase `tag` arrived (or a timeout).

        Returns:
            ``(ts, end-to-end ms, worker ms)`` for each prediction of the phase.
        """
        prefix = f'"id":"{tag}-'.encode()
        got: list[tuple[int, float, float]] = []
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S + expected / 1000
        gc.disable()  # tuples of numbers hold no cycles: nothing to collect, nothing to pause
        try:
            while len(got) < expected and time.monotonic() < deadline and proc.poll() is None:
                msgs = self._receive()
                received_ms = time.time_ns() / 1e6
                for msg in msgs:
                    value = msg.value()
                    if msg.error() is not None or not value or prefix not in value:
                        continue
                    ts, predicted_at = _times(value)
                    got.append((ts, received_ms - ts, float(predicted_at - ts)))
        finally:
            gc.enable()
        return got

    def _receive(self) -> list[Message]:
        """Wait up to 50 ms for one record, then take whatever else is already here.

        (``consume(n, timeout)`` alone would wait for `n` records or the whole timeout.)
        """
        first = self._consumer.poll(0.05)
        return [] if first is None else [first, *self._consumer.consume(999, 0)]

    def close(self) -> None:
        self._consumer.close()


def _times(value: bytes) -> tuple[int, int]:
    """A prediction's ``ts`` and ``predicted_at``, without parsing the whole document."""
    match = _TIMES.search(value)
    if match is not None:
        return int(match.group(1)), int(match.group(2))
    doc: dict[str, Any] = orjson.loads(value)
    return int(doc["ts"]), int(doc["predicted_at"])


@contextlib.contextmanager
def _output_reader(run: RunTopics) -> Any:
    reader = _OutputReader(run)
    try:
        yield reader
    finally:
        reader.close()


def _point(
    batching: Batching,
    phase: Phase,
    sent: dict[str, float],
    got: list[tuple[int, float, float]],
    machine_cpu_busy: float,
    worker_cpu_cores: float,
    sampler: ProcessTreeSampler,
    stage_figures: dict[str, dict[str, Any]],
) -> LatencyPoint:
    first_ts = min((ts for ts, _, _ in got), default=0)
    measured_from = first_ts + phase.warmup_s * 1000
    kept = [row for row in got if row[0] >= measured_from]
    ts = np.array([row[0] for row in kept], dtype=np.float64)
    e2e = np.array([row[1] for row in kept]) if kept else None
    own = np.array([row[2] for row in kept]) if kept else None
    window_s = phase.seconds / phase.windows if phase.windows > 1 else None
    windows: list[Window] = []
    if window_s is not None:
        index = np.minimum((ts - measured_from) // (window_s * 1000), phase.windows - 1)
        for n in range(phase.windows):
            windows.append(_window(e2e[index == n] if e2e is not None else np.empty(0)))

    def pct(values: Any, q: float) -> float | None:
        return None if values is None else float(np.percentile(values, q))

    return {
        "batching": batching.label,
        "max_wait_ms": batching.max_wait_ms,
        "latency_target_ms": batching.latency_target_ms,
        "phase": phase.label,
        "load": phase.load,
        "rate": phase.rate,
        "events": len(kept),
        "p50_ms": pct(e2e, 50),
        "p99_ms": pct(e2e, 99),
        "p999_ms": pct(e2e, 99.9),
        "max_ms": pct(e2e, 100),
        "worker_p50_ms": pct(own, 50),
        "worker_p99_ms": pct(own, 99),
        "produced_rate": sent["sent"] / max(sent["seconds"], 1e-9),
        "producer_max_lag_ms": sent["max_lag_ms"],
        "missing": int(sent["sent"]) - len(got),
        "worker_peak_rss_mb": sampler.figures().peak_rss_mb,
        "machine_cpu_busy": machine_cpu_busy,
        "worker_cpu_cores": worker_cpu_cores,
        "stages": stage_figures,
        "window_s": window_s,
        "windows": windows,
    }


def _window(e2e: np.ndarray) -> Window:
    """A window's figures from its end-to-end latencies (ms)."""
    if not len(e2e):
        return {"events": 0, "p50_ms": None, "p99_ms": None, "p999_ms": None, "max_ms": None}
    p50, p99, p999, top = (float(v) for v in np.percentile(e2e, [50, 99, 99.9, 100]))
    return {"events": len(e2e), "p50_ms": p50, "p99_ms": p99, "p999_ms": p999, "max_ms": top}
