"""Shadow runs: a candidate version answers the served version's rows, and nobody hears it.

After a batch of model NAME has run and its outcomes have gone to their callers, the engine
offers the batch to the `ShadowRunner` if NAME has a shadow version
(`pipeline.engine.rollout`). The runner keeps a share of the rows (``--shadow-fraction``),
runs them through the shadow version on a thread of its own, compares the two answers
(`pipeline.engine.compare`) and reports the comparison to the sensor; where a sink is
given (``--shadow-topic``), it also hands over the shadow's outputs.

What the served path is promised: a shadow never delays, fails or changes a served
prediction. The served outcomes are reported before the offer; the offer never blocks (a
full queue drops the shadow's share of that batch and counts it as skipped); a shadow
that cannot load, takes other inputs, raises or cannot be compared is counted as a shadow
error and logged once per kind.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.compare import Comparison, compare
from pipeline.engine.inference import run_batch
from pipeline.engine.models import LoadedModel, ModelCache
from pipeline.engine.rollout import Rollouts
from pipeline.engine.signature import Feed
from pipeline.errors import ModelError
from pipeline.metrics import NULL_SENSOR, Sensor

__all__ = ["ShadowRun", "ShadowRunner", "ShadowSink"]

log = logging.getLogger("pipeline.engine")

_MAX_PENDING = 8  # batches waiting for the shadow thread; more are skipped


@dataclass(frozen=True, slots=True)
class ShadowRun:
    """One batch's rows as served and as the shadow answered them.

    Attributes:
        served: The version that answered.
        shadow: The shadow version.
        tickets: Per row, what the submitter's ticket and row index were (for a sink
            that joins shadow rows to served predictions).
        outputs: The shadow's outputs for the compared rows.
        comparison: The comparison, row by row.
    """

    served: LoadedModel
    shadow: LoadedModel
    tickets: Sequence[tuple[Any, int]]
    outputs: dict[str, np.ndarray[Any, Any]]
    comparison: Comparison


ShadowSink = Callable[[ShadowRun], None]
"""Receives every shadow run that compared (on the shadow thread; must not block long)."""


@dataclass(slots=True)
class _Task:
    served: LoadedModel
    shadow_version: str
    feed: Feed
    outputs: dict[str, np.ndarray[Any, Any]]
    tickets: Sequence[tuple[Any, int]]


class ShadowRunner:
    """Runs shadow versions on the served rows, on a thread of its own.

    Args:
        models: Where the shadow versions are loaded from.
        rollouts: Which version shadows which model, and the share of rows.
        sensor: Receives the comparisons, errors and skipped rows.
        sink: Receives each compared run (``--shadow-topic``); None for metrics only.
        max_pending: Batches that may wait for the shadow thread before more are skipped.
        seed: Seeds the row sampling (tests).
    """

    def __init__(
        self,
        models: ModelCache,
        rollouts: Rollouts,
        sensor: Sensor = NULL_SENSOR,
        *,
        sink: ShadowSink | None = None,
        max_pending: int = _MAX_PENDING,
        seed: int | None = None,
    ) -> None:
        self._models = models
        self._rollouts = rollouts
        self._sensor = sensor
        self.sink = sink
        self._tasks: queue.Queue[_Task | None] = queue.Queue(maxsize=max_pending)
        self._rng = np.random.default_rng(seed)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._logged: set[tuple[str, str, str]] = set()
        self._idle = threading.Condition()
        self._busy = 0

    def offer(
        self,
        served: LoadedModel,
        feed: Feed,
        outputs: dict[str, np.ndarray[Any, Any]],
        positions: Sequence[int],
        slices: Sequence[tuple[Any, int, int]],
    ) -> None:
        """Offer a batch that has run: `outputs` hold the rows at `positions` of `feed`
        (those the served version predicted); `slices` say whose the batch's rows are, in
        order, as (ticket, first row, row after the last) of each submission. Never
        blocks; returns at once when the model has no shadow."""
        name, version = served.spec.name, served.spec.version
        shadow = self._rollouts.shadow_of(name)
        if shadow is None or shadow == version or not len(positions):
            return
        chosen = np.asarray(positions, dtype=np.int64)
        mine = np.arange(len(chosen))
        fraction = self._rollouts.shadow_fraction
        if fraction < 1:
            keep = self._rng.random(len(chosen)) < fraction
            chosen, mine = chosen[keep], mine[keep]
            if not len(chosen):
                return
        whole = len(chosen) == _feed_rows(feed)
        tickets: list[tuple[Any, int]] = []
        if self.sink is not None:  # who each row of the batch is, only when a sink asks
            owners = [(t, row) for t, start, stop in slices for row in range(start, stop)]
            tickets = owners if whole else [owners[i] for i in chosen.tolist()]
        task = _Task(
            served,
            shadow,
            feed if whole else {k: v[chosen] for k, v in feed.items()},
            outputs if whole else {k: v[mine] for k, v in outputs.items()},
            tickets,
        )
        self._ensure_started()
        try:
            with self._idle:
                self._busy += 1
            self._tasks.put_nowait(task)
        except queue.Full:
            self._finished()
            self._sensor.shadow_skipped(name, version, shadow, len(chosen))

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every offered batch has been run (tests, and a clean stop)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout_s)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="shadow", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            try:
                self._run(task)
            except Exception:  # never let one batch end the thread
                log.exception("a shadow run failed; the shadow thread goes on")
            finally:
                self._finished()

    def _finished(self) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def _run(self, task: _Task) -> None:
        served = task.served
        name, version = served.spec.name, served.spec.version
        rows = _feed_rows(task.feed)
        try:
            shadow = self._models.get(name, task.shadow_version)
        except ModelError as exc:
            self._failed(task, "ModelLoadFailed", str(exc), rows)
            return
        if shadow.spec.inputs != served.spec.inputs or (
            shadow.spec.feature_names and shadow.spec.feature_names != served.spec.feature_names
        ):
            message = (
                f"{shadow.spec.describe()} takes other inputs than {served.spec.describe()} "
                f"({_inputs(shadow)} vs {_inputs(served)}); a shadow must take the same rows"
            )
            self._failed(task, "InputsDiffer", message, rows)
            return
        try:
            result = run_batch(shadow, task.feed)
        except Exception as exc:
            self._failed(task, type(exc).__name__, str(exc), rows)
            return
        for failure in result.failures:
            self._failed(task, failure.error_type, failure.message, 1)
        if not result.ok_positions:
            return
        ok = result.ok_positions
        served_outputs = (
            task.outputs
            if len(ok) == rows
            else {k: v[np.asarray(ok, dtype=np.int64)] for k, v in task.outputs.items()}
        )
        try:
            comparison = compare(served.spec, served_outputs, shadow.spec, result.outputs)
        except ValueError as exc:
            self._failed(task, "NotComparable", str(exc), len(ok))
            return
        self._sensor.shadowed(name, version, task.shadow_version, comparison.rows,
                              comparison.agreed, comparison.differences)  # fmt: skip
        if self.sink is not None:
            tickets = task.tickets if len(ok) == rows else [task.tickets[i] for i in ok]
            self.sink(ShadowRun(served, shadow, tickets, result.outputs, comparison))

    def _failed(self, task: _Task, error_type: str, message: str, rows: int) -> None:
        name, version = task.served.spec.name, task.served.spec.version
        self._sensor.shadow_failed(name, version, task.shadow_version, error_type, rows)
        key = (name, task.shadow_version, error_type)
        if key not in self._logged and len(self._logged) < 256:
            self._logged.add(key)
            log.warning("model %r: shadow version %s failed (%s: %s); the served version %s "
                        "answers as before. Logged once per kind of failure",
                        name, task.shadow_version, error_type, message, version)  # fmt: skip


def _feed_rows(feed: Feed) -> int:
    for array in feed.values():
        return len(array)
    return 0


def _inputs(model: LoadedModel) -> str:
    return ", ".join(f"{i.name} {i.datatype} {list(i.shape)}" for i in model.spec.inputs)
