"""Micro-benchmarks: the codec's cost per event and ONNX Runtime's rows/s per batch size.

Neither needs Kafka. `bench_codec` times `EventDecoder.decode` and `encode_predictions` on
synthetic 30-feature events in poll-sized batches; `bench_inference` times each example
model in a models directory at several batch sizes on one thread, which is what makes
micro-batching worth its latency. `main` prints both as Markdown tables followed by the
project's two speed targets, each marked met or missed.

Run with ``python -m pipeline.dev.bench.micro [--quick] [--models-dir models]``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypedDict

import msgspec
import numpy as np
import onnxruntime as ort
import orjson
from fastavro import parse_schema, schemaless_reader, schemaless_writer

from pipeline.dev.bench.events import AVRO_EVENT_SCHEMA, DATASETS
from pipeline.engine.avrodecode import event_reader, record_reader
from pipeline.engine.codec import EventDecoder, ParsedEvent, encode_predictions
from pipeline.engine.framing import frame_header
from pipeline.engine.signature import Feed, TensorSpec, read_signature, zero_feed
from pipeline.engine.spec import ModelSpec, is_vector_input
from pipeline.errors import ModelNotFoundError

__all__ = [
    "CodecFigures",
    "ModelFigures",
    "bench_avro_decode",
    "bench_codec",
    "bench_inference",
    "bench_jsonschema_decode",
    "bench_parsers",
    "bench_protobuf_decode",
    "bench_typed_decode",
    "main",
]

CODEC_TARGET_US = 6.0
"""decode + encode must cost at most this many microseconds per event."""

BATCHING_TARGET = 20.0
"""The MLP must run at least this many times more rows/s at batch 256 than at batch 1."""

_N_FEATURES = 30
_POLL_SIZE = 500  # values per decode call, as the worker consumes them
_SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
_MODELS = Path(__file__).resolve().parents[3] / "models"
_WARMUP_RUNS = 3


class CodecFigures(TypedDict):
    """Median microseconds per event over the timed repetitions; `avro_decode_us`,
    `jsonschema_decode_us` and `protobuf_decode_us` are the same events' decoding as Schema
    Registry framed Avro, JSON Schema and Protobuf values (`bench_avro_decode`,
    `bench_jsonschema_decode`, `bench_protobuf_decode`); `avro_vs_json` is the median of
    per-batch ratios of Avro's decode time to JSON's, the two alternating batch by batch
    (`bench_avro_vs_json`): on a noisy machine, the figure to compare them by."""

    events: int
    decode_us: float
    encode_us: float
    total_us: float
    avro_decode_us: float
    avro_vs_json: float  # framed Avro's decode time over JSON's, batch for batch
    jsonschema_decode_us: float
    protobuf_decode_us: float
    typed_decode_us: float  # the card payments of four named, typed inputs
    parse_us: dict[str, float]  # a value's parse alone, by parser (`bench_parsers`)


class ModelFigures(TypedDict):
    """One model's median rows/s per batch size, and batch 256's speed-up over batch 1."""

    rows_per_s: dict[int, float]
    speedup_256_over_1: float | None


class _OneModelCatalog:
    """A catalog holding one spec, answering as the model store would."""

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec

    def resolve(self, name: str, version: str | None) -> ModelSpec:
        if name == self._spec.name and version in (None, self._spec.version):
            return self._spec
        raise ModelNotFoundError(f"no model {name!r} version {version!r} in the benchmark")


def _synthetic_events(n_events: int) -> list[bytes]:
    """`n_events` of the benchmark's main events (30 full-precision features, ~670 bytes)."""
    make = DATASETS["full"].maker("evt")
    base_ts = 1_732_550_400_000
    return [make(i, base_ts + i) for i in range(n_events)]


def bench_codec(n_events: int = 20000, repeats: int = 5) -> CodecFigures:
    """Time decoding and encoding the benchmark's main events (30 full-precision features).

    Args:
        n_events: Events per timed repetition, decoded in batches of 500.
        repeats: Timed repetitions (after one untimed warm-up); medians are reported.

    Returns:
        Median microseconds per event for decode, encode, and both together.
    """
    spec = ModelSpec(
        name="breast-cancer-mlp",
        version="1",
        n_features=_N_FEATURES,
        labels=("malignant", "benign"),
        probability_output="probabilities",
    )
    decoder = EventDecoder(catalog=_OneModelCatalog(spec))
    events = _synthetic_events(n_events)
    batches = [events[i : i + _POLL_SIZE] for i in range(0, n_events, _POLL_SIZE)]
    fallback = [[0] * len(batch) for batch in batches]
    probabilities = np.random.default_rng(1).dirichlet((1.0, 1.0), size=_POLL_SIZE)
    outputs = {
        "label": probabilities.argmax(axis=1).astype(np.int64),
        "probabilities": probabilities.astype(np.float32),
    }

    def run_once() -> tuple[float, float]:
        decode_s = encode_s = 0.0
        for batch, ts in zip(batches, fallback, strict=True):
            started = time.perf_counter()
            decoded = decoder.decode(batch, ts)
            decoded_at = time.perf_counter()
            for block in decoded.blocks.values():
                n = len(block.ids)
                encode_predictions(block, {k: v[:n] for k, v in outputs.items()}, 0)
            decode_s += decoded_at - started
            encode_s += time.perf_counter() - decoded_at
        return decode_s, encode_s

    run_once()
    timings = [run_once() for _ in range(repeats)]
    per_event = 1e6 / n_events
    return {
        "events": n_events,
        "decode_us": statistics.median(d for d, _ in timings) * per_event,
        "encode_us": statistics.median(e for _, e in timings) * per_event,
        "total_us": statistics.median(d + e for d, e in timings) * per_event,
        "avro_decode_us": bench_avro_decode(spec, events, repeats),
        "avro_vs_json": bench_avro_vs_json(spec, events, repeats),
        "jsonschema_decode_us": bench_jsonschema_decode(spec, events, repeats),
        "protobuf_decode_us": bench_protobuf_decode(spec, events, repeats),
        "typed_decode_us": bench_typed_decode(n_events, repeats),
        "parse_us": bench_parsers(events, repeats),
    }


def bench_parsers(events: Sequence[bytes], repeats: int) -> dict[str, float]:
    """Median us per value of parsing alone, no contract checks and no batch: `events` as
    JSON text by `orjson.loads`, and their Avro payloads (`AVRO_EVENT_SCHEMA`, no frame) by
    the reader generated for the schema and by fastavro's `schemaless_reader`."""
    parsed = parse_schema(AVRO_EVENT_SCHEMA)
    payloads = _avro_payloads(events)
    generated = record_reader(AVRO_EVENT_SCHEMA)
    events_reader = event_reader(AVRO_EVENT_SCHEMA, ParsedEvent, msgspec.UNSET)
    assert generated is not None, "the benchmark's event schema is a flat record"
    assert events_reader is not None, "the benchmark's event schema is the contract's"
    parsers: dict[str, tuple[Callable[[bytes], object], Sequence[bytes]]] = {
        "orjson.loads (JSON text)": (orjson.loads, events),
        "the generated Avro reader": (lambda payload: generated(payload, 0), payloads),
        "the generated Avro event reader (packed doubles)": (
            lambda payload: events_reader(payload, 0),
            payloads,
        ),
        "fastavro schemaless_reader": (
            lambda payload: schemaless_reader(io.BytesIO(payload), parsed, None),
            payloads,
        ),
    }

    def run_once(parse: Callable[[bytes], object], values: Sequence[bytes]) -> float:
        started = time.perf_counter()
        for i in range(0, len(values), _POLL_SIZE):  # a batch's values live at once, no more
            [parse(value) for value in values[i : i + _POLL_SIZE]]
        return time.perf_counter() - started

    figures = {}
    for name, (parse, values) in parsers.items():
        run_once(parse, values)
        timings = [run_once(parse, values) for _ in range(repeats)]
        figures[name] = statistics.median(timings) * 1e6 / len(values)
    return figures


class _OneSchemaRegistry:
    """Holds the events' Avro schema under id 1, as a registry the reader already asked."""

    def __init__(self, schema: Any) -> None:
        self._schema = schema

    def get_schema(self, schema_id: int, *_: Any) -> Any:
        return self._schema


def bench_avro_decode(spec: ModelSpec, events: Sequence[bytes], repeats: int) -> float:
    """Median us per event of decoding `events` framed as Avro values (schema id 1, the
    benchmark's `AVRO_EVENT_SCHEMA`) through `EventDecoder` and `RegistryReader`, with the
    schema already fetched: what the worker spends per value once its cache is warm."""
    framed = [frame_header(1) + payload for payload in _avro_payloads(events)]
    return _framed_decode(spec, framed, "avro", orjson.dumps(AVRO_EVENT_SCHEMA), repeats)


def bench_avro_vs_json(spec: ModelSpec, events: Sequence[bytes], repeats: int) -> float:
    """The median over batches of (framed Avro's decode time / JSON text's) for the same
    500 events, the two decoded one after the other, batch by batch, `repeats` times: what
    the machine does to one it does to the other."""
    json_decoder = EventDecoder(catalog=_OneModelCatalog(spec))
    framed = [frame_header(1) + payload for payload in _avro_payloads(events)]
    avro_decoder = _framed_decoder(spec, "avro", orjson.dumps(AVRO_EVENT_SCHEMA))
    ratios: list[float] = []
    for round_ in range(repeats + 1):  # round 0 warms both up, untimed
        for i in range(0, len(events), _POLL_SIZE):
            text, frames = events[i : i + _POLL_SIZE], framed[i : i + _POLL_SIZE]
            zeros = [0] * len(text)
            started = time.perf_counter()
            json_decoder.decode(text, zeros)
            between = time.perf_counter()
            avro_decoder.decode(frames, zeros)
            if round_:
                ratios.append((time.perf_counter() - between) / (between - started))
    return statistics.median(ratios)


def _avro_payloads(events: Sequence[bytes]) -> list[bytes]:
    """`events` (JSON text) written as `AVRO_EVENT_SCHEMA` records, without a frame."""
    parsed = parse_schema(AVRO_EVENT_SCHEMA)
    payloads = []
    for value in events:
        buffer = io.BytesIO()
        schemaless_writer(buffer, parsed, orjson.loads(value))
        payloads.append(buffer.getvalue())
    return payloads


def bench_jsonschema_decode(spec: ModelSpec, events: Sequence[bytes], repeats: int) -> float:
    """The same for `events` framed as JSON Schema values (schema id 1, the event
    contract's `schemas/feature-event.schema.json`): the frame, then the JSON text."""
    framed = [frame_header(1) + value for value in events]
    schema = (_SCHEMAS / "feature-event.schema.json").read_bytes()
    return _framed_decode(spec, framed, "jsonschema", schema, repeats)


def bench_protobuf_decode(spec: ModelSpec, events: Sequence[bytes], repeats: int) -> float:
    """The same for `events` framed as Protobuf values (schema id 1, the event contract's
    `schemas/feature-event.proto` as text, as a Java producer registers it): the frame, the
    message index 0, then the message."""
    from google.protobuf import json_format

    from pipeline.protoschema import FIRST_MESSAGE, compile_schema

    schema = (_SCHEMAS / "feature-event.proto").read_bytes()
    message = compile_schema(schema.decode()).message_class([0])
    header = frame_header(1) + FIRST_MESSAGE
    framed = [
        header + json_format.ParseDict(orjson.loads(value), message()).SerializeToString()
        for value in events
    ]
    return _framed_decode(spec, framed, "protobuf", schema, repeats)


def _framed_decode(
    spec: ModelSpec, framed: Sequence[bytes], value_format: str, schema: bytes, repeats: int
) -> float:
    """Median us per value of decoding `framed` (schema id 1, of `value_format`'s type)."""
    return _decode_us(_framed_decoder(spec, value_format, schema), framed, repeats)


def _decode_us(decoder: EventDecoder, values: Sequence[bytes], repeats: int) -> float:
    """Median us per value of decoding `values` in poll-sized batches, none refused."""
    batches = [values[i : i + _POLL_SIZE] for i in range(0, len(values), _POLL_SIZE)]

    def run_once() -> float:
        started = time.perf_counter()
        for batch in batches:
            decoded = decoder.decode(batch, [0] * len(batch))
            assert not decoded.rejects, decoded.rejects[:1]
        return time.perf_counter() - started

    run_once()
    return statistics.median(run_once() for _ in range(repeats)) * 1e6 / len(values)


def _framed_decoder(spec: ModelSpec, value_format: str, schema: bytes) -> EventDecoder:
    """A decoder of values framed with schema id 1 (`schema`, of `value_format`'s type)."""
    from confluent_kafka.schema_registry import Schema

    from pipeline.schemaregistry import RegistryReader

    kind = {"avro": "AVRO", "jsonschema": "JSON", "protobuf": "PROTOBUF"}[value_format]
    registry = _OneSchemaRegistry(Schema(schema.decode(), kind))
    reader = RegistryReader(registry, "in memory", (kind,))  # type: ignore[arg-type]
    return EventDecoder(catalog=_OneModelCatalog(spec), value_format=value_format, framed=reader)


def _single_thread_session(model_file: Path) -> Any:
    """Open `model_file` the way one worker thread runs it: one thread, sequential."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(
        str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _rows_per_second(session: Any, feed: dict[str, np.ndarray[Any, Any]], seconds: float) -> float:
    """Median rows/s of ``session.run(None, feed)`` over five timed slices of `seconds`."""
    batch_size = len(next(iter(feed.values())))
    for _ in range(_WARMUP_RUNS):
        session.run(None, feed)
    rates = []
    for _ in range(5):
        calls = 0
        started = now = time.perf_counter()
        deadline = started + seconds / 5
        while now < deadline:
            session.run(None, feed)
            calls += 1
            now = time.perf_counter()
        rates.append(calls * batch_size / (now - started))
    return statistics.median(rates)


def bench_inference(
    models_dir: Path,
    batch_sizes: Sequence[int] = (1, 8, 64, 256, 1024),
    seconds_per_point: float = 1.0,
) -> dict[str, ModelFigures]:
    """Time every ``models_dir/<name>/1/model.onnx`` at each batch size, on one thread.

    Args:
        models_dir: The model store's root directory.
        batch_sizes: Rows per `InferenceSession.run` call.
        seconds_per_point: Time spent timing each (model, batch size) pair.

    Returns:
        Model name -> its figures; empty if no model is there yet.
    """
    rng = np.random.default_rng(0)
    results: dict[str, ModelFigures] = {}
    for model_file in sorted(models_dir.glob("*/1/model.onnx")):
        session = _single_thread_session(model_file)
        inputs = read_signature(str(model_file), session.get_inputs(), ()).inputs
        rates = {
            size: _rows_per_second(session, _feed(inputs, size, rng), seconds_per_point)
            for size in batch_sizes
        }
        speedup = rates[256] / rates[1] if 256 in rates and 1 in rates else None
        results[model_file.parent.parent.name] = {
            "rows_per_s": rates,
            "speedup_256_over_1": speedup,
        }
    return results


def _feed(inputs: Sequence[TensorSpec], rows: int, rng: np.random.Generator) -> Feed:
    """Rows to time a model on: standard-normal features for a vector model, zeros (empty
    strings) of each input's type and shape for any other."""
    if not is_vector_input(tuple(inputs)):
        return zero_feed(inputs, rows)
    (vector,) = inputs
    width = vector.shape[0] or _N_FEATURES
    return {vector.name: rng.standard_normal((rows, width)).astype(vector.dtype)}


def bench_typed_decode(n_events: int, repeats: int) -> float:
    """Median microseconds per event decoding the benchmark's typed card payments (four
    named inputs of one value each: float64, int64 and two strings) in batches of 500."""
    model_file = _MODELS / "card-fraud" / "1" / "model.onnx"
    inputs = read_signature(str(model_file), _single_thread_session(model_file).get_inputs(), ())
    spec = ModelSpec(name="card-fraud", version="1", inputs=inputs.inputs)
    decoder = EventDecoder(catalog=_OneModelCatalog(spec), default_model="card-fraud")
    make = DATASETS["typed"].maker("pay")
    events = [make(i, 1_732_550_400_000 + i) for i in range(n_events)]
    rejects = decoder.decode(events[:_POLL_SIZE], [0] * min(n_events, _POLL_SIZE)).rejects
    if rejects:  # the figure would time refusals, not decoding
        raise RuntimeError(f"the card payments do not fit {model_file}: {rejects[0]}")
    return _decode_us(decoder, events, repeats)


def _codec_table(figures: CodecFigures) -> list[str]:
    """The codec figures as a Markdown table."""
    return [
        f"Codec: {figures['events']} synthetic 30-feature array events, "
        f"decoded in batches of {_POLL_SIZE} (median us/event)",
        "",
        "| step | us/event |",
        "| --- | ---: |",
        f"| decode | {figures['decode_us']:.2f} |",
        f"| encode | {figures['encode_us']:.2f} |",
        f"| decode + encode | {figures['total_us']:.2f} |",
        f"| decode, the same events as framed Avro | {figures['avro_decode_us']:.2f} |",
        f"| framed Avro's decode time / JSON's, alternating batches (ratio) | "
        f"{figures['avro_vs_json']:.2f} |",
        f"| decode, the same events as framed JSON Schema | "
        f"{figures['jsonschema_decode_us']:.2f} |",
        f"| decode, the same events as framed Protobuf | {figures['protobuf_decode_us']:.2f} |",
        f"| decode, card payments of 4 typed inputs (float64, int64, 2 strings) | "
        f"{figures['typed_decode_us']:.2f} |",
        *(f"| parse alone: {name} | {us:.2f} |" for name, us in figures["parse_us"].items()),
    ]


def _inference_table(results: dict[str, ModelFigures], batch_sizes: Sequence[int]) -> list[str]:
    """The inference figures as a Markdown table (rows/s per batch size)."""
    if not results:
        return ["ONNX Runtime: no models/<name>/1/model.onnx found; skipped."]
    header = " | ".join(f"batch {b}" for b in batch_sizes)
    lines = [
        "ONNX Runtime, 1 intra-op thread, sequential (median rows/s)",
        "",
        f"| model | {header} | 256 vs 1 |",
        "| --- |" + " ---: |" * (len(batch_sizes) + 1),
    ]
    for name, figures in results.items():
        rates = " | ".join(f"{figures['rows_per_s'][b]:,.0f}" for b in batch_sizes)
        speedup = figures["speedup_256_over_1"]
        lines.append(f"| {name} | {rates} | {'-' if speedup is None else f'{speedup:.1f}x'} |")
    return lines


def _target_lines(codec: CodecFigures, results: dict[str, ModelFigures]) -> list[str]:
    """One line per speed target: met, missed, or not measured."""
    total = codec["total_us"]
    lines = [
        f"decode+encode <= {CODEC_TARGET_US:g} us/event: "
        f"{'met' if total <= CODEC_TARGET_US else 'missed'} ({total:.2f} us)"
    ]
    ratio = codec["avro_vs_json"]
    lines.append(
        f"framed Avro decode <= JSON's: {'met' if ratio <= 1.0 else 'missed'} ({ratio:.2f} x)"
    )
    mlp = next((name for name in sorted(results) if "mlp" in name), None)
    speedup = results[mlp]["speedup_256_over_1"] if mlp else None
    target = f"MLP batch 256 >= {BATCHING_TARGET:g}x batch 1"
    if speedup is None:
        lines.append(f"{target}: not measured (no MLP model timed at batch 1 and 256)")
    else:
        verdict = "met" if speedup >= BATCHING_TARGET else "missed"
        lines.append(f"{target}: {verdict} ({speedup:.1f} x, {mlp})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Run both benchmarks and print their tables and the target lines.

    Args:
        argv: Command-line arguments; None means ``sys.argv[1:]``.

    Returns:
        The exit status, 0.
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.dev.bench.micro", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer events, shorter timings")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="model store")
    args = parser.parse_args(argv)
    batch_sizes = (1, 8, 64, 256, 1024)
    if args.quick:
        codec = bench_codec(n_events=4000, repeats=3)
        inference = bench_inference(args.models_dir, batch_sizes, seconds_per_point=0.2)
    else:
        codec = bench_codec()
        inference = bench_inference(args.models_dir, batch_sizes)
    lines = [
        *_codec_table(codec),
        "",
        *_inference_table(inference, batch_sizes),
        "",
        *_target_lines(codec, inference),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
