"""Unit tests for the inference runner: real ONNX outputs and bad-row isolation by splitting."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from pipeline.engine.inference import InferenceResult, RowFailure, SessionLike, run_batch
from pipeline.engine.signature import TensorSpec
from pipeline.engine.spec import ModelSpec

N_FEATURES = 3
MARKER = -999.0
WEIGHTS = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]], dtype=np.float32)
BIAS = np.array([0.1, -0.2], dtype=np.float32)
OUTPUTS = ("scores", "total")
SPEC = ModelSpec(
    name="linear",
    version="1",
    n_features=N_FEATURES,
    inputs=(TensorSpec("x", "FP32", (N_FEATURES,)),),
)


def build_linear_model() -> bytes:
    """x (n, 3) -> scores = x @ W + b (n, 2) and total = sum(scores, axis=1) (n,)."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["scores"]),
            helper.make_node("ReduceSum", ["scores", "axes"], ["total"], keepdims=0),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", N_FEATURES])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["n"]),
        ],
        initializer=[
            numpy_helper.from_array(WEIGHTS, "W"),
            numpy_helper.from_array(BIAS, "b"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def expected_outputs(features: np.ndarray) -> dict[str, np.ndarray]:
    scores = features @ WEIGHTS + BIAS
    return {"scores": scores, "total": scores.sum(axis=1)}


@dataclass(frozen=True)
class FakeModel:
    """Shaped like pipeline.engine.models.LoadedModel (a frozen dataclass)."""

    session: SessionLike
    spec: ModelSpec = SPEC
    input_name: str = "x"
    output_names: tuple[str, ...] = OUTPUTS


@dataclass
class MarkerSession:
    """Wraps a real session; a batch holding a marker row raises, or returns a short output."""

    inner: SessionLike
    short_output: str | None = None
    batch_sizes: list[int] = field(default_factory=list)

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        x = input_feed["x"]
        self.batch_sizes.append(len(x))
        marked = np.flatnonzero(x[:, 0] == MARKER)
        outputs = self.inner.run(output_names, input_feed)
        if marked.size == 0:
            return outputs
        if self.short_output is None:
            raise InvalidArgument(f"row with first feature {MARKER} is not allowed")
        index = OUTPUTS.index(self.short_output)
        outputs[index] = outputs[index][:-1]
        return outputs


class FailingSession:
    """Raises on every run."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        self.calls += 1
        raise RuntimeError("model is broken")


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(build_linear_model(), providers=["CPUExecutionProvider"])


@pytest.fixture
def make_features() -> Callable[..., np.ndarray]:
    def make(n: int, bad: tuple[int, ...] = ()) -> np.ndarray:
        rng = np.random.default_rng(seed=n)
        features = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
        features[list(bad), 0] = MARKER
        return features

    return make


def assert_outputs_match(result: InferenceResult, features: np.ndarray) -> None:
    expected = expected_outputs(features[result.ok_positions])
    assert set(result.outputs) == set(OUTPUTS)
    for name in OUTPUTS:
        assert result.outputs[name].shape == expected[name].shape
        np.testing.assert_allclose(result.outputs[name], expected[name], rtol=1e-5, atol=1e-5)


def run_bound(n: int, k: int) -> int:
    return 2 * k * math.ceil(math.log2(n)) + 1


def test_outputs_equal_numpy(
    session: ort.InferenceSession, make_features: Callable[..., np.ndarray]
) -> None:
    features = make_features(64)

    result = run_batch(FakeModel(session), {"x": features})

    assert result.ok_positions == list(range(64))
    assert result.failures == []
    assert result.outputs["scores"].shape == (64, 2)
    assert result.outputs["total"].shape == (64,)
    assert_outputs_match(result, features)


def test_failing_rows_are_isolated_and_the_rest_predicted(
    session: ort.InferenceSession, make_features: Callable[..., np.ndarray]
) -> None:
    bad = (3, 17)
    features = make_features(64, bad)
    wrapped = MarkerSession(session)

    result = run_batch(FakeModel(wrapped), {"x": features})

    assert result.failures == [
        RowFailure(p, "InvalidArgument", f"row with first feature {MARKER} is not allowed")
        for p in bad
    ]
    assert result.ok_positions == [i for i in range(64) if i not in bad]
    assert_outputs_match(result, features)
    direct = session.run(list(OUTPUTS), {"x": features[result.ok_positions]})
    for name, values in zip(OUTPUTS, direct, strict=True):
        np.testing.assert_allclose(result.outputs[name], values, rtol=1e-6, atol=1e-6)
    assert len(wrapped.batch_sizes) <= run_bound(64, len(bad))


@pytest.mark.parametrize(
    ("n", "bad"), [(1, (0,)), (2, (1,)), (7, (0, 6)), (100, (50, 51, 99)), (1000, (999,))]
)
def test_isolation_for_various_sizes(
    session: ort.InferenceSession,
    make_features: Callable[..., np.ndarray],
    n: int,
    bad: tuple[int, ...],
) -> None:
    features = make_features(n, bad)
    wrapped = MarkerSession(session)

    result = run_batch(FakeModel(wrapped), {"x": features})

    assert [f.position for f in result.failures] == list(bad)
    assert result.ok_positions == [i for i in range(n) if i not in bad]
    if result.ok_positions:
        assert_outputs_match(result, features)
    assert len(wrapped.batch_sizes) <= run_bound(max(n, 2), len(bad))


def test_one_good_run_when_no_row_fails(
    session: ort.InferenceSession, make_features: Callable[..., np.ndarray]
) -> None:
    wrapped = MarkerSession(session)

    run_batch(FakeModel(wrapped), {"x": make_features(256)})

    assert wrapped.batch_sizes == [256]


def test_output_with_wrong_first_dimension_fails_its_rows(
    session: ort.InferenceSession, make_features: Callable[..., np.ndarray]
) -> None:
    features = make_features(16, (5,))
    wrapped = MarkerSession(session, short_output="total")

    result = run_batch(FakeModel(wrapped), {"x": features})

    (failure,) = result.failures
    assert failure.position == 5
    assert failure.error_type == "OutputShape"
    assert "'total'" in failure.message
    assert "(0,)" in failure.message
    assert "expected first dimension 1" in failure.message
    assert result.ok_positions == [i for i in range(16) if i != 5]
    assert_outputs_match(result, features)


def test_all_rows_fail(make_features: Callable[..., np.ndarray]) -> None:
    failing = FailingSession()

    result = run_batch(FakeModel(failing), {"x": make_features(8)})

    assert result.ok_positions == []
    assert result.failures == [RowFailure(p, "RuntimeError", "model is broken") for p in range(8)]
    assert {name: a.shape for name, a in result.outputs.items()} == {n: (0,) for n in OUTPUTS}
    assert failing.calls == 2 * 8 - 1


def test_empty_batch_does_not_run_the_session() -> None:
    failing = FailingSession()

    result = run_batch(FakeModel(failing), {"x": np.empty((0, N_FEATURES), dtype=np.float32)})

    assert failing.calls == 0
    assert result.ok_positions == []
    assert result.failures == []
    assert all(a.shape == (0,) for a in result.outputs.values())


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (
            {"x": np.zeros((2, 4), dtype=np.float32)},
            r"FP32 \[3\] per row, got float32 rows of shape \[4\]",
        ),
        ({"x": np.zeros((2, 3), dtype=np.float64)}, "per row, got float64 rows"),
        ({"x": np.zeros(3, dtype=np.float32)}, r"got float32 rows of shape \[\]"),
        ({"y": np.zeros((2, 3), dtype=np.float32)}, r"must hold its inputs \['x'\]"),
        (np.zeros((2, 3), dtype=np.float32), "must hold its inputs"),
    ],
)
def test_bad_features_are_the_callers_mistake(features: object, message: str) -> None:
    failing = FailingSession()

    with pytest.raises(ValueError, match=message):
        run_batch(FakeModel(failing), features)  # type: ignore[arg-type]

    assert failing.calls == 0


def test_a_model_without_outputs_is_rejected(make_features: Callable[..., np.ndarray]) -> None:
    with pytest.raises(ValueError, match="must name at least one output"):
        run_batch(FakeModel(FailingSession(), output_names=()), make_features(2))
