"""Which headers of a feature event its prediction carries.

A prediction carries the event's trace context, so a tracer can follow an event through
the worker to whoever reads its prediction: the W3C Trace Context headers ``traceparent``
and ``tracestate``, and W3C ``baggage``. Names match whatever their case (HTTP header
names are case-insensitive, and some clients capitalise them) and are written in the
lower case the specifications use; the first usable one of each is carried unchanged: a
value over `MAX_VALUE_BYTES` (far beyond what the specifications allow), or none, is not
usable. Every other header stays on the input: ``pipeline.*`` and application
headers are not copied to predictions (a dead letter keeps all of them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = ["CARRIED", "MAX_VALUE_BYTES", "carried_headers"]

CARRIED: Final = ("traceparent", "tracestate", "baggage")
MAX_VALUE_BYTES: Final = 8192  # W3C baggage's own limit; traceparent is 55 bytes


def carried_headers(
    headers: Iterable[tuple[str, bytes | str | None]] | None,
) -> list[tuple[str, bytes]]:
    """The headers of an input record that its prediction carries, in `CARRIED` order.

    Args:
        headers: The record's headers, as confluent-kafka's ``Message.headers()`` gives
            them (None when it has none).

    Returns:
        ``(name, value)`` pairs, names in lower case; empty when none applies.
    """
    if not headers:
        return []
    found: dict[str, bytes] = {}
    for name, value in headers:
        key = name.lower()
        if key not in CARRIED or key in found or value is None:
            continue
        raw = value.encode() if isinstance(value, str) else value
        if len(raw) <= MAX_VALUE_BYTES:
            found[key] = raw
    return [(name, found[name]) for name in CARRIED if name in found]
