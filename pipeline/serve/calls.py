"""What a front door asks of the engine, awaited on the door's event loop.

`ModelCalls.resolve` finds the model version a request names; `ModelCalls.run` submits
its rows to the shared engine (so they batch with every other caller's) and awaits the
outcome; `seed_answers` turns outputs into the seed API's ``prediction`` and
``confidence``. A request that cannot be answered raises `Refusal`, which carries the HTTP
status and the gRPC code the doors answer with:

=====================  ====  ===================  =====================================
what                   HTTP  gRPC                 when
=====================  ====  ===================  =====================================
bad input              400   INVALID_ARGUMENT     the body, a tensor or a row is wrong
unknown model          404   NOT_FOUND            no such model or version in the store
queue full             429   RESOURCE_EXHAUSTED   more than --max-queue rows wait
deadline passed        504   DEADLINE_EXCEEDED    the caller's deadline came first
model cannot load      503   UNAVAILABLE          the store's file is broken
=====================  ====  ===================  =====================================
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.codec import Reject, RowBlock
from pipeline.engine.engine import Engine, Outcome
from pipeline.engine.models import LoadedModel
from pipeline.engine.names import is_plain_name
from pipeline.engine.signature import Feed, feed_rows
from pipeline.engine.spec import ModelSpec
from pipeline.errors import ModelLoadError, ModelNotFoundError, Overloaded
from pipeline.metrics.sensor import NULL_SENSOR, Sensor
from pipeline.serve.company import Company

__all__ = [
    "KEY",
    "LONE_AFTER_S",
    "LONE_CHECK_EVERY_S",
    "ModelCalls",
    "Refusal",
    "SeedAnswer",
    "bad_input",
    "internal",
    "one_block",
    "rejected",
    "routing_key",
    "seed_answers",
    "seed_model",
]


LONE_AFTER_S = 0.1
"""A caller is lone (see `ModelCalls`) once no request has had company for this long."""

LONE_CHECK_EVERY_S = 0.02
"""How long rows may keep running at once since a request last waited on the engine's
thread. Rows that run at once never let another request in beside them (the loop does not
turn while they run), so only a request that waits can see company arrive: one in this
long does, or concurrency that starts after a quiet spell would never be noticed."""

KEY = b"x-routing-key"
"""The request header (HTTP) or metadata key (gRPC) whose value splits a canary's share
of keys, as a Kafka record's key does; see `routing_key`."""


def routing_key(value: str | None) -> bytes:
    """The key a door's request is split by when its model has a canary: the
    ``x-routing-key`` value (the same value always gets the same version), or, without
    one, a random key (each request falls to the canary with its share's chance).

    The random key comes from `random`, not `os.urandom`: a split needs no secret, and
    the system call releases the GIL, which hands it to the engine's thread in the middle
    of every request under load (HTTP /predict at 64 callers: about 15% more CPU)."""
    return value.encode() if value else _KEYS.getrandbits(64).to_bytes(8, "big")


_KEYS = random.Random()


class Refusal(Exception):
    """A request the door answers with an error status; `message` says why."""

    def __init__(self, http: int, grpc: str, message: str) -> None:
        super().__init__(message)
        self.http = http
        self.grpc = grpc
        self.message = message


def bad_input(message: str) -> Refusal:
    """A caller's mistake: 400 / INVALID_ARGUMENT."""
    return Refusal(400, "INVALID_ARGUMENT", message)


def internal(door: str, exc: BaseException) -> Refusal:
    """A mistake of ours that no rule caught: 500 / INTERNAL, logged with its traceback
    (once per kind of exception and door), so the next unknown one is at least visible."""
    kind = (door, type(exc).__name__)
    if kind not in _LOGGED:
        _LOGGED.add(kind)
        log.error("the %s door failed on a request", door, exc_info=exc)
    return Refusal(500, "INTERNAL", f"the server failed on this request ({type(exc).__name__})")


_LOGGED: set[tuple[str, str]] = set()


log = logging.getLogger(__name__)

_UNROUTABLE = {  # a rejected row's error type at the route stage -> HTTP status, gRPC code
    "UnknownModel": (404, "NOT_FOUND"),
    "UnknownVersion": (404, "NOT_FOUND"),
    "ModelLoadFailed": (503, "UNAVAILABLE"),
}


def rejected(reject: Reject, prefix: str = "") -> Refusal:
    """The refusal of a request whose row the codec rejected: a model or version not in the
    store, or one that cannot load, as in this module's table; anything else is bad input.
    `prefix` goes before the reject's message (where in the request the row was)."""
    found = _UNROUTABLE.get(reject.error_type) if reject.stage == "route" else None
    http, grpc = found or (400, "INVALID_ARGUMENT")
    return Refusal(http, grpc, prefix + reject.message)


def one_block(blocks: Iterable[RowBlock]) -> tuple[ModelSpec, Feed]:
    """The spec and rows of a request's decoded rows, which must make one block: rows of one
    request share their shapes (a model with inputs of symbolic shape batches rows of equal
    shape; send rows of other lengths in requests of their own)."""
    found = list(blocks)
    if len(found) != 1:
        shapes = sorted({str(next(iter(b.feed.values())).shape[1:]) for b in found})
        raise bad_input(
            "the rows of one request must share their shapes, got rows of shapes "
            f"{', '.join(shapes)}; send rows of each shape in a request of their own"
        )
    return found[0].spec, found[0].feed


def seed_model(calls: ModelCalls, name: object, version: object) -> None:
    """Refuse a model the seed API cannot serve (it answers one float vector per row). A
    model or version that does not resolve is left for the decoder to name, as ever."""
    try:
        spec = calls.resolve(name, version)
    except Refusal:
        return
    if not spec.vector:
        inputs = ", ".join(f"{t.name!r} ({t.describe()})" for t in spec.inputs)
        raise bad_input(
            f"this API serves models that take one vector of numbers; {spec.describe()} "
            f"takes the inputs {inputs}: use POST /v2/models/{spec.name}/infer (Open "
            f"Inference Protocol) or POST /v1/models/{spec.name}:predict with rows as objects "
            "of input name -> value"
        )


@dataclass(slots=True)
class Predicted:
    """The outputs of every row of one request, in row order, and the model that ran."""

    model: LoadedModel
    outputs: dict[str, np.ndarray]


class _Waiter:
    """Collects the outcomes of one submission; resolves its future on the door's loop."""

    __slots__ = ("future", "loop", "outcomes", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, rows: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[list[Outcome[_Waiter]]] = loop.create_future()
        self.outcomes: list[Outcome[_Waiter]] = []
        self.remaining = rows

    def done(self, outcome: Outcome[_Waiter]) -> None:  # on the thread that runs batches
        if self._last(outcome):
            self.loop.call_soon_threadsafe(_resolve, self.future, self.outcomes)

    def done_here(self, outcome: Outcome[_Waiter]) -> None:  # on the loop's own thread
        if self._last(outcome):
            _resolve(self.future, self.outcomes)

    def _last(self, outcome: Outcome[_Waiter]) -> bool:
        """Keep `outcome`; whether it was the last one the submission waited for."""
        self.outcomes.append(outcome)
        self.remaining -= len(outcome.rows) + len(outcome.errors)
        return not self.remaining


def _resolve(future: asyncio.Future[list[Outcome[_Waiter]]], outcomes: list[Outcome[Any]]) -> None:
    if not future.done():  # the caller may have gone
        future.set_result(outcomes)


class ModelCalls:
    """The doors' way into the engine.

    Args:
        engine: The shared engine (its model cache answers `resolve`).
        default_model: The model for requests that name none; None to require a name.
        max_rows: Most rows one request may carry.
        sensor: Counts the predictions answered.
        run_lone_now: Run a lone caller's rows at once on the door's event loop
            (`Engine.run_now`) rather than hand them to the engine's thread and wait for
            it to hand the outcome back. A caller is lone when no other request has been in
            flight beside one for `LONE_AFTER_S` and one has waited on the engine's thread
            (where company can arrive) within `LONE_CHECK_EVERY_S`; with company, rows go
            to the engine's thread, which batches them. For ``--dispatch when-idle``, whose
            batches run as soon as the engine is free anyway.
        company: Told how many requests are in flight as each is submitted, for the
            engine's loop to wait for rows under concurrency (`Company`).
    """

    def __init__(
        self,
        engine: Engine[Any],
        *,
        default_model: str | None,
        max_rows: int,
        sensor: Sensor = NULL_SENSOR,
        run_lone_now: bool = False,
        company: Company | None = None,
    ) -> None:
        self.engine = engine
        self._company = company
        self._default_model = default_model
        self._max_rows = max_rows
        self._sensor = sensor
        self._run_lone_now = run_lone_now
        self._in_flight = 0  # requests between submitting their rows and their outcome
        self._company_at = -LONE_AFTER_S  # when a request last had another beside it
        self._waited_at = -LONE_CHECK_EVERY_S  # when one last waited on the engine's thread

    def model_name(self, name: object) -> str:
        """The model a request means: its own, or the default."""
        if name in (None, ""):
            if self._default_model is None:
                raise bad_input("model is required: this server has no default model")
            return self._default_model
        if not isinstance(name, str) or not is_plain_name(name):
            raise bad_input(f"model must be a plain model name, got {name!r}")
        return name

    def resolve(self, name: object, version: object = None) -> ModelSpec:
        """The spec of the model version a request names (newest if no version)."""
        model = self.model_name(name)
        if version in (None, ""):
            version = None
        elif not isinstance(version, str) or not is_plain_name(version):
            raise bad_input(f"version must be a plain version name, got {version!r}")
        try:
            return self.engine.models.resolve(model, version)
        except ModelLoadError as exc:
            raise Refusal(503, "UNAVAILABLE", f"model {model!r} cannot be loaded: {exc}") from exc
        except ModelNotFoundError as exc:
            what = f"model {model!r}" if version is None else f"model {model!r} version {version!r}"
            raise Refusal(404, "NOT_FOUND", f"{what} is not in the store") from exc

    async def run(self, spec: ModelSpec, rows: Feed, *, deadline: float | None) -> Predicted:
        """Predict `rows` (a checked feed) with `spec`'s model version, batched with every
        other caller's rows; raises `Refusal` when they cannot all be predicted."""
        n = feed_rows(rows)
        if n == 0:
            raise bad_input("a request must carry at least one row, got none")
        if n > self._max_rows:
            raise bad_input(
                f"a request may carry at most {self._max_rows} rows (max_rows_per_request), got {n}"
            )
        waiter = _Waiter(asyncio.get_running_loop(), n)
        now = time.monotonic()
        self._in_flight += 1
        if self._in_flight > 1:
            self._company_at = now
        if self._company is not None:
            self._company.saw(self._in_flight, now)
        try:
            lone = (self._run_lone_now and now - self._company_at > LONE_AFTER_S
                    and now - self._waited_at < LONE_CHECK_EVERY_S)  # fmt: skip
            if not (lone and self.engine.run_now(spec.name, spec.version, rows, waiter,
                                                 waiter.done_here, deadline=deadline)):  # fmt: skip
                self._waited_at = now
                try:
                    self.engine.submit(spec.name, spec.version, rows, waiter, waiter.done,
                                       deadline=deadline, admit=True)  # fmt: skip
                except Overloaded as exc:
                    raise Refusal(429, "RESOURCE_EXHAUSTED", str(exc)) from exc
            outcomes = await waiter.future
        finally:
            self._in_flight -= 1
        predicted = _assemble(outcomes, n)
        self._sensor.answered(spec.name, predicted.model.spec.version, n)
        return predicted


def _assemble(outcomes: list[Outcome[Any]], n: int) -> Predicted:
    """The outputs of all rows in order, or the refusal of the first row that failed."""
    errors = sorted((e for o in outcomes for e in o.errors), key=lambda e: e.row)
    if errors:
        first = errors[0]
        where = f"row {first.row}: " if n > 1 else ""
        if first.stage == "deadline":
            raise Refusal(504, "DEADLINE_EXCEEDED", f"{where}{first.message}")
        if first.stage == "route":
            raise Refusal(503, "UNAVAILABLE", f"{where}{first.message}")
        raise bad_input(f"{where}the model failed on this row: {first.error_type}: {first.message}")
    ordered = sorted(outcomes, key=lambda o: o.rows[0])
    model = ordered[0].model
    assert model is not None
    if len(ordered) == 1:
        return Predicted(model, ordered[0].outputs)
    names = list(ordered[0].outputs)
    return Predicted(model, {k: np.concatenate([o.outputs[k] for o in ordered]) for k in names})


@dataclass(frozen=True, slots=True)
class SeedAnswer:
    """The seed API's answer for one row."""

    prediction: float
    confidence: float | None
    label: str | None


def seed_answers(model: LoadedModel, outputs: dict[str, np.ndarray]) -> list[SeedAnswer]:
    """Each row's prediction and confidence: a classifier's class index (the column of its
    largest probability) and that probability, clipped to [0, 1] (float32 rounding makes a
    sure class 1.0000001; `outputs` keep the model's own figures); a regressor's value,
    without confidence."""
    spec = model.spec
    probabilities = _probabilities(spec, outputs)
    if probabilities is not None:
        if len(probabilities) == 1:
            best, scores = _best_of_one(probabilities[0].tolist())
        else:
            # The value at the argmax is the row's max (NaN included); two ufuncs clip it,
            # as np.clip's wrapper and fancy indexing cost more than the rest of the work.
            best = probabilities.argmax(axis=1).tolist()
            scores = np.minimum(np.maximum(probabilities.max(axis=1), 0.0), 1.0).tolist()
        labels = spec.labels if spec.labels and len(spec.labels) == probabilities.shape[1] else None
        return [
            SeedAnswer(float(b), s, labels[b] if labels else None)
            for b, s in zip(best, scores, strict=True)
        ]
    values = _regression_values(outputs)
    return [SeedAnswer(float(v), None, None) for v in values]


def _best_of_one(row: list[float]) -> tuple[list[int], list[float]]:
    """`seed_answers`' argmax and clipped max for a request of one row, as numpy's (the
    first NaN wins, and stays NaN), in Python: numpy's argmax releases the GIL however
    small the array, handing it to the engine's thread in the middle of every request."""
    best, top = 0, row[0]
    for i, value in enumerate(row):
        if value != value:  # NaN
            best, top = i, value
            break
        if value > top:
            best, top = i, value
    return [best], [min(max(top, 0.0), 1.0)]


def _probabilities(spec: ModelSpec, outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The class-probability matrix (rows x classes), if the model has one."""
    candidates: Sequence[str]
    if spec.probability_output:
        candidates = [spec.probability_output]
    else:
        candidates = [n for n in outputs if "prob" in n.lower()]
    for name in candidates:
        array = outputs.get(name)
        if array is None:
            continue
        if array.dtype == object and array.ndim == 1:  # a map per row (ZipMap)
            return np.asarray([list(row.values()) for row in array], dtype=np.float64)
        if array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f":
            return array.astype(np.float64, copy=False)
    return None


def _regression_values(outputs: dict[str, np.ndarray]) -> list[float]:
    for array in outputs.values():
        if array.dtype.kind in "fiu" and array.ndim >= 1:
            return array.reshape(array.shape[0], -1)[:, 0].astype(np.float64).tolist()  # type: ignore[no-any-return]
    raise Refusal(500, "INTERNAL", "the model has no numeric output to answer with a prediction")
