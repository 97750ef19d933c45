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

from pipeline.engine.codec import FLOAT32_LIMIT

__all__ = [
    "DATATYPES",
    "TensorError",
    "datatype_of",
    "from_json_data",
    "from_raw",
    "output_array",
    "rows_of",
    "to_json_data",
    "to_raw",
]

DATATYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_NUMERIC_INPUTS: Final = frozenset(DATATYPES) - {"BOOL", "BYTES"}


class TensorError(ValueError):
    """A tensor that cannot be read or does not fit the model; the message says why."""


def _elements(shape: Sequence[int], where: str) -> int:
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise TensorError(f"{where}: shape must be a list of sizes >= 0, got {list(shape)}")
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def from_json_data(datatype: str, shape: Sequence[int], data: object, where: str) -> np.ndarray:
    """A tensor from its JSON ``data`` (flat or nested, row-major)."""
    dtype = _dtype(datatype, where)
    if not isinstance(data, list):
        raise TensorError(f"{where}: data must be a JSON array, got {type(data).__name__}")
    try:
        if datatype == "BYTES":
            flat = np.asarray(_flatten(data), dtype=object)
        elif dtype.kind == "f":  # read wide, so a value beyond float32 is named, not inf
            flat = np.asarray(data, dtype=np.float64).reshape(-1)
        else:
            flat = np.asarray(data, dtype=dtype).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise TensorError(f"{where}: data must hold {datatype} values only ({exc})") from None
    expected = _elements(shape, where)
    if flat.size != expected:
        raise TensorError(
            f"{where}: shape {list(shape)} holds {expected} elements, data has {flat.size}"
        )
    return flat.reshape(tuple(shape))


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item.encode() if isinstance(item, str) else item)
    return out


def from_raw(datatype: str, shape: Sequence[int], blob: bytes, where: str) -> np.ndarray:
    """A tensor from its raw little-endian, row-major bytes."""
    dtype = _dtype(datatype, where)
    expected = _elements(shape, where)
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


def rows_of(array: np.ndarray, datatype: str, n_features: int, where: str) -> np.ndarray:
    """The float32 rows ``(n, n_features)`` of an input tensor, checked like events are.

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
    bad = ~(np.abs(values) <= FLOAT32_LIMIT)  # NaN compares False
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = float(values[row, col])
        kind = (
            "a finite number"
            if not np.isfinite(value)
            else f"within float32 (|x| <= {FLOAT32_LIMIT!r})"
        )
        raise TensorError(f"{where}: row {row} column {col} must be {kind}, got {value!r}")
    return np.ascontiguousarray(array, dtype=np.float32)


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
