"""Checks on the bytes of an ONNX model file before ONNX Runtime sees them.

A model may keep tensors in *external data* files named by a relative path inside the
model. The store loads models from bytes after checking their SHA-256, and ONNX Runtime
resolves such paths against the working directory, or (depending on its version) refuses
or follows them elsewhere; either way the checksum would not cover those files. So the
store serves self-contained models only, and says how to make one.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx
from onnx import AttributeProto, GraphProto, TensorProto

from pipeline.errors import ModelLoadError

__all__ = ["refuse_external_data"]


def refuse_external_data(path: str, data: bytes) -> None:
    """Raise `ModelLoadError` if the model in `data` keeps any tensor in an external file.

    Args:
        path: The model file as messages show it.
        data: The model file's bytes.
    """
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError; ONNX Runtime will explain it better
        del exc
        return
    graphs = [model.graph, *(_function_graphs(model))]
    locations = sorted(
        {_location(t) for graph in graphs for t in _tensors(graph) if _is_external(t)}
    )
    if locations:
        raise ModelLoadError(
            f"{path}: the model keeps tensors in external data files ({', '.join(locations)}); "
            "the store serves self-contained models only, so the checksum covers every byte. "
            "Save it as one file: onnx.save_model(model, path, save_as_external_data=False) "
            "(models over 2 GB cannot be served)"
        )


def _function_graphs(model: onnx.ModelProto) -> Iterator[GraphProto]:
    for function in model.functions:
        for node in function.node:
            for attribute in node.attribute:
                yield from _attribute_graphs(attribute)


def _tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Every tensor stored in `graph` and its subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == AttributeProto.TENSORS:
                yield from attribute.tensors
            for subgraph in _attribute_graphs(attribute):
                yield from _tensors(subgraph)


def _attribute_graphs(attribute: AttributeProto) -> Iterator[GraphProto]:
    if attribute.type == AttributeProto.GRAPH:
        yield attribute.g
    elif attribute.type == AttributeProto.GRAPHS:
        yield from attribute.graphs


def _is_external(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _location(tensor: TensorProto) -> str:
    for entry in tensor.external_data:
        if entry.key == "location":
            return str(entry.value)
    return f"tensor {tensor.name!r}"
