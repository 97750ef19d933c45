"""Kafka client settings and topic set-up shared by the worker and the command-line tools."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pipeline.errors import BrokerUnreachable, KafkaError

__all__ = ["admin_client", "ensure_topics"]

log = logging.getLogger("pipeline.topics")
_CONNECT_TIMEOUT_S = 15.0


def admin_client(bootstrap_servers: str, kafka: Mapping[str, str]) -> AdminClient:
    """An AdminClient with the user's librdkafka properties (SASL, TLS) applied."""
    settings: dict[str, Any] = {**kafka, "bootstrap.servers": bootstrap_servers}
    return AdminClient(settings)


def ensure_topics(
    admin: AdminClient,
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    create: bool,
    partitions: int,
) -> dict[str, int]:
    """Check the topics exist, creating the missing ones; return each topic's partition count.

    Raises:
        BrokerUnreachable: the broker does not answer within a bounded time.
        KafkaError: a topic is missing and
            `create` is off, or the broker refuses to create it.
    """
    try:
        meta = admin.list_topics(timeout=_CONNECT_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"could not reach Kafka at {bootstrap_servers} within {_CONNECT_TIMEOUT_S:.0f} s "
            f"({exc.args[0]}); check --bootstrap-servers and the -X security settings"
        ) from exc
    wanted = list(dict.fromkeys(topics))
    missing = [t for t in wanted if t not in meta.topics]
    if missing and not create:
        raise KafkaError(
            f"topics {missing} do not exist on {bootstrap_servers}; create them, or let the "
            "worker create them (drop --no-create-topics)"
        )
    if missing:
        futures = admin.create_topics(
            [NewTopic(t, partitions, -1) for t in missing], operation_timeout=30
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=60)
                log.info("created topic %s with %d partitions", topic, partitions)
            except KafkaException as exc:
                if exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: another worker won the race
                    continue
                raise KafkaError(
                    f"could not create topic {topic!r} on {bootstrap_servers}: {exc.args[0]}; "
                    "create it yourself or grant this principal CREATE on the cluster"
                ) from exc
        meta = admin.list_topics(timeout=_CONNECT_TIMEOUT_S)
    return {t: len(meta.topics[t].partitions) for t in wanted if t in meta.topics}
