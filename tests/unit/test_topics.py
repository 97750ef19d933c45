"""Replication of the topics the worker creates: chosen from the cluster's size."""

from __future__ import annotations

from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.errors import KafkaError
from pipeline.kafka.topics import ensure_topics, replication_for


@pytest.mark.parametrize(
    ("brokers", "asked", "expected"),
    [(1, (0, 0), (1, 1)), (2, (0, 0), (1, 1)), (3, (0, 0), (3, 2)), (5, (0, 0), (3, 2)),
     (3, (2, 0), (2, 2)), (3, (3, 1), (3, 1)), (1, (1, 0), (1, 1))],
)  # fmt: skip
def test_replication_follows_the_cluster_unless_told(
    brokers: int, asked: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert replication_for(brokers, *asked) == expected


def test_more_replicas_than_brokers_is_a_clear_error() -> None:
    with pytest.raises(KafkaError, match="needs at least 3 brokers, the cluster has 1"):
        replication_for(1, 3, 0)


class _LateMetadata:
    """An AdminClient whose answering node hears of created topics only on its third look."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.looks = 0

    def list_topics(self, timeout: float) -> SimpleNamespace:
        self.looks += 1
        known = self.created if self.looks >= 4 else []  # look 1 is before the creation
        parts = {p: object() for p in range(4)}
        return SimpleNamespace(
            brokers={1: None},
            topics={t: SimpleNamespace(partitions=parts, error=None) for t in known},
        )

    def poll(self, timeout: float = 0) -> int:
        return 0  # no log lines or callbacks queued

    def create_topics(self, topics: list[Any], operation_timeout: float) -> dict[str, Future[None]]:
        done: dict[str, Future[None]] = {}
        for new in topics:
            self.created.append(new.topic)
            done[new.topic] = Future()
            done[new.topic].set_result(None)
        return done


def test_created_topics_are_counted_once_the_answering_node_knows_them() -> None:
    admin = _LateMetadata()
    counts = ensure_topics(admin, "k:9092", ["in", "out"], create=True, partitions=4)  # type: ignore[arg-type]
    assert counts == {"in": 4, "out": 4}
    assert admin.looks == 4
