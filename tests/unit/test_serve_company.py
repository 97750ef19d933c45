"""How many rows the doors' engine loop waits for under `--dispatch when-idle`: half the
requests that were lately in flight at once (`pipeline.serve.company.Company`)."""

from __future__ import annotations

from pipeline.serve.company import Company


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _requests(company: Company, clock: _Clock, in_flight: int, n: int) -> None:
    """`n` requests 1 ms apart, each finding `in_flight` in flight."""
    for _ in range(n):
        company.saw(in_flight, clock.now)
        clock.now += 0.001


def test_a_lone_caller_makes_one_row() -> None:
    clock = _Clock()
    company = Company(window_s=0.05, clock=clock)
    _requests(company, clock, 1, 20)
    assert company.rows_to_gather() == 1


def test_half_the_mean_in_flight_of_the_window_before() -> None:
    clock = _Clock()
    company = Company(window_s=0.05, clock=clock)
    for in_flight in (10, 30, 20, 20):  # mean 20 in the first window
        company.saw(in_flight, clock.now)
        clock.now += 0.01
    clock.now += 0.02  # the next window starts with its first request
    company.saw(2, clock.now)
    assert company.rows_to_gather() == 10


def test_within_the_first_window_its_own_mean_counts() -> None:
    clock = _Clock()
    company = Company(window_s=0.05, clock=clock)
    for in_flight in (8, 8, 8):
        company.saw(in_flight, clock.now)
    assert company.rows_to_gather() == 4


def test_after_a_quiet_window_it_starts_again_from_one() -> None:
    """A burst of 64 callers, then nothing for longer than a window: the next (lone) row
    does not wait for the burst's callers."""
    clock = _Clock()
    company = Company(window_s=0.05, clock=clock)
    _requests(company, clock, 64, 50)
    assert company.rows_to_gather() == 32
    clock.now += 0.2
    assert company.rows_to_gather() == 1  # the engine's loop asks before any new request
    company.saw(1, clock.now)
    assert company.rows_to_gather() == 1  # the burst's window is too old to count
