"""Run one micro-batch through a model, isolating the rows that make it fail.

`run_batch` feeds a float32 matrix to a loaded model's ONNX Runtime session and
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
    def input_name(self) -> str:
        """Name of the model's single float32 input."""
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
    features: np.ndarray
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
        feed = {self.model.input_name: self.features[start:stop]}
        try:
            raw = self.model.session.run(names, feed)
        # ONNX Runtime raises its own pybind11 exception classes (InvalidArgument,
        # Fail, RuntimeException, ...) with no common base but Exception; a row-level
        # failure may be any of them, so every Exception is a reason to split.
        except Exception as exc:
            raise _RunFailed(type(exc).__name__, str(exc)) from exc
        return _check_outputs(names, raw, stop - start)


def run_batch(model: RunnableModel, features: np.ndarray) -> InferenceResult:
    """Predict every row of `features`, isolating the rows the model fails on.

    Args:
        model: The loaded model (``pipeline.engine.models.LoadedModel`` or anything shaped
            like it).
        features: Float32 array of shape ``(n, model.spec.n_features)``.

    Returns:
        Outputs for the rows that succeeded and a `RowFailure` for each that did not.
        An empty batch returns an empty result without running the session.

    Raises:
        ValueError: `features` is not a 2-D float32 array of the model's width, or
            the model names no outputs; these are mistakes of the calling code, not
            of the rows.
    """
    _check_call(model, features)
    names = list(model.output_names)
    rows = features.shape[0]
    runner = _Runner(model, np.ascontiguousarray(features), ok_parts=[], failures=[])
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


def _check_call(model: RunnableModel, features: object) -> None:
    """Raise ValueError if `features` or the model's outputs cannot make a valid run."""
    if not model.output_names:
        raise ValueError(
            f"model {model.spec.name!r} version {model.spec.version!r} must name at least "
            "one output, got none"
        )
    if not isinstance(features, np.ndarray):
        raise ValueError(f"features must be a numpy array, got {type(features).__name__}")
    if features.ndim != 2 or features.dtype != np.float32:
        raise ValueError(
            f"features must be a 2-D float32 array, got {features.ndim}-D {features.dtype}"
        )
    if features.shape[1] != model.spec.n_features:
        raise ValueError(
            f"features for model {model.spec.name!r} version {model.spec.version!r} must "
            f"have {model.spec.n_features} columns, got {features.shape[1]}"
        )
