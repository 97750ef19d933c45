"""librdkafka's lines go through Python logging, and a line a client repeats is held back
until something changes (`pipeline.kafka.clientlog`)."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Producer

from pipeline.kafka.clientlog import (
    LIBRDKAFKA,
    ConnectionFailures,
    RepeatFilter,
    StartingBroker,
    client_settings,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def line(text: str, client: str = "rdkafka#producer-1") -> logging.LogRecord:
    """A record as confluent-kafka logs it: ``"%s [%s] %s"`` (facility, client, text)."""
    return logging.LogRecord(
        "librdkafka", logging.ERROR, __file__, 0, "%s [%s] %s", ("FAIL", client, text), None
    )


REFUSED = (
    "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 "
    "failed: Connection refused (after {}ms in state CONNECT)"
)


def test_a_repeated_line_passes_once_until_something_changes() -> None:
    clock = Clock()
    once = RepeatFilter(repeat_s=60, clock=clock)
    passed = []
    for i in range(100):  # every 50 ms for 5 s, the time in the state varying
        clock.now = i * 0.05
        passed.append(once.filter(line(REFUSED.format(i % 3))))
    assert passed.count(True) == 1
    assert once.filter(line(REFUSED.format(0), client="rdkafka#consumer-2"))  # another client
    assert once.filter(line("[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connected"))
    assert once.filter(line(REFUSED.format(0)))  # the state changed back: said again


def test_an_unchanged_line_passes_again_after_the_interval_with_a_count() -> None:
    clock = Clock()
    once = RepeatFilter(repeat_s=60, clock=clock)
    assert once.filter(line(REFUSED.format(0)))
    for i in range(1, 10):
        clock.now = i
        assert not once.filter(line(REFUSED.format(0)))
    clock.now = 61
    again = line(REFUSED.format(0))
    assert once.filter(again)
    assert again.getMessage().endswith("(9 more like it in the last 61 s)")


def test_a_client_that_cannot_connect_logs_through_python_logging_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = Producer({**client_settings("127.0.0.1:1", {}), "reconnect.backoff.ms": 10})
    with caplog.at_level(logging.INFO, logger=LIBRDKAFKA.name):
        producer.produce("nowhere", b"x")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            producer.poll(0.05)
    producer.purge()
    producer.flush(0)
    refused = [r for r in caplog.records if "Connection refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]


def test_a_failed_broker_connection_is_a_warning_other_errors_stay_errors() -> None:
    """Issue 26 item 9: a planned node stop logged ERROR-level coordinator lines."""
    coordinator = line("[thrd:GroupCoordinator]: GroupCoordinator: 127.0.0.1:39093: Connect to "
                       "ipv4#127.0.0.1:39093 failed: Connection refused")  # fmt: skip
    other = logging.LogRecord("librdkafka", logging.ERROR, __file__, 0, "%s [%s] %s",
                              ("ERROR", "rdkafka#producer-1", "1/1 brokers are down"), None)  # fmt: skip

    assert ConnectionFailures().filter(coordinator) and ConnectionFailures().filter(other)

    assert (coordinator.levelno, coordinator.levelname) == (logging.WARNING, "WARNING")
    assert (other.levelno, other.levelname) == (logging.ERROR, "ERROR")


def test_a_just_started_brokers_retry_is_information_not_a_warning() -> None:
    """Issue 26: the first `pipeline produce` after `pipeline kafka start` printed a raw
    librdkafka WARNING about a retry librdkafka makes by itself."""
    text = ("[thrd:main]: Failed to acquire idempotence PID from broker 127.0.0.1:9092/1: "
            "Broker: Coordinator load in progress: retrying")  # fmt: skip
    retry = logging.LogRecord("librdkafka", logging.WARNING, __file__, 0, "%s [%s] %s",
                              ("GETPID", "rdkafka#producer-1", text), None)  # fmt: skip
    fatal = logging.LogRecord("librdkafka", logging.WARNING, __file__, 0, "%s [%s] %s",
                              ("GETPID", "rdkafka#producer-1", "Failed: fenced"), None)  # fmt: skip
    before = LIBRDKAFKA.level
    try:
        LIBRDKAFKA.setLevel(logging.INFO)
        assert StartingBroker().filter(retry) and StartingBroker().filter(fatal)
        assert (retry.levelno, retry.levelname) == (logging.INFO, "INFO")
        assert fatal.levelno == logging.WARNING
        LIBRDKAFKA.setLevel(logging.WARNING)  # `pipeline produce`: warnings only, so not shown
        again = logging.LogRecord("librdkafka", logging.WARNING, __file__, 0, "%s [%s] %s",
                                  ("GETPID", "rdkafka#producer-1", text), None)  # fmt: skip
        assert not StartingBroker().filter(again)
    finally:
        LIBRDKAFKA.setLevel(before)
