"""What a TensorFlow signature takes: one float32 matrix (a vector model) or typed inputs.

A signature whose only input is a float32 matrix ``[rows, features]`` stays a vector
model, exactly as before. Any other signature (several inputs, an integer, boolean or
string input, a per-row shape other than one row of columns) keeps every input by its
signature key, which tf2onnx gives the ONNX input too, with its datatype and per-row
shape (the batch axis left out, None where the signature leaves a size open).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pipeline.engine.signature import Feed, TensorSpec
from pipeline.errors import ModelError
from pipeline.importer.source import Rows, SourceOptions

__all__ = ["SignatureInputs", "in_graph_order", "signature_inputs"]

_DATATYPES: Final = {
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "bool": "BOOL",
    "string": "BYTES",
}
"""TensorFlow dtype name -> the Open Inference Protocol datatype the engine serves."""


@dataclass(frozen=True, slots=True)
class SignatureInputs:
    """A signature's inputs: a vector model's key and width, or every input typed.

    Attributes:
        keys: The signature's input keys (one for a vector model).
        width: A vector model's feature count; the number of inputs for a typed one.
        specs: Every input as the engine will read it from the ONNX graph; None for a
            vector model.
    """

    keys: tuple[str, ...]
    width: int
    specs: tuple[TensorSpec, ...] | None

    def feed(self, rows: Rows | Feed) -> Feed:
        """The arrays to call the signature with: a vector model's rows under its key."""
        return dict(rows) if isinstance(rows, dict) else {self.keys[0]: rows}


def signature_inputs(path: Path, options: SourceOptions, function: Any) -> SignatureInputs:
    """Read the inputs of the signature `function`, or refuse one the engine cannot serve.

    Raises:
        ModelError: a vector model's width is open and ``--features`` does not give it;
            an input has an element type the engine does not serve, or no batch axis.
    """
    _, specs = function.structured_input_signature
    keys = sorted(str(k) for k in specs)
    if len(keys) == 1 and _is_float_matrix(specs[keys[0]]):
        return SignatureInputs((keys[0],), _width(path, keys[0], specs[keys[0]], options), None)
    typed = tuple(_typed(path, options, key, specs[key]) for key in keys)
    return SignatureInputs(tuple(keys), len(typed), typed)


def in_graph_order(
    origin: Path, specs: tuple[TensorSpec, ...], proto: Any
) -> tuple[TensorSpec, ...]:
    """`specs` in the ONNX graph's input order (which the model's load checks them in).

    Raises:
        ModelError: the converted graph's inputs are not the signature's.
    """
    graph = [str(i.name) for i in proto.graph.input]
    by_name = {s.name: s for s in specs}
    if sorted(graph) != sorted(by_name):
        raise ModelError(
            f"tf2onnx named the inputs of {origin} {graph}, not the signature's "
            f"{sorted(by_name)}; the conversion cannot be matched to its source"
        )
    return tuple(by_name[name] for name in graph)


def _is_float_matrix(spec: Any) -> bool:
    """Whether a TensorFlow ``TensorSpec`` is a float32 [rows, features] matrix."""
    return bool(spec.dtype.name == "float32" and spec.shape.rank == 2)


def _width(path: Path, key: str, spec: Any, options: SourceOptions) -> int:
    """A vector model's feature count: the matrix's, else the number of ``--features``."""
    shape = spec.shape.as_list()
    width = shape[1] or (len(options.feature_names) if options.feature_names else None)
    if width is None:
        raise ModelError(
            f"{path}: input {key!r} has no fixed feature count (shape {shape}); "
            f"pass --features to name the columns"
        )
    return int(width)


def _typed(path: Path, options: SourceOptions, key: str, spec: Any) -> TensorSpec:
    """One signature input as the engine's `TensorSpec`, or the reason it cannot be served."""
    datatype = _DATATYPES.get(spec.dtype.name)
    shape = spec.shape.as_list() if spec.shape.rank is not None else None
    if datatype is None or not shape:
        served = ", ".join(_DATATYPES)
        raise ModelError(
            f"{path}: signature {options.signature!r} input {key!r} is {spec.dtype.name} with "
            f"shape {shape}; every input must be a tensor of one of {served} whose first "
            f"dimension is the rows of a batch"
        )
    return TensorSpec(key, datatype, tuple(shape[1:]))
