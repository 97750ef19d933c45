"""Fixtures of the fault-injection suite.

The session broker and the topic/group/pipeline factories are the integration suite's,
imported so both suites share one definition (`make test` points both at the broker in
KAFKA_BOOTSTRAP_SERVERS). A test that breaks the broker (T2) starts its own with
`own_broker`, never touching the session broker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.dev.localkafka import _START_TIMEOUT_S, SHORT_LIVED, LocalKafka
from tests.integration.conftest import (  # noqa: F401  (fixtures, registered by import)
    kafka_admin,
    kafka_bootstrap,
    make_group,
    make_pipeline,
    make_topic,
    repo_root,
)
from tests.integration.kafkaio import drop_producers, free_port


@dataclass
class OwnBroker:
    """A local broker that belongs to one test, which may stop and restart it."""

    kafka: LocalKafka
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = _START_TIMEOUT_S) -> None:
        """Start (or restart) it on its port, with its data dir and topics intact."""
        self.kafka.start(port=self.port, timeout_s=timeout_s)

    def stop(self) -> None:
        self.kafka.stop()

    def create_topics(self, partitions: dict[str, int]) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics(
            [NewTopic(t, n, 1) for t, n in partitions.items()], operation_timeout=30
        )
        for future in futures.values():
            future.result(timeout=60)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[OwnBroker]:
    """A fresh single-node broker on a free port, data in this test's tmp_path."""
    broker = OwnBroker(LocalKafka(data_dir=tmp_path / "kafka", jvm_flags=SHORT_LIVED), free_port())
    broker.start()
    try:
        yield broker
    finally:
        drop_producers(broker.bootstrap)
        with contextlib.suppress(Exception):
            broker.stop()
