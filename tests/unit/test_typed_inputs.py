"""Named, typed inputs: every element type and per-row shape, from event to ONNX Runtime.

Each model here is real (built with onnx.helper, run by onnxruntime through the model cache
and the engine); the expected outputs come from onnxruntime run directly on the same feed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.engine.codec import EventDecoder, encode_predictions
from pipeline.engine.engine import Engine, Outcome
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.engine.signature import DATATYPES, INTEGER_RANGES, TensorSpec
from pipeline.engine.spec import ModelSpec
from tests.modelfactory import identity_model, sequence_model, two_input_model

SAMPLES: dict[str, list[Any]] = {  # per datatype: values one row may carry
    "FP16": [1.5, -65504.0, 0.0009765625],
    "FP32": [0.1, -3.4e38, 12345.678],
    "FP64": [0.1, -1.7976931348623157e308, 2.0**-1074],
    "INT8": [-128, 127, 0],
    "INT16": [-32768, 32767, 5],
    "INT32": [-(2**31), 2**31 - 1, 7],
    "INT64": [-(2**63), 2**63 - 1, 123456789012345678],
    "UINT8": [0, 255, 3],
    "UINT16": [0, 65535, 4],
    "UINT32": [0, 2**32 - 1, 6],
    "UINT64": [0, 2**64 - 1, 2**63 + 1],
    "BOOL": [True, False, True],
    "BYTES": ["DE", "", "naïve ✓"],
}


def cache_with(tmp_path: Path, name: str, build: Any, *args: Any) -> ModelCache:
    build(tmp_path / name / "1", *args)
    return ModelCache(ModelStore(tmp_path))


def run_events(cache: ModelCache, events: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Decode events as Kafka values, run them through the engine; the rejects and, per
    accepted event in input order, (event index, outputs)."""
    decoder = EventDecoder(catalog=cache)
    decoded = decoder.decode([json.dumps(e).encode() for e in events], [0] * len(events))
    engine: Engine[Any] = Engine(cache, max_batch_size=64)
    results: list[Any] = []

    def done(outcome: Outcome[Any]) -> None:
        block = outcome.ticket
        for i, row in enumerate(outcome.rows):
            outputs = {k: v[i] for k, v in outcome.outputs.items()}
            results.append((block.indices[row], outputs))
        assert outcome.errors == []

    for block in decoded.blocks.values():
        engine.submit(block.spec.name, block.spec.version, block.feed, block, done)
    engine.flush()
    return decoded.rejects, sorted(results, key=lambda r: r[0])


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize(
    "shape", [(), (1,), (3,), (2, 3)], ids=["scalar", "one", "vector", "matrix"]
)
def test_every_element_type_and_shape_round_trips_through_onnx_runtime(
    tmp_path: Path, datatype: str, shape: tuple[int, ...]
) -> None:
    cache = cache_with(tmp_path, "m", identity_model, {"v": (datatype, list(shape))})
    values = SAMPLES[datatype]
    size = int(np.prod(shape)) if shape else 1
    rows = [np.resize(np.array(values, dtype=object), size).tolist() for _ in range(2)]
    rows[1] = rows[1][::-1]
    events = []
    for i, row in enumerate(rows):
        value = (
            row[0] if shape in ((), (1,)) else np.array(row, dtype=object).reshape(shape).tolist()
        )
        events.append({"id": f"e{i}", "model": "m", "features": {"v": value}})

    rejects, results = run_events(cache, events)

    assert rejects == []
    spec = cache.resolve("m", "1")
    dtype = DATATYPES[datatype]
    feed = np.array(rows, dtype=dtype if datatype != "BYTES" else object).reshape(2, *shape)
    if datatype == "BYTES":
        feed = feed.astype(str).astype(object)
    session = ort.InferenceSession(str(tmp_path / "m" / "1" / "model.onnx"))
    (expected,) = session.run(None, {"v": feed})
    assert spec.inputs == (TensorSpec("v", datatype, shape),)
    for i, (index, outputs) in enumerate(results):
        assert index == i
        got = np.asarray(outputs["v_out"], dtype=expected.dtype)
        assert got.tolist() == np.asarray(expected[i]).tolist()


def test_a_two_input_model_equals_onnx_runtime_and_encodes_its_outputs(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, "rec", two_input_model)
    events = [
        {"id": "a", "model": "rec", "features": {"x": [0.5, 1.25, -2.0], "cat": 7}},
        {"id": "b", "model": "rec", "features": {"cat": [3], "x": [1, 2, 3]}},
    ]

    rejects, results = run_events(cache, events)

    assert rejects == []
    session = ort.InferenceSession(str(tmp_path / "rec" / "1" / "model.onnx"))
    x = np.array([[0.5, 1.25, -2.0], [1, 2, 3]], dtype=np.float32)
    (expected,) = session.run(None, {"x": x, "cat": np.array([[7], [3]], dtype=np.int64)})
    assert [r[1]["score"].tolist() for r in results] == expected.tolist() == [[4.5], [63.0]]
    decoded = EventDecoder(catalog=cache).decode([orjson.dumps(events[0])], [5])
    (block,) = decoded.blocks.values()
    (doc,) = encode_predictions(block, {"score": expected[:1]}, 9)
    assert orjson.loads(doc)["outputs"] == {"score": [4.5]}


def test_rows_of_a_symbolic_length_batch_by_length(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, "seq", sequence_model)
    windows = [[[1, 2], [3, 4]], [[1, 1], [1, 1], [1, 1]], [[0.5, 0.5], [2, 2]], []]
    events = [
        {"id": str(i), "model": "seq", "features": {"window": w}} for i, w in enumerate(windows)
    ]

    decoded = EventDecoder(catalog=cache).decode([orjson.dumps(e) for e in events], [0] * 4)
    rejects, results = run_events(cache, events)

    assert rejects == []
    shapes = sorted(block.feed["window"].shape for block in decoded.blocks.values())
    assert shapes == [(1, 0, 2), (1, 3, 2), (2, 2, 2)]
    assert [float(r[1]["total"]) for r in results] == [10.0, 6.0, 5.0, 0.0]


BAD_VALUES = [  # (features of the two-input model, error type, words the message holds)
    ({"x": [1, 2, 3]}, "MissingFeature", "missing 1 input 'cat'"),
    ({"x": [1, 2, 3], "cat": 1, "colour": 2}, "UnknownFeature", "unknown name 'colour'"),
    (
        {"x": [1, "2", 3], "cat": 1},
        "NonNumeric",
        "features['x'] must hold numbers (FP32 [3]), got string '2'",
    ),
    ({"x": [1, True, 3], "cat": 1}, "NonNumeric", "got boolean true"),
    (
        {"x": [1, 2, 3], "cat": 1.7},
        "NotAnInteger",
        "features['cat'] must hold integers (INT64 [1]), got number 1.7",
    ),
    ({"x": [1, 2, 3], "cat": 2**63}, "IntegerRange", f"from {-(2**63)} to {2**63 - 1}"),
    ({"x": [1, 2, 3], "cat": "7"}, "NonNumeric", "got string '7'"),
    ({"x": [1, 2], "cat": 1}, "WrongShape", "dimension 1 has 2 items"),
    (
        {"x": [[1, 2, 3]], "cat": 1},
        "WrongShape",
        "features['x'] must be an array of shape [3] (FP32)",
    ),
    ({"x": 1.5, "cat": 1}, "WrongShape", "got a single number 1.5"),
    ({"x": [1, 2, 1e39], "cat": 1}, "Float32Overflow", "fit FP32"),
    ([1, 2, 3, 4], "InvalidField", "features must be an object of input name -> value"),
]


def test_each_bad_value_is_one_reject_and_the_rest_of_the_batch_is_predicted(
    tmp_path: Path,
) -> None:
    cache = cache_with(tmp_path, "rec", two_input_model)
    good = {"id": "good", "model": "rec", "features": {"x": [1, 1, 1], "cat": 1}}
    events = [good]
    for i, (features, _, _) in enumerate(BAD_VALUES):
        events += [{"id": f"bad{i}", "model": "rec", "features": features}, good]

    rejects, results = run_events(cache, events)

    assert [r.index for r in rejects] == list(range(1, 2 * len(BAD_VALUES), 2))
    for reject, (_, error_type, words) in zip(rejects, BAD_VALUES, strict=True):
        assert (reject.stage, reject.error_type) == ("validate", error_type)
        assert words in reject.message
    assert [index for index, _ in results] == list(range(0, 2 * len(BAD_VALUES) + 1, 2))
    assert all(outputs["score"].tolist() == [31.0] for _, outputs in results)


@pytest.mark.parametrize(
    ("datatype", "value", "error_type"),
    [
        ("INT8", 300, "IntegerRange"),
        ("UINT8", -1, "IntegerRange"),
        ("UINT64", 2**64, "IntegerRange"),
        ("INT32", 2.0**31, "IntegerRange"),
        ("BOOL", 1, "NotBoolean"),
        ("BYTES", 5, "NotAString"),
        ("FP16", 70000.0, "Float16Overflow"),
    ],
)
def test_values_a_type_cannot_hold_are_refused_not_cast(
    tmp_path: Path, datatype: str, value: object, error_type: str
) -> None:
    cache = cache_with(tmp_path, "m", identity_model, {"v": (datatype, [])})
    events = [{"id": "e", "model": "m", "features": {"v": value}}]

    rejects, results = run_events(cache, events)

    assert (len(rejects), results) == (1, [])
    assert (rejects[0].stage, rejects[0].error_type) == ("validate", error_type)
    assert "features['v']" in rejects[0].message and datatype in rejects[0].message


def test_integral_numbers_are_accepted_for_integer_inputs(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, "m", identity_model, {"v": ("INT64", [2])})

    rejects, results = run_events(cache, [{"id": "e", "model": "m", "features": {"v": [3.0, -4]}}])

    assert rejects == []
    assert results[0][1]["v_out"].tolist() == [3, -4]


# -- property: decode, batch and split give back each row's values -------------------------

_LEAVES = {
    "FP32": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "FP64": st.floats(allow_nan=False, allow_infinity=False),
    "INT8": st.integers(*INTEGER_RANGES["INT8"]),
    "INT64": st.integers(*INTEGER_RANGES["INT64"]),
    "UINT32": st.integers(*INTEGER_RANGES["UINT32"]),
    "BOOL": st.booleans(),
    "BYTES": st.text(max_size=8),
}


@st.composite
def signatures_and_rows(draw: st.DrawFn) -> tuple[tuple[TensorSpec, ...], list[dict[str, Any]]]:
    n_inputs = draw(st.integers(1, 3))
    specs = []
    for i in range(n_inputs):
        datatype = draw(st.sampled_from(sorted(_LEAVES)))
        shape = draw(st.sampled_from([(), (1,), (2,), (2, 2), (None,)]))
        specs.append(TensorSpec(f"in{i}", datatype, shape))
    length = draw(st.integers(0, 3))  # one length for every symbolic dimension
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row: dict[str, Any] = {}
        for spec in specs:
            concrete = tuple(length if d is None else d for d in spec.shape)
            count = int(np.prod(concrete)) if concrete else 1
            leaves = draw(st.lists(_LEAVES[spec.datatype], min_size=count, max_size=count))
            if spec.scalar:
                row[spec.name] = leaves[0]
            else:
                row[spec.name] = np.array(leaves, dtype=object).reshape(concrete).tolist()
        rows.append(row)
    return tuple(specs), rows


class _Catalog:
    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def resolve(self, name: str, version: str | None) -> ModelSpec:
        return self.spec


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signatures_and_rows())
def test_decode_then_batch_then_split_gives_back_each_rows_values(
    case: tuple[tuple[TensorSpec, ...], list[dict[str, Any]]],
) -> None:
    from pipeline.engine.batching import MicroBatcher

    specs, rows = case
    spec = ModelSpec(name="m", version="1", inputs=specs)
    values = [orjson.dumps({"id": str(i), "features": row}) for i, row in enumerate(rows)]

    decoded = EventDecoder(catalog=_Catalog(spec), default_model="m").decode(
        values, [0] * len(rows)
    )

    assert decoded.rejects == []
    batcher: MicroBatcher[Any] = MicroBatcher(max_batch_size=4)
    batches = []
    for block in decoded.blocks.values():
        batches += batcher.add("m", block.feed, block)
    batches += batcher.flush()
    seen = 0
    for batch in batches:
        at = 0
        for s in batch.slices:
            for row in range(s.start, s.stop):
                event = rows[s.ticket.indices[row]]
                for tensor in specs:
                    got = np.asarray(batch.feed[tensor.name][at], dtype=object)  # a str as is
                    want = np.array(event[tensor.name], dtype=object).reshape(got.shape)
                    assert got.tolist() == want.tolist()
                at += 1
                seen += 1
    assert seen == len(rows)
