"""Dead-letter records: the original record, unchanged, plus headers that say what failed.

A rejected event keeps its key, value bytes and headers exactly as they arrived, and gains
``pipeline.error.*`` and ``pipeline.source.*`` headers (after Kafka Connect's
``__connect.errors.*``), so a person can see why and replay it once the cause is fixed.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["STAGES", "dead_letter_headers"]

STAGES = ("decode", "validate", "route", "infer", "produce", "deliver")
_MAX_MESSAGE_BYTES = 1024

Headers = list[tuple[str, bytes | None]]


def dead_letter_headers(
    original: Sequence[tuple[str, bytes | None]] | None,
    *,
    stage: str,
    error_type: str,
    message: str,
    topic: str,
    partition: int,
    offset: int,
    failed_at_ms: int,
) -> Headers:
    """Return the original headers followed by the ``pipeline.*`` error headers."""
    headers: Headers = list(original or ())
    headers += [
        ("pipeline.error.stage", stage.encode()),
        ("pipeline.error.type", error_type.encode()),
        ("pipeline.error.message", _cut(message)),
        ("pipeline.source.topic", topic.encode()),
        ("pipeline.source.partition", str(partition).encode()),
        ("pipeline.source.offset", str(offset).encode()),
        ("pipeline.failed_at", str(failed_at_ms).encode()),
    ]
    return headers


def _cut(message: str) -> bytes:
    """At most 1 KiB of UTF-8, never ending inside a character."""
    return message.encode()[:_MAX_MESSAGE_BYTES].decode("utf-8", "ignore").encode()
