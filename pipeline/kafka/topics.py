"""Kafka client settings and topic set-up shared by the worker and the command-line tools."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ClusterMetadata,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from pipeline.errors import BrokerUnreachable, KafkaError
from pipeline.kafka.clientlog import client_settings, serve_logs

__all__ = [
    "CONNECT_TIMEOUT_S",
    "admin_client",
    "ensure_topics",
    "message_limit",
    "reach",
    "replication_for",
]

log = logging.getLogger("pipeline.topics")
# With a command's start-up before it, an unreachable broker is reported within 15 s.
CONNECT_TIMEOUT_S = 10.0
_PROPAGATION_TIMEOUT_S = 30.0  # a new topic reaches every node's metadata well within this


def admin_client(bootstrap_servers: str, kafka: Mapping[str, str]) -> AdminClient:
    """An AdminClient with the user's librdkafka properties (SASL, TLS) applied."""
    return AdminClient(client_settings(bootstrap_servers, kafka))


def reach(client: Any, bootstrap_servers: str) -> ClusterMetadata:
    """The cluster's metadata, asked of `client` (any Kafka client) within
    `CONNECT_TIMEOUT_S`.

    Raises:
        BrokerUnreachable: no broker answered in time.
    """
    try:
        meta: ClusterMetadata = client.list_topics(timeout=CONNECT_TIMEOUT_S)
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"could not reach Kafka at {bootstrap_servers} within {CONNECT_TIMEOUT_S:.0f} s "
            f"({exc.args[0]}); check --bootstrap-servers and the -X security settings"
        ) from exc
    return meta


def ensure_topics(
    admin: AdminClient,
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    create: bool,
    partitions: int,
    replication_factor: int = 0,
    min_insync_replicas: int = 0,
) -> dict[str, int]:
    """Check the topics exist, creating the missing ones; return each topic's partition count.

    Topics are created with `replication_factor` replicas and `min_insync_replicas` (0:
    chosen from the cluster's size, see `replication_for`).

    Raises:
        BrokerUnreachable: the broker does not answer within a bounded time.
        KafkaError: a topic is missing and
            `create` is off, or the broker refuses to create it.
    """
    meta = reach(admin, bootstrap_servers)
    serve_logs(admin)
    wanted = list(dict.fromkeys(topics))
    missing = [t for t in wanted if t not in meta.topics]
    if missing and not create:
        raise KafkaError(
            f"topics {missing} do not exist on {bootstrap_servers}; create them, or let the "
            "worker create them (drop --no-create-topics)"
        )
    if missing:
        factor, min_isr = replication_for(
            len(meta.brokers), replication_factor, min_insync_replicas
        )
        config = {"min.insync.replicas": str(min_isr)}
        futures = admin.create_topics(
            [NewTopic(t, partitions, factor, config=config) for t in missing], operation_timeout=30
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=60)
                log.info("created topic %s with %d partitions, %d replicas, min.insync.replicas %d",
                         topic, partitions, factor, min_isr)  # fmt: skip
            except KafkaException as exc:
                if exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS: another worker won the race
                    continue
                raise KafkaError(
                    f"could not create topic {topic!r} on {bootstrap_servers}: {exc.args[0]}; "
                    "create it yourself or grant this principal CREATE on the cluster"
                ) from exc
        return _partitions_once_known(admin, wanted)
    return {t: len(meta.topics[t].partitions) for t in wanted if t in meta.topics}


def _partitions_once_known(admin: AdminClient, topics: list[str]) -> dict[str, int]:
    """Each topic's partition count, asked until the node that answers knows them all.

    On a cluster the controller answers CreateTopics once the topic is in its metadata
    log; the other nodes learn of it a moment later, and until then a node answers
    "unknown topic" (or no partitions) for it.
    """
    deadline = time.monotonic() + _PROPAGATION_TIMEOUT_S
    while True:
        known = admin.list_topics(timeout=CONNECT_TIMEOUT_S).topics
        counts = {t: len(known[t].partitions) for t in topics if t in known}
        pending = [t for t in topics if not counts.get(t) or known[t].error is not None]
        if not pending or time.monotonic() > deadline:
            if pending:
                log.warning("topics %s created but not yet known to every node after %.0f s",
                            pending, _PROPAGATION_TIMEOUT_S)  # fmt: skip
            return counts
        time.sleep(0.2)


def replication_for(brokers: int, factor: int, min_isr: int) -> tuple[int, int]:
    """Replicas and min.insync.replicas for new topics on a cluster of `brokers` nodes.

    Unless told otherwise (a value above 0): one replica on one or two nodes; on three or
    more, three replicas of which two must be in sync, so an acknowledged record survives
    the loss of any one node and writes go on while one node is down.

    Raises:
        KafkaError: more replicas asked for than the cluster has nodes.
    """
    chosen = factor or (3 if brokers >= 3 else 1)
    if chosen > brokers:
        raise KafkaError(
            f"--replication-factor {chosen} needs at least {chosen} brokers, the cluster has "
            f"{brokers}; lower it or create the topics yourself"
        )
    return chosen, min_isr or min(2, chosen)


def message_limit(admin: AdminClient, topics: Iterable[str]) -> int | None:
    """The smallest ``max.message.bytes`` of `topics` (the largest record batch the broker
    takes on them), or None if the broker does not say (DescribeConfigs not allowed, say):
    the producer's batches must fit it, or the broker refuses every record of a batch."""
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in dict.fromkeys(topics)]
    limits: list[int] = []
    try:
        for future in admin.describe_configs(resources).values():
            entry = future.result(timeout=CONNECT_TIMEOUT_S).get("max.message.bytes")
            if entry is not None and entry.value is not None:
                limits.append(int(entry.value))
    except (KafkaException, ValueError) as exc:
        log.warning("could not read the topics' max.message.bytes (%s): producer batches keep "
                    "librdkafka's default size", exc)  # fmt: skip
        return None
    return min(limits, default=None)
