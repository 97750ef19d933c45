"""``--log-format json``: one JSON object per log record, per line.

Every object has ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger`` and
``message``; ``process`` names a ``--workers`` child (``worker-1``); ``exc`` holds a
traceback. The worker's and the server's periodic stats line also gets its figures as
fields (`stats_fields`): ``in_per_s``, ``out_per_s``, ``mean_batch``,
``latency_p50_ms``, ``latency_p99_ms`` (null when nothing was predicted),
``dlq``, ``dlq_total``, ``partitions`` (not for a share-group member), ``total_in``,
``total_out``, and ``requests_per_s`` and ``expired`` when present; `pipeline serve`'s
line, which has no Kafka figures: ``requests_per_s``, ``predictions_per_s``,
``mean_batch``, ``total_requests``, ``total_predictions`` and ``expired`` when present;
so a log pipeline can chart them without parsing text.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any, Final

import orjson

__all__ = ["JsonFormatter", "stats_fields"]

_NUMBER: Final = r"(-?[0-9.]+)"
_STATS_LINE: Final = re.compile(
    rf"in {_NUMBER}/s out {_NUMBER}/s mean batch {_NUMBER} "
    rf"latency p50 (-|{_NUMBER}) ms p99 (-|{_NUMBER}) ms "
    rf"dlq {_NUMBER} \(total {_NUMBER}\) (?:partitions {_NUMBER} )?"
    rf"total in {_NUMBER} out {_NUMBER}"
    rf"(?: requests {_NUMBER}/s)?(?: expired {_NUMBER})?"
)
_STATS_NAMES: Final = (
    ("in_per_s", 1),
    ("out_per_s", 2),
    ("mean_batch", 3),
    ("latency_p50_ms", 5),
    ("latency_p99_ms", 7),
    ("dlq", 8),
    ("dlq_total", 9),
    ("partitions", 10),
    ("total_in", 11),
    ("total_out", 12),
    ("requests_per_s", 13),
    ("expired", 14),
)
_ALWAYS: Final = frozenset(n for n, _ in _STATS_NAMES) - {"partitions", "requests_per_s", "expired"}
_DOORS_LINE: Final = re.compile(
    rf"requests {_NUMBER}/s predictions {_NUMBER}/s mean batch {_NUMBER} "
    rf"total requests {_NUMBER} predictions {_NUMBER}(?: expired {_NUMBER})?"
)
_DOORS_NAMES: Final = (
    ("requests_per_s", 1),
    ("predictions_per_s", 2),
    ("mean_batch", 3),
    ("total_requests", 4),
    ("total_predictions", 5),
    ("expired", 6),
)


def stats_fields(message: str) -> dict[str, float | None] | None:
    """The figures of a stats line (`pipeline.metrics.statsline.StatsSnapshot.line`) found
    in `message`, by name; None if `message` holds no stats line."""
    names: tuple[tuple[str, int], ...] = _STATS_NAMES
    found = _STATS_LINE.search(message)
    if found is None:
        found, names = _DOORS_LINE.search(message), _DOORS_NAMES
    if found is None:
        return None
    fields: dict[str, float | None] = {}
    for name, group in names:
        text = found.group(group)
        if text is None and name not in _ALWAYS:
            continue
        fields[name] = None if text is None else _number(text)
    return fields


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line.

    Args:
        process_name: Added as ``process`` to every object (a ``--workers`` child's name).
    """

    def __init__(self, *, process_name: str | None = None) -> None:
        super().__init__()
        self._process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if self._process_name:
            doc["process"] = self._process_name
        doc.update(stats_fields(message) or {})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()
