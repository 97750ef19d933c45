"""The benchmark's measured window (`pipeline.dev.bench.runner.window`), from made-up looks.

A run is timed from the last look at the output topics that found no output to the first
look that found them all; these tests pin that the window is never empty and that a run
which cannot be timed says "not measured" instead of a figure of 0 events/s.
"""

from __future__ import annotations

import pytest

from pipeline.dev.bench.runner import BenchError, Look, window


def test_the_window_runs_from_the_last_look_without_output_to_the_look_with_every_output() -> None:
    events, seconds, cpu_s = window(Look(10.0, 0, cpu_s=1.5), Look(12.5, 20_000, cpu_s=3.5))

    assert (events, seconds, cpu_s) == (20_000, 2.5, 2.0)


def test_a_contender_that_writes_every_output_between_two_looks_is_timed_over_that_gap() -> None:
    # the quick bench's flake: one look after start-up already found all 2,000 outputs of
    # relay-1-tuned, and the old window (first output seen to last) held no events
    events, seconds, _ = window(Look(3.00, 0), Look(3.03, 2_000))

    assert events == 2_000
    assert events / seconds == pytest.approx(2_000 / 0.03)


def test_outputs_found_by_the_very_first_look_are_not_measured() -> None:
    with pytest.raises(BenchError, match=r"not measured: the first look .* found 2000 outputs"):
        window(None, Look(0.1, 2_000))


@pytest.mark.parametrize(
    ("start", "end"),
    [(Look(1.0, 5), Look(2.0, 5)), (Look(2.0, 0), Look(2.0, 100)), (Look(2.0, 0), Look(1.0, 9))],
    ids=["no-events", "no-time", "time-backwards"],
)
def test_a_window_without_events_or_time_is_not_measured(start: Look, end: Look) -> None:
    with pytest.raises(BenchError, match="not measured"):
        window(start, end)
