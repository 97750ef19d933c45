"""Typed input values: one row's JSON value for one model input, checked, and columns of
them turned into arrays.

`row_value` takes the value an event (or a v1 request row) gives for one input and returns
its leaves, flat and row-major, with the row's concrete shape; it refuses, with a message
naming the input, its datatype and shape and what arrived, anything that is not exactly a
value of the input: a string for a number, a fraction or an out-of-range integer for an
integer type, a number for a boolean, a ragged or wrongly shaped array. Nothing is cast
silently: an integer input takes JSON integers (and numbers with no fraction, such as
``3.0``), a float input takes numbers, a BOOL input takes ``true``/``false``, a BYTES input
takes strings.

`column_array` turns the checked leaves of many rows into the input's array; only a float
input can still refuse rows there (a value beyond the datatype's finite range), which it
reports by position so that the other rows are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np

from pipeline.engine.signature import FLOAT_LIMITS, INTEGER_RANGES, TensorSpec

__all__ = [
    "OVERFLOW",
    "ValueProblem",
    "column_array",
    "one_value_column",
    "row_value",
    "show_value",
]

_NUMBERS: Final = frozenset((int, float))
# Each problem's stage and error type (pipeline/errortypes.py lists them for the README).
_NON_NUMERIC: Final = ("validate", "NonNumeric")
_NOT_AN_INTEGER: Final = ("validate", "NotAnInteger")
_INTEGER_RANGE: Final = ("validate", "IntegerRange")
_NOT_BOOLEAN: Final = ("validate", "NotBoolean")
_NOT_A_STRING: Final = ("validate", "NotAString")
_WRONG_SHAPE: Final = ("validate", "WrongShape")
OVERFLOW: Final = {
    "FP16": ("validate", "Float16Overflow"),
    "FP32": ("validate", "Float32Overflow"),
    "FP64": ("validate", "Float64Overflow"),
}
_MAX_LEAVES: Final = 1 << 20  # one row's elements for one input, at most


class ValueProblem(Exception):
    """One row's value for one input is not a value of that input."""

    def __init__(self, reason: tuple[str, str], message: str) -> None:
        super().__init__(message)
        self.stage, self.error_type = reason
        self.message = message


def row_value(spec: TensorSpec, value: Any, where: str) -> tuple[list[Any], tuple[int, ...]]:
    """Check one row's value for `spec`; return its leaves (flat) and its shape.

    Args:
        spec: The input.
        value: The parsed JSON value: a scalar for a per-row shape of ``[]`` or ``[1]``,
            else nested arrays matching the per-row shape.
        where: How to name the value in messages, e.g. ``features['amount']``.

    Raises:
        ValueProblem: the value is not a value of the input (the message says why).
    """
    if type(value) is not list:
        if not spec.scalar:
            raise _wrong_shape(spec, where, f"a single {show_value(value)}")
        leaves = [value]
        shape: tuple[int, ...] = spec.shape  # type: ignore[assignment]  # () or (1,)
    else:
        leaves, shape = _flatten(spec, value, where)
    return _checked_leaves(spec, leaves, where), shape


def _flatten(spec: TensorSpec, value: list[Any], where: str) -> tuple[list[Any], tuple[int, ...]]:
    """The leaves of a nested array and its shape; refuse one that does not fit `spec`."""
    shape: list[int] = []
    level: list[Any] = [value]
    for depth, expected in enumerate(spec.shape):
        if not level:  # an empty sequence: what is left of the shape is empty too
            shape.append(expected or 0)
            continue
        sizes = {len(item) if type(item) is list else -1 for item in level}
        if len(sizes) != 1 or -1 in sizes:
            got = f"a ragged array, or a value where an array belongs (depth {depth + 1})"
            raise _wrong_shape(spec, where, got)
        (size,) = sizes
        if expected is not None and size != expected:
            seen = _dims([*shape, size])
            raise _wrong_shape(spec, where, f"an array whose dimension {depth + 1} has {size} "
                               f"items (shape {seen}...)")  # fmt: skip
        shape.append(size)
        level = [leaf for item in level for leaf in item]
        if len(level) > _MAX_LEAVES:
            raise _wrong_shape(spec, where, f"more than {_MAX_LEAVES} values")
    if not spec.shape:
        raise _wrong_shape(spec, where, "an array")
    if any(type(leaf) is list for leaf in level):
        raise _wrong_shape(spec, where, f"an array nested deeper than {len(spec.shape)}")
    return level, tuple(shape)


def _checked_leaves(spec: TensorSpec, leaves: list[Any], where: str) -> list[Any]:
    """Check every leaf's kind for the input's datatype; integers come back as ints."""
    datatype = spec.datatype
    types = set(map(type, leaves))
    if datatype in FLOAT_LIMITS:
        if not _NUMBERS.issuperset(types):
            bad = next(v for v in leaves if type(v) not in _NUMBERS)
            raise ValueProblem(_NON_NUMERIC, f"{where} must hold numbers ({spec.describe()}), "
                               f"got {show_value(bad)}")  # fmt: skip
        return leaves
    if datatype in INTEGER_RANGES:
        return _integers(spec, leaves, types, where)
    if datatype == "BOOL":
        if types - {bool}:
            bad = next(v for v in leaves if type(v) is not bool)
            raise ValueProblem(_NOT_BOOLEAN, f"{where} must hold true or false "
                               f"({spec.describe()}), got {show_value(bad)}")  # fmt: skip
        return leaves
    if types - {str}:
        bad = next(v for v in leaves if type(v) is not str)
        raise ValueProblem(_NOT_A_STRING, f"{where} must hold strings ({spec.describe()}), "
                           f"got {show_value(bad)}")  # fmt: skip
    return leaves


def _integers(spec: TensorSpec, leaves: list[Any], types: set[type], where: str) -> list[Any]:
    """Integers within the datatype's range; numbers without a fraction become ints."""
    if types - {int}:
        for i, leaf in enumerate(leaves):
            if type(leaf) is float and leaf.is_integer():
                leaves[i] = int(leaf)
            elif type(leaf) is not int:
                kind = _NOT_AN_INTEGER if type(leaf) is float else _NON_NUMERIC
                raise ValueProblem(kind, f"{where} must hold integers ({spec.describe()}), "
                                   f"got {show_value(leaf)}")  # fmt: skip
    low, high = INTEGER_RANGES[spec.datatype]
    if leaves and not (low <= min(leaves) and max(leaves) <= high):
        bad = next(v for v in leaves if not low <= v <= high)
        raise ValueProblem(_INTEGER_RANGE, f"{where} must hold integers from {low} to {high} "
                           f"({spec.describe()}), got {bad}")  # fmt: skip
    return leaves


def column_array(
    spec: TensorSpec, rows: Sequence[list[Any]], shape: tuple[int, ...], where: str
) -> tuple[np.ndarray, dict[int, ValueProblem]]:
    """The array of many rows' checked leaves, shape ``(len(rows), *shape)``; `where`
    names the input in messages.

    Returns:
        The array of every row, and the rows (by position) whose values do not fit the
        datatype's finite range (float inputs only); the caller drops those rows.
    """
    n = len(rows)
    if spec.datatype not in FLOAT_LIMITS:
        dtype = spec.dtype
        array = np.array(rows, dtype=dtype) if dtype.kind != "O" else _objects(rows)
        return array.reshape((n, *shape)), {}
    try:
        wide = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer beyond float64 itself
        wide = np.array([[_float_or_inf(v) for v in row] for row in rows], dtype=np.float64)
    array, problems = _in_range(spec, wide, rows.__getitem__, where)
    return array.reshape((n, *shape)), problems


def _in_range(
    spec: TensorSpec, wide: np.ndarray, leaves: Callable[[int], list[Any]], where: str
) -> tuple[np.ndarray, dict[int, ValueProblem]]:
    """A float input's rows (float64, one per first index) cast to its datatype, and the
    rows (by position; `leaves` gives a row's values for the message) beyond its finite
    range."""
    limit = FLOAT_LIMITS[spec.datatype]
    in_range = np.abs(wide) <= limit
    problems: dict[int, ValueProblem] = {}
    if not in_range.all():
        for r in np.flatnonzero(~in_range.reshape(len(wide), -1).all(axis=1)).tolist():
            problems[r] = _out_of_range(spec, leaves(r), limit, where)
        wide[~in_range] = 0.0  # those rows are dropped; no overflow while casting the rest
    return wide.astype(spec.dtype), problems


def one_value_column(
    spec: TensorSpec, values: list[Any], where: str
) -> tuple[np.ndarray, dict[int, ValueProblem]] | None:
    """`column_array` for an input of one value per row, from the rows' values unchecked:
    the kinds of the whole column are checked at once.

    Returns:
        As `column_array`; or None when a value is not plainly one of the input's kind (an
        array, a string for a number, a float for an integer, an integer out of range):
        the caller then checks the rows one by one with `row_value`, which names the
        problem or, for ``3.0`` or ``[3]``, accepts the value.
    """
    kinds = set(map(type, values))
    shape = (len(values), 1) if spec.shape else (len(values),)  # per-row [1] or []
    datatype = spec.datatype
    if datatype in FLOAT_LIMITS:
        if not _NUMBERS.issuperset(kinds):
            return None
        try:
            wide = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer beyond float64 itself
            return None
        array, problems = _in_range(spec, wide, lambda r: [values[r]], where)
        return array.reshape(shape), problems
    if datatype in INTEGER_RANGES:
        low, high = INTEGER_RANGES[datatype]
        if kinds != {int} or not (low <= min(values) and max(values) <= high):
            return None
        return np.array(values, dtype=spec.dtype).reshape(shape), {}
    if kinds != ({bool} if datatype == "BOOL" else {str}):
        return None
    if datatype == "BOOL":
        return np.array(values, dtype=np.bool_).reshape(shape), {}
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape), {}


def _objects(rows: Sequence[list[Any]]) -> np.ndarray:
    """Strings as an object array (numpy would make fixed-width unicode of them)."""
    array = np.empty((len(rows), len(rows[0]) if rows else 0), dtype=object)
    for r, row in enumerate(rows):
        array[r, :] = row
    return array


def _float_or_inf(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _out_of_range(spec: TensorSpec, leaves: list[Any], limit: float, where: str) -> ValueProblem:
    bad = next(v for v in leaves if not abs(_float_or_inf(v)) <= limit)
    return ValueProblem(
        OVERFLOW[spec.datatype],
        f"{where} must hold numbers that fit {spec.datatype} (magnitude <= {limit!r}), got {bad!r}",
    )


def _wrong_shape(spec: TensorSpec, where: str, got: str) -> ValueProblem:
    if spec.scalar:
        expected = f"one value ({spec.describe()})"
    else:
        expected = f"an array of shape {_dims(spec.shape)} ({spec.datatype})"
    return ValueProblem(_WRONG_SHAPE, f"{where} must be {expected}, got {got}")


def _dims(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def show_value(value: Any) -> str:
    """Name a parsed JSON value's kind, with a short excerpt, for messages."""
    if value is None:
        return "null"
    if type(value) is bool:
        return f"boolean {'true' if value else 'false'}"
    if type(value) is int:
        return f"integer {value}"
    if type(value) is float:
        return f"number {value!r}"
    if type(value) is str:
        shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} chars)"
        return f"string {shown}"
    if type(value) is list:
        return f"an array of {len(value)} item{'' if len(value) == 1 else 's'}"
    return f"an object of {len(value)} field{'' if len(value) == 1 else 's'}"
