"""The relay ceiling: consume -> produce the raw values, no decoding, no model.

What a consume-produce loop costs on this broker with these client settings: records
are taken in batches of up to 1,000, each value is produced unchanged with its key, and
its input offset is stored once the broker acknowledges it (committed every
``commit_interval_ms``). Nothing the worker does beyond moving bytes is here, so the
worker's throughput can be read as a fraction of this one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from pipeline.dev.bench.peers.common import (
    kafka_clients,
    parse_peer_args,
    stop_flag,
    store_after_delivery,
)

__all__ = ["main"]

_BATCH = 1000


def main(argv: Sequence[str] | None = None) -> int:
    """Relay records until `--count` are delivered or SIGTERM; return 0."""
    args = parse_peer_args("python -m pipeline.dev.bench.peers.relay", __doc__ or "", argv)
    stop = stop_flag()
    consumer, producer = kafka_clients(args)
    consumer.subscribe([args.input])
    consumed = 0
    limit = args.count if args.count is not None else float("inf")
    while not stop.is_set() and consumed < limit:
        first = consumer.poll(0.1)  # then whatever else is already fetched, as the worker does
        if first is None:
            continue
        wanted = int(min(_BATCH, limit - consumed)) - 1
        more = consumer.consume(wanted, 0) if wanted > 0 else []
        for msg in [first, *more]:
            if msg.error() is not None:
                continue
            on_delivery = functools.partial(store_after_delivery, "relay", consumer, msg)
            while True:
                try:
                    producer.produce(args.output, msg.value(), msg.key(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            consumed += 1
        producer.poll(0)
    producer.flush(30)
    consumer.close()  # commits the stored offsets
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
