"""Liveness sees outputs owed with no delivery (issue 24 item 8), and only that."""

from __future__ import annotations

import logging

import pytest

from pipeline.metrics.health import Readiness, Stall


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_outputs_owed_with_no_delivery_past_the_bound_make_the_process_not_live(
    clock: Clock,
) -> None:
    readiness = Readiness(clock=clock)
    stall = Stall("outputs", after_s=30, clock=clock)
    readiness.watch(stall)
    stall.observe(7, progressed=False)
    clock.now += 30
    stall.observe(7, progressed=False)
    assert readiness.live() == (True, "live")  # at the bound, not past it
    clock.now += 1
    live, why = readiness.live()
    assert not live
    assert why.startswith("7 outputs owed with no delivery for 31 s (bound 30 s)")


def test_a_delivery_or_nothing_owed_restarts_the_wait(clock: Clock) -> None:
    stall = Stall("outputs", after_s=30, clock=clock)
    stall.observe(7, progressed=False)
    clock.now += 20
    stall.observe(5, progressed=True)  # two delivered: the producer moves
    clock.now += 20
    assert stall.stuck() is None
    clock.now += 11
    assert stall.stuck() is not None
    stall.observe(0, progressed=False)  # all delivered
    assert stall.stuck() is None
    clock.now += 100
    assert stall.stuck() is None  # idle is not stuck, however long


def test_a_bound_of_zero_never_reports_a_stall(clock: Clock) -> None:
    stall = Stall("outputs", after_s=0, clock=clock)
    stall.observe(7, progressed=False)
    clock.now += 10_000
    stall.observe(7, progressed=False)
    assert stall.stuck() is None


def test_a_stall_is_logged_once_until_deliveries_resume(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    stall = Stall("outputs", after_s=5, clock=clock)
    with caplog.at_level(logging.WARNING, logger="pipeline.health"):
        for _ in range(10):
            stall.observe(3, progressed=False)
            clock.now += 1
        stall.observe(0, progressed=True)
        for _ in range(10):
            stall.observe(3, progressed=False)
            clock.now += 1
    warnings = [r for r in caplog.records if "owed with no delivery" in r.getMessage()]
    assert len(warnings) == 2
    assert "restart the worker" in warnings[0].getMessage()
