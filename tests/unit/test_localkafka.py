"""The local broker's pieces that need no broker: cluster ids, settings, the data-dir layout."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator

from pipeline.dev.localkafka import new_cluster_id

# A UUID whose URL-safe base64 starts with "-": its first 6 bits are 62 (0b111110).
DASHED = bytes([0b11111000]) + bytes(15)


def _source(*draws: bytes) -> Callable[[], bytes]:
    it: Iterator[bytes] = iter(draws)
    return lambda: next(it)


def test_a_cluster_id_starting_with_a_dash_is_drawn_again() -> None:
    assert base64.urlsafe_b64encode(DASHED).decode().startswith("-")
    second = uuid.UUID(int=1).bytes

    cluster_id = new_cluster_id(_source(DASHED, DASHED, second))

    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAQ"


def test_a_cluster_id_is_22_url_safe_characters_of_the_uuid() -> None:
    raw = uuid.uuid4().bytes

    cluster_id = new_cluster_id(_source(raw))

    assert len(cluster_id) == 22
    assert base64.urlsafe_b64decode(cluster_id + "==") == raw
