"""The Grafana dashboard's expressions against a real Prometheus scraping a real worker.

Prometheus runs with deploy/prometheus/prometheus.yml, its worker job pointed at a worker
on the session's broker that has consumed good and bad events and answered HTTP requests.
Every panel's expression must then be valid PromQL there, and must answer with data
exactly when the worker has written every metric the expression names; the dashboard's
variables must list the model that ran.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from pipeline.dev.prometheus import LocalPrometheus, local_config
from pipeline.dev.tools import _sample_rows
from tests.integration.test_metrics import scrape, wait_ready
from tests.integration.test_worker import BAD_VALUES
from tests.unit.test_deploy import _expressions, _metric, _series_names, _substituted

from .conftest import Pipeline
from .kafkaio import free_port, good_events, read_all, send

MLP = "breast-cancer-mlp"

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="Debian's prometheus package is not installed (.ci/run installs it)",
)


def _written(port: int) -> set[str]:
    """The METRICS keys the worker on `port` has at least one sample of."""
    return {key for name, series in scrape(port).items() if series and (key := _metric(name))}


def _stored(prometheus: LocalPrometheus) -> set[str]:
    """The METRICS keys Prometheus holds two samples of in the last minute: enough for a
    rate over the minute, the window the dashboard gets here."""
    result = prometheus.query('{__name__=~"pipeline_.+"}[1m]')
    return {
        key for r in result if len(r["values"]) >= 2 and (key := _metric(r["metric"]["__name__"]))
    }


def test_every_dashboard_expression_answers_from_a_real_prometheus(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> None:
    p = make_pipeline(partitions=2)
    metrics_port, http_port, prometheus_port = free_port(), free_port(), free_port()
    worker = p.start_worker("--default-model", MLP, "--metrics-port", str(metrics_port),
                            "--http-port", str(http_port))  # fmt: skip
    wait_ready(metrics_port, worker)
    config = local_config(
        [f"127.0.0.1:{metrics_port}"], port=prometheus_port, scrape_interval_s=1.0
    )
    with LocalPrometheus(config, data_dir=tmp_path / "prometheus", port=prometheus_port) as prom:
        goods = good_events(2000)
        bads = [(f"bad-{k}".encode(), v) for k, v in BAD_VALUES.items()]
        send(p.bootstrap, p.input, goods + bads)
        door = f"http://127.0.0.1:{http_port}/predict"
        assert httpx.post(door, json={"data": _sample_rows()[0]}, timeout=10).status_code == 200
        assert httpx.post(door, json={"data": [1.0]}, timeout=10).status_code == 400
        read_all(p.bootstrap, [p.output, p.dlq], expect=len(goods) + len(bads))
        deadline = time.monotonic() + 60
        written = _written(metrics_port)
        while not ({"consumer_lag", "predictions_total"} <= written <= _stored(prom)):
            assert time.monotonic() < deadline, f"Prometheus holds {_stored(prom)} of {written}"
            time.sleep(0.5)
            written = _written(metrics_port)
        assert {"dead_letters_total", "batch_size", "requests_total"} <= written
        for where, expr in _expressions():
            named = {_metric(name) for name in _series_names(expr)}
            answered = prom.query(_substituted(expr))  # raises on an invalid expression
            assert bool(answered) == (named <= written), f"{where}: {expr} gave {answered}"
        models = prom.api(
            "label/model/values", **{"match[]": "pipeline_inference_executions_total"}
        )
        assert MLP in models
    assert worker.stop()[0] == 0
