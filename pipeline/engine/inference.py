"""Run one micro-batch through a model, isolating the rows that make it fail.

`run_batch` feeds a batch's feed (one array per model input) to a loaded model's ONNX
Runtime session and
returns one result per row: an output row for each row that succeeded, a
`RowFailure` for each row that did not. A run fails when the session raises or when
an output does not have one entry per input row. A failed run is split in halves,
recursively, so that the good rows are still predicted and each bad row is named
on its own; with ``k`` bad rows in ``n`` the session runs ``O(k log n)`` times.

The runner sees a model only through the small `RunnableModel` protocol, which
`pipeline.engine.models.LoadedModel` satisfies, so tests can pass a fake session. It does
not encode predictions; outputs stay numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from pipeline.engine.signature import Feed, feed_rows
from pipeline.engine.spec import ModelSpec

__all__ = ["InferenceResult", "RowFailure", "RunnableModel", "SessionLike", "run_batch"]

OUTPUT_SHAPE_ERROR = "OutputShape"


class SessionLike(Protocol):
    """The part of ``onnxruntime.InferenceSession`` the runner uses."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any], /) -> list[Any]:
        """Run the model on `input_feed` and return the named outputs in order."""
        ...


class RunnableModel(Protocol):
    """A loaded model as the runner needs it (``pipeline.engine.models.LoadedModel``)."""

    @property
    def spec(self) -> ModelSpec:
        """The model's name, version and feature count."""
        ...

    @property
    def session(self) -> SessionLike:
        """The session that computes predictions."""
        ...

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the outputs to fetch, in the order the session returns them."""
        ...


@dataclass(slots=True)
class RowFailure:
    """One row the model could not predict.

    Attributes:
        position: The row's position within the batch.
        error_type: The exception's class name (e.g. an ONNX Runtime error), or
            ``"OutputShape"`` when an output lacked one entry per row.
        message: What went wrong, as the exception or shape check said it.
    """

    position: int
    error_type: str
    message: str


@dataclass(slots=True)
class InferenceResult:
    """The outcome of `run_batch`: outputs for the rows that succeeded, failures for the rest.

    Attributes:
        outputs: Each output name mapped to an array with one entry (first axis) per
            succeeded row, in batch order. When no row succeeded, each name maps to
            an empty float32 array of shape ``(0,)``.
        ok_positions: Batch positions of the rows that succeeded, ascending; entry
            ``i`` of every output belongs to row ``ok_positions[i]``.
        failures: The rows that failed, ascending by position. Together with
            `ok_positions` they cover every row of the batch exactly once.
    """

    outputs: dict[str, np.ndarray]
    ok_positions: list[int]
    failures: list[RowFailure]


class _RunFailed(Exception):
    """A session run over a range of rows failed; carries what to report per row."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@dataclass(slots=True)
class _Runner:
    """Runs ranges of one batch, splitting failed ranges, and collects the results."""

    model: RunnableModel
    feed: Feed
    ok_parts: list[tuple[range, list[np.ndarray]]]
    failures: list[RowFailure]

    def run_range(self, start: int, stop: int) -> None:
        """Predict rows ``start:stop``, splitting the range in halves while it fails."""
        try:
            outputs = self._run(start, stop)
        except _RunFailed as failed:
            if stop - start == 1:
                self.failures.append(RowFailure(start, failed.error_type, failed.message))
                return
            middle = (start + stop) // 2
            self.run_range(start, middle)
            self.run_range(middle, stop)
            return
        self.ok_parts.append((range(start, stop), outputs))

    def _run(self, start: int, stop: int) -> list[np.ndarray]:
        names = list(self.model.output_names)
        whole = start == 0 and stop == feed_rows(self.feed)
        feed = self.feed if whole else {k: v[start:stop] for k, v in self.feed.items()}
        try:
            raw = self.model.session.run(names, feed)
        # ONNX Runtime raises its own pybind11 exception classes (InvalidArgument,
        # Fail, RuntimeException, ...) with no common base but Exception; a row-level
        # failure may be any of them, so every Exception is a reason to split.
        except Exception as exc:
            raise _RunFailed(type(exc).__name__, str(exc)) from exc
        return _check_outputs(names, raw, stop - start)


def run_batch(model: RunnableModel, feed: Feed) -> InferenceResult:
    """Predict every row of `feed`, isolating the rows the model fails on.

    Args:
        model: The loaded model (``pipeline.engine.models.LoadedModel`` or anything shaped
            like it).
        feed: One array per input of ``model.spec``, each with the batch's rows on its
            first axis, of the input's dtype and per-row shape.

    Returns:
        Outputs for the rows that succeeded and a `RowFailure` for each that did not.
        An empty batch returns an empty result without running the session.

    Raises:
        ValueError: `feed` does not hold exactly the model's inputs with their dtypes and
            row shapes, or the model names no outputs; these are mistakes of the calling
            code, not of the rows.
    """
    rows = _check_call(model, feed)
    names = list(model.output_names)
    contiguous = {name: np.ascontiguousarray(array) for name, array in feed.items()}
    runner = _Runner(model, contiguous, ok_parts=[], failures=[])
    if rows:
        runner.run_range(0, rows)
    if not runner.ok_parts:
        empty = {name: np.empty((0,), dtype=np.float32) for name in names}
        return InferenceResult(empty, [], runner.failures)
    ok_positions = [i for span, _ in runner.ok_parts for i in span]
    per_output = zip(*(arrays for _, arrays in runner.ok_parts), strict=True)
    outputs = {name: _join(parts) for name, parts in zip(names, per_output, strict=True)}
    return InferenceResult(outputs, ok_positions, runner.failures)


def _check_outputs(names: list[str], raw: list[Any], rows: int) -> list[np.ndarray]:
    """Return the session's outputs as arrays, or fail unless each has `rows` entries."""
    if len(raw) != len(names):
        raise _RunFailed(
            OUTPUT_SHAPE_ERROR,
            f"session returned {len(raw)} outputs, expected {len(names)} ({', '.join(names)})",
        )
    arrays = [np.asarray(value) for value in raw]
    for name, array in zip(names, arrays, strict=True):
        if array.ndim == 0 or array.shape[0] != rows:
            raise _RunFailed(
                OUTPUT_SHAPE_ERROR,
                f"output {name!r} has shape {array.shape}, expected first dimension "
                f"{rows} (one entry per input row)",
            )
    return arrays


def _join(parts: tuple[np.ndarray, ...]) -> np.ndarray:
    """Concatenate output parts along the row axis, without copying a single part."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _check_call(model: RunnableModel, feed: object) -> int:
    """The feed's rows; ValueError if it or the model's outputs cannot make a valid run."""
    spec = model.spec
    if not model.output_names:
        raise ValueError(f"{spec.describe()} must name at least one output, got none")
    if not isinstance(feed, dict) or list(feed) != list(spec.input_index):
        got = list(feed) if isinstance(feed, dict) else type(feed).__name__
        raise ValueError(f"the feed for {spec.describe()} must hold its inputs "
                         f"{list(spec.input_index)} in order, got {got}")  # fmt: skip
    rows = {a.shape[0] if isinstance(a, np.ndarray) and a.ndim else -1 for a in feed.values()}
    if len(rows) != 1 or -1 in rows:
        raise ValueError(f"every input of the feed for {spec.describe()} must be an array "
                         f"with the same rows, got {sorted(rows)}")  # fmt: skip
    for tensor in spec.inputs:
        array = feed[tensor.name]
        shape = array.shape[1:]
        fits = len(shape) == len(tensor.shape) and all(
            want is None or want == got for want, got in zip(tensor.shape, shape, strict=True)
        )
        if array.dtype != tensor.dtype or not fits:
            raise ValueError(f"input {tensor.name!r} of {spec.describe()} must be "
                             f"{tensor.describe()} per row, got {array.dtype} rows of "
                             f"shape {list(shape)}")  # fmt: skip
    return rows.pop()
