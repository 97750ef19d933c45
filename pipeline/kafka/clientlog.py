"""librdkafka's log lines through Python logging, each repeated line held back.

Every Kafka client the pipeline makes (consumer, producer, admin, share consumer,
transactional producer) is built from `client_settings`, which hands librdkafka the
``librdkafka`` logger: its lines take the command's log format (``--log-format json``
included) instead of librdkafka's own ``%3|...|FAIL|...`` lines on stderr. librdkafka passes
a logger's lines on when the client is polled, so an admin client's come out when
`serve_logs` is called.

A client that cannot reach a broker says so on every retry, many times a second.
`RepeatFilter` lets such a line through once per change: the same line (its numbers aside)
from the same client and broker thread again only after that thread said something else,
or once a minute, with how many were held back. `ConnectionFailures` logs a failed
broker connection as a warning, not an error; `StartingBroker` logs a just-started broker's
"load in progress: retrying" as information.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.config import REGISTRY_PREFIX

__all__ = [
    "LIBRDKAFKA",
    "ConnectionFailures",
    "RepeatFilter",
    "StartingBroker",
    "client_settings",
    "serve_logs",
]

LIBRDKAFKA = logging.getLogger("librdkafka")
_REPEAT_S = 60.0
# What differs between two tellings of one event: counts, durations, the time in a state.
_VARYING = re.compile(r"\(after \d+ms in state [A-Z_]+[^)]*\)|\d+")
_THREAD = re.compile(r"^\[thrd:([^\]]*)\]:\s*")


def client_settings(bootstrap_servers: str, kafka: Mapping[str, Any]) -> dict[str, Any]:
    """A client's settings: the user's librdkafka properties (SASL, TLS), the bootstrap
    servers, and the ``librdkafka`` logger. The Schema Registry client's ``schema.registry.*``
    properties are not librdkafka's and stay out."""
    mine = {k: v for k, v in kafka.items() if not k.startswith(REGISTRY_PREFIX)}
    return {**mine, "bootstrap.servers": bootstrap_servers, "logger": LIBRDKAFKA}


def serve_logs(client: Any) -> None:
    """Pass on the log lines an admin client queued (its other callbacks too)."""
    client.poll(0)


class RepeatFilter(logging.Filter):
    """Holds back a line a client repeats from one thread, until something changed.

    Args:
        repeat_s: Let an unchanged line through again after this long, with a count.
        clock: Seconds, monotonic; tests pass their own.
    """

    def __init__(
        self, *, repeat_s: float = _REPEAT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._repeat_s = repeat_s
        self._clock = clock
        self._lock = threading.Lock()
        # (client, thread) -> the last line's shape, when it was let through, lines held back
        self._last: dict[tuple[str, str], tuple[str, float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        source, shape = _source_and_shape(record)
        now = self._clock()
        with self._lock:
            last = self._last.get(source)
            if last is not None and last[0] == shape and now - last[1] < self._repeat_s:
                self._last[source] = (shape, last[1], last[2] + 1)
                return False
            self._last[source] = (shape, now, 0)
        if last is not None and last[0] == shape and last[2]:
            record.msg = f"{record.msg} (%d more like it in the last %.0f s)"
            record.args = (*_args(record), last[2], now - last[1])
        return True


def _args(record: logging.LogRecord) -> tuple[Any, ...]:
    args = record.args
    return tuple(args) if isinstance(args, tuple) else ()


def _source_and_shape(record: logging.LogRecord) -> tuple[tuple[str, str], str]:
    """Which client and thread a line came from, and the line with its numbers blanked.
    confluent-kafka logs ``"%s [%s] %s"`` with (facility, client name, text)."""
    args = _args(record)
    if len(args) != 3:
        return ("", ""), _VARYING.sub("#", record.getMessage())
    facility, client, text = (str(a) for a in args)
    thread = _THREAD.match(text)
    where = thread.group(1) if thread else ""
    return (client, where), facility + " " + _VARYING.sub("#", text)


class ConnectionFailures(logging.Filter):
    """A failed broker connection (librdkafka's ``FAIL`` lines, logged at error level) is
    a warning: the client reconnects by itself, to the same broker or another (a node
    stopped for an upgrade says so on every client), and what cannot recover surfaces as
    an error of its own (a delivery or commit that fails, all brokers down)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = _args(record)
        if record.levelno >= logging.ERROR and args and args[0] == "FAIL":
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class StartingBroker(logging.Filter):
    """A broker that has just started answers the idempotent producer's first request for a
    producer id with "Coordinator load in progress", and librdkafka retries by itself
    (``GETPID ... : retrying``): an INFO line, not a warning a user should act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = _args(record)
        if (
            record.levelno == logging.WARNING
            and len(args) == 3
            and args[0] == "GETPID"
            and str(args[2]).endswith("load in progress: retrying")
        ):
            record.levelno, record.levelname = logging.INFO, "INFO"
            # the logger let it in as a warning: drop it here if INFO is not wanted
            return LIBRDKAFKA.isEnabledFor(logging.INFO)
        return True


LIBRDKAFKA.addFilter(RepeatFilter())
LIBRDKAFKA.addFilter(ConnectionFailures())
LIBRDKAFKA.addFilter(StartingBroker())
