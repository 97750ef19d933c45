"""T4: poison events of every bad-input kind, 1 in 1,000, interleaved with good ones.

No stall; every input ends as exactly one prediction or one dead letter; and the
throughput, measured from the output records' timestamps, stays close to that of a clean
run over the same number of events.
"""

from __future__ import annotations

import signal
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import good_events, send
from tests.integration.test_worker import BAD_VALUES

from .harness import (
    MLP,
    SIZES,
    TimedRecord,
    event_id,
    largest_gap_s,
    read_committed,
    report,
    split,
    steady_rate,
)

_POISON_EVERY = 1000
_STALL_S = 5.0  # an output gap this long, with a backlog waiting, is a stall


def _poisoned(n: int) -> list[tuple[bytes | None, bytes | None]]:
    """`n` events, every 1,000th a bad one, cycling through every bad-input kind; each
    bad event has a unique key (its dead letter keeps it) so it can be accounted for."""
    kinds = list(BAD_VALUES)
    events: list[tuple[bytes | None, bytes | None]] = list(good_events(n))
    for i in range(_POISON_EVERY - 1, n, _POISON_EVERY):
        kind = kinds[(i // _POISON_EVERY) % len(kinds)]
        events[i] = (f"bad-{kind}-{i}".encode(), BAD_VALUES[kind])
    return events


def _key(record: TimedRecord) -> str:
    """Good events by id, bad ones by their unique key."""
    if record.dead and (record.key or b"").startswith(b"bad-"):
        return (record.key or b"").decode()
    return str(record.json["id"])


def _run(p: Pipeline, want: list[str]) -> tuple[float, float, list[TimedRecord]]:
    """Drain the input with one worker; return (steady events/s, longest gap s, records)."""
    worker = p.start_worker("--default-model", MLP)
    out = read_committed(p.bootstrap, [p.output, p.dlq], want=want, key=_key, timeout_s=300)
    code, _ = worker.stop(signal.SIGTERM, timeout_s=30)
    assert code == 0, worker.log[-3000:]
    stamps = [r.timestamp_ms for r in out]
    return steady_rate(stamps), largest_gap_s(stamps, min(stamps), max(stamps)), out


@pytest.mark.alone  # a throughput ratio: a busy machine skews it
def test_poison_1_in_1000_no_stall_nothing_lost_throughput_kept(
    make_pipeline: Callable[..., Pipeline],
    make_topic: Callable[..., str],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    n = SIZES.poison_events
    clean, poisoned = good_events(n), _poisoned(n)
    inputs = {kind: make_topic(kind, partitions=4) for kind in ("clean", "poison")}
    send(kafka_bootstrap, inputs["clean"], clean)
    send(kafka_bootstrap, inputs["poison"], poisoned)
    wants = {
        "clean": [event_id(v) for _, v in clean],
        "poison": [k.decode() if k and k.startswith(b"bad-") else event_id(v) for k, v in poisoned],
    }
    bad = {w for w in wants["poison"] if w.startswith("bad-")}

    rates: dict[str, list[float]] = {"clean": [], "poison": []}
    gaps: list[float] = []
    for round_ in range(SIZES.poison_rounds):
        for kind in ("clean", "poison"):  # alternated, so drifting machine load hits both
            p = make_pipeline(partitions=4)
            p.input = inputs[kind]  # the same input, read anew by a fresh group
            p.log_dir = tmp_path / f"{kind}-{round_}"
            p.log_dir.mkdir()
            rate, gap, out = _run(p, wants[kind])
            rates[kind].append(rate)
            gaps.append(gap)
            predictions, dead = split(out)
            seen = Counter(_key(r) for r in out)
            assert set(seen) == set(wants[kind]), "events lost"
            assert max(seen.values()) == 1, "events duplicated"
            assert {_key(r) for r in dead} == (bad if kind == "poison" else set())
            assert len(predictions) + len(dead) == n
            print(f"T4 round {round_} {kind}: {rate:.0f} events/s, longest gap {gap:.2f} s")

    clean_rate, poison_rate = statistics.median(rates["clean"]), statistics.median(rates["poison"])
    ratio = poison_rate / clean_rate
    report(
        "T4", events=n, poison=len(bad), kinds=len(BAD_VALUES), rounds=SIZES.poison_rounds,
        lost=0, duplicates=0, clean_eps=round(clean_rate), poison_eps=round(poison_rate),
        ratio=ratio, max_gap_s=max(gaps),
    )  # fmt: skip
    assert max(gaps) < _STALL_S, f"outputs stalled for {max(gaps):.1f} s"
    # Poison may not slow the worker by more than the bound; faster is noise, not a fault.
    assert ratio >= SIZES.poison_min_ratio, (
        f"poisoned throughput {poison_rate:.0f}/s is {ratio:.0%} of clean {clean_rate:.0f}/s"
    )
