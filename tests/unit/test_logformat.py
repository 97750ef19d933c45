"""--log-format json: one object a line, the stats line's figures as fields."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import pytest

from pipeline.logformat import JsonFormatter, stats_fields
from pipeline.logs import setup_logging
from pipeline.metrics.statsline import StatsSnapshot

SNAPSHOT = StatsSnapshot(
    seconds=2.0,
    events_in=2874,
    predictions=2870,
    dead_letters=4,
    batches=12,
    batch_rows=3000,
    latency_p50_ms=1048.0,
    latency_p99_ms=1057.25,
    partitions=4,
    totals={"events_in": 3003, "out": 3003, "dead_letters": 3},
)


def test_the_stats_line_figures_are_read_back() -> None:
    assert stats_fields(SNAPSHOT.line()) == {
        "in_per_s": 1437,
        "out_per_s": 1437,
        "mean_batch": 250.0,
        "latency_p50_ms": 1048.0,
        "latency_p99_ms": 1057.2,  # the line shows one decimal
        "dlq": 4,
        "dlq_total": 3,
        "partitions": 4,
        "total_in": 3003,
        "total_out": 3003,
    }


def test_no_latency_and_the_optional_figures() -> None:
    idle = StatsSnapshot(
        seconds=1.0, events_in=0, predictions=0, dead_letters=0, batches=0, batch_rows=0,
        latency_p50_ms=None, latency_p99_ms=None, partitions=0, requests=7, expired=2,
    )  # fmt: skip

    fields = stats_fields("worker stopped: " + idle.line())

    assert fields is not None
    assert fields["latency_p50_ms"] is None and fields["latency_p99_ms"] is None
    assert (fields["requests_per_s"], fields["expired"]) == (7, 2)


def test_a_share_members_and_a_servers_lines_are_read_back() -> None:
    share = dataclasses.replace(SNAPSHOT, kind="share")
    fields = stats_fields(share.line())
    assert fields is not None and "partitions" not in fields
    assert fields["total_out"] == 3003
    doors = StatsSnapshot(
        seconds=2.0, events_in=0, predictions=0, dead_letters=0, batches=4, batch_rows=40,
        latency_p50_ms=None, latency_p99_ms=None, partitions=0, requests=10, answered=40,
        totals={"requests": 30, "answered": 120}, kind="doors",
    )  # fmt: skip
    assert stats_fields(doors.line()) == {
        "requests_per_s": 5,
        "predictions_per_s": 20,
        "mean_batch": 10.0,
        "total_requests": 30,
        "total_predictions": 120,
    }


def test_other_messages_have_no_stats() -> None:
    assert stats_fields("assigned features[0]") is None


def _record(message: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            info = sys.exc_info()
    return logging.LogRecord("pipeline.worker", logging.INFO, __file__, 1, message, args, info)


def test_a_record_is_one_json_object_on_one_line() -> None:
    line = JsonFormatter(process_name="worker-1").format(_record("%s", SNAPSHOT.line()))

    doc = json.loads(line)
    assert "\n" not in line
    assert doc["level"] == "info" and doc["logger"] == "pipeline.worker"
    assert doc["process"] == "worker-1" and doc["message"] == SNAPSHOT.line()
    assert doc["ts"].endswith("+00:00") and doc["in_per_s"] == 1437


def test_a_traceback_stays_inside_the_object() -> None:
    doc = json.loads(JsonFormatter().format(_record("failed", exc=True)))

    assert "ValueError: boom" in doc["exc"] and "process" not in doc


@pytest.mark.parametrize(("fmt", "json_lines"), [("json", True), ("text", False)])
def test_setup_logging_picks_the_format_and_level(
    fmt: str, json_lines: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    setup_logging(level=logging.WARNING, fmt=fmt)
    try:
        logging.getLogger("pipeline.test").info("hidden")
        logging.getLogger("pipeline.test").warning("shown %d", 1)
    finally:
        setup_logging()
    (line,) = err.getvalue().splitlines()
    if json_lines:
        assert json.loads(line)["message"] == "shown 1"
    else:
        assert line.endswith("WARNING pipeline.test: shown 1")
