"""Dead-letter records: the original record, unchanged, plus headers that say what failed.

A rejected event keeps its key, value bytes and headers exactly as they arrived, and gains
``pipeline.error.*`` and ``pipeline.source.*`` headers (after Kafka Connect's
``__connect.errors.*``), so a person can see why and replay it once the cause is fixed.

A dead letter the producer or the broker refuses (too large) is sent again smaller:
`dead_letter` with ``omit=1`` leaves the value out (``pipeline.value.omitted`` says how
large it was; the source headers say where to read it back), ``omit=2`` also the original
headers (``pipeline.headers.omitted``), ``omit=3`` also the key (``pipeline.key.omitted``
says how large it was, ``pipeline.key.sha256`` which it was): a key of nearly 1 MB makes
every record that carries it too large, and keys are otherwise never dropped. Every
producer of dead letters (the Kafka worker, the Faust agent) builds them here, so their
records are the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["MAX_OMIT", "STAGES", "DeadLetter", "dead_letter", "dead_letter_headers"]

STAGES = ("decode", "validate", "route", "enrich", "infer", "produce", "deliver")
_OMIT_VALUE, _OMIT_HEADERS, _OMIT_KEY = 1, 2, 3  # each level also leaves out the previous ones
MAX_OMIT = _OMIT_KEY
"""The last `dead_letter` ``omit`` level: value, original headers and key all left out."""
_MAX_MESSAGE_BYTES = 1024

Headers = list[tuple[str, bytes | None]]


class DeadLetter(NamedTuple):
    """What to send to the dead-letter topic for one source record."""

    key: bytes | None
    value: bytes | None
    headers: Headers


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


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    original: Sequence[tuple[str, bytes | None]] | None,
    *,
    reason: tuple[str, str, str],
    topic: str,
    partition: int,
    offset: int,
    failed_at_ms: int,
    omit: int = 0,
    unreadable_headers: bool = False,
) -> DeadLetter:
    """The key, value and headers of the dead letter of one source record.

    Args:
        key: The source record's key.
        value: The source record's value.
        original: The source record's headers.
        reason: What failed: (stage, error type, message).
        topic: The source record's topic.
        partition: Its partition.
        offset: Its offset.
        failed_at_ms: When it failed, ms since the epoch.
        omit: 0 keeps the key, the value and the original headers; 1 leaves the value
            out; 2 also the original headers; 3 (`MAX_OMIT`) also the key.
        unreadable_headers: The source headers could not be read (a client could not
            decode a name); they are left out and said to be.

    Returns:
        The key and the value to send (None when omitted) and the headers.
    """
    extra: Headers = []
    if omit >= _OMIT_VALUE:
        extra.append(("pipeline.value.omitted", str(len(value or b"")).encode()))
        value = None
    if unreadable_headers or (omit >= _OMIT_HEADERS and original):
        extra.append(("pipeline.headers.omitted", b"1"))
        original = None
    if omit >= _OMIT_KEY and key:
        extra += _key_omitted(key)
        key = None
    stage, error_type, message = reason
    headers = dead_letter_headers(
        original,
        stage=stage,
        error_type=error_type,
        message=message,
        topic=topic,
        partition=partition,
        offset=offset,
        failed_at_ms=failed_at_ms,
    )
    return DeadLetter(key, value, headers + extra)


def _key_omitted(key: bytes) -> Headers:
    """The headers that stand for a key left out: its size and its SHA-256, in hex."""
    return [
        ("pipeline.key.omitted", str(len(key)).encode()),
        ("pipeline.key.sha256", hashlib.sha256(key).hexdigest().encode()),
    ]


def _cut(message: str) -> bytes:
    """At most 1 KiB of UTF-8, never ending inside a character."""
    return message.encode()[:_MAX_MESSAGE_BYTES].decode("utf-8", "ignore").encode()
