"""The doors' refusals: a row the codec rejects gets one HTTP status and the gRPC code that
goes with it, whichever door it came through."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.engine.engine import Outcome
from pipeline.engine.spec import ModelSpec
from pipeline.serve import calls as calls_module
from pipeline.serve.calls import ModelCalls, rejected, seed_answers

from .test_codec import make_decoder


@pytest.mark.parametrize(
    ("event", "http", "grpc"),
    [
        ({"model": "nope"}, 404, "NOT_FOUND"),
        ({"version": "9"}, 404, "NOT_FOUND"),
        ({"model": "broken"}, 503, "UNAVAILABLE"),
        ({"model": "../etc"}, 400, "INVALID_ARGUMENT"),
        ({"features": [1.0]}, 400, "INVALID_ARGUMENT"),
        ({"features": [1.0, "a", 3.0]}, 400, "INVALID_ARGUMENT"),
    ],
)
def test_a_rejected_row_is_refused_with_a_matching_status_and_code(
    event: dict[str, object], http: int, grpc: str
) -> None:
    decoder, _ = make_decoder()
    (reject,) = decoder.decode_events(
        [{"id": "e", "features": [1.0, 2.0, 3.0], **event}], 0
    ).rejects

    refusal = rejected(reject, "instances[0]: ")

    assert (refusal.http, refusal.grpc) == (http, grpc)
    assert refusal.message == f"instances[0]: {reject.message}"


def test_a_sure_class_has_confidence_1_not_float32_rounding_above_it() -> None:
    """Issue 26 item 8: float32 probabilities of a sure class sum past 1 (1.0000001)."""
    probabilities = np.array([[np.float32(1.0000001), 0.0], [0.25, 0.75]], dtype=np.float32)
    model = SimpleNamespace(spec=SimpleNamespace(probability_output="probabilities", labels=None))

    answers = seed_answers(model, {"probabilities": probabilities})  # type: ignore[arg-type]

    assert [(a.prediction, a.confidence) for a in answers] == [(0.0, 1.0), (1.0, 0.75)]
    assert probabilities[0, 0] > 1.0  # the outputs keep the model's own figure


_CELLS = st.one_of(st.sampled_from([0.0, 1.0, 1.0000001, -0.0, 0.5]), st.floats(width=32))


@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1), elements=_CELLS)
)
def test_each_row_answers_its_first_largest_class_and_that_probability_clipped(
    probabilities: np.ndarray,
) -> None:
    model = SimpleNamespace(spec=SimpleNamespace(probability_output="p", labels=None))
    if probabilities.shape[1] < 2:
        return  # one column is not a probability matrix: the regression answer
    answers = seed_answers(model, {"p": probabilities})  # type: ignore[arg-type]

    best = np.argmax(probabilities, axis=1)
    chosen = probabilities.astype(np.float64)[np.arange(len(best)), best]
    with np.errstate(invalid="ignore"):
        expected = np.clip(chosen, 0.0, 1.0)
    assert [a.prediction for a in answers] == best.astype(float).tolist()
    np.testing.assert_array_equal([a.confidence for a in answers], expected)
    # A request of one row takes a path of its own (Python, not numpy): the same answers
    alone = [seed_answers(model, {"p": probabilities[i : i + 1]})[0] for i in range(len(best))]  # type: ignore[arg-type]
    assert [a.prediction for a in alone] == [a.prediction for a in answers]
    np.testing.assert_array_equal([a.confidence for a in alone], expected)


class _Engine:
    """Records how a door's rows reach it; `answer` plays the engine's thread. With
    `runs_now`, `run_now` runs rows at once, as an idle engine does; else it refuses, as
    when another batch runs."""

    def __init__(self, *, runs_now: bool = False) -> None:
        self.asked: list[str] = []  # "run_now" or "submit", in call order
        self.waiting: list[tuple[Any, Any]] = []
        self._runs_now = runs_now

    def run_now(self, model: str, version: str, feed: Any, ticket: Any, done: Any,
                **_: Any) -> bool:  # fmt: skip
        self.asked.append("run_now")
        if self._runs_now:
            done(_outcome(ticket))
        return self._runs_now

    def submit(self, model: str, version: str, feed: Any, ticket: Any, done: Any,
               **_: Any) -> None:  # fmt: skip
        self.asked.append("submit")
        self.waiting.append((ticket, done))

    def answer(self) -> None:
        for ticket, done in self.waiting:
            done(_outcome(ticket))
        self.waiting.clear()


class _Clock:
    """Stands in for the `time` module of `pipeline.serve.calls`: its time moves only when
    a test moves it, so a busy machine cannot turn a lone caller into company."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(calls_module, "time", fake)
    return fake


def _outcome(ticket: Any) -> Outcome[Any]:
    model = SimpleNamespace(spec=SimpleNamespace(version="1"))
    return Outcome(ticket, model, (0,), {"y": np.zeros((1, 1))}, [], 0.0)  # type: ignore[arg-type]


_SPEC = ModelSpec(name="m", version="1", n_features=1)
_FEED = {"x": np.zeros((1, 1), np.float32)}


def test_only_a_lone_caller_asks_to_run_at_once(
    monkeypatch: pytest.MonkeyPatch, clock: _Clock
) -> None:
    monkeypatch.setattr(calls_module, "LONE_CHECK_EVERY_S", 10.0)  # see the test below
    engine = _Engine()
    calls = ModelCalls(engine, default_model="m", max_rows=8, run_lone_now=True)  # type: ignore[arg-type]

    async def answered(*tasks: asyncio.Task[Any]) -> None:
        await asyncio.sleep(0)  # each task submits
        engine.answer()
        await asyncio.gather(*tasks)

    def request() -> asyncio.Task[Any]:
        return asyncio.create_task(calls.run(_SPEC, _FEED, deadline=None))

    async def scenario() -> list[list[str]]:
        seen = []
        first = request()
        await asyncio.sleep(0)
        await answered(first, request())  # the second is in flight beside the first
        seen.append(engine.asked[:])
        await answered(request())  # alone now, but it had company a moment ago
        seen.append(engine.asked[:])
        clock.now += calls_module.LONE_AFTER_S + 0.01  # nobody beside anyone for that long
        await answered(request())
        seen.append(engine.asked[:])
        return seen

    together, just_after, later = asyncio.run(scenario())

    assert together == ["submit", "submit"]  # the first had waited on nothing yet
    assert just_after == [*together, "submit"]
    assert later == [*just_after, "run_now", "submit"]


def test_rows_run_at_once_still_let_company_in_now_and_then(clock: _Clock) -> None:
    # Rows that run at once never let a second request in beside them; unless a request
    # waits on the engine's thread now and then, a burst of callers after a quiet spell
    # would run one row at a time on the doors' thread for as long as it lasted.
    engine = _Engine(runs_now=True)
    calls = ModelCalls(engine, default_model="m", max_rows=8, run_lone_now=True)  # type: ignore[arg-type]

    def request() -> asyncio.Task[Any]:
        return asyncio.create_task(calls.run(_SPEC, _FEED, deadline=None))

    async def answered(*tasks: asyncio.Task[Any]) -> list[str]:
        before = len(engine.asked)
        await asyncio.sleep(0)  # each task runs at once or submits
        engine.answer()
        await asyncio.gather(*tasks)
        return engine.asked[before:]

    async def scenario() -> list[list[str]]:
        seen = [await answered(request())]
        clock.now += calls_module.LONE_AFTER_S + 0.01  # no company for that long
        seen.append(await answered(request()))  # but nobody has waited for a while
        seen.append(await answered(request()))
        seen.append(await answered(request()))
        clock.now += calls_module.LONE_CHECK_EVERY_S + 0.01  # the next one waits ...
        before = len(engine.asked)
        checking = request()
        await asyncio.sleep(0)
        await answered(checking, request())  # ... and a second comes beside it
        seen.append(engine.asked[before:])
        seen.append(await answered(request()))
        return seen

    first, after_quiet, lone, lone_again, burst, after_burst = asyncio.run(scenario())

    assert first == ["submit"]
    assert after_quiet == ["submit"]
    assert lone == lone_again == ["run_now"]
    assert burst == ["submit", "submit"]
    assert after_burst == ["submit"]


def test_without_run_lone_now_rows_always_go_to_the_engine_thread() -> None:
    engine = _Engine()
    calls = ModelCalls(engine, default_model="m", max_rows=8)  # type: ignore[arg-type]

    async def scenario() -> None:
        task = asyncio.create_task(calls.run(_SPEC, _FEED, deadline=None))
        await asyncio.sleep(0)
        engine.answer()
        await task

    asyncio.run(scenario())

    assert engine.asked == ["submit"]
