"""T1: SIGKILL a worker at random points, many times, restarting it each time.

Nothing may be lost in either mode; exactly-once may not duplicate either. In
at-least-once mode each kill may duplicate what the dead worker had written but not yet
committed, so each kill's duplicates are printed and checked against the input records
that were past the group's committed offsets at the moment of the kill.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Callable

import pytest

from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import Accounting, WorkerProcess, good_events

from .harness import (
    AT_LEAST_ONCE,
    EXACTLY_ONCE,
    FAST_FAILOVER,
    GUARANTEES,
    MLP,
    SIZES,
    EventStream,
    Incarnation,
    TimedRecord,
    first_output_after,
    guarantee_args,
    now_ms,
    read_committed,
    report,
    seeded_random,
    split,
    uncommitted,
    wasted_copies,
)

# Seconds one kill-and-restart cycle takes: start-up, the dead member's session timeout,
# and the time the worker then runs before it is killed. Sets the input rate.
_CYCLE_S = 8.5


def _kill_at_random_point(worker: WorkerProcess, topic: str, rng: random.Random) -> str:
    """Let the worker live a random while, then SIGKILL it; return where it was."""
    if rng.random() < 0.2:  # while starting: connecting, fencing, joining the group
        time.sleep(rng.uniform(0.2, 4.0))
        phase = "starting"
    else:  # while streaming, often right in the catch-up after the restart
        worker.wait_for_log(f"assigned {topic}[", timeout_s=90)
        time.sleep(rng.uniform(0.0, 2.0))
        phase = "streaming"
    code, _ = worker.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL, f"the worker exited by itself ({code}):\n{worker.log[-3000:]}"
    return phase


def _recoveries(
    out: list[TimedRecord], lives: list[Incarnation], restarts_ms: list[int]
) -> list[float | None]:
    """Seconds from each kill to the first output of the worker started after it; None when
    that worker was killed in turn before any of its output became visible."""
    recovery: list[float | None] = []
    for n, (life, restart) in enumerate(zip(lives, restarts_ms, strict=True)):
        until = lives[n + 1].ended_ms if n + 1 < len(lives) else None
        first = first_output_after(out, restart, until)
        recovery.append(None if first is None else (first - life.ended_ms) / 1000)
    assert recovery[-1] is not None, "the final worker wrote nothing"
    return recovery


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_sigkill_at_random_points_loses_nothing(
    make_pipeline: Callable[..., Pipeline], guarantee: str
) -> None:
    rng, seed = seeded_random(f"T1-{guarantee}")
    p = make_pipeline(partitions=4)
    args = ("--default-model", MLP, *guarantee_args(guarantee), *FAST_FAILOVER)
    stream = EventStream(
        p.bootstrap, p.input, good_events(SIZES.kill_events),
        rate=SIZES.kill_events / (SIZES.kills * _CYCLE_S),
    )  # fmt: skip

    lives: list[Incarnation] = []
    phases: list[str] = []
    exposed: list[int] = []  # input records past the committed offsets at each kill
    restarts_ms: list[int] = []
    for _ in range(SIZES.kills):
        started_ms = now_ms()
        restarts_ms.append(started_ms)
        worker = p.start_worker(*args)
        phases.append(_kill_at_random_point(worker, p.input, rng))
        lives.append(Incarnation(started_ms, now_ms()))
        if guarantee == AT_LEAST_ONCE:  # exactly-once: a dead open transaction blocks this
            exposed.append(uncommitted(p.bootstrap, p.group, p.input))

    restarts_ms.append(now_ms())
    final = p.start_worker(*args)
    ids = stream.finish()
    out = read_committed(p.bootstrap, [p.output, p.dlq], want=ids, timeout_s=240)
    code, _ = final.stop()
    assert code == 0, final.log[-3000:]

    predictions, dead = split(out)
    acc = Accounting.of(predictions, dead)
    lost = acc.lost(ids)
    duplicates = acc.duplicates()
    per_kill = wasted_copies(out, lives)
    recovery_s = _recoveries(out, lives, restarts_ms[1:])
    print(f"T1 {guarantee}: kill phases {phases}")
    print(f"T1 {guarantee}: duplicates per kill {per_kill[:-1]} (not charged: {per_kill[-1]})")
    if exposed:
        print(f"T1 {guarantee}: uncommitted input records at each kill {exposed}")
    shown = [None if r is None else round(r, 2) for r in recovery_s]
    print(f"T1 {guarantee}: seconds from each kill to the next output {shown}")
    report(
        "T1", mode=guarantee, events=len(ids), kills=len(lives), lost=len(lost),
        duplicates=duplicates, duplicates_per_kill=per_kill[:-1],
        max_recovery_s=max(r for r in recovery_s if r is not None), seed=seed,
    )  # fmt: skip

    assert lost == [], f"{len(lost)} events lost, e.g. {lost[:5]}"
    assert not dead, f"{len(dead)} good events were dead-lettered"
    if guarantee == EXACTLY_ONCE:
        assert duplicates == 0, f"exactly-once wrote {duplicates} duplicates: {per_kill}"
    else:
        assert per_kill[-1] == 0, "duplicates written by a worker that was never killed"
        for n, (dups, at_risk) in enumerate(zip(per_kill, exposed, strict=False)):
            assert dups <= at_risk, (
                f"kill {n} duplicated {dups} events but only {at_risk} were uncommitted"
            )
