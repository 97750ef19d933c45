"""The external-data check reads the ONNX wire format itself: here it is held to what the
``onnx`` package says of the same bytes, wherever a tensor can hide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from pipeline.engine.onnxfile import refuse_external_data
from pipeline.errors import ModelLoadError

MODELS = Path(__file__).resolve().parents[2] / "models"


def _tensor(name: str, *, external: str | None = None) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones((3, 1), dtype=np.float32), name=name)
    if external is not None:
        set_external_data(tensor, location=external, offset=0, length=12)
        tensor.data_location = TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    return tensor


def _model(graph: onnx.GraphProto, **kwargs: object) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kwargs)


def _graph(
    nodes: list[onnx.NodeProto], initializers: list[TensorProto], name: str = "g"
) -> onnx.GraphProto:
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        initializers,
    )


def _in_initializer() -> onnx.ModelProto:
    return _model(
        _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [_tensor("w", external="w.bin")])
    )


def _in_subgraph() -> onnx.ModelProto:
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=_tensor("c", external="deep.bin"))],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 1])],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    return _model(_graph([node], []))


def _in_function() -> onnx.ModelProto:
    constant = helper.make_node("Constant", [], ["k"], value=_tensor("k", external="fn.bin"))
    function = helper.make_function(
        "local", "F", [], ["k"], [constant], [helper.make_opsetid("", 17)]
    )
    graph = _graph([helper.make_node("F", [], ["y"], domain="local")], [])
    return _model(graph, functions=[function])


def _in_sparse_initializer() -> onnx.ModelProto:
    values = _tensor("v", external="sparse.bin")
    indices = numpy_helper.from_array(np.array([0], dtype=np.int64), name="i")
    sparse = helper.make_sparse_tensor(values, indices, [3, 1])
    graph = _graph([helper.make_node("Identity", ["x"], ["y"])], [])
    graph.sparse_initializer.append(sparse)
    return _model(graph)


def _location_only() -> onnx.ModelProto:
    tensor = _tensor("w")
    tensor.data_location = TensorProto.EXTERNAL  # no entries: named by the tensor
    tensor.ClearField("raw_data")
    return _model(_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [tensor]))


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (_in_initializer, "w.bin"),
        (_in_subgraph, "deep.bin"),
        (_in_function, "fn.bin"),
        (_in_sparse_initializer, "sparse.bin"),
        (_location_only, "tensor 'w'"),
    ],
)
def test_a_tensor_kept_outside_the_model_is_found_wherever_it_is(make, named: str) -> None:  # type: ignore[no-untyped-def]
    data = make().SerializeToString()
    with pytest.raises(ModelLoadError, match=rf"external data files \({named}\).*save_as_external"):
        refuse_external_data("m.onnx", data)


def test_the_example_models_and_a_self_contained_one_pass() -> None:
    inline = _model(_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [_tensor("w")]))
    refuse_external_data("inline.onnx", inline.SerializeToString())
    examples = sorted(MODELS.glob("*/*/model.onnx"))
    assert examples
    for path in examples:
        data = path.read_bytes()
        assert onnx.load_model_from_string(data).graph.node  # onnx reads it: so does the walk
        refuse_external_data(str(path), data)


@pytest.mark.parametrize(
    "data", [b"", b"\x00", b"\xff\xff\xff", b"not a model at all", b"\x3a\x05ab"]
)
def test_bytes_that_are_no_model_are_left_to_onnx_runtime(data: bytes) -> None:
    refuse_external_data("junk.onnx", data)  # ONNX Runtime explains it better
