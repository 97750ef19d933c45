"""Operating the worker: JSON logs with the stats figures, and --workers N with one
--transactional-id, each against the real broker through the real command."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import exitcodes

from .conftest import Pipeline
from .kafkaio import Accounting, WorkerProcess, free_port, good_events, read_all, send

MLP = "breast-cancer-mlp"


def test_json_logs_are_one_object_a_line_with_the_stats_figures(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=2)
    worker = p.start_worker("--default-model", MLP, "--log-format", "json")
    worker.wait_for_log('"message":"assigned')
    events = good_events(50)
    send(p.bootstrap, p.input, events)
    read_all(p.bootstrap, [p.output], expect=len(events), timeout_s=90)
    worker.wait_for_log('"total_out":50', timeout_s=30)

    code, _ = worker.stop(signal.SIGTERM, timeout_s=30)

    assert code == exitcodes.OK
    lines = [json.loads(line) for line in worker.log.splitlines() if line.strip()]
    stats = [doc for doc in lines if "in_per_s" in doc]
    assert stats and stats[-1]["total_in"] == 50 and stats[-1]["partitions"] in (0, 2)
    assert {doc["level"] for doc in lines} <= {"debug", "info", "warning", "error"}
    assert any(doc["message"].startswith("worker starting with") for doc in lines)


def test_each_child_gets_its_own_transactional_id(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline(partitions=2)
    txn = f"ops-{uuid.uuid4().hex[:8]}"
    parent = p.start_worker(
        "--default-model", MLP, "--workers", "2", "--guarantee", "exactly-once",
        "--transactional-id", txn, "--commit-interval-ms", "100",
    )  # fmt: skip
    for index in (0, 1):
        parent.wait_for_log(f"worker-{index} INFO pipeline.worker: exactly-once: "
                            f"transactional.id {txn}-{index}", timeout_s=90)  # fmt: skip
    events = good_events(200)
    send(p.bootstrap, p.input, events)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events), timeout_s=120)

    code, _ = parent.stop(signal.SIGTERM, timeout_s=45)

    assert code == exitcodes.OK, parent.log[-3000:]
    acc = Accounting.of(out, [])
    assert acc.lost([_event_id(v) for _, v in events]) == [] and acc.duplicates() == 0
    assert "fenced" not in parent.log.lower(), parent.log[-3000:]


def _event_id(value: bytes) -> str:
    doc: dict[str, str] = json.loads(value)
    return doc["id"]


def test_predictions_carry_the_inputs_trace_headers(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline(partitions=1)
    worker = p.start_worker("--default-model", MLP)
    worker.wait_for_log("assigned")
    trace = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    ((key, value),) = good_events(1)
    send(p.bootstrap, p.input, [(key, value, [("traceparent", trace), ("app", b"x"),
                                              ("tracestate", b"a=1")])])  # fmt: skip

    (prediction,) = read_all(p.bootstrap, [p.output], expect=1, timeout_s=90)
    worker.stop()

    # The W3C trace context goes on (pipeline.metrics.tracing); other headers stay behind.
    assert prediction.headers["traceparent"] == trace
    assert prediction.headers["tracestate"] == b"a=1"
    assert "app" not in prediction.headers


@pytest.mark.parametrize("workers", [1, 2])
def test_a_sigterm_while_the_worker_starts_stops_it_with_exit_0(
    make_pipeline: Callable[..., Pipeline], workers: int
) -> None:
    """An orchestrator may stop a worker while it imports and warms its models (or, under
    --workers, while its children start): the signal is remembered, and the worker stops as
    soon as it can, exit 0, as it would a moment later.

    The worker is started with SIGTERM blocked (a child inherits the mask), so the signal
    sent at once waits until the command takes it: the earliest moment, every time."""
    p = make_pipeline(partitions=2)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        worker = p.start_worker("--default-model", MLP, "--workers", str(workers))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    code, took = worker.stop(signal.SIGTERM, timeout_s=60)
    assert code == 0, f"exit {code} after {took:.1f} s:\n{worker.log[-2000:]}"
    assert "received SIGTERM while starting: stopping" in worker.log, worker.log[-2000:]
    assert "Traceback" not in worker.log, worker.log[-2000:]
    # It stopped before asking Kafka anything: a busy broker or registry cannot hold it.
    assert "worker starting with" not in worker.log, worker.log[-2000:]


class _Serve(WorkerProcess):
    command = ("-m", "pipeline", "serve")


def test_a_sigterm_while_serve_starts_stops_it_with_exit_0(repo_root: Path, tmp_path: Path) -> None:
    """The same for `pipeline serve` (the signal blocked at start, as above)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        serve = _Serve(
            ["--models", str(repo_root / "models"), "--http-port", str(free_port()),
             "--grpc-port", str(free_port())],
            tmp_path / "serve.log",
        )  # fmt: skip
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    with serve:
        code, took = serve.stop(signal.SIGTERM, timeout_s=60)
        assert code == 0, f"exit {code} after {took:.1f} s:\n{serve.log[-2000:]}"
        assert "received SIGTERM while starting: stopping" in serve.log, serve.log[-2000:]
