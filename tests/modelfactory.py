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
