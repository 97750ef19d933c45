"""Seeing the worker run: /metrics matches what happened, the probes mean what they say,
trace context survives the hop, and a prediction redone after a crash keeps its id."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_worker import BAD_VALUES

from .conftest import Pipeline
from .kafkaio import (
    FAST_FAILOVER,
    Accounting,
    free_port,
    good_events,
    read_all,
    send,
    wait_for_outputs,
)

MLP = "breast-cancer-mlp"


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(port: int) -> Samples:
    """Every sample of /metrics: name -> labels -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if wanted <= set(k))


def scrape_until(port: int, done: Callable[[Samples], bool], timeout_s: float = 30) -> Samples:
    """Scrape until `done` holds, or `timeout_s` passed (then the last scrape, for the
    caller's assertions to show what was missing)."""
    deadline = time.monotonic() + timeout_s
    while not done(samples := scrape(port)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return samples


def wait_ready(port: int, worker: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the worker was not ready within {timeout_s} s")


def test_metrics_match_what_was_consumed_predicted_and_dead_lettered(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=2)
    port = free_port()
    worker = p.start_worker("--default-model", MLP, "--metrics-port", str(port))
    wait_ready(port, worker)
    goods = good_events(1000)
    bads = [(f"bad-{k}".encode(), v) for k, v in BAD_VALUES.items()]
    send(p.bootstrap, p.input, goods + bads)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(goods) + len(bads))

    def acknowledged(m: Samples) -> bool:  # the last acknowledgements are counted
        return (
            total(m, "pipeline_records_produced_total", topic=p.output) == len(goods)
            and total(m, "pipeline_records_produced_total", topic=p.dlq) == len(bads)
            and total(m, "pipeline_produce_ack_seconds_count", model=MLP)
            >= total(m, "pipeline_inference_executions_total", model=MLP)
        )

    m = scrape_until(port, acknowledged)
    assert worker.stop()[0] == 0
    assert len(out) == len(goods) + len(bads)
    assert total(m, "pipeline_records_consumed_total", topic=p.input) == len(goods) + len(bads)
    assert total(m, "pipeline_predictions_total", model=MLP, version="1") == len(goods)
    assert total(m, "pipeline_records_produced_total", topic=p.output) == len(goods)
    assert total(m, "pipeline_records_produced_total", topic=p.dlq) == len(bads)
    assert total(m, "pipeline_dead_letters_total") == len(bads)
    assert total(m, "pipeline_dead_letters_total", stage="route", error_type="UnknownModel") == 1
    assert total(m, "pipeline_inference_rows_total", model=MLP) == len(goods)
    executions = total(m, "pipeline_inference_executions_total", model=MLP)
    assert 1 <= executions <= len(goods)
    assert total(m, "pipeline_batch_size_count", model=MLP) == executions
    assert total(m, "pipeline_event_to_prediction_seconds_count", model=MLP) == len(goods)
    # one produce-to-acknowledgement per batch of one partition: at least one per execution
    assert executions <= total(m, "pipeline_produce_ack_seconds_count", model=MLP) <= len(goods)
    assert total(m, "pipeline_partitions_assigned") == 2
    assert total(m, "pipeline_model_loads_total") >= 1


def test_traceparent_survives_and_predictions_carry_their_id(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=1)
    parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    events = [(k, v, [("traceparent", parent), ("tracestate", b"vendor=1"), ("other", b"x")])
              for k, v in good_events(10)]  # fmt: skip
    send(p.bootstrap, p.input, events)
    worker = p.start_worker("--default-model", MLP)
    out = read_all(p.bootstrap, [p.output], expect=len(events))
    assert worker.stop()[0] == 0
    for record in out:
        assert record.headers["traceparent"] == parent
        assert record.headers["tracestate"] == b"vendor=1"
        assert "other" not in record.headers
        expected = f"{p.input}/0/{record.json['id'].rsplit('-', 1)[1]}/{MLP}/1"
        assert record.json["prediction_id"] == expected
        assert record.headers["pipeline.prediction.id"] == expected.encode()


def test_a_record_predicted_twice_gets_the_same_prediction_id(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=2)
    events = good_events(30_000)
    send(p.bootstrap, p.input, events)
    # FAST_FAILOVER: the killed member's partitions come back after 6 s, not 45
    first = p.start_worker("--default-model", MLP, "--commit-interval-ms", "5000",
                           "--commit-every-events", "1000000", *FAST_FAILOVER)  # fmt: skip
    wait_for_outputs(p.bootstrap, p.output, 2000)
    first.stop(signal.SIGKILL)
    second = p.start_worker("--default-model", MLP)
    out = read_all(p.bootstrap, [p.output], expect=len(events), timeout_s=120)
    assert second.stop()[0] == 0
    by_event: dict[str, set[str]] = defaultdict(set)
    for record in out:
        by_event[record.json["id"]].add(record.json["prediction_id"])
    acc = Accounting.of(out, [])
    assert acc.lost([orjson.loads(v)["id"] for _, v in events]) == []
    assert acc.duplicates() > 0, "the kill should have left work to redo"
    assert all(len(ids) == 1 for ids in by_event.values()), "a redo kept each prediction's id"


def test_spans_link_every_input_of_a_batch(
    kafka_bootstrap: str, make_pipeline: Callable[..., Pipeline]
) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the [otel] extra")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from pipeline.config import WorkerConfig
    from pipeline.kafka.worker import Worker

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    p = make_pipeline(partitions=1)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    events = [(k, v, [("traceparent", f"00-{trace_id}-{i:016x}-01".encode())])
              for i, (k, v) in enumerate(good_events(20), start=1)]  # fmt: skip
    send(p.bootstrap, p.input, events)
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, input_topics=(p.input,),
                          output_topic=p.output, dlq_topic=p.dlq, group_id=p.group,
                          models=p.models, default_model=MLP, max_wait_ms=50)  # fmt: skip
    worker = Worker(config)

    def stop_when_read() -> None:
        read_all(kafka_bootstrap, [p.output], expect=len(events))
        worker.stop()

    threading.Thread(target=stop_when_read, daemon=True).start()
    assert worker.run() == 0
    spans = [s for s in exporter.get_finished_spans() if s.name == "pipeline.predict"]
    linked = {link.context.span_id for s in spans for link in s.links}
    assert linked == set(range(1, 21)), "every input's context is linked from its batch's span"
    assert all(s.attributes["model"] == MLP for s in spans)
    assert {f"{link.context.trace_id:032x}" for s in spans for link in s.links} == {trace_id}


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="Debian's prometheus package is not installed (.ci/run installs it)",
)
def test_a_real_prometheus_scrapes_the_worker_and_answers_a_rate(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    p = make_pipeline(partitions=2)
    metrics_port, prometheus_port = free_port(), free_port()
    worker = p.start_worker("--default-model", MLP, "--metrics-port", str(metrics_port))
    wait_ready(metrics_port, worker)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: pipeline\n    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    server = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(10):
            send(p.bootstrap, p.input, good_events(500))
            time.sleep(1)
        query = "sum(rate(pipeline_predictions_total[15s]))"
        deadline = time.monotonic() + 60
        rate = 0.0
        while time.monotonic() < deadline and rate <= 0:
            try:
                reply = httpx.get(f"http://127.0.0.1:{prometheus_port}/api/v1/query",
                                  params={"query": query}, timeout=5).json()  # fmt: skip
                result = reply["data"]["result"]
                rate = float(result[0]["value"][1]) if result else 0.0
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(1)
        assert rate > 0, "Prometheus answered no positive prediction rate"
    finally:
        server.terminate()
        server.wait(30)
        assert worker.stop()[0] == 0


@pytest.mark.parametrize("guarantee", ["at-least-once", "exactly-once"])
def test_consumer_lag_is_reported_under_either_guarantee(
    make_pipeline: Callable[..., Pipeline], guarantee: str
) -> None:
    """Issue 26 item 9: exactly-once workers had no pipeline_consumer_lag samples (their
    offsets go in transactions, which the consumer's own lag figure does not see)."""
    p = make_pipeline(partitions=2)
    port = free_port()
    worker = p.start_worker("--default-model", MLP, "--metrics-port", str(port),
                            "--guarantee", guarantee)  # fmt: skip
    wait_ready(port, worker)
    events = good_events(300)
    send(p.bootstrap, p.input, events)
    read_all(p.bootstrap, [p.output], expect=len(events))

    def lags(m: Samples) -> list[float]:
        return [v for labels, v in m.get("pipeline_consumer_lag", {}).items()
                if ("topic", p.input) in labels]  # fmt: skip

    m = scrape_until(port, lambda m: lags(m) == [0.0, 0.0], timeout_s=30)
    assert worker.stop()[0] == 0
    assert lags(m) == [0.0, 0.0], f"consumer lag of {p.input}'s 2 partitions: {lags(m)}"
