"""T3: workers join and leave the group mid-stream, and one is killed.

Nothing may be lost (nor duplicated, with exactly-once). Each membership change pauses
some partitions; the pause is the longest stretch without an output of one input
partition, from the change to the next one, measured twice: from the output records'
timestamps (when they were written) and from their arrival at a live read_committed
reader (when they became visible). A killed member's partitions wait for its session to
time out (6 s here); with exactly-once its open transaction also hides the outputs
written after it, on the same output partitions, until transaction.timeout.ms (15 s by
default for the worker; librdkafka's own default, 60 s, measured a 60.3 s pause here).
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from collections.abc import Callable

import pytest

from pipeline import exitcodes
from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import Accounting, WorkerProcess, good_events

from .harness import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    FAST_FAILOVER,
    MLP,
    SIZES,
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


def _assignments(worker: WorkerProcess, topic: str) -> int:
    return worker.log.count(f"assigned {topic}[")


def _wait_assigned(worker: WorkerProcess, topic: str, more_than: int) -> None:
    """Wait until the worker logs an assignment of `topic` partitions beyond `more_than`."""
    deadline = time.monotonic() + 90
    while _assignments(worker, topic) <= more_than:
        assert time.monotonic() < deadline, f"no new assignment:\n{worker.log[-3000:]}"
        assert worker.proc.poll() is None, f"worker exited:\n{worker.log[-3000:]}"
        time.sleep(0.1)


def _pauses(
    out: list[TimedRecord],
    partition_of: dict[str, int],
    changes: list[tuple[str, int, int]],
    clock: Callable[[TimedRecord], int],
) -> list[float]:
    """The pause each change caused, in a window from it to the next change (the last
    one's window ends at the last output)."""
    ends = [started for _, started, _ in changes[1:]] + [max(clock(r) for r in out)]
    return [
        _pause_s(out, partition_of, started, end, clock)
        for (_, started, _), end in zip(changes, ends, strict=True)
    ]


def _pause_s(
    out: list[TimedRecord],
    partition_of: dict[str, int],
    start_ms: int,
    end_ms: int,
    clock: Callable[[TimedRecord], int],
) -> float:
    """The longest stretch without output of any one input partition in the window, by
    `clock`: the records' timestamps (written) or their arrival at a live reader (seen)."""
    stamps: dict[int, list[int]] = defaultdict(list)
    for r in out:
        stamps[partition_of[identity(r)]].append(clock(r))
    return max(largest_gap_s(s, start_ms, end_ms) for s in stamps.values())


@pytest.mark.parametrize(
    "guarantee",
    [AT_LEAST_ONCE, EXACTLY_ONCE],
)
def test_workers_join_leave_and_die_mid_stream_lose_nothing(
    make_pipeline: Callable[..., Pipeline], guarantee: str
) -> None:
    p = make_pipeline(partitions=4)

    def start(name: str) -> WorkerProcess:
        args = ["--default-model", MLP, *guarantee_args(guarantee), *FAST_FAILOVER]
        if guarantee == EXACTLY_ONCE:  # one id per process; see the shared-id test below
            args += ["--transactional-id", f"{p.group}-{name}"]
        return p.start_worker(*args)

    hold = SIZES.rebalance_hold_s
    # Enough for the start-ups, holds and the dead member's session timeout several times
    # over; the stream is stopped once the last change has settled.
    duration_s = 4.0 * (4 * 3.0 + 5 * hold + 6.0)
    stream = EventStream(
        p.bootstrap, p.input, good_events(int(SIZES.rebalance_rate * duration_s)),
        rate=SIZES.rebalance_rate,
    )  # fmt: skip
    reader = LiveReader(p.bootstrap, [p.output, p.dlq])
    a = start("a")
    _wait_assigned(a, p.input, 0)
    time.sleep(hold)

    changes: list[tuple[str, int, int]] = []  # (what, started ms, settled ms)

    joined_ms, b = now_ms(), start("b")
    _wait_assigned(b, p.input, 0)
    time.sleep(hold)
    changes.append(("join", joined_ms, now_ms()))

    before = _assignments(a, p.input)
    left_ms = now_ms()
    code, _ = b.stop(signal.SIGTERM, timeout_s=30)
    assert code == 0, b.log[-3000:]
    _wait_assigned(a, p.input, before)
    time.sleep(hold)
    changes.append(("leave", left_ms, now_ms()))

    joined_ms, c = now_ms(), start("c")
    _wait_assigned(c, p.input, 0)
    time.sleep(hold)
    changes.append(("join", joined_ms, now_ms()))

    before = _assignments(a, p.input)
    killed_ms = now_ms()
    c.stop(signal.SIGKILL)
    _wait_assigned(a, p.input, before)
    time.sleep(hold)
    changes.append(("kill", killed_ms, now_ms()))
    assert stream.is_alive(), "the stream ended before the last change settled"
    stream.stop()

    ids = stream.finish()
    out = reader.wait_for(ids, timeout_s=240)
    code, _ = a.stop(signal.SIGTERM, timeout_s=30)
    assert code == 0, a.log[-3000:]

    predictions, dead = split(out)
    acc = Accounting.of(predictions, dead)
    lost = acc.lost(ids)
    written = _pauses(out, stream.partition_of, changes, lambda r: r.timestamp_ms)
    visible = _pauses(out, stream.partition_of, changes, lambda r: r.seen_ms)
    for (what, _, _), w, v in zip(changes, written, visible, strict=True):
        print(f"T3 {guarantee}: {what}: longest pause of an input partition: {w:.2f} s in "
              f"the output's timestamps, {v:.2f} s for a read_committed reader")  # fmt: skip
    report(
        "T3", mode=guarantee, events=len(ids), rebalances=len(changes),
        changes=[what for what, _, _ in changes], lost=len(lost),
        duplicates=acc.duplicates(), pause_s=written, visible_pause_s=visible,
    )  # fmt: skip
    assert lost == [], f"{len(lost)} events lost, e.g. {lost[:5]}"
    assert not dead
    if guarantee == EXACTLY_ONCE:
        assert acc.duplicates() == 0


def test_exactly_once_workers_started_alike_on_one_host_do_not_crash(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    """Two exactly-once workers of one group started the same way on one host (same flags,
    index 0 each) must not fence each other (the default transactional.id carries the pid).
    A fenced worker must keep serving (transactions.py rebuilds the producer after a fatal
    error) or stop with a one-line error naming the id; never die with a traceback. Either
    way nothing may be lost or duplicated."""
    p = make_pipeline(partitions=4)
    args = ("--default-model", MLP, *guarantee_args(EXACTLY_ONCE), *FAST_FAILOVER)
    stream = EventStream(p.bootstrap, p.input, good_events(12_000), rate=1_000)
    reader = LiveReader(p.bootstrap, [p.output, p.dlq])
    a = p.start_worker(*args)
    _wait_assigned(a, p.input, 0)
    b = p.start_worker(*args)
    ids = stream.finish()
    exited = {name: w.proc.poll() for name, w in (("first", a), ("second", b))}
    drain = None
    if all(code is not None for code in exited.values()):  # someone must finish the work
        drain = p.start_worker(*args, "--transactional-id", f"{p.group}-drain")
    out = reader.wait_for(ids, timeout_s=120)
    codes = {
        name: w.stop(signal.SIGTERM, timeout_s=30)[0] for name, w in (("first", a), ("second", b))
    }
    if drain is not None:
        drain.stop(signal.SIGTERM, timeout_s=30)

    predictions, dead = split(out)
    acc = Accounting.of(predictions, dead)
    lost = acc.lost(ids)
    report(
        "T3", mode=EXACTLY_ONCE, part="shared-transactional-id", events=len(ids),
        exited_early=exited, exit_codes=codes, lost=len(lost), duplicates=acc.duplicates(),
    )  # fmt: skip
    for name, worker in (("first", a), ("second", b)):
        assert "Traceback" not in worker.log, f"the {name} worker crashed:\n{worker.log[-3000:]}"
        if exited[name] is None:
            assert codes[name] == 0, f"the {name} worker: exit {codes[name]} on SIGTERM"
        else:
            error = [line for line in worker.log.splitlines() if line.startswith("error: ")]
            assert (
                codes[name] == exitcodes.KAFKA_FATAL and error and "transactional" in error[-1]
            ), worker.log[-3000:]
    assert lost == [] and acc.duplicates() == 0
