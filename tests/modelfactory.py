"""Small ONNX models built in the tests, for the model shapes the example models lack.

`zipmap_classifier` is what skl2onnx gives by default for a classifier: an int64 label
tensor and a sequence of ``{class: probability}`` maps (ZipMap), not a tensor.
`sequence_output_model` returns a sequence of tensors; `external_data_model` keeps its
weights in a file beside ``model.onnx``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

N_FEATURES = 30


def zipmap_classifier(directory: Path, *, manifest: dict[str, object] | None = None) -> Path:
    """A logistic regression on the breast cancer data, converted with skl2onnx's defaults."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    x, y = load_breast_cancer(return_X_y=True)
    model = LogisticRegression(max_iter=5000).fit(x, y)
    onx = to_onnx(model, x[:1].astype(np.float32), target_opset=17)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(onx.SerializeToString())
    if manifest is not None:
        (directory / "model.json").write_text(json.dumps(manifest))
    return directory


def sequence_output_model(directory: Path) -> Path:
    """A model whose one output is a sequence of tensors (not served)."""
    node = helper.make_node("SequenceConstruct", ["x"], ["seq"])
    graph = helper.make_graph(
        [node],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(directory / "model.onnx"))
    return directory


def external_data_model(directory: Path) -> Path:
    """A linear model whose weight tensor lives in ``weights.bin`` beside the model."""
    weights = numpy_helper.from_array(np.ones((N_FEATURES, 1), dtype=np.float32), name="w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_FEATURES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(
        model,
        str(directory / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    return directory


# The element types a model input may have, as ONNX and the Open Inference Protocol name them.
ELEMENT_TYPES = {
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "BOOL": TensorProto.BOOL,
    "BYTES": TensorProto.STRING,
}


def _save(graph: onnx.GraphProto, directory: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(directory / "model.onnx"))
    return directory


def identity_model(directory: Path, inputs: dict[str, tuple[str, list[object]]]) -> Path:
    """One Identity per input: input NAME (datatype, per-row shape) -> output ``NAME_out``.

    A per-row dimension given as a string is symbolic."""
    nodes, graph_inputs, graph_outputs = [], [], []
    for name, (datatype, shape) in inputs.items():
        kind = ELEMENT_TYPES[datatype]
        graph_inputs.append(helper.make_tensor_value_info(name, kind, ["N", *shape]))
        graph_outputs.append(helper.make_tensor_value_info(f"{name}_out", kind, ["N", *shape]))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    return _save(helper.make_graph(nodes, "identity", graph_inputs, graph_outputs), directory)


def two_input_model(directory: Path) -> Path:
    """A recommender's shape: ``x`` FP32 [N, 3] and ``cat`` INT64 [N, 1] ->
    ``score`` = sum(x) * 10 + cat, FP32 [N, 1]."""
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "ten"], ["scaled"]),
        helper.make_node("Cast", ["cat"], ["catf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["scaled", "catf"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two-input",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("cat", TensorProto.INT64, ["N", 1]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            numpy_helper.from_array(np.array(10.0, dtype=np.float32), "ten"),
        ],
    )
    return _save(graph, directory)


def sequence_model(directory: Path) -> Path:
    """A window per event: ``window`` FP32 [N, T, 2] with a symbolic T -> ``total`` =
    the sum of every value of the window, FP32 [N]."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["window", "axes"], ["total"], keepdims=0)],
        "sequence",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", "T", 2])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N"])],
        initializer=[numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes")],
    )
    return _save(graph, directory)


def linear_model(directory: Path, names: list[str], weights: list[float]) -> Path:
    """A single-vector model with named feature columns (its manifest's ``features``):
    ``features`` FP32 [N, len(names)] -> ``score`` = features @ weights, FP32 [N, 1]."""
    w = np.array(weights, dtype=np.float32).reshape(len(names), 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["score"])],
        "linear",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(names)])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    _save(graph, directory)
    (directory / "model.json").write_text(json.dumps({"features": names}))
    return directory


def failing_model(directory: Path) -> Path:
    """Takes the example models' rows (``features`` FP32 [N, 30]) and fails on every run:
    it gathers column 99 of 30, which ONNX Runtime refuses when the batch runs."""
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", N_FEATURES])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 1])
    index = numpy_helper.from_array(np.array([99], dtype=np.int64), "index")
    gather = helper.make_node("Gather", ["features", "index"], ["probabilities"], axis=1)
    graph = helper.make_graph([gather], "failing", [features], [out], initializer=[index])
    return _save(graph, directory)


def slow_model(directory: Path, *, steps: int = 400) -> Path:
    """Takes the example models' rows (``features`` FP32 [N, 30]) and answers ``probabilities``
    [N, 2] after `steps` chained 30x30 matrix products: at 400, a batch costs tens of times
    what the example MLP's does (a candidate far slower than the served version)."""
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", N_FEATURES])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])
    square = numpy_helper.from_array(np.eye(N_FEATURES, dtype=np.float32), "square")
    head = numpy_helper.from_array(np.ones((N_FEATURES, 2), dtype=np.float32), "head")
    nodes, previous = [], "features"
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [previous, "square"], [f"h{i}"]))
        previous = f"h{i}"
    nodes.append(helper.make_node("MatMul", [previous, "head"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(nodes, "slow", [features], [out], initializer=[square, head])
    return _save(graph, directory)
