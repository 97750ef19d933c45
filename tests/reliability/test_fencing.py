"""T13: two exactly-once workers started alike with one ``--transactional-id``.

Kafka fences the older producer of a transactional id when a newer one starts; a worker
that rebuilt its producer after every fencing would fence its twin in turn, for ever (the
outside run saw 6,567 of 30,000 events committed, then nothing for 3 minutes, and both
workers ended with a ``_FENCED`` traceback). One of the two must stop, once, with a
one-line error naming the id and exit 6; the other must go on and answer every event.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import WorkerProcess, good_events

from .harness import (
    EXACTLY_ONCE,
    FAST_FAILOVER,
    MLP,
    EventStream,
    answered_then_stopped,
    guarantee_args,
    report,
)

_EVENTS = 12_000
_RATE = 400.0  # events/s: the stream lasts 30 s, both workers busy when the twin starts
_FENCED_EXIT_WITHIN_S = 60.0


def test_a_twin_with_the_same_transactional_id_stops_once_and_the_other_goes_on(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=4)
    txn_id = f"twin-{p.group}"
    args = ("--default-model", MLP, *guarantee_args(EXACTLY_ONCE), *FAST_FAILOVER,
            "--transactional-id", txn_id)  # fmt: skip
    stream = EventStream(p.bootstrap, p.input, good_events(_EVENTS, run="twin"), rate=_RATE)
    first = p.start_worker(*args)
    first.wait_for_log(f"assigned {p.input}[", timeout_s=90)
    second = p.start_worker(*args)

    fenced, other, took = _first_to_exit(first, second, _FENCED_EXIT_WITHIN_S)
    code = fenced.wait(5)
    assert code == 6, f"exit {code}:\n{fenced.log[-3000:]}"
    assert "Traceback" not in fenced.log, fenced.log[-3000:]
    (error,) = [line for line in fenced.log.splitlines() if line.startswith("error: ")]
    assert txn_id in error and "--transactional-id" in error, error

    ids = stream.finish()
    answered_then_stopped(p.bootstrap, [p.output, p.dlq], other, ids, timeout_s=120)
    assert "Traceback" not in other.log, other.log[-3000:]
    report("T13-twin-transactional-id", events=len(ids), lost=0, duplicates=0,
           fenced_exit_s=took)  # fmt: skip


def _first_to_exit(
    a: WorkerProcess, b: WorkerProcess, timeout_s: float
) -> tuple[WorkerProcess, WorkerProcess, float]:
    """(the worker that exited first, the other, seconds it took); fails if neither did.
    That the other keeps running is checked by reading every event's answer from it."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        for done, other in ((a, b), (b, a)):
            if done.proc.poll() is not None:
                return done, other, time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(
        f"neither worker stopped within {timeout_s:.0f} s:\n{a.log[-2000:]}\n---\n{b.log[-2000:]}"
    )
