"""The agent's data path, from the events Faust hands it to their acknowledgement.

One call of `Predictor.take` per batch of Faust's take buffer; the path reads in one
direction::

    events --EventDecoder--> row blocks + rejects (rejects become dead letters)
    row blocks --Engine.submit--> outcomes, on the engine's thread, handed to the loop
    outcomes --encode_rows--> predictions --Sender.hand_over--> the producer, in order
    deliveries --Sender.settle--> acknowledged by the broker (or dead-lettered)
    delivered events --InOrderAcks--> acknowledged to Faust, in arrival order per partition

An event is acknowledged only once its prediction or dead letter is acknowledged by the
broker. An output that cannot be delivered leaves its event unacknowledged, and with it
every later event of its partition, so Faust commits nothing past it; the failure is
handed to ``on_failure`` (the agent crashes the app) and `take` refuses more work.
Nothing here imports Faust: the events are read as Faust's ``Event`` and ``Message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.codec import EventDecoder, encode_rows
from pipeline.engine.engine import Engine, Outcome
from pipeline.engine.spec import ModelSpec
from pipeline.faust.acks import InOrderAcks, Pending
from pipeline.faust.sender import Sender, now_ms

__all__ = ["Predictor"]

log = logging.getLogger("pipeline.faust")

Reason = tuple[str, str, str]


@dataclass(slots=True, eq=False)
class _Block:
    """The events of one decoded block on their way through the engine (its ticket)."""

    spec: ModelSpec
    pending: list[Pending[Any]]
    ids: list[str]
    ts: list[int]


class Predictor:
    """Turns Faust events into predictions and dead letters, acknowledging them in order.

    Args:
        engine: Batches and runs the rows; something else runs its batches (an
            `EngineLoop`), and its outcomes come back on any thread.
        decoder: Turns record values into rows and rejects.
        sender: Produces and settles the outputs.
        ack: Acknowledges one event to Faust (the agent's ``stream.ack``).
        on_failure: Told once when an output is lost or the path breaks (the agent crashes
            the app with it).
        max_in_flight: Events taken and not yet acknowledged before `take` waits.
    """

    def __init__(
        self,
        engine: Engine[Any],
        decoder: EventDecoder,
        sender: Sender,
        *,
        ack: Callable[[Any], Awaitable[object]],
        on_failure: Callable[[BaseException], Coroutine[Any, Any, None]],
        max_in_flight: int,
    ) -> None:
        self._engine = engine
        self._decoder = decoder
        self._sender = sender
        self._ack = ack
        self._on_failure = on_failure
        self._max_in_flight = max_in_flight
        self._acks: InOrderAcks[Any] = InOrderAcks()
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue[tuple[list[Pending[Any]], list[bytes]]] = asyncio.Queue()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._reporting: asyncio.Task[None] | None = None  # on_failure, kept referenced
        self._spawn(self._hand_over_in_order())

    @property
    def in_flight(self) -> int:
        """Events taken and not yet acknowledged."""
        return len(self._acks)

    async def take(self, events: Sequence[Any]) -> None:
        """Start the work of one batch of events; wait first while too many are in flight.

        Raises:
            BaseException: The failure that stopped the path earlier, if any.
        """
        await self._wait(lambda: self.in_flight < self._max_in_flight, self._room)
        records = [event.message for event in events]
        pending = [self._acks.arrived(r.tp, e) for r, e in zip(records, events, strict=True)]
        now = now_ms()
        decoded = self._decoder.decode(
            [r.value for r in records], [_event_time(r.timestamp, now) for r in records]
        )
        for reject in decoded.rejects:
            self._letter(pending[reject.index], (reject.stage, reject.error_type, reject.message))
        for block in decoded.blocks.values():
            ticket = _Block(block.spec, [pending[i] for i in block.indices], block.ids, block.ts)
            self._engine.submit(
                block.spec.name, block.spec.version, block.feed, ticket, self._from_engine
            )

    async def drain(self, timeout_s: float) -> int:
        """Wait until every event taken is acknowledged, at most `timeout_s`; return how
        many are not."""
        # TimeoutError, or the failure that stopped the path meanwhile (already reported)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._wait(lambda: not self.in_flight, self._idle), timeout_s)
        return self.in_flight

    def close(self) -> None:
        """Cancel what is still running; its events stay unacknowledged."""
        for task in list(self._tasks):
            task.cancel()

    # -- from the engine to the producer ---------------------------------------------------

    def _from_engine(self, outcome: Outcome[_Block]) -> None:
        """On the engine's thread: hand the outcome to the event loop."""
        with contextlib.suppress(RuntimeError):  # a closed loop: the app stopped; redone
            self._loop.call_soon_threadsafe(self._outcome, outcome)

    def _outcome(self, outcome: Outcome[_Block]) -> None:
        """Dead-letter the rows that failed; encode the predictions and queue them."""
        try:
            block = outcome.ticket
            for error in outcome.errors:
                reason = (error.stage, error.error_type, error.message)
                self._letter(block.pending[error.row], reason)
            if outcome.rows:
                assert outcome.model is not None
                self._encode(outcome.model.spec, block, outcome.rows, outcome.outputs)
        except Exception as exc:
            self._failed(exc)

    def _encode(
        self, spec: ModelSpec, block: _Block, rows: Sequence[int], outputs: dict[str, np.ndarray]
    ) -> None:
        if isinstance(rows, range) and len(rows) == len(block.pending):
            pending, ids, ts = block.pending, block.ids, block.ts
        else:
            pending = [block.pending[r] for r in rows]
            ids = [block.ids[r] for r in rows]
            ts = [block.ts[r] for r in rows]
        try:
            values = encode_rows(spec, ids, ts, outputs, now_ms())
        except (ValueError, TypeError) as exc:  # the outputs do not fit the manifest, or JSON
            for p in pending:
                self._letter(p, ("infer", "OutputMismatch", str(exc)))
            return
        self._outbox.put_nowait((pending, values))

    async def _hand_over_in_order(self) -> None:
        """The one task that gives predictions to the producer, in the engine's order."""
        while True:
            pending, values = await self._outbox.get()
            handed = await self._sender.hand_over([p.event.message for p in pending], values)
            self._spawn(self._settle(handed, pending))

    async def _settle(self, handed: Any, pending: list[Pending[Any]]) -> None:
        await self._sender.settle(handed)
        await self._release(pending)

    def _letter(self, pending: Pending[Any], reason: Reason) -> None:
        self._spawn(self._dead_letter(pending, reason))

    async def _dead_letter(self, pending: Pending[Any], reason: Reason) -> None:
        await self._sender.dead_letter(pending.event.message, reason)
        await self._release([pending])

    # -- acknowledgements ------------------------------------------------------------------

    async def _release(self, pending: list[Pending[Any]]) -> None:
        """Their outputs are acknowledged: ack every event now first in line."""
        for p in pending:
            for event in self._acks.delivered(p):
                await self._ack(event)
        if self.in_flight < self._max_in_flight:
            self._room.set()
        if not self.in_flight:
            self._idle.set()

    async def _wait(self, ready: Callable[[], bool], wake: asyncio.Event) -> None:
        while not ready():
            self._check()
            wake.clear()
            await wake.wait()
        self._check()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- tasks and failures ----------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failed(task.exception())  # type: ignore[arg-type]

    def _failed(self, exc: BaseException) -> None:
        """Stop taking work, wake whoever waits, and report the first failure once."""
        if self._failure is not None:
            return
        self._failure = exc
        log.error("predictions stopped: %s", exc)
        self._room.set()
        self._idle.set()
        self._reporting = self._loop.create_task(self._on_failure(exc))


def _event_time(timestamp_s: float | None, now: int) -> int:
    """The record's timestamp in ms, or `now` if it has none."""
    return int(timestamp_s * 1000) if timestamp_s and timestamp_s > 0 else now
