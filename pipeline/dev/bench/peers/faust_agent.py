"""The Faust peer: a faust-streaming agent that micro-batches with ``stream.take_events``.

The agent buffers up to 256 events or 5 ms (``take_events`` is ``take`` with the events,
so keys and record timestamps stay at hand), decodes each value's JSON, runs the model
once on the batch, and sends one prediction per event with ``topic.send``, keyed like
the input. This is the usual Faust pattern and its trap: ``take_events`` acknowledges a
batch's events in a ``finally``, so a batch whose inference or send raised is committed
all the same, and ``topic.send`` returns before the broker acknowledges. Faust flushes its
producer before every offset commit, so with nothing failing no output is lost; but on a
failure this peer is *not* at-least-once (`pipeline.faust.predict_agent` is).

Faust's Kafka client is aiokafka, so the peer's librdkafka settings are mapped onto
Faust's own (`faust_settings`); aiokafka's idempotent producer is only switched on in
Faust's exactly-once mode, so this peer runs with ``acks=all`` without idempotence.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson

from pipeline.dev.bench.peers.common import Model, PeerArgs, encode, parse_peer_args, prediction

__all__ = ["build_app", "faust_app", "faust_settings", "main", "run_app"]

MAX_BATCH = 256
WITHIN_S = 0.005


def faust_settings(args: PeerArgs) -> dict[str, Any]:
    """The shared client settings in Faust's terms (aiokafka underneath)."""
    producer, consumer = args.producer, args.consumer
    return {
        "producer_acks": -1 if str(producer.get("acks", "all")) in ("all", "-1") else 1,
        "producer_linger": float(producer.get("linger.ms", 5)) / 1000,
        "producer_max_batch_size": int(producer.get("batch.size", 16384)),
        "producer_compression_type": None,
        "consumer_max_fetch_size": int(consumer.get("max.partition.fetch.bytes", 1048576)),
        "consumer_auto_offset_reset": consumer.get("auto.offset.reset", "earliest"),
        "broker_commit_interval": args.commit_interval_ms / 1000,
        "broker_commit_every": 10_000_000,  # commit on the interval, as the others do
    }


def faust_app(args: PeerArgs, datadir: str) -> Any:
    """A Faust app with the shared settings and no agent yet, its local state in `datadir`."""
    import faust

    return faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        datadir=datadir,
        topic_partitions=4,
        topic_replication_factor=1,
        **faust_settings(args),
    )


def run_app(build: Callable[[str], Any]) -> None:
    """Run the app `build` makes (given a temporary data directory) until SIGTERM."""
    from faust.worker import Worker

    with tempfile.TemporaryDirectory(prefix="faust-bench-") as datadir:
        Worker(build(datadir), loglevel=logging.WARNING, quiet=True).execute_from_commandline()


def build_app(args: PeerArgs, model: Model, datadir: str) -> Any:
    """The Faust app with its one agent, keeping its local state in `datadir`."""
    app = faust_app(args, datadir)
    source = app.topic(args.input, key_serializer="raw", value_serializer="raw")
    sink = app.topic(args.output, key_serializer="raw", value_serializer="raw")
    done = 0

    @app.agent(source)  # type: ignore[untyped-decorator,unused-ignore]
    async def predict(stream: Any) -> None:
        nonlocal done
        async for batch in stream.take_events(MAX_BATCH, within=WITHIN_S):
            events = [orjson.loads(e.value) for e in batch]
            rows = np.asarray([e["features"] for e in events], dtype=np.float32)
            labels, probabilities = model.predict(rows)
            for record, event, label, probs in zip(
                batch, events, labels, probabilities, strict=True
            ):
                ts = event.get("ts", int(record.message.timestamp * 1000))
                doc = prediction(model, event["id"], ts, label, probs)
                await sink.send(key=record.key, value=encode(doc))
            done += len(batch)
            if args.count is not None and done >= args.count:
                os.kill(os.getpid(), signal.SIGTERM)  # a clean stop: flush, commit, exit

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run the Faust worker until `--count` events are done or SIGTERM; return 0."""
    args = parse_peer_args("python -m pipeline.dev.bench.peers.faust_agent", __doc__ or "", argv)
    model = Model(args.model_dir)
    run_app(lambda datadir: build_app(args, model, datadir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
