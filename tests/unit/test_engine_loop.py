"""The engine keeps going: a batch that fails as a whole fails its rows, a caller's callback
that raises touches no one else, and the loop reports every turn for the liveness probe."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.engine.engine import Engine, EngineLoop, Outcome
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.errors import Overloaded
from pipeline.metrics import Sensor
from pipeline.metrics.health import Readiness
from tests.modelfactory import two_input_model


def _engine(tmp_path: Path) -> Engine[Any]:
    two_input_model(tmp_path / "rec" / "1")
    return Engine(ModelCache(ModelStore(tmp_path)), max_batch_size=8, max_wait_ms=0)


def _feed(rows: int, width: int = 3) -> dict[str, np.ndarray]:
    return {
        "x": np.ones((rows, width), dtype=np.float32),
        "cat": np.zeros((rows, 1), dtype=np.int64),
    }


def test_a_batch_that_fails_as_a_whole_fails_its_rows_and_the_engine_goes_on(
    tmp_path: Path,
) -> None:
    engine = _engine(tmp_path)
    outcomes: list[Outcome[str]] = []
    engine.submit("rec", "1", _feed(2, width=4), "wrong-width", outcomes.append)  # 4, not 3
    engine.flush()
    engine.submit("rec", "1", _feed(2), "good", outcomes.append)
    engine.flush()

    failed, good = outcomes
    assert failed.ticket == "wrong-width" and failed.rows == ()
    assert [(e.row, e.stage, e.error_type) for e in failed.errors] == [
        (0, "infer", "ValueError"), (1, "infer", "ValueError")
    ]  # fmt: skip
    assert "the batch failed as a whole" in failed.errors[0].message
    assert good.ticket == "good" and list(good.rows) == [0, 1]
    assert good.outputs["score"].tolist() == [[30.0], [30.0]]


def test_a_raising_callback_does_not_stop_the_others_in_its_batch(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    outcomes: list[Outcome[str]] = []

    def boom(outcome: Outcome[str]) -> None:
        raise RuntimeError("the caller's bug")

    engine.submit("rec", "1", _feed(1), "raises", boom)
    engine.submit("rec", "1", _feed(1), "after", outcomes.append)
    engine.flush()

    assert [o.ticket for o in outcomes] == ["after"]
    assert engine.waiting() == 0


def test_the_loop_survives_a_failing_turn_and_reports_each_turn() -> None:
    turns = threading.Semaphore(0)

    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        def wait_for_work(
            self, at_most_s: float, *, any_row: bool = False, at_least: int = 1
        ) -> None:
            time.sleep(0.001)

        def run_due(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("one bad turn")
            return 0

        def wake(self) -> None: ...

        def flush(self) -> int:
            return 0

    flaky = Flaky()
    loop = EngineLoop(flaky, idle_s=0.01, on_turn=turns.release)  # type: ignore[arg-type]
    loop.start()
    try:
        assert all(turns.acquire(timeout=5) for _ in range(3))
        assert loop.is_alive() and flaky.calls >= 3
    finally:
        loop.stop()


class _Batches(Sensor):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def inference(
        self, model: str, version: str, rows: int, queue_wait_s: float, infer_s: float
    ) -> None:
        self.sizes.append(rows)


def _batching_engine(tmp_path: Path, *, max_wait_ms: float) -> tuple[Engine[str], _Batches]:
    """An engine of batches of 8 at most, and the sizes of the batches it runs."""
    two_input_model(tmp_path / "rec" / "1")
    batches = _Batches()
    engine: Engine[str] = Engine(ModelCache(ModelStore(tmp_path)), max_batch_size=8,
                                 max_wait_ms=max_wait_ms, sensor=batches)  # fmt: skip
    return engine, batches


def test_when_idle_a_lone_row_runs_at_once_and_rows_that_wait_on_a_batch_go_together(
    tmp_path: Path,
) -> None:
    """max_wait_ms of a minute: when_idle runs a lone row at once anyway; the rows submitted
    while a batch's callback holds the loop run together, in one batch, right after."""
    engine, batches = _batching_engine(tmp_path, max_wait_ms=60_000)
    held, release = threading.Event(), threading.Event()
    done: list[str] = []

    def hold(outcome: Outcome[str]) -> None:
        held.set()
        release.wait(10)
        done.append(outcome.ticket)

    loop = EngineLoop(engine, idle_s=0.05, when_idle=True)
    loop.start()
    try:
        started = time.monotonic()
        engine.submit("rec", "1", _feed(1), "lone", hold)
        assert held.wait(5) and time.monotonic() - started < 5  # not the minute's wait
        for i in range(5):  # the loop is busy with the lone row's callback
            engine.submit("rec", "1", _feed(1), f"then-{i}", lambda o: done.append(o.ticket))
        release.set()
        deadline = time.monotonic() + 5
        while len(done) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop()
    assert done == ["lone", *(f"then-{i}" for i in range(5))]
    assert batches.sizes == [1, 5]


def test_when_due_a_lone_row_waits_for_its_batch(tmp_path: Path) -> None:
    two_input_model(tmp_path / "rec" / "1")
    engine: Engine[str] = Engine(ModelCache(ModelStore(tmp_path)), max_batch_size=8,
                                 max_wait_ms=60_000)  # fmt: skip
    done: list[str] = []
    loop = EngineLoop(engine, idle_s=0.05)
    loop.start()
    try:
        engine.submit("rec", "1", _feed(1), "lone", lambda o: done.append(o.ticket))
        time.sleep(0.5)
        assert done == []  # it waits for the batch to fill, up to a minute
    finally:
        loop.stop()  # runs what waits
    assert done == ["lone"]


def test_liveness_fails_when_the_loop_stops_turning() -> None:
    now = [100.0]
    readiness = Readiness(stale_after_s=30.0, clock=lambda: now[0])
    readiness.heartbeat()
    now[0] += 29.0
    assert readiness.live() == (True, "live")
    now[0] += 2.0
    live, reason = readiness.live()
    assert not live and "no loop turn for 31.0 s" in reason


def test_a_kafka_backlog_does_not_count_against_the_doors_queue_bound(tmp_path: Path) -> None:
    two_input_model(tmp_path / "rec" / "1")
    engine: Engine[Any] = Engine(
        ModelCache(ModelStore(tmp_path)), max_batch_size=256, max_wait_ms=1000, max_queue_rows=10
    )
    outcomes: list[Outcome[str]] = []
    engine.submit("rec", "1", _feed(200), "kafka backlog", outcomes.append)  # admit=False

    engine.submit("rec", "1", _feed(6), "door 1", outcomes.append, admit=True)
    with pytest.raises(Overloaded, match="6 rows are waiting"):
        engine.submit("rec", "1", _feed(6), "door 2", outcomes.append, admit=True)
    engine.flush()
    engine.submit("rec", "1", _feed(10), "door 3", outcomes.append, admit=True)  # room again
    engine.flush()

    assert [o.ticket for o in outcomes] == ["kafka backlog", "door 1", "door 3"]


def test_run_now_runs_a_lone_batch_on_the_calling_thread_once_a_batch_has_timed_it(
    tmp_path: Path,
) -> None:
    engine = _engine(tmp_path)
    outcomes: list[tuple[Outcome[str], int]] = []

    def done(outcome: Outcome[str]) -> None:
        outcomes.append((outcome, threading.get_ident()))

    # No batch of this version has run yet: its run time is unknown, so not on this thread.
    assert not engine.run_now("rec", "1", _feed(1), "first", done)
    assert outcomes == [] and engine.waiting() == 0
    engine.submit("rec", "1", _feed(1), "timed", done)
    engine.flush()

    assert engine.run_now("rec", "1", _feed(2), "now", done)

    (_, _), (now, thread) = outcomes
    assert now.ticket == "now" and list(now.rows) == [0, 1] and not now.errors
    assert now.outputs["score"].tolist() == [[30.0], [30.0]]
    assert thread == threading.get_ident()


def test_run_now_leaves_rows_to_the_engine_while_others_wait_or_run(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    outcomes: list[Outcome[str]] = []
    engine.submit("rec", "1", _feed(1), "timed", outcomes.append)
    engine.flush()

    engine.submit("rec", "1", _feed(1), "waiting", outcomes.append)
    assert not engine.run_now("rec", "1", _feed(1), "not now", outcomes.append)
    engine.flush()
    assert [o.ticket for o in outcomes] == ["timed", "waiting"]

    running, release = threading.Event(), threading.Event()

    def slow(outcome: Outcome[str]) -> None:  # holds the engine's runner, as a batch would
        running.set()
        release.wait(5)

    engine.submit("rec", "1", _feed(1), "running", slow)
    runner = threading.Thread(target=engine.flush)
    runner.start()
    assert running.wait(5)
    try:
        assert not engine.run_now("rec", "1", _feed(1), "not now", outcomes.append)
    finally:
        release.set()
        runner.join(5)
    assert [o.ticket for o in outcomes] == ["timed", "waiting"]


def test_run_now_keeps_a_slow_model_off_the_calling_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(tmp_path)
    outcomes: list[Outcome[str]] = []
    engine.submit("rec", "1", _feed(1), "timed", outcomes.append)
    engine.flush()
    monkeypatch.setattr("pipeline.engine.engine.RUN_NOW_MAX_S", 0.0)  # every batch is slow

    assert not engine.run_now("rec", "1", _feed(1), "slow", outcomes.append)
    assert [o.ticket for o in outcomes] == ["timed"]


def test_run_now_answers_a_row_past_its_deadline_with_the_deadline_error(
    tmp_path: Path,
) -> None:
    engine = _engine(tmp_path)
    outcomes: list[Outcome[str]] = []
    engine.submit("rec", "1", _feed(1), "timed", outcomes.append)
    engine.flush()

    assert engine.run_now("rec", "1", _feed(1), "late", outcomes.append, deadline=0.0)

    late = outcomes[-1]
    assert late.rows == () and [(e.stage, e.error_type) for e in late.errors] == [
        ("deadline", "DeadlineExceeded")
    ]


def test_run_now_leaves_more_rows_than_the_queue_bound_to_submit_which_refuses_them(
    tmp_path: Path,
) -> None:
    two_input_model(tmp_path / "rec" / "1")
    engine: Engine[Any] = Engine(
        ModelCache(ModelStore(tmp_path)), max_batch_size=256, max_wait_ms=0, max_queue_rows=10
    )
    outcomes: list[Outcome[str]] = []
    engine.submit("rec", "1", _feed(1), "timed", outcomes.append)
    engine.flush()

    assert not engine.run_now("rec", "1", _feed(11), "too many", outcomes.append)
    assert engine.run_now("rec", "1", _feed(10), "as many as allowed", outcomes.append)
    assert [o.ticket for o in outcomes] == ["timed", "as many as allowed"]


def test_when_idle_with_gather_rows_wait_until_that_many_do_then_go_together(
    tmp_path: Path,
) -> None:
    """gather 4, max_wait_ms of a minute: three rows wait (no batch runs), the fourth
    sends all four in one batch at once."""
    engine, batches = _batching_engine(tmp_path, max_wait_ms=60_000)
    done: list[str] = []
    loop = EngineLoop(engine, idle_s=0.05, when_idle=True, gather=lambda: 4)
    loop.start()
    try:
        for i in range(3):
            engine.submit("rec", "1", _feed(1), f"row-{i}", lambda o: done.append(o.ticket))
        time.sleep(0.3)
        assert done == [] and batches.sizes == []  # three of the four it waits for
        engine.submit("rec", "1", _feed(1), "row-3", lambda o: done.append(o.ticket))
        deadline = time.monotonic() + 5
        while len(done) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.stop()
    assert done == [f"row-{i}" for i in range(4)]
    assert batches.sizes == [4]


def test_when_idle_with_gather_the_oldest_row_waits_no_longer_than_max_wait(
    tmp_path: Path,
) -> None:
    engine, batches = _batching_engine(tmp_path, max_wait_ms=100)
    done: list[float] = []
    loop = EngineLoop(engine, idle_s=0.05, when_idle=True, gather=lambda: 64)
    loop.start()
    try:
        started = time.monotonic()
        engine.submit("rec", "1", _feed(2), "two", lambda o: done.append(time.monotonic()))
        deadline = started + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        loop.stop()
    assert done and 0.09 <= done[0] - started < 2  # its max_wait_ms, not the 64 rows
    assert batches.sizes == [2]
