"""The Quix Streams peer: an `Application` with one `StreamingDataFrame`, per message.

The dataframe deserialises each value as JSON (Quix's own deserialiser), applies a
function that runs the model on that one row (Quix has no micro-batching of its own),
and sends the prediction to the output topic with ``to_topic``, keyed like the input.
Quix's checkpoints flush the producer before committing offsets, so it is
at-least-once too; the checkpoint interval is the shared ``commit_interval_ms``.

Quix Streams pins confluent-kafka below the worker's version, so the benchmark runs this
peer in a virtualenv of its own (see `pipeline.dev.bench.contenders`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.dev.bench.peers.common import Model, PeerArgs, parse_peer_args, prediction

__all__ = ["main", "quix_configs"]

# Properties Quix sets itself, or takes as constructor arguments instead.
_OWNED_BY_QUIX = ("auto.offset.reset", "enable.auto.commit", "enable.auto.offset.store")


def quix_configs(args: PeerArgs) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shared librdkafka settings as Quix's producer and consumer extra configs."""
    consumer = {k: v for k, v in args.consumer.items() if k not in _OWNED_BY_QUIX}
    return dict(args.producer), consumer


def main(argv: Sequence[str] | None = None) -> int:
    """Run the application until `--count` outputs or SIGTERM; return 0."""
    from quixstreams import Application  # type: ignore[import-not-found,unused-ignore]

    args = parse_peer_args("python -m pipeline.dev.bench.peers.quix_app", __doc__ or "", argv)
    model = Model(args.model_dir)
    producer_config, consumer_config = quix_configs(args)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset=args.consumer.get("auto.offset.reset", "earliest"),
        commit_interval=args.commit_interval_ms / 1000,
        producer_extra_config=producer_config,
        consumer_extra_config=consumer_config,
        auto_create_topics=False,
        loglevel=logging.WARNING,
    )
    source = app.topic(args.input, key_deserializer="bytes", value_deserializer="json")
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="json")

    def predict(event: dict[str, Any], _key: Any, timestamp: int, _headers: Any) -> dict[str, Any]:
        row = np.asarray([event["features"]], dtype=np.float32)
        labels, probabilities = model.predict(row)
        ts = event.get("ts", timestamp)
        return prediction(model, event["id"], ts, labels[0], probabilities[0])

    sdf = app.dataframe(source)
    sdf = sdf.apply(predict, metadata=True)
    sdf.to_topic(sink)
    app.run(count=args.count or 0, collect=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
