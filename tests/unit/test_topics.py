"""Replication of the topics the worker creates: chosen from the cluster's size."""

from __future__ import annotations

import pytest

from pipeline.errors import KafkaError
from pipeline.kafka.topics import replication_for


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
