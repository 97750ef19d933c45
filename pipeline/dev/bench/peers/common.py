"""What the peer programs share: their command line, the model, and the prediction document.

A peer gets the benchmark's client settings as one JSON object (``--client-settings``,
made from `pipeline.dev.bench.runner.CLIENT_SETTINGS`), so every contender runs with the
same Kafka settings.
The model runs as the worker runs it: one ONNX Runtime session, one intra-op thread,
sequential execution. The prediction document has the worker's fields, so every peer
publishes the same bytes per event (up to float formatting).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson
from confluent_kafka import Consumer, KafkaException, Message, Producer

__all__ = [
    "Model",
    "PeerArgs",
    "encode",
    "kafka_clients",
    "parse_peer_args",
    "prediction",
    "stop_flag",
]

_DEFAULT_MODELS = Path(__file__).resolve().parents[4] / "models"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerArgs:
    """A peer's command line.

    Attributes:
        bootstrap: Kafka bootstrap servers.
        input: Topic of feature events.
        output: Topic for predictions (or relayed values).
        group: Consumer group id.
        count: Stop after this many events are done; None means run until signalled.
        producer: librdkafka producer properties shared by every contender.
        consumer: librdkafka consumer properties shared by every contender.
        commit_interval_ms: How often stored offsets are committed.
        model_dir: Directory holding the model's ``model.onnx`` and ``model.json``.
        dlq: Topic for dead letters, for the peers that write them; None otherwise.
    """

    bootstrap: str
    input: str
    output: str
    group: str
    count: int | None
    producer: dict[str, Any]
    consumer: dict[str, Any]
    commit_interval_ms: int
    model_dir: Path
    dlq: str | None = None


def parse_peer_args(prog: str, description: str, argv: Sequence[str] | None) -> PeerArgs:
    """Parse a peer's command line.

    Args:
        prog: The program name shown in help.
        description: What the peer does.
        argv: Arguments; None means ``sys.argv[1:]``.

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--input", required=True, help="topic of feature events")
    parser.add_argument("--output", required=True, help="topic for the outputs")
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--count", type=int, default=None, help="stop after N events are done")
    parser.add_argument(
        "--client-settings",
        default="{}",
        help='JSON: {"producer": {...}, "consumer": {...}, "commit_interval_ms": N}',
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=_DEFAULT_MODELS / "breast-cancer-mlp" / "1",
        help="directory with model.onnx and model.json (default: the example MLP)",
    )
    parser.add_argument("--dlq", default=None, help="topic for dead letters (if the peer has any)")
    args = parser.parse_args(argv)
    settings: dict[str, Any] = json.loads(args.client_settings)
    return PeerArgs(
        bootstrap=args.bootstrap,
        input=args.input,
        output=args.output,
        group=args.group,
        count=args.count,
        producer=dict(settings.get("producer", {})),
        consumer=dict(settings.get("consumer", {})),
        commit_interval_ms=int(settings.get("commit_interval_ms", 1000)),
        model_dir=args.model_dir,
        dlq=args.dlq,
    )


class Model:
    """The example classifier, run as the worker runs it (one thread, sequential).

    Args:
        model_dir: Directory with ``model.onnx`` and its ``model.json`` manifest.
    """

    def __init__(self, model_dir: Path) -> None:
        manifest = json.loads((model_dir / "model.json").read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(
            str(model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self.labels: list[str] = list(manifest["labels"])
        self.name = model_dir.parent.name
        self.version = model_dir.name

    def predict(self, rows: np.ndarray[Any, Any]) -> tuple[list[int], list[list[float]]]:
        """Run the model on a float32 matrix; return each row's label index and probabilities."""
        labels, probabilities = self._session.run(None, {self._input: rows})
        return labels.tolist(), probabilities.tolist()


def prediction(
    model: Model, event_id: str, ts: int, label: int, probabilities: list[float]
) -> dict[str, Any]:
    """The prediction document the worker publishes, for one event."""
    best = max(range(len(probabilities)), key=probabilities.__getitem__)
    return {
        "id": event_id,
        "model": model.name,
        "version": model.version,
        "label": model.labels[best],
        "score": probabilities[best],
        "outputs": {"label": label, "probabilities": probabilities},
        "ts": ts,
        "predicted_at": time.time_ns() // 1_000_000,
    }


def encode(document: dict[str, Any]) -> bytes:
    """The document as JSON bytes."""
    return orjson.dumps(document)


def stop_flag() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a peer's loop to check."""
    flag = threading.Event()

    def _set(_signum: int, _frame: FrameType | None) -> None:
        flag.set()

    signal.signal(signal.SIGTERM, _set)
    signal.signal(signal.SIGINT, _set)
    return flag


def kafka_clients(args: PeerArgs) -> tuple[Consumer, Producer]:
    """A consumer that commits only the offsets the peer stores, and a producer.

    Offsets are stored by the peer after the output they paid for is delivered, and
    committed every ``commit_interval_ms`` and on close.
    """
    consumer = Consumer(
        {
            **args.consumer,
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": args.commit_interval_ms,
            "enable.auto.offset.store": False,
        }
    )
    producer = Producer({**args.producer, "bootstrap.servers": args.bootstrap})
    return consumer, producer


def store_after_delivery(
    peer: str, consumer: Consumer, source: Message, err: object, _: Message
) -> None:
    """Delivery callback: store `source`'s offset only once its output is acknowledged."""
    if err is not None:
        raise SystemExit(f"{peer}: delivery failed: {err}")  # never store past a lost output
    # KafkaException: the partition was revoked meanwhile; its new owner redoes the record.
    with contextlib.suppress(KafkaException):
        consumer.store_offsets(message=source)
