"""T8-T11: a node of a three-node Kafka cluster fails while events flow.

The module runs its own cluster (`LocalKafka.start_cluster`, three KRaft nodes, each
broker and controller, in a temp dir on free ports; never the session broker). Each
test runs a worker of each guarantee side by side, on topics of their own created here
with replication factor 3 and min.insync.replicas 2 (the workers run with
--no-create-topics), and breaks one node:

- T8 leader loss: kill -9 the node that leads most of the input and output partitions,
  bring it back later;
- T9 rolling restart: stop (SIGTERM) and start each node in turn, waiting for every
  partition to be in sync again before the next;
- T10 frozen node: SIGSTOP that leader for longer than the broker's session (9 s), the
  consumer's session (6 s), the producer's request timeout and the worker's transaction
  timeout (15 s), then SIGCONT;
- T11 controller loss: kill -9 the active controller, bring it back later.

The node each test breaks also hosts both workers' group coordinators and the
exactly-once worker's transaction coordinator (the group ids and the transactional id are
drawn until their coordinator partitions are led by it): the worst case, and the same
case in every run.

A read_committed reader counts, per guarantee, the ids missing from the outputs (lost)
and those seen twice (duplicates), as the other fault tests do. Nothing may be lost, and
exactly-once may not duplicate; the workers must ride every fault out and exit 0 on
SIGTERM at the end. Recovery is measured on the outputs' arrival at a live
read_committed reader, from the fault until the input stream stops: the longest any
output partition went without a new output (recovery_s, at least the time to that
partition's next output), and the longest the reader saw nothing at all (visible_gap_s).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import (
    Consumer,
    ElectionType,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.dev.localkafka import SHORT_LIVED, LocalKafka
from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import Accounting, WorkerProcess, drop_producers, good_events

from .harness import (
    EXACTLY_ONCE,
    FAST_FAILOVER,
    GUARANTEES,
    MLP,
    SOAK,
    EventStream,
    LiveReader,
    TimedRecord,
    guarantee_args,
    identity,
    largest_gap_s,
    now_ms,
    report,
    split,
)

_ROOT = Path(__file__).resolve().parents[2]
_PARTITIONS = 4
_COORDINATOR_PARTITIONS = 10  # of __consumer_offsets and __transaction_state (LocalKafka's)
_IN_SYNC_TIMEOUT_S = 120.0
# T10: the producer gives up on a request to the frozen leader after this, then retries
# elsewhere; librdkafka's default (30 s) would make the freeze, which must outlast it, long.
_REQUEST_TIMEOUT = ("-X", "request.timeout.ms=10000")
# Seconds of events each stream holds; the faults end well before. T9's three restarts
# took ~70 s each here and more than 100 s each on a loaded CI machine (300 s ran dry).
_STREAM_BUDGET_S = 600
_STATS = "INFO pipeline.worker: in "  # the stats line, logged once a second by the loop


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSizes:
    """How hard each test pushes; SHORT runs in `make test`, FULL in `make soak`."""

    rate: float  # events/s into each guarantee's input while the faults happen
    down_s: float  # T8, T11: how long the killed node stays down
    hold_s: float  # T9: how long each node stays stopped
    frozen_s: float  # T10: how long the leader stays frozen
    after_s: float  # seconds of events after the last fault, before the stream stops


# down_s outlasts the broker session (9 s), so the controller fences the node and moves its
# leaders; frozen_s also outlasts the request (10 s) and transaction (15 s) timeouts.
SHORT = ClusterSizes(rate=200, down_s=10.0, hold_s=1.0, frozen_s=16.0, after_s=2.0)
FULL = ClusterSizes(rate=1_000, down_s=30.0, hold_s=10.0, frozen_s=45.0, after_s=15.0)
SIZES = FULL if SOAK else SHORT


# -- the cluster ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """Three local KRaft nodes for this module, on free ports; stopped after it."""
    kafka = LocalKafka(data_dir=tmp_path_factory.mktemp("cluster"), jvm_flags=SHORT_LIVED)
    info, _ = kafka.start_cluster(nodes=3, port=0, timeout_s=180)
    try:
        _create_coordinator_topics(info.bootstrap)
        yield kafka
        report("cluster", nodes=kafka.size, peak_rss_mib=_peak_rss_mib(kafka))
    finally:
        drop_producers(info.bootstrap)
        kafka.stop()


def _peak_rss_mib(kafka: LocalKafka) -> list[int | None]:
    """Each node's peak resident memory (VmHWM) since it last started, in MiB."""
    peaks: list[int | None] = []
    for node_id in range(1, kafka.size + 1):
        info = kafka.node(node_id)
        status = Path(f"/proc/{info.pid}/status").read_text() if info else ""
        kib = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")]
        peaks.append(kib[0] // 1024 if kib else None)
    return peaks


_COORDINATOR_MOVING = (
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
)


def _create_coordinator_topics(bootstrap: str) -> None:
    """Make the cluster create __consumer_offsets and __transaction_state now, so the tests
    can place their coordinators before any worker starts."""
    Producer({"bootstrap.servers": bootstrap, "transactional.id": "warm-up"}).init_transactions(120)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("warm-up", 1, 3)])["warm-up"].result(timeout=60)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "warm-up"})
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                consumer.commit(offsets=[TopicPartition("warm-up", 0, 0)], asynchronous=False)
                return
            except KafkaException as exc:
                # The offsets topic was created a moment ago: its coordinator may still be
                # loading (COORDINATOR_LOAD_IN_PROGRESS, seen in a CI run), which a
                # synchronous commit reports instead of waiting out.
                error = exc.args[0]
                loading = error.code() in _COORDINATOR_MOVING or error.retriable()
                if not loading or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
    finally:
        consumer.close()


def _heal(kafka: LocalKafka) -> None:
    """Every node running, none frozen, every partition in sync and led by its preferred
    replica (a restarted node leads nothing until then): what each test starts from."""
    for node_id in range(1, kafka.size + 1):
        if kafka.node(node_id) is None:
            kafka.start_node(node_id, timeout_s=180)
        else:
            kafka.thaw_node(node_id)
    _wait_in_sync(kafka)
    info = kafka.cluster()
    assert info is not None
    admin = AdminClient({"bootstrap.servers": info.bootstrap})
    # Per-partition answers such as "election not needed" are no failure.
    admin.elect_leaders(ElectionType.PREFERRED, None).result(timeout=60)


def _wait_in_sync(kafka: LocalKafka) -> float:
    """Wait until no partition is under-replicated; return how long that took."""
    started = time.monotonic()
    lagging = kafka.under_replicated()
    while lagging:
        assert time.monotonic() - started < _IN_SYNC_TIMEOUT_S, (
            f"still under-replicated after {_IN_SYNC_TIMEOUT_S:.0f} s: {lagging[:10]}"
        )
        time.sleep(0.5)
        lagging = kafka.under_replicated()
    return time.monotonic() - started


def _busiest_leader(kafka: LocalKafka, topics: Sequence[str]) -> tuple[int, int]:
    """(node id, partitions led) of the node that leads most partitions of `topics`."""
    led = Counter(leader for t in topics for leader in kafka.partition_leaders(t).values())
    node, count = led.most_common(1)[0]
    return node, count


# -- the pipelines under test ---------------------------------------------------------------


class WorkerFailed(AssertionError):
    """A worker exited, or its loop stopped turning, in a fault it should have ridden out."""


@dataclass
class Flow:
    """One guarantee's pipeline under the fault: its input stream, worker and live reader."""

    guarantee: str
    pipeline: Pipeline
    stream: EventStream
    worker: WorkerProcess
    reader: LiveReader
    failed: str | None = None  # how the worker died or hung, with its log tail or stack

    @property
    def topics(self) -> list[str]:
        return [self.pipeline.input, self.pipeline.output]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a flow's reader saw, once every input was accounted for."""

    events: int
    lost: int
    duplicates: int
    dead: int
    exit_code: int
    records: list[TimedRecord]
    stopped_ms: int  # when the input stream stopped


def _create_topics(bootstrap: str, p: Pipeline) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    isr = {"min.insync.replicas": "2"}
    wanted = [
        NewTopic(p.input, _PARTITIONS, 3, config=isr),
        NewTopic(p.output, _PARTITIONS, 3, config=isr),
        NewTopic(p.dlq, 1, 3, config=isr),
    ]
    for future in admin.create_topics(wanted, operation_timeout=30).values():
        future.result(timeout=60)


def _coordinator_partition(key: str, partitions: int = _COORDINATOR_PARTITIONS) -> int:
    """The partition of __consumer_offsets (a group id) or __transaction_state (a
    transactional id) whose leader coordinates `key`: Kafka's
    ``Utils.abs(key.hashCode()) % partitions``, with Java's String.hashCode (ASCII keys)."""
    h = 0
    for char in key:
        h = (31 * h + ord(char)) & 0xFFFFFFFF
    signed = h - (1 << 32) if h >= 1 << 31 else h
    return 0 if signed == -(1 << 31) else abs(signed) % partitions


def _coordinated_by(kafka: LocalKafka, topic: str, node: int, prefix: str) -> str:
    """A fresh id whose coordinator (a partition of internal `topic`) is led by `node`."""
    leaders = kafka.partition_leaders(topic)
    assert node in leaders.values(), f"node {node} leads no partition of {topic}: {leaders}"
    while True:
        key = f"{prefix}-{uuid.uuid4().hex[:8]}"
        if leaders[_coordinator_partition(key)] == node:
            return key


@pytest.fixture
def flows(cluster: LocalKafka) -> Iterator[list[Flow]]:
    """A healed cluster, and the flows the test starts on it (`_start`); whatever the test
    leaves running is killed after it."""
    _heal(cluster)
    started: list[Flow] = []
    yield started
    for flow in started:
        flow.stream.stop()
        flow.worker.stop(signal.SIGKILL)  # a no-op for one that exited; closes its log
        with contextlib.suppress(Exception):  # stop reading (a failed flow's reader still is)
            flow.reader.wait_for((), timeout_s=0)


def _start(
    kafka: LocalKafka,
    flows: list[Flow],
    where: Path,
    victim: Callable[[list[str]], int],
    *extra: str,
) -> int:
    """Start a pipeline per guarantee, fed at SIZES.rate, with its coordinators on the node
    `victim` picks (given the topics); return that node once both workers write outputs."""
    info = kafka.cluster()
    assert info is not None, "no node of the cluster runs"
    pipelines = {}
    for g in GUARANTEES:
        run = uuid.uuid4().hex[:8]
        pipelines[g] = Pipeline(
            bootstrap=info.bootstrap, input=f"in-{run}", output=f"out-{run}",
            dlq=f"dlq-{run}", group="", models=_ROOT / "models", log_dir=where / run,
        )  # fmt: skip
        pipelines[g].log_dir.mkdir()
        _create_topics(info.bootstrap, pipelines[g])
    node = victim([t for p in pipelines.values() for t in (p.input, p.output)])
    for g, p in pipelines.items():
        p.group = _coordinated_by(kafka, "__consumer_offsets", node, "g")
        args = ["--default-model", MLP, "--no-create-topics", *guarantee_args(g)]
        if g == EXACTLY_ONCE:
            tid = _coordinated_by(kafka, "__transaction_state", node, "tid")
            args += ["--transactional-id", tid]
        # Plenty for the slowest test; each test stops its stream once its faults are over.
        events = good_events(int(SIZES.rate * _STREAM_BUDGET_S))
        stream = EventStream(p.bootstrap, p.input, events, rate=SIZES.rate)
        # PYTHONFAULTHANDLER: SIGABRT prints the Python stack of a worker that hangs.
        worker = p.start_worker(*args, *FAST_FAILOVER, *extra, env={"PYTHONFAULTHANDLER": "1"})
        flows.append(Flow(g, p, stream, worker, LiveReader(p.bootstrap, [p.output, p.dlq])))
    deadline = time.monotonic() + 120
    while not all(flow.reader.records for flow in flows):
        assert time.monotonic() < deadline, "no output within 120 s of starting the workers"
        _note_exits(flows)
        assert not any(f.failed for f in flows), [f.failed for f in flows]
        time.sleep(0.2)
    return node


def _note_exits(flows: Sequence[Flow]) -> None:
    """Remember each worker that exited (it must not), with its code and log tail."""
    for flow in flows:
        code = flow.worker.proc.poll()
        if code is not None and flow.failed is None:
            flow.failed = f"exited {code}:\n{flow.worker.log[-3000:]}"


def _note_hangs(flows: Sequence[Flow], within_s: float = 30.0) -> None:
    """Remember each worker whose loop stopped turning: it logs a stats line a second, and
    one that logs none for `within_s` is blocked in a call. SIGABRT then ends it and makes
    it print its Python stack (faulthandler), which the failure shows."""
    seen = {id(f): f.worker.log.count(_STATS) for f in flows if not f.failed}
    deadline = time.monotonic() + within_s
    waiting = [f for f in flows if not f.failed]
    while waiting and time.monotonic() < deadline:
        time.sleep(0.5)
        _note_exits(waiting)
        waiting = [
            f for f in waiting if not f.failed and f.worker.log.count(_STATS) < seen[id(f)] + 2
        ]
    for flow in waiting:
        flow.worker.proc.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            flow.worker.proc.wait(10)
        stack = flow.worker.log.split("Fatal Python error", 1)[-1][:3000]
        flow.failed = f"stopped turning (no stats line for {within_s:.0f} s); its stack:\n{stack}"


def _hold(flows: Sequence[Flow], seconds: float) -> None:
    """Let the fault last `seconds` while the workers, which must not exit, keep running."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        _note_exits(flows)
        time.sleep(0.5)


def _finish(flows: Sequence[Flow]) -> dict[str, Outcome]:
    """Stop the streams; for each worker still running, wait until every input is
    accounted for, and stop it."""
    time.sleep(SIZES.after_s)  # events keep coming after the fault, as they would
    _note_exits(flows)
    _note_hangs(flows)
    for flow in flows:
        assert flow.stream.is_alive(), (
            f"the stream ran dry before the fault was over: raise {_STREAM_BUDGET_S=}"
        )
        flow.stream.stop()
    stopped_ms = now_ms()
    outcomes = {}
    for flow in flows:
        ids = flow.stream.finish()
        if flow.failed:
            continue  # its outputs will never be complete: _check reports it
        records = flow.reader.wait_for(ids, timeout_s=240)
        code, _ = flow.worker.stop(signal.SIGTERM, timeout_s=30)
        predictions, dead = split(records)
        acc = Accounting.of(predictions, dead)
        outcomes[flow.guarantee] = Outcome(
            len(ids), len(acc.lost(ids)), acc.duplicates(), len(dead), code, records, stopped_ms
        )
    return outcomes


def _duplicated(records: Sequence[TimedRecord]) -> str:
    """Where each duplicated event's records are: two offsets are two records in the topic;
    one offset twice is the reader seeing one record again (a T11 failure left this open)."""
    by_id: dict[str, list[TimedRecord]] = {}
    for r in records:
        by_id.setdefault(identity(r), []).append(r)
    lines = [
        f"  {event}: "
        + ", ".join(
            f"{r.topic}[{r.partition}]@{r.offset} (prediction "
            f"{(r.headers.get('pipeline.prediction.id') or b'').decode()}, written "
            f"{r.timestamp_ms}, seen {r.seen_ms})"
            for r in copies
        )
        for event, copies in by_id.items()
        if len(copies) > 1
    ]
    return "\n".join(lines[:10])


def _check(outcomes: dict[str, Outcome], flows: Sequence[Flow]) -> None:
    """Nothing lost, nothing dead-lettered, no duplicate with exactly-once, a clean exit,
    and no worker that exited or hung during the fault (an exactly-once one fails as
    WorkerFailed, last, so the other failures show first)."""
    logs = {flow.guarantee: flow.worker.log for flow in flows}
    failures = []
    for g, o in outcomes.items():
        if o.lost or o.dead or o.exit_code != 0:
            failures.append(
                f"{g}: {o.lost} lost, {o.dead} dead letters of {o.events}, exit "
                f"{o.exit_code}:\n{logs[g][-2000:]}"
            )
        if g == EXACTLY_ONCE and o.duplicates:
            failures.append(
                f"{g}: {o.duplicates} duplicates:\n{_duplicated(o.records)}\n{logs[g][-2000:]}"
            )
    failed = {f.guarantee: f"{f.guarantee}: the worker {f.failed}" for f in flows if f.failed}
    failures += [why for g, why in failed.items() if g != EXACTLY_ONCE]
    assert not failures, "\n\n".join(failures)
    if failed:
        raise WorkerFailed(failed[EXACTLY_ONCE])


# -- figures --------------------------------------------------------------------------------


def _report_failed(test: str, flows: Sequence[Flow]) -> None:
    """A RESULT line for each worker that exited or hung: its figures cannot be counted."""
    for flow in flows:
        if flow.failed:
            report(test, mode=flow.guarantee, worker_failed=flow.failed.split(":", 1)[0])


def _figures(flow: Flow, o: Outcome, fault_ms: int) -> dict[str, object]:
    """lost, duplicates, and two measures of recovery from the fault until the stream
    stopped: the longest any output partition went without a new output reaching the
    read_committed reader (recovery_s: at least the time to that partition's next
    output), and the longest the reader saw nothing at all (visible_gap_s)."""
    window = (fault_ms - 1000, o.stopped_ms)
    arrivals: dict[int, list[int]] = defaultdict(list)
    for r in o.records:
        if r.topic == flow.pipeline.output:
            arrivals[r.partition].append(r.seen_ms)
    return {
        "mode": flow.guarantee,
        "events": o.events,
        "lost": o.lost,
        "duplicates": o.duplicates,
        "recovery_s": max(largest_gap_s(seen, *window) for seen in arrivals.values()),
        "visible_gap_s": largest_gap_s([r.seen_ms for r in o.records], *window),
    }


def _uncommitted_only(bootstrap: str, topic: str, committed: int) -> int:
    """Records of `topic` a read_uncommitted reader sees beyond the `committed` ones: the
    outputs of aborted transactions (with exactly-once), which no read_committed reader
    may ever see."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"uncommitted-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_uncommitted",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(_PARTITIONS)])
    seen, at_end = 0, set()
    deadline = time.monotonic() + 120
    try:
        while len(at_end) < _PARTITIONS and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                error = m.error()
                if error is None:
                    seen += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                else:
                    raise AssertionError(f"the read_uncommitted reader failed: {error}")
    finally:
        consumer.close()
    assert len(at_end) == _PARTITIONS, f"read_uncommitted reached the end of {at_end} only"
    return seen - committed


# -- the tests ------------------------------------------------------------------------------


def test_t8_leader_loss_loses_nothing(
    cluster: LocalKafka, flows: list[Flow], tmp_path: Path
) -> None:
    led: list[int] = []

    def busiest(topics: list[str]) -> int:
        node, count = _busiest_leader(cluster, topics)
        led.append(count)
        return node

    node = _start(cluster, flows, tmp_path, busiest)
    killed_ms = now_ms()
    cluster.kill_node(node)
    _hold(flows, SIZES.down_s)
    back_ms = now_ms()
    cluster.start_node(node, timeout_s=180)
    in_sync_s = _wait_in_sync(cluster)
    outcomes = _finish(flows)
    for flow in flows:
        if flow.guarantee in outcomes:
            report(
                "T8", **_figures(flow, outcomes[flow.guarantee], killed_ms),
                node=node, partitions_led=led[0], down_s=(back_ms - killed_ms) / 1000,
                back_in_sync_s=in_sync_s,
            )  # fmt: skip
    _report_failed("T8", flows)
    _check(outcomes, flows)


def test_t9_rolling_restart_loses_nothing(
    cluster: LocalKafka, flows: list[Flow], tmp_path: Path
) -> None:
    _start(cluster, flows, tmp_path, lambda _: 1)  # coordinators on the first node restarted
    first_ms = now_ms()
    restarts_s = []
    for node in range(1, cluster.size + 1):
        stopped = time.monotonic()
        cluster.stop(node=node)
        _hold(flows, SIZES.hold_s)
        cluster.start_node(node, timeout_s=180)
        _wait_in_sync(cluster)
        restarts_s.append(time.monotonic() - stopped)
    last_ms = now_ms()
    outcomes = _finish(flows)
    for flow in flows:
        if flow.guarantee in outcomes:
            o = outcomes[flow.guarantee]
            report(
                "T9", **_figures(flow, o, first_ms), nodes=cluster.size,
                restart_to_in_sync_s=restarts_s,
                output_gap_s=largest_gap_s([r.timestamp_ms for r in o.records], first_ms, last_ms),
            )  # fmt: skip
    _report_failed("T9", flows)
    _check(outcomes, flows)


def test_t10_frozen_leader_loses_nothing_and_hides_fenced_outputs(
    cluster: LocalKafka, flows: list[Flow], tmp_path: Path
) -> None:
    node = _start(
        cluster, flows, tmp_path, lambda topics: _busiest_leader(cluster, topics)[0],
        *_REQUEST_TIMEOUT,
    )  # fmt: skip
    frozen_ms = now_ms()
    cluster.freeze_node(node)
    try:
        _hold(flows, SIZES.frozen_s)
    finally:
        cluster.thaw_node(node)
    thawed_ms = now_ms()
    in_sync_s = _wait_in_sync(cluster)
    outcomes = _finish(flows)
    hidden = {}
    for flow in flows:
        if flow.guarantee not in outcomes:
            continue
        o = outcomes[flow.guarantee]
        committed = sum(1 for r in o.records if r.topic == flow.pipeline.output)
        hidden[flow.guarantee] = _uncommitted_only(
            flow.pipeline.bootstrap, flow.pipeline.output, committed
        )
        report(
            "T10", **_figures(flow, o, frozen_ms), node=node,
            frozen_s=(thawed_ms - frozen_ms) / 1000, back_in_sync_s=in_sync_s,
            aborted_outputs_hidden=hidden[flow.guarantee],
            producer_rebuilds=flow.worker.log.count("rebuilding"),
        )  # fmt: skip
    _report_failed("T10", flows)
    _check(outcomes, flows)
    # An at-least-once producer writes no transactions: it has nothing to hide.
    assert hidden.get(GUARANTEES[0]) == 0, hidden


def test_t11_controller_loss_group_and_transactions_carry_on(
    cluster: LocalKafka, flows: list[Flow], tmp_path: Path
) -> None:
    controller = _start(cluster, flows, tmp_path, lambda _: cluster.active_controller())
    killed_ms = now_ms()
    cluster.kill_node(controller)
    successor = cluster.active_controller(timeout_s=60)
    elected_s = (now_ms() - killed_ms) / 1000
    _hold(flows, SIZES.down_s)
    back_ms = now_ms()
    cluster.start_node(controller, timeout_s=180)
    _wait_in_sync(cluster)
    outcomes = _finish(flows)
    for flow in flows:
        if flow.guarantee in outcomes:
            o = outcomes[flow.guarantee]
            report(
                "T11", **_figures(flow, o, killed_ms), controller=controller,
                successor=successor, elected_within_s=elected_s,
                down_s=(back_ms - killed_ms) / 1000,
                visible_after_kill=sum(1 for r in o.records if r.seen_ms > killed_ms),
            )  # fmt: skip
    assert successor != controller
    _report_failed("T11", flows)
    _check(outcomes, flows)
