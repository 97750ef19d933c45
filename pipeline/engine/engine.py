"""The engine: one batcher and one model cache behind every front door.

Callers (the Kafka worker, the HTTP and gRPC doors, a Faust agent) `Engine.submit` rows
for a model version with a *ticket* of their own and a callback. The engine gathers the
rows of all callers per ``(model, version)`` (and per row shape, for inputs of symbolic
shape), cuts batches by size or by the age of their
oldest row, runs each batch through ONNX Runtime (`run_batch`, which isolates failing rows)
and hands every caller an `Outcome` per part of its submission: the outputs of the rows
that were predicted and a `RowError` for each row that was not. It knows nothing of Kafka,
HTTP or JSON.

Who runs the batches: a caller may drive the engine itself (`run_due`, `flush`), as the
Kafka worker does on its own thread, or an `EngineLoop` thread does, as the front doors
need. Batches run one at a time, in the order they were cut, whichever thread runs them, so
the rows of one submission and of one key keep their order. Callbacks run on that thread:
they must be quick and must not raise (the Kafka worker appends to a deque; the doors hand
the outcome to their event loop).

Bounds: a submission with ``admit=True`` (a front door) is refused with `Overloaded` when
more than ``max_queue_rows`` rows of the doors would wait for its model; the Kafka worker
bounds its own rows by pausing partitions instead, and its rows never count against the
doors' bound (a backlog on Kafka cannot refuse a door's request, and the doors' rows and
the stream's share the same batches, oldest first). A submission may carry a deadline
(monotonic seconds): rows whose deadline has passed when their batch is cut are not run; they get a
``deadline`` error.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from pipeline.engine.batching import Batch, Limits, MicroBatcher, Slice
from pipeline.engine.inference import run_batch
from pipeline.engine.latency import LatencyTarget
from pipeline.engine.models import LoadedModel, ModelCache
from pipeline.engine.rollout import Rollouts
from pipeline.engine.shadow import ShadowRunner
from pipeline.engine.signature import Feed, feed_rows, shape_key
from pipeline.errors import ConfigError, ModelError, Overloaded
from pipeline.metrics import NULL_SENSOR, Sensor

__all__ = ["Engine", "EngineLoop", "Outcome", "RowError"]

log = logging.getLogger(__name__)

RUN_NOW_MAX_S = 0.005
"""`Engine.run_now` runs a version's rows on the caller's thread only while its last batch
took less than this: a door's event loop may pause that long, no longer."""

T = TypeVar("T")
ModelKey = tuple[str, str]

_NEVER = sys.maxsize  # no count of pending rows wakes a waiter


@dataclass(frozen=True, slots=True)
class RowError:
    """A row of a submission that was not predicted, and why.

    Attributes:
        row: Its index in the submission.
        stage: ``route`` (the model could not be loaded), ``infer`` (the model failed on
            it) or ``deadline`` (its caller's deadline passed before it ran).
        error_type: Short CamelCase kind, e.g. ``ModelLoadFailed`` or an ONNX Runtime error.
        message: What went wrong.
    """

    row: int
    stage: str
    error_type: str
    message: str


@dataclass(slots=True)
class Outcome(Generic[T]):
    """What became of some rows (one `Slice`) of one submission.

    Attributes:
        ticket: The submitter's ticket.
        model: The model version that ran, or None if it could not be loaded.
        rows: Submission row indices that were predicted, ascending.
        outputs: Output name -> array with one entry per row of `rows`, in that order.
        errors: One per row of the slice that was not predicted.
        queue_wait_s: How long the batch's oldest row waited before the batch ran.
    """

    ticket: T
    model: LoadedModel | None
    rows: Sequence[int]
    outputs: dict[str, np.ndarray]
    errors: list[RowError]
    queue_wait_s: float = 0.0


@dataclass(slots=True, eq=False)
class _Submission(Generic[T]):
    """The engine's ticket for one submission: the caller's ticket and where to report."""

    ticket: T
    done: Callable[[Outcome[T]], None]
    deadline: float | None
    admitted: bool = False  # a door's rows, counted against max_queue_rows until they run


@dataclass(slots=True)
class _Queue:
    """Rows cut into batches that have not run yet, per key (for the admission bound)."""

    ready: list[Batch[Any]] = field(default_factory=list)
    rows: dict[ModelKey, int] = field(default_factory=dict)


class Engine(Generic[T]):
    """Batches rows per model version across callers and runs them.

    Args:
        models: Where model versions are loaded from.
        max_batch_size: Rows per batch at most.
        max_wait_ms: How long a batch's oldest row may wait for the batch to fill.
        max_queue_rows: Rows of the doors (``admit=True``) that may wait per model version
            before `submit` with ``admit=True`` raises `Overloaded`; None for no bound.
        clock: Monotonic clock in seconds; injectable for tests.
        sensor: Receives an ``inference`` event per batch run.
        latency_target_ms: Size batches from this target instead of ``max_wait_ms``
            (see `pipeline.engine.latency`); None for the fixed wait.
        rollouts: Shadow and canary versions (`pipeline.engine.rollout`); after a batch's
            outcomes are reported, its rows are offered to the model's shadow version, if
            any (`pipeline.engine.shadow`). None for neither.

    Raises:
        ConfigError: a setting is out of range.
    """

    def __init__(
        self,
        models: ModelCache,
        *,
        max_batch_size: int = 256,
        max_wait_ms: float = 5.0,
        max_queue_rows: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sensor: Sensor = NULL_SENSOR,
        latency_target_ms: float | None = None,
        rollouts: Rollouts | None = None,
    ) -> None:
        if max_queue_rows is not None and (
            isinstance(max_queue_rows, bool) or not isinstance(max_queue_rows, int)
            or max_queue_rows < 1
        ):  # fmt: skip
            raise ConfigError(f"max_queue_rows must be an integer >= 1, got {max_queue_rows!r}")
        self._models = models
        self._target = (
            LatencyTarget(latency_target_ms, max_batch_size=max_batch_size)
            if latency_target_ms
            else None
        )
        self._batcher: MicroBatcher[_Submission[T]] = MicroBatcher(
            max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, clock=clock,
            sizing=self._target,
        )  # fmt: skip
        self._max_queue_rows = max_queue_rows
        self._clock = clock
        self._sensor = sensor
        self._lock = threading.Lock()  # guards the batcher and the queue
        self._wake = threading.Condition(self._lock)  # an EngineLoop waits on it
        self._wake_at = _NEVER  # rows pending at which `submit` wakes a gathering waiter
        self._runner = threading.RLock()  # one thread runs batches at a time, in order
        self._queue = _Queue()
        self._admitted: dict[ModelKey, int] = {}  # the doors' rows not yet run, per version
        self._limits: dict[ModelKey, Limits] = {}  # each version's manifest batch settings
        self._took: dict[ModelKey, float] = {}  # each version's last batch's run time
        self.rollouts = rollouts
        self.shadows = ShadowRunner(models, rollouts, sensor) if rollouts is not None else None

    @property
    def models(self) -> ModelCache:
        """The model cache (a `pipeline.engine.spec.ModelCatalog` for decoders)."""
        return self._models

    @property
    def max_batch_size(self) -> int:
        """Rows per batch at most."""
        return self._batcher.max_batch_size

    @property
    def max_wait_ms(self) -> float:
        """How long a batch's oldest row may wait."""
        return self._batcher.max_wait_ms

    def waiting(self) -> int:
        """Rows submitted and not yet run, over all model versions."""
        with self._lock:
            return len(self._batcher) + sum(self._queue.rows.values())

    def submit(
        self,
        model: str,
        version: str,
        feed: Feed,
        ticket: T,
        done: Callable[[Outcome[T]], None],
        *,
        deadline: float | None = None,
        admit: bool = False,
    ) -> None:
        """Queue the rows of `feed` for `model` at `version`.

        `done` is called once per part of the submission as its batches run (on the
        thread that runs them), with outcomes covering every row exactly once.

        Args:
            model: The model's name.
            version: The resolved version (see `ModelCache.resolve`).
            feed: One array per input of the model, each with the submission's ``n`` rows
                (a codec `RowBlock`'s feed); the engine keeps the arrays.
            ticket: The caller's own reference, handed back in each `Outcome`.
            done: Receives the outcomes.
            deadline: Monotonic time after which rows not yet run are not run.
            admit: Refuse with `Overloaded` rather than queue beyond ``max_queue_rows``.

        Raises:
            Overloaded: `admit` is set and the model version's queue is full.
            ValueError: `feed` differs in inputs, dtypes or shapes from the rows pending for it.
        """
        key = (model, version)
        batch_key = (model, version, shape_key(feed))
        submission = _Submission(ticket, done, deadline, admitted=admit)
        rows = feed_rows(feed)
        limits = self._limits.get(key) or self._limits_of(key)
        with self._lock:
            if admit:
                waiting = self._admitted.get(key, 0)
                if self._max_queue_rows is not None and waiting + rows > self._max_queue_rows:
                    raise Overloaded(
                        f"{waiting} rows are waiting for model {model!r} version {version!r}, "
                        f"the most allowed is {self._max_queue_rows} (max_queue_rows); "
                        "retry later"
                    )
                self._admitted[key] = waiting + rows
            was_idle = not len(self._batcher)
            full = self._batcher.add(batch_key, feed, submission, limits)
            for batch in full:
                self._queue.ready.append(batch)
                self._queue.rows[key] = self._queue.rows.get(key, 0) + batch.rows
            if full or was_idle or len(self._batcher) >= self._wake_at:
                self._wake.notify()

    def run_now(
        self,
        model: str,
        version: str,
        feed: Feed,
        ticket: T,
        done: Callable[[Outcome[T]], None],
        *,
        deadline: float | None = None,
    ) -> bool:
        """Run `feed` as a batch of its own on the calling thread, if the engine is idle;
        `done` hears its outcome before this returns. A front door's lone caller skips the
        hand-off to the thread that runs batches and back: two thread wake-ups, which cost
        a lone HTTP request about a quarter of its CPU on a two-core machine.

        Returns:
            False, having done nothing, when another batch runs or rows wait (submit them
            instead, so they batch with those); when this version's last batch took longer
            than `RUN_NOW_MAX_S` or none has run yet (the calling thread is a door's event
            loop, which must not stall on a slow model); or when `feed` holds more rows
            than ``max_queue_rows`` (`submit` refuses those).
        """
        key = (model, version)
        if self._took.get(key, RUN_NOW_MAX_S) >= RUN_NOW_MAX_S:
            return False
        if self._max_queue_rows is not None and feed_rows(feed) > self._max_queue_rows:
            return False
        limits = self._limits.get(key) or self._limits_of(key)  # as `submit`: never under the lock
        if not self._runner.acquire(blocking=False):
            return False
        try:
            with self._lock:
                if len(self._batcher) or self._queue.ready:
                    return False
                submission = _Submission(ticket, done, deadline)
                self._batcher.add((model, version, shape_key(feed)), feed, submission, limits)
            self._run_all(flush=True)
            return True
        finally:
            self._runner.release()

    def _limits_of(self, key: ModelKey) -> Limits:
        """The batch size and wait of a version's manifest (``serving``), looked up once."""
        try:
            serving = self._models.get(*key).serving
        except ModelError:  # it fails again when its batch runs, and says so there
            return Limits()
        limits = Limits(serving.get("max_batch_size"), serving.get("max_wait_ms"))
        self._limits[key] = limits
        return limits

    def next_deadline(self) -> float | None:
        """When the next batch is due to run (now, if one is full); None if nothing waits."""
        with self._lock:
            if self._queue.ready:
                return self._clock()
            return self._batcher.next_deadline()

    def wait_for_work(self, at_most_s: float, *, any_row: bool = False, at_least: int = 1) -> None:
        """Block until a batch is full or due, something is submitted to an idle engine,
        or `at_most_s` passes (what an `EngineLoop` does between runs); with `any_row`,
        not at all while `at_least` rows wait (and, while fewer wait, until that many do)."""
        with self._wake:
            if self._queue.ready or (any_row and len(self._batcher) >= at_least):
                due: float | None = self._clock()
            else:
                due = self._batcher.next_deadline()
            timeout = at_most_s if due is None else min(due - self._clock(), at_most_s)
            if timeout > 0:
                self._wake_at = at_least if any_row else _NEVER
                try:
                    self._wake.wait(timeout)
                finally:
                    self._wake_at = _NEVER

    def wake(self) -> None:
        """Wake whoever waits in `wait_for_work`."""
        with self._wake:
            self._wake.notify_all()

    def run_due(self) -> int:
        """Run every full batch and every batch whose oldest row has waited long enough.

        Returns:
            How many batches ran.
        """
        return self._run_all(flush=False)

    def flush(self) -> int:
        """Run everything that waits, however young. Returns how many batches ran."""
        return self._run_all(flush=True)

    def drop(self, predicate: Callable[[T], bool]) -> int:
        """Forget the rows not yet cut into a batch of every submission whose ticket
        matches `predicate`; no outcome is reported for them. Returns how many."""
        with self._lock:
            return self._batcher.drop(lambda submission: predicate(submission.ticket))

    def _run_all(self, *, flush: bool) -> int:
        with self._runner:
            with self._lock:
                batches = self._queue.ready
                batches += self._batcher.flush() if flush else self._batcher.due()
                self._queue.ready = []
            for batch in batches:
                try:
                    self._run(batch)
                finally:
                    self._ran(batch)
            return len(batches)

    def _ran(self, batch: Batch[_Submission[T]]) -> None:
        """Forget a batch's rows in the queue's counts, the doors' among them."""
        key = _key(batch)
        doors = sum(len(s) for s in batch.slices if s.ticket.admitted)
        with self._lock:
            left = self._queue.rows.get(key, 0) - batch.rows
            if left > 0:
                self._queue.rows[key] = left
            else:
                self._queue.rows.pop(key, None)
            if doors:
                self._admitted[key] = self._admitted.get(key, 0) - doors

    def _run(self, batch: Batch[_Submission[T]]) -> None:
        """Run one batch and report an outcome for each of its slices."""
        name, version = _key(batch)
        started = self._clock()
        waited = started - batch.first_added_at
        slices, feed = self._live(batch, started)
        if not slices:
            return
        try:
            model = self._models.get(name, version)
        except ModelError as exc:  # e.g. the version was deleted from the store meanwhile
            for s in slices:
                _report_all(s, None, "route", "ModelLoadFailed", str(exc), waited)
            return
        try:
            result = run_batch(model, feed)
        except Exception as exc:  # a mistake of ours, not of the rows: fail them, go on
            log.exception("a batch of %s version %s failed as a whole", name, version)
            message = f"the batch failed as a whole ({exc}); its rows were not predicted"
            for s in slices:
                _report_all(s, model, "infer", type(exc).__name__, message, waited)
            return
        took = self._clock() - started
        self._took[(name, version)] = took
        rows = feed_rows(feed)
        self._sensor.inference(name, version, rows, waited, took)
        if self._target is not None:
            self._target.observe(batch.key, rows, took)
        if not result.failures:
            _report_ok(slices, model, result.outputs, waited)
        else:
            _report_mixed(slices, model, result.outputs, result.ok_positions,
                          result.failures, waited)  # fmt: skip
        if self.shadows is not None:  # after the callers have their outcomes, never before
            owners = [(s.ticket.ticket, s.start, s.stop) for s in slices]
            self.shadows.offer(model, feed, result.outputs, result.ok_positions, owners)

    def _live(
        self, batch: Batch[_Submission[T]], now: float
    ) -> tuple[list[Slice[_Submission[T]]], Feed]:
        """Split off the slices whose deadline has passed (reported as expired)."""
        expired = [
            s for s in batch.slices if s.ticket.deadline is not None and s.ticket.deadline < now
        ]
        if not expired:
            return batch.slices, batch.feed
        keep = np.ones(batch.rows, dtype=bool)
        live: list[Slice[_Submission[T]]] = []
        offset = 0
        for s in batch.slices:
            if s.ticket.deadline is not None and s.ticket.deadline < now:
                keep[offset : offset + len(s)] = False
                message = "the caller's deadline passed before its rows could run"
                _report_all(
                    s, None, "deadline", "DeadlineExceeded", message, now - batch.first_added_at
                )
            else:
                live.append(s)
            offset += len(s)
        name, version = _key(batch)
        self._sensor.rows_expired(name, version, int((~keep).sum()))
        return live, {name: array[keep] for name, array in batch.feed.items()}


def _key(batch: Batch[Any]) -> ModelKey:
    """The model version of a batch (its key is ``(model, version, shapes)``)."""
    key: tuple[str, str, object] = batch.key  # type: ignore[assignment]
    return key[0], key[1]


def _tell(s: Slice[_Submission[T]], outcome: Outcome[T]) -> None:
    """Hand a caller its outcome; a callback that raises is the caller's bug, logged, and
    never stops the other slices' outcomes or the engine."""
    try:
        s.ticket.done(outcome)
    except Exception:
        log.exception("a caller's callback raised on its outcome; the engine goes on")


def _report_all(
    s: Slice[_Submission[T]],
    model: LoadedModel | None,
    stage: str,
    error_type: str,
    message: str,
    waited: float,
) -> None:
    errors = [RowError(row, stage, error_type, message) for row in range(s.start, s.stop)]
    _tell(s, Outcome(s.ticket.ticket, model, (), {}, errors, waited))


def _report_ok(
    slices: list[Slice[_Submission[T]]],
    model: LoadedModel,
    outputs: dict[str, np.ndarray],
    waited: float,
) -> None:
    """Every row was predicted: each slice gets its run of the outputs."""
    if len(slices) == 1:
        (s,) = slices
        _tell(s, Outcome(s.ticket.ticket, model, range(s.start, s.stop), outputs, [], waited))
        return
    offset = 0
    for s in slices:
        mine = {name: array[offset : offset + len(s)] for name, array in outputs.items()}
        _tell(s, Outcome(s.ticket.ticket, model, range(s.start, s.stop), mine, [], waited))
        offset += len(s)


def _report_mixed(
    slices: list[Slice[_Submission[T]]],
    model: LoadedModel,
    outputs: dict[str, np.ndarray],
    ok_positions: list[int],
    failures: Sequence[Any],
    waited: float,
) -> None:
    """Some rows failed: map batch positions back to each slice's submission rows."""
    ok = np.asarray(ok_positions, dtype=np.int64)
    offset = 0
    for s in slices:
        lo, hi = np.searchsorted(ok, [offset, offset + len(s)])
        rows = (ok[lo:hi] - offset + s.start).tolist()
        mine = {name: array[lo:hi] for name, array in outputs.items()}
        errors = [
            RowError(f.position - offset + s.start, "infer", f.error_type, f.message)
            for f in failures
            if offset <= f.position < offset + len(s)
        ]
        _tell(s, Outcome(s.ticket.ticket, model, rows, mine, errors, waited))
        offset += len(s)


class EngineLoop(threading.Thread):
    """Runs an engine's batches on a thread of their own, as they fill or come due.

    Front doors need it: their callers only submit and wait. The Kafka worker may still
    run batches itself on its thread; batches run one at a time either way. An exception
    from a turn (a caller's callback that raised, say) is logged and the loop goes on;
    `on_turn` is called after every turn (at least every `idle_s`), so a liveness probe
    can tell a loop that stopped turning.

    With `when_idle`, the loop does not wait for batches to fill: whenever it is free it
    runs every row that waits, however young. A lone caller's row runs at once; rows that
    arrive while a batch runs wait for it and then go out together, so batches grow with
    the load by themselves (and never exceed the engine's ``max_batch_size``). Without
    it, a batch waits until it is full or its oldest row has waited ``max_wait_ms``.

    `gather`, with `when_idle`, says how many rows are worth waiting for: the loop runs
    what waits once that many rows do, and otherwise once the oldest has waited
    ``max_wait_ms`` (a door's callers that are known to be coming, see
    `pipeline.serve.company.Company`). 1, or no `gather`, is plain `when_idle`.
    """

    def __init__(
        self,
        engine: Engine[Any],
        *,
        idle_s: float = 0.5,
        on_turn: Callable[[], None] | None = None,
        when_idle: bool = False,
        gather: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(name="engine", daemon=True)
        self._engine = engine
        self._idle_s = idle_s
        self._on_turn = on_turn
        self._when_idle = when_idle
        self._gather = gather
        self._stopping = threading.Event()

    def run(self) -> None:
        engine = self._engine
        while not self._stopping.is_set():
            try:
                wanted = self._gather() if self._gather is not None else 1
                engine.wait_for_work(self._idle_s, any_row=self._when_idle, at_least=wanted)
                if self._when_idle and engine.waiting() >= wanted:
                    engine.flush()
                else:
                    engine.run_due()
            except Exception:  # one turn's failure must not end the thread
                log.exception("the engine loop's turn failed; it goes on")
            if self._on_turn is not None:
                self._on_turn()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the current batch, then run what is still waiting."""
        self._stopping.set()
        self._engine.wake()
        self.join(timeout_s)
        self._engine.flush()
