"""The benchmark's events: the sizes users send, built cheaply enough for an open loop.

Three sets, each an event ``{"id", "model", "ts", "features"}`` keyed by one of 1,000
entity ids:

- ``full``: the breast cancer rows (30 features) with 1% measurement noise, written as
  full-precision doubles, as most producers write them (about 670 bytes). The main case.
- ``rounded``: the same rows rounded to 5 decimals (about 330 bytes), what the benchmark
  sent before: half the bytes for the same rows, to show what the size costs.
- ``wide``: 200 standard-normal features at full precision for the ``wide-mlp`` model
  (about 4,000 bytes): a feature-store-sized event.
- ``typed``: a card payment for the ``card-fraud`` model, its four named, typed inputs
  (``amount`` float64, ``hour`` int64, ``country`` and ``channel`` strings; about 130
  bytes): what typed decoding costs per event.
- ``avro``: the ``full`` events written as Schema Registry framed Avro values of
  `AVRO_EVENT_SCHEMA` (about 290 bytes: doubles take 8 bytes, not ~20 characters), as a
  producer using Confluent's ``AvroSerializer`` sends them. The suite frames them with a
  registry it starts; `Dataset.maker` gives their JSON form.

Rows are drawn once per set from a fixed seed (569 distinct rows, cycled), so every run
and every contender gets the same bytes.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastavro import parse_schema, schemaless_writer

from pipeline.dev.tools import _sample_rows, feature_event_schema
from pipeline.engine.framing import FRAME_HEADER_BYTES

__all__ = ["AVRO_EVENT_SCHEMA", "DATASETS", "Dataset", "dataset"]

AVRO_EVENT_SCHEMA: dict[str, Any] = feature_event_schema()
"""The ``avro`` set's schema: ``schemas/feature-event.avsc``, features an array of doubles."""

_DISTINCT_ROWS = 569  # the breast cancer data set's rows
_SEED = 0


@dataclass(frozen=True, slots=True)
class Dataset:
    """One set of benchmark events.

    Attributes:
        key: ``full``, ``rounded``, ``wide``, ``typed`` or ``avro``.
        label: What the table shows.
        model: The model the events name.
        avro: Sent as framed Avro values of `AVRO_EVENT_SCHEMA`, not as JSON text.
    """

    key: str
    label: str
    model: str
    avro: bool = False

    def maker(self, tag: str) -> Callable[[int, int], bytes]:
        """Return ``make(n, ts)``: the bytes of event ``<tag>-<n>`` stamped `ts` (ms)."""
        rows = _rows(self.key)
        head = f'{{"id":"{tag}-'.encode()
        middle = f'","model":"{self.model}","ts":'.encode()

        def make(n: int, ts: int) -> bytes:
            return b"".join(
                (head, str(n).encode(), middle, str(ts).encode(), b',"features":',
                 rows[n % len(rows)], b"}")
            )  # fmt: skip

        return make

    def events(self, tag: str, count: int, ts: int) -> Iterator[tuple[bytes, bytes]]:
        """Yield `count` ``(key, value)`` events ``<tag>-<n>``, all stamped `ts`."""
        make = self.maker(tag)
        for n in range(count):
            yield f"entity-{n % 1000}".encode(), make(n, ts)

    def mean_bytes(self) -> float:
        """The mean size of an event's value (key excluded), in bytes."""
        make = self.maker("0123abcd")
        values = [make(n, 1_764_000_000_000 + n) for n in range(_DISTINCT_ROWS)]
        if self.avro:  # the 5-byte frame (magic byte, schema id), then the payload
            parsed = parse_schema(AVRO_EVENT_SCHEMA)
            sizes = [FRAME_HEADER_BYTES + len(_avro_payload(parsed, v)) for v in values]
        else:
            sizes = [len(v) for v in values]
        return sum(sizes) / len(sizes)


def _avro_payload(parsed: Any, value: bytes) -> bytes:
    buffer = io.BytesIO()
    schemaless_writer(buffer, parsed, orjson.loads(value))
    return buffer.getvalue()


@functools.cache
def _rows(key: str) -> tuple[bytes, ...]:
    """The JSON arrays of one set's distinct rows."""
    rng = np.random.default_rng(_SEED)
    if key == "typed":
        return tuple(orjson.dumps(payment) for payment in _payments(rng))
    if key == "avro":
        return _rows("full")
    if key == "wide":
        matrix = rng.standard_normal((_DISTINCT_ROWS, 200))
    else:
        base = np.asarray(_sample_rows(), dtype=np.float64)
        matrix = base * (1.0 + rng.normal(0.0, 0.01, base.shape))
        if key == "rounded":
            matrix = np.round(matrix, 5)
    return tuple(orjson.dumps(row.tolist()) for row in matrix)


def _payments(rng: np.random.Generator) -> list[dict[str, object]]:
    """Card payments as the ``card-fraud`` example model takes them, one per distinct row."""
    amounts = np.round(rng.lognormal(3.5, 1.0, _DISTINCT_ROWS), 2).tolist()
    hours = rng.integers(0, 24, _DISTINCT_ROWS).tolist()
    countries = rng.choice(["DE", "FR", "GB", "US", "NL", "BR"], _DISTINCT_ROWS).tolist()
    channels = rng.choice(["web", "pos", "app"], _DISTINCT_ROWS).tolist()
    return [
        {"amount": a, "hour": h, "country": c, "channel": ch}
        for a, h, c, ch in zip(amounts, hours, countries, channels, strict=True)
    ]


DATASETS: dict[str, Dataset] = {
    d.key: d
    for d in (
        Dataset("full", "30 features, full-precision doubles", "breast-cancer-mlp"),
        Dataset("rounded", "30 features, rounded to 5 decimals", "breast-cancer-mlp"),
        Dataset("wide", "200 features, full-precision doubles", "wide-mlp"),
        Dataset(
            "typed", "a card payment: 4 typed inputs (float64, int64, 2 strings)", "card-fraud"
        ),
        Dataset(
            "avro",
            "30 features, full-precision doubles, Avro (Schema Registry framed)",
            "breast-cancer-mlp",
            avro=True,
        ),
    )
}


def dataset(key: str) -> Dataset:
    """The set named `key` (``full``, ``rounded``, ``wide``, ``typed`` or ``avro``)."""
    return DATASETS[key]
