"""The Kafka client settings each contender runs with: its own best, said in the table.

A ceiling is the best the machine can do, so it must not run with a contender's
settings, and a contender must not run with a ceiling's:

- ``pipeline run`` runs with its own defaults, as users get it (only ``--offset-reset
  earliest``, to read the pre-loaded backlog). `WORKER_SETTINGS` says what they are.
- The relay ceiling runs twice, with librdkafka's defaults and with settings tuned for
  moving bytes (larger batches and fetches, no fetch back-off); the table shows both and
  the ratio uses the faster. Both keep the worker's guarantee: ``acks=all`` and the
  idempotent producer, offsets stored only after delivery.
- The peers (naive, Faust, Quix) run with librdkafka's defaults and the worker's
  guarantee (``acks=all``, idempotence), committing every second: what a team writing
  one would start from.

A peer or the relay gets its settings as one JSON object (``--client-settings``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "LOAD_PRODUCER",
    "PEER_SETTINGS",
    "RELAY_SETTINGS",
    "WORKER_SETTINGS",
    "as_json",
    "describe",
]

_GUARANTEE: Final[Mapping[str, Any]] = {"acks": "all", "enable.idempotence": True}

PEER_SETTINGS: Final[Mapping[str, Any]] = {
    "producer": dict(_GUARANTEE),
    "consumer": {"auto.offset.reset": "earliest"},
    "commit_interval_ms": 1000,
}
"""librdkafka's defaults with the worker's guarantee."""

RELAY_SETTINGS: Final[Mapping[str, Mapping[str, Any]]] = {
    "defaults": PEER_SETTINGS,
    "tuned": {
        "producer": {
            **_GUARANTEE,
            "linger.ms": 20,
            "batch.size": 4_000_000,
            "batch.num.messages": 100_000,
            "queue.buffering.max.messages": 500_000,
        },
        "consumer": {
            "auto.offset.reset": "earliest",
            "queued.max.messages.kbytes": 262_144,
            "fetch.queue.backoff.ms": 0,
            "max.partition.fetch.bytes": 8_388_608,
            "fetch.max.bytes": 67_108_864,
        },
        "commit_interval_ms": 1000,
    },
}
"""The relay's two runs: librdkafka's defaults, and tuned for throughput."""

WORKER_SETTINGS: Final[Mapping[str, Any]] = {
    "producer": {**_GUARANTEE, "linger.ms": 2, "queue.buffering.max.messages": 200_000},
    "consumer": {
        "auto.offset.reset": "earliest",
        "queued.max.messages.kbytes": "from --max-in-flight (16-128 MiB)",
        "fetch.queue.backoff.ms": 10,
    },
    "commit_interval_ms": 100,
}
"""What ``pipeline run`` sets by itself (for the report; it is given none of these)."""

LOAD_PRODUCER: Final[Mapping[str, Any]] = {
    **_GUARANTEE,
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
}
"""The producer that pre-loads topics and drives the open loop: not a contender."""


def as_json(settings: Mapping[str, Any]) -> str:
    """`settings` as the JSON a peer takes with ``--client-settings``."""
    return json.dumps(settings)


def describe(settings: Mapping[str, Any]) -> str:
    """A short line for the table: every property that is not librdkafka's default."""
    parts = [f"{k}={v}" for role in ("producer", "consumer") for k, v in settings[role].items()]
    parts.append(f"commit every {settings['commit_interval_ms']} ms")
    return ", ".join(parts)
