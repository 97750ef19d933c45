"""``--shadow-topic``: the shadow version's answers, written where a team can join them with
what was served.

Each record is a prediction document of the shadow version, as the output topic carries
for the served one (its own ``prediction_id``, ``topic/partition/offset/model/shadow
version``), plus ``served_prediction_id``: the id of the served prediction of the same
event, to join on. The record's key is the event's key.

Delivery is best effort, as everything about a shadow: a plain idempotent producer of its
own, outside the worker's transactions and offsets; a record that cannot be written is
counted as a shadow error (``ShadowTopicFailed``), never retried by re-reading the input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from confluent_kafka import Producer

from pipeline.config import WorkerConfig
from pipeline.engine.codec import prediction_documents
from pipeline.engine.engine import Engine
from pipeline.engine.shadow import ShadowRun
from pipeline.kafka.outputs import now_ms
from pipeline.metrics import Sensor

__all__ = ["ShadowTopic", "Source", "shadow_topic"]

log = logging.getLogger("pipeline.worker")

Source = Callable[[Any, int], tuple[str, int, int, str, int, bytes | None] | None]
"""Where row `row` of a submission's ticket came from: (topic, partition, offset, event id,
event time, key), or None for a ticket that is not a Kafka record's (a door's request)."""


class ShadowTopic:
    """Writes each shadow run's rows to `topic` (a `pipeline.engine.shadow.ShadowSink`).

    Args:
        topic: Where shadow predictions go.
        settings: The worker's client settings (bootstrap servers, security).
        source: Tells a ticket's row's source record (`Source`).
        sensor: Counts rows that could not be written.
    """

    def __init__(
        self, topic: str, settings: Mapping[str, Any], source: Source, sensor: Sensor
    ) -> None:
        self._topic = topic
        self._source = source
        self._sensor = sensor
        self._producer = Producer({**settings, "enable.idempotence": True, "linger.ms": 50})

    def __call__(self, run: ShadowRun) -> None:
        served, shadow = run.served.spec, run.shadow.spec
        rows = [self._source(ticket, row) for ticket, row in run.tickets]
        keep = [i for i, found in enumerate(rows) if found is not None]
        if not keep:
            return
        found = [rows[i] for i in keep]
        assert all(f is not None for f in found)
        sources = [f for f in found if f is not None]
        outputs = {name: array[keep] for name, array in run.outputs.items()}
        ids = [f"{t}/{p}/{o}/{shadow.name}/{shadow.version}" for t, p, o, *_ in sources]
        docs = prediction_documents(
            shadow, [s[3] for s in sources], [s[4] for s in sources], outputs, now_ms(), ids
        )
        for doc, (topic, partition, offset, _, _, key) in zip(docs, sources, strict=True):
            doc["served_prediction_id"] = (
                f"{topic}/{partition}/{offset}/{served.name}/{served.version}"
            )
            try:
                self._producer.produce(self._topic, orjson.dumps(doc), key,
                                       on_delivery=self._delivered(served.name, served.version,
                                                                   shadow.version))  # fmt: skip
            except BufferError:
                self._failed(served.name, served.version, shadow.version, "the queue is full")
        self._producer.poll(0)

    def _delivered(self, model: str, version: str, shadow: str) -> Callable[[Any, Any], None]:
        def done(err: Any, _msg: Any) -> None:
            if err is not None:
                self._failed(model, version, shadow, str(err))

        return done

    def _failed(self, model: str, version: str, shadow: str, reason: str) -> None:
        self._sensor.shadow_failed(model, version, shadow, "ShadowTopicFailed", 1)
        log.debug("a shadow prediction was not written to %s: %s", self._topic, reason)

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is still queued, waiting at most `timeout_s`."""
        self._producer.flush(timeout_s)


def shadow_topic(
    config: WorkerConfig,
    engine: Engine[Any],
    settings: Mapping[str, Any],
    source: Source,
    sensor: Sensor,
) -> ShadowTopic | None:
    """The writer of ``--shadow-topic``, set as the engine's shadow sink; None without one."""
    if not config.shadow_topic or engine.shadows is None:
        return None
    writer = ShadowTopic(config.shadow_topic, settings, source, sensor)
    engine.shadows.sink = writer
    return writer
