"""Open Inference Protocol v2 tensors: JSON, raw bytes, and the model's rows and outputs.

A tensor travels as ``{"name", "shape", "datatype", "data"}`` (JSON, ``data`` flat or
nested row-major) or as raw bytes (the HTTP binary extension and gRPC's
``raw_input_contents``): little-endian, row-major; BYTES elements each prefixed with their
4-byte little-endian length. These functions convert between those forms and numpy, and
check an input tensor against a model the way the Kafka codec checks an event: the right
width, finite numbers that fit float32. Every error names the tensor, what was expected and
what arrived; the doors answer it with 400 / INVALID_ARGUMENT.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from pipeline.engine.signature import DATATYPES, FLOAT_LIMITS, INTEGER_RANGES, TensorSpec

__all__ = [
    "DATATYPES",
    "TensorError",
    "datatype_of",
    "elements",
    "from_json_data",
    "from_raw",
    "input_array",
    "output_array",
    "rows_of",
    "to_json_data",
    "to_raw",
]

_NUMERIC_INPUTS: Final = frozenset(DATATYPES) - {"BOOL", "BYTES"}


class TensorError(ValueError):
    """A tensor that cannot be read or does not fit the model; the message says why."""


_MAX_ELEMENTS: Final = 1 << 31


def elements(shape: Sequence[int], where: str) -> int:
    """How many elements a tensor of `shape` holds; refuses a shape that is not a list of
    sizes >= 0 or that holds more than 2**31 elements (without overflowing on the way)."""
    if not all(type(d) is int and d >= 0 for d in shape):
        raise TensorError(f"{where}: shape must be a list of sizes >= 0, got {list(shape)}")
    total = 1
    for d in shape:
        total *= d
        if total > _MAX_ELEMENTS:
            raise TensorError(f"{where}: shape {list(shape)} holds more than {_MAX_ELEMENTS} "
                              "elements, more than one request may carry")  # fmt: skip
    return total


def from_json_data(datatype: str, shape: Sequence[int], data: object, where: str) -> np.ndarray:
    """A tensor from its JSON ``data`` (flat or nested, row-major)."""
    dtype = _dtype(datatype, where)
    if not isinstance(data, list):
        raise TensorError(f"{where}: data must be a JSON array, got {type(data).__name__}")
    leaves = _flatten(data, where)
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in leaves):
            bad = next(x for x in leaves if not isinstance(x, str))
            raise TensorError(f"{where}: BYTES data must hold strings, got {bad!r}")
        flat = np.asarray([x.encode() for x in leaves], dtype=object)
    else:
        flat = _json_numbers(leaves, datatype, dtype, where)
    expected = elements(shape, where)
    if flat.size != expected:
        raise TensorError(
            f"{where}: shape {list(shape)} holds {expected} elements, data has {flat.size}"
        )
    return flat.reshape(tuple(shape))


def _flatten(data: list[Any], where: str) -> list[Any]:
    """The leaves of nested JSON arrays, row-major (iteratively: no depth limit to hit)."""
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            if len(stack) >= 64:
                raise TensorError(f"{where}: data nests arrays more than 64 levels deep")
            stack.append(iter(item))
        else:
            out.append(item)
    return out


_END = object()


def _json_numbers(leaves: list[Any], datatype: str, dtype: np.dtype[Any], where: str) -> np.ndarray:
    """Numbers (or booleans) read from JSON, refused rather than cast when they do not fit:
    a fraction or an out-of-range value for an integer type, a boolean or a string for a
    number, a number for BOOL. Floats are kept as float64, so a value beyond float32 is
    named by `rows_of` rather than turned into inf."""
    if datatype == "BOOL":
        if not all(type(x) is bool for x in leaves):
            bad = next(x for x in leaves if type(x) is not bool)
            raise TensorError(f"{where}: BOOL data must hold true or false, got {bad!r}")
        return np.asarray(leaves, dtype=np.bool_)
    if not all(type(x) in (int, float) for x in leaves):
        bad = next(x for x in leaves if type(x) not in (int, float))
        raise TensorError(f"{where}: {datatype} data must hold numbers, got {bad!r}")
    if datatype in FLOAT_LIMITS:
        try:
            return np.asarray(leaves, dtype=np.float64)
        except OverflowError:
            raise TensorError(
                f"{where}: {datatype} data holds an integer beyond any float"
            ) from None
    low, high = INTEGER_RANGES[datatype]
    for x in leaves:
        if (type(x) is float and not x.is_integer()) or not low <= x <= high:
            raise TensorError(
                f"{where}: {datatype} data must hold integers from {low} to {high}, got {x!r}"
            )
    return np.asarray([int(x) for x in leaves], dtype=dtype)


def from_raw(datatype: str, shape: Sequence[int], blob: bytes, where: str) -> np.ndarray:
    """A tensor from its raw little-endian, row-major bytes."""
    dtype = _dtype(datatype, where)
    expected = elements(shape, where)
    if datatype == "BYTES":
        items = _bytes_elements(blob, where)
        if len(items) != expected:
            raise TensorError(
                f"{where}: shape {list(shape)} holds {expected} BYTES elements, got {len(items)}"
            )
        return np.asarray(items, dtype=object).reshape(tuple(shape))
    if len(blob) != expected * dtype.itemsize:
        raise TensorError(
            f"{where}: shape {list(shape)} of {datatype} takes {expected * dtype.itemsize} "
            f"bytes, got {len(blob)}"
        )
    return np.frombuffer(blob, dtype=dtype).reshape(tuple(shape))


def _bytes_elements(blob: bytes, where: str) -> list[bytes]:
    items, at = [], 0
    while at < len(blob):
        if at + 4 > len(blob):
            raise TensorError(f"{where}: a BYTES element's 4-byte length is cut off at byte {at}")
        (size,) = struct.unpack_from("<I", blob, at)
        at += 4
        if at + size > len(blob):
            raise TensorError(f"{where}: a BYTES element of {size} bytes is cut off at byte {at}")
        items.append(blob[at : at + size])
        at += size
    return items


def _dtype(datatype: str, where: str) -> np.dtype[Any]:
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise TensorError(
            f"{where}: datatype must be one of {', '.join(DATATYPES)}, got {datatype!r}"
        ) from None


def rows_of(
    array: np.ndarray, datatype: str, n_features: int, where: str, into: str = "FP32"
) -> np.ndarray:
    """The rows ``(n, n_features)`` of a vector model's input tensor, as the input's float
    datatype `into` (float32 unless the model says otherwise), checked like events are.

    A 1-D tensor of ``n_features`` values is one row.
    """
    if datatype not in _NUMERIC_INPUTS:
        raise TensorError(f"{where}: datatype must be numeric (FP32, FP64, INT...), got {datatype}")
    if array.ndim == 1 and array.shape[0] == n_features:
        array = array.reshape(1, n_features)
    if array.ndim != 2 or array.shape[1] != n_features:
        raise TensorError(
            f"{where}: shape must be [rows, {n_features}] (the model takes {n_features} "
            f"features), got {list(array.shape)}"
        )
    values = array.astype(np.float64, copy=False)
    limit = FLOAT_LIMITS[into]
    bad = ~(np.abs(values) <= limit)  # NaN compares False
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = float(values[row, col])
        kind = (
            "a finite number"
            if not np.isfinite(value)
            else f"within float{into[2:]} (|x| <= {limit!r})"
        )
        raise TensorError(f"{where}: row {row} column {col} must be {kind}, got {value!r}")
    return np.ascontiguousarray(array, dtype=DATATYPES[into])


def input_array(array: np.ndarray, datatype: str, spec: TensorSpec, where: str) -> np.ndarray:
    """The rows of a request tensor for one of a model's inputs, checked: the same datatype
    (no cast), the shape ``[rows, *per-row shape]`` (a per-row shape of ``[1]`` also takes
    ``[rows]``, and ``[]`` takes ``[rows, 1]``), float values within the datatype's finite
    range, strings as UTF-8."""
    if datatype != spec.datatype:
        raise TensorError(f"{where}: input {spec.name!r} is {spec.datatype}, got {datatype}")
    if spec.shape == (1,) and array.ndim == 1:
        array = array.reshape(-1, 1)
    elif spec.shape == () and array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    row = array.shape[1:]
    fits = len(row) == len(spec.shape) and all(
        want is None or want == got for want, got in zip(spec.shape, row, strict=True)
    )
    if array.ndim < 1 or not fits:
        wanted = ", ".join("?" if d is None else str(d) for d in ("rows", *spec.shape))
        raise TensorError(f"{where}: input {spec.name!r} must have shape [{wanted}], "
                          f"got {list(array.shape)}")  # fmt: skip
    if datatype in FLOAT_LIMITS:
        wide = array.astype(np.float64, copy=False)
        if not (np.abs(wide) <= FLOAT_LIMITS[datatype]).all():
            bad = wide[~(np.abs(wide) <= FLOAT_LIMITS[datatype])][0]
            raise TensorError(f"{where}: input {spec.name!r} must hold finite numbers that "
                              f"fit {datatype}, got {float(bad)!r}")  # fmt: skip
        return np.ascontiguousarray(array, dtype=spec.dtype)
    if datatype == "BYTES":
        return _utf8(array, spec, where)
    if datatype in INTEGER_RANGES and array.size:
        low, high = INTEGER_RANGES[datatype]
        if int(array.min()) < low or int(array.max()) > high:
            raise TensorError(f"{where}: input {spec.name!r} must hold integers from {low} "
                              f"to {high} ({datatype})")  # fmt: skip
    return np.ascontiguousarray(array, dtype=spec.dtype)


def _utf8(array: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """BYTES elements as the strings ONNX Runtime's string inputs take."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        try:
            flat[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as exc:
            raise TensorError(f"{where}: input {spec.name!r} element {i} is not UTF-8 text "
                              f"({exc.reason} at byte {exc.start})") from None  # fmt: skip
    return out


def output_array(array: np.ndarray) -> np.ndarray:
    """An output as a tensor: a sequence of per-row maps becomes ``(rows, keys)`` float32,
    its columns in the maps' key order."""
    if array.dtype == object and array.ndim == 1 and array.size and isinstance(array[0], dict):
        return np.asarray([list(row.values()) for row in array], dtype=np.float32)
    return array


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (strings and bytes are BYTES)."""
    if array.dtype == object or array.dtype.kind in "US":
        return "BYTES"
    for name, dtype in DATATYPES.items():
        if name != "BYTES" and array.dtype == dtype.newbyteorder("="):
            return name
    raise TensorError(f"output of dtype {array.dtype} has no Open Inference Protocol datatype")


def to_raw(array: np.ndarray) -> bytes:
    """Raw bytes of a tensor: little-endian, row-major; BYTES length-prefixed."""
    if datatype_of(array) == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(data)) + data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_json_data(array: np.ndarray) -> list[Any]:
    """A tensor's elements, flat and row-major, as JSON values."""
    flat = array.reshape(-1)
    if datatype_of(array) == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat]
    values: list[Any] = flat.tolist()
    return values
