"""A model's signature: every input's and output's name, element type and per-row shape.

The signature is read once from the ONNX graph (`read_signature`) and is what every door
converts into: the Kafka codec turns an event's ``features`` into one array per input, the
Open Inference Protocol doors check request tensors against it, and the engine batches and
runs per-input arrays (a *feed*: input name -> array whose first axis is the rows).

Element types are named as the Open Inference Protocol names them (``FP32``, ``INT64``,
``BYTES`` for strings, ...). A per-row shape leaves out the batch axis; a dimension that
the graph leaves symbolic is None, so ``(None,)`` is a sequence of any length and ``()`` a
scalar per row. Rows whose symbolic dimensions differ cannot share a batch; the engine
keys batches by `shape_key`.

A model whose only input is a floating-point matrix ``[rows, features]`` is a *vector*
model: its events may also carry ``features`` as an array, or as an object of named
columns (the manifest's ``features``), as they always could.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

__all__ = [
    "DATATYPES",
    "FLOAT_LIMITS",
    "INTEGER_RANGES",
    "Feed",
    "Signature",
    "TensorSpec",
    "feed_rows",
    "read_signature",
    "shape_key",
    "zero_feed",
]

Feed = dict[str, np.ndarray]
"""One array per model input, by name; every array's first axis is the rows."""

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
"""Open Inference Protocol datatype -> the numpy dtype of its arrays (strings as objects)."""

FLOAT_LIMITS: Final[dict[str, float]] = {
    "FP16": 65504.0,
    "FP32": 3.4028235e38,
    "FP64": 1.7976931348623157e308,
}
"""The largest magnitude that still converts to a finite value of each float datatype."""

INTEGER_RANGES: Final[dict[str, tuple[int, int]]] = {
    name: (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
    for name, dtype in DATATYPES.items()
    if dtype.kind in "iu"
}
"""The smallest and largest value of each integer datatype."""

_ORT_TYPES: Final = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


class _NodeArg(Protocol):
    """What onnxruntime says of one graph input or output (``NodeArg``)."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def shape(self) -> Sequence[object] | None: ...


class SignatureError(ValueError):
    """A graph input or output the engine cannot serve; the message says which and why."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model.

    Attributes:
        name: The name the graph gives it.
        datatype: Its element type as the Open Inference Protocol names it (``FP32``,
            ``INT64``, ``BOOL``, ``BYTES`` for strings, ...).
        shape: One row's shape, the batch axis left out; None for a dimension of any size.
    """

    name: str
    datatype: str
    shape: tuple[int | None, ...]

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of this tensor's arrays (``object`` for strings)."""
        return DATATYPES[self.datatype]

    @property
    def fixed(self) -> bool:
        """Whether every dimension of a row has a fixed size."""
        return None not in self.shape

    @property
    def scalar(self) -> bool:
        """Whether one row holds a single value (per-row shape ``[]`` or ``[1]``)."""
        return self.shape in ((), (1,))

    def describe(self) -> str:
        """``INT64 [1]``, ``FP32 [?, 3]``: the datatype and per-row shape, for messages."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.datatype} [{dims}]"

    def metadata(self) -> dict[str, Any]:
        """The Open Inference Protocol's tensor metadata: the batch axis first, -1 where
        a dimension may have any size."""
        return {
            "name": self.name,
            "datatype": self.datatype,
            "shape": [-1, *(-1 if d is None else d for d in self.shape)],
        }


@dataclass(frozen=True, slots=True)
class Signature:
    """Every input and every tensor output of a model, in the graph's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def read_signature(
    path: str, inputs: Sequence[_NodeArg], outputs: Sequence[_NodeArg], maps: Sequence[str] = ()
) -> Signature:
    """Read a graph's inputs and outputs (``session.get_inputs()``, ``get_outputs()``).

    Args:
        path: How to name the model file in errors.
        inputs: The graph's inputs.
        outputs: The graph's outputs.
        maps: Outputs that are a sequence of per-row maps (described as ``FP32 [?]``).

    Raises:
        SignatureError: an input is not a tensor of a served element type, or has no batch
            axis; the message names the input.
    """
    if not inputs:
        raise SignatureError(f"{path}: the model has no inputs")
    specs = tuple(_input_spec(path, arg) for arg in inputs)
    described = []
    for arg in outputs:
        if str(arg.name) in maps:
            described.append(TensorSpec(str(arg.name), "FP32", (None,)))
        elif str(arg.type) in _ORT_TYPES:
            described.append(TensorSpec(str(arg.name), _ORT_TYPES[str(arg.type)],
                                        _row_shape(arg.shape)))  # fmt: skip
    return Signature(specs, tuple(described))


def _input_spec(path: str, arg: _NodeArg) -> TensorSpec:
    datatype = _ORT_TYPES.get(str(arg.type))
    if datatype is None:
        served = ", ".join(t.removeprefix("tensor(").rstrip(")") for t in _ORT_TYPES)
        raise SignatureError(
            f"{path}: input {arg.name!r} is {arg.type}; inputs must be tensors of one of {served}"
        )
    if not arg.shape:
        raise SignatureError(
            f"{path}: input {arg.name!r} has no batch axis (shape {list(arg.shape or [])}); "
            "every input's first dimension must be the rows of a batch"
        )
    return TensorSpec(str(arg.name), datatype, _row_shape(arg.shape))


def _row_shape(shape: Sequence[object] | None) -> tuple[int | None, ...]:
    """A graph shape without its batch axis; symbolic or unknown dimensions become None."""
    dims = list(shape or [])[1:]
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in dims)


def feed_rows(feed: Mapping[str, np.ndarray]) -> int:
    """How many rows a feed holds (its arrays' common first dimension)."""
    for array in feed.values():
        return int(array.shape[0])
    return 0


def shape_key(feed: Mapping[str, np.ndarray]) -> tuple[tuple[int, ...], ...]:
    """What rows must share to be batched together: each input's per-row shape."""
    return tuple(array.shape[1:] for array in feed.values())


def zero_feed(inputs: Sequence[TensorSpec], rows: int = 1) -> Feed:
    """A feed of `rows` rows of zeros (empty strings, False), symbolic dimensions as 1."""
    feed: Feed = {}
    for spec in inputs:
        shape = (rows, *(1 if d is None else d for d in spec.shape))
        if spec.datatype == "BYTES":
            feed[spec.name] = np.full(shape, "", dtype=object)
        else:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return feed
