"""Checks on the bytes of an ONNX model file before ONNX Runtime sees them.

A model may keep tensors in *external data* files named by a relative path inside the
model. The store loads models from bytes after checking their SHA-256, and ONNX Runtime
resolves such paths against the working directory, or (depending on its version) refuses
or follows them elsewhere; either way the checksum would not cover those files. So the
store serves self-contained models only, and says how to make one.

The check reads the protobuf wire format itself, descending only into the messages that
can hold a tensor, rather than importing the ``onnx`` package: that import (``ml_dtypes``
above all) cost 0.57 s of the 0.80 s that ``import pipeline.cli`` took, in every worker,
server and command that loads a model. Field numbers are those of ``onnx-ml.proto``
(IR version 10); tests/unit/test_onnxfile.py checks the walk against ``onnx`` itself.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.errors import ModelLoadError

__all__ = ["refuse_external_data"]

# Field numbers of the messages on the way from a model to its tensors (onnx-ml.proto).
_MODEL_GRAPH, _MODEL_FUNCTIONS = 7, 25
_FUNCTION_NODE = 7
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_NODE_ATTRIBUTE = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS = 5, 6, 10, 11
_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS = 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_MAX_DEPTH = 64  # subgraphs nest (If inside Loop ...); deeper than this is not a real model


class _Malformed(Exception):
    """The bytes are not a protobuf message: left to ONNX Runtime, which explains it better."""


def refuse_external_data(path: str, data: bytes) -> None:
    """Raise `ModelLoadError` if the model in `data` keeps any tensor in an external file.

    Args:
        path: The model file as messages show it.
        data: The model file's bytes.
    """
    try:
        locations = sorted(set(_external_locations(memoryview(data))))
    except _Malformed:
        return
    if locations:
        raise ModelLoadError(
            f"{path}: the model keeps tensors in external data files ({', '.join(locations)}); "
            "the store serves self-contained models only, so the checksum covers every byte. "
            "Save it as one file: onnx.save_model(model, path, save_as_external_data=False) "
            "(models over 2 GB cannot be served)"
        )


def _external_locations(model: memoryview) -> Iterator[str]:
    """The location of every tensor kept outside the model: of the main graph and its
    subgraphs, and of the graphs in its functions' node attributes."""
    for field, value in _messages(model):
        if field == _MODEL_GRAPH:
            yield from _graph(value, 0)
        elif field == _MODEL_FUNCTIONS:
            for nested, node in _messages(value):
                if nested == _FUNCTION_NODE:
                    yield from _node(node, 0)


def _graph(graph: memoryview, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        raise _Malformed
    for field, value in _messages(graph):
        if field == _GRAPH_INITIALIZER:
            yield from _tensor(value)
        elif field == _GRAPH_SPARSE_INITIALIZER:
            yield from _sparse_tensor(value)
        elif field == _GRAPH_NODE:
            yield from _node(value, depth)


def _node(node: memoryview, depth: int) -> Iterator[str]:
    for field, attribute in _messages(node):
        if field != _NODE_ATTRIBUTE:
            continue
        for nested, value in _messages(attribute):
            if nested in (_ATTR_T, _ATTR_TENSORS):
                yield from _tensor(value)
            elif nested in (_ATTR_SPARSE_TENSOR, _ATTR_SPARSE_TENSORS):
                yield from _sparse_tensor(value)
            elif nested in (_ATTR_G, _ATTR_GRAPHS):
                yield from _graph(value, depth + 1)


def _sparse_tensor(sparse: memoryview) -> Iterator[str]:
    for field, value in _messages(sparse):
        if field in (_SPARSE_VALUES, _SPARSE_INDICES):
            yield from _tensor(value)


def _tensor(tensor: memoryview) -> Iterator[str]:
    """The tensor's external location (its ``location`` entry, else its name), if it has one."""
    name, location, external = "", None, False
    for field, value in _fields(tensor):
        if field == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
            external = True
        elif field == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            external = True
            entry = dict(_messages(value))
            if bytes(entry.get(_ENTRY_KEY, b"")) == b"location":
                location = _text(entry.get(_ENTRY_VALUE, memoryview(b"")))
        elif field == _TENSOR_NAME and isinstance(value, memoryview):
            name = _text(value)
    if external:
        yield location if location is not None else f"tensor {name!r}"


def _text(value: memoryview) -> str:
    return bytes(value).decode("utf-8", errors="replace")


def _messages(message: memoryview) -> Iterator[tuple[int, memoryview]]:
    """The length-delimited fields of a serialized message (nested messages, strings,
    packed arrays) as (number, bytes)."""
    for field, value in _fields(message):
        if isinstance(value, memoryview):
            yield field, value


def _fields(message: memoryview) -> Iterator[tuple[int, memoryview | int]]:
    """Each varint or length-delimited field of a serialized message as (number, value);
    fixed-width fields are skipped.

    Raises:
        _Malformed: the bytes end inside a field, or use a wire type protobuf 3 does not.
    """
    end, i = len(message), 0
    while i < end:
        key, i = _varint(message, i)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed
        if wire == _VARINT:
            value, i = _varint(message, i)
            yield field, value
        elif wire == _LENGTH:
            size, i = _varint(message, i)
            if i + size > end:
                raise _Malformed
            yield field, message[i : i + size]
            i += size
        elif wire in (_FIXED64, _FIXED32):
            i += 8 if wire == _FIXED64 else 4
            if i > end:
                raise _Malformed
        else:
            raise _Malformed


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise _Malformed
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
