"""The naive peer: one event at a time, the way a first attempt or the usual example does it.

Poll one record, decode its JSON, run the model on one row, produce the prediction, and
store the input offset once the broker acknowledges it (committed every
``commit_interval_ms``). It is at-least-once like the worker; what it lacks is batching:
every event pays a poll, a model call and a produce of its own.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import orjson

from pipeline.dev.bench.peers.common import (
    Model,
    encode,
    kafka_clients,
    parse_peer_args,
    prediction,
    stop_flag,
    store_after_delivery,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Predict event by event until `--count` events or SIGTERM; return 0."""
    args = parse_peer_args("python -m pipeline.dev.bench.peers.naive", __doc__ or "", argv)
    stop = stop_flag()
    model = Model(args.model_dir)
    consumer, producer = kafka_clients(args)
    consumer.subscribe([args.input])
    consumed = 0
    while not stop.is_set() and (args.count is None or consumed < args.count):
        msg = consumer.poll(0.1)
        if msg is None or msg.error() is not None:
            continue
        event = orjson.loads(msg.value() or b"null")
        labels, probabilities = model.predict(np.asarray([event["features"]], dtype=np.float32))
        ts = event.get("ts", msg.timestamp()[1])
        value = encode(prediction(model, event["id"], ts, labels[0], probabilities[0]))
        on_delivery = functools.partial(store_after_delivery, "naive", consumer, msg)
        while True:
            try:
                producer.produce(args.output, value, msg.key(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        consumed += 1
    producer.flush(30)
    consumer.close()  # commits the stored offsets
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
