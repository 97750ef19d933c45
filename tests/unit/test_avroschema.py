"""Predictions as Avro: each example model's schema, and its real outputs written with it
and read back equal to the JSON predictions (no registry: a stand-in hands out ids)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import SchemaParseException

from pipeline.engine.avroschema import avro_name, prediction_schema
from pipeline.engine.codec import encode_rows
from pipeline.engine.framing import FrameProblem, frame_schema_id
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.engine.signature import TensorSpec
from pipeline.engine.spec import ModelSpec
from pipeline.errors import ConfigError
from pipeline.schemaregistry import AvroPredictionWriter

MODELS = Path(__file__).resolve().parents[2] / "models"
CACHE = ModelCache(ModelStore(MODELS))
NAMES = CACHE.store.names()


class _Registry:
    """Hands out one id per schema text, or refuses as a registry checking compatibility."""

    def __init__(self, refuse: bool = False) -> None:
        self.registered: list[tuple[str, str]] = []
        self.refuse = refuse

    def register_schema(self, subject: str, schema: Any) -> int:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        if self.refuse:
            raise SchemaRegistryError(409, 409, "Schema being registered is incompatible")
        self.registered.append((subject, schema.schema_str))
        return 100 + len(self.registered)


def _writer(registry: _Registry, strategy: str = "topic") -> AvroPredictionWriter:
    return AvroPredictionWriter(
        registry,  # type: ignore[arg-type]
        "http://registry.test",
        topic="predictions",
        strategy=strategy,
        models=CACHE.get,
    )


def _outputs(name: str, rows: int = 3) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """The model's own outputs on rows of its warm-up kind (zeros, empty strings)."""
    model = CACHE.get(name, CACHE.store.latest(name))
    feed = {
        t.name: np.zeros((rows, *[d or 2 for d in t.shape]), dtype=t.dtype)
        if t.datatype != "BYTES"
        else np.full((rows, *[d or 1 for d in t.shape]), "a card payment", dtype=object)
        for t in model.spec.inputs
    }
    names = list(model.output_names)
    arrays = model.session.run(names, feed)
    return model.spec, dict(zip(names, arrays, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_every_example_model_writes_avro_that_reads_back_as_its_json_prediction(
    name: str,
) -> None:
    spec, outputs = _outputs(name)
    registry = _Registry()
    ids, ts, pids = ["a", "b", "c"], [1, 2, 3], ["t/0/1/m/1", "t/0/2/m/1", "t/0/3/m/1"]
    values = _writer(registry)(spec, ids, ts, outputs, 99, pids)
    as_json = [orjson.loads(v) for v in encode_rows(spec, ids, ts, outputs, 99, pids)]

    ((subject, text),) = registry.registered
    assert subject == "predictions-value"
    parsed = parse_schema(orjson.loads(text))
    for value, expected in zip(values, as_json, strict=True):
        assert frame_schema_id(value) == 101
        read = schemaless_reader(io.BytesIO(value[5:]), parsed, parsed)
        assert isinstance(read, dict)
        present = {k: v for k, v in read.items() if v is not None}
        assert _float32(present) == _float32(expected)


def _float32(value: Any) -> Any:
    """Floats as float32: Avro's float reads back as the double of the float32 written,
    JSON writes its shortest text; both are the same float32."""
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_float32(v) for v in value]
    return np.float32(value) if isinstance(value, float) else value


def test_a_version_is_registered_once_under_the_subject_its_strategy_names() -> None:
    spec, outputs = _outputs("breast-cancer-mlp")
    for strategy, subject in [
        ("topic", "predictions-value"),
        ("record", "pipeline.prediction.breast_cancer_mlp"),
        ("topic-record", "predictions-pipeline.prediction.breast_cancer_mlp"),
    ]:
        registry = _Registry()
        writer = _writer(registry, strategy)
        for _ in range(3):
            writer(spec, ["a", "b", "c"], [1, 2, 3], outputs, 9, ["p", "q", "r"])
        assert [s for s, _ in registry.registered] == [subject]


def test_a_refused_schema_refuses_the_version_at_start_and_its_batches_later() -> None:
    spec, outputs = _outputs("breast-cancer-mlp")
    writer = _writer(_Registry(refuse=True))
    with pytest.raises(ConfigError, match="refused the prediction schema of model 'breast"):
        writer.prepare([(spec.name, spec.version)])
    for _ in range(2):  # remembered: the registry is not asked for every batch
        with pytest.raises(FrameProblem) as caught:
            writer(spec, ["a", "b", "c"], [1, 2, 3], outputs, 9, ["p", "q", "r"])
        assert caught.value.error_type == "IncompatibleSchema"
        assert "Schema being registered is incompatible" in caught.value.message


def test_names_avro_does_not_allow_are_rewritten_and_a_clash_is_refused() -> None:
    assert avro_name("breast-cancer-mlp") == "breast_cancer_mlp"
    assert avro_name("2nd:output") == "_2nd_output"
    spec = ModelSpec(name="m", version="1", n_features=2)
    schema = prediction_schema(spec, (TensorSpec("out:0", "INT8", (3, None)),))
    (field,) = schema["fields"][6]["type"]["fields"]
    assert field["name"] == "out_0"
    assert field["type"] == ["null", {"type": "array", "items": {"type": "array", "items": "int"}}]
    parse_schema(schema)
    with pytest.raises(ValueError, match="'a-b' and 'a_b' of model 'm' version '1' are both"):
        prediction_schema(spec, (TensorSpec("a-b", "FP32", ()), TensorSpec("a_b", "FP32", ())))


def test_the_schema_parses_for_every_element_type() -> None:
    spec = ModelSpec(name="m", version="1", n_features=2)
    types = ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16",
             "UINT32", "UINT64", "BOOL", "BYTES")  # fmt: skip
    tensors = tuple(TensorSpec(f"o{i}", t, ()) for i, t in enumerate(types))
    try:
        parse_schema(prediction_schema(spec, tensors, ("o0",)))
    except SchemaParseException as exc:  # pragma: no cover - the failure's message
        pytest.fail(str(exc))


def test_outputs_whose_names_avro_refuses_are_written_under_their_avro_names() -> None:
    from types import SimpleNamespace

    spec = ModelSpec(name="m", version="1", n_features=2)
    model = SimpleNamespace(
        spec=spec, outputs=(TensorSpec("out:0", "INT64", ()), TensorSpec("p", "FP64", ())),
        map_outputs=(),
    )  # fmt: skip
    registry = _Registry()
    writer = AvroPredictionWriter(
        registry,  # type: ignore[arg-type]
        "http://registry.test", topic="t", strategy="topic", models=lambda n, v: model,  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    outputs = {"out:0": np.array([3, 4], dtype=np.int64), "p": np.array([0.5, 0.25])}
    values = writer(spec, ["a", "b"], [1, 2], outputs, 9, ["x", "y"])
    parsed = parse_schema(orjson.loads(registry.registered[0][1]))
    read = [schemaless_reader(io.BytesIO(v[5:]), parsed, parsed) for v in values]
    assert [r["outputs"] for r in read] == [{"out_0": 3, "p": 0.5}, {"out_0": 4, "p": 0.25}]  # type: ignore[index]
