"""The Prometheus reader of the sensor events: counters, gauges and histograms, one prefix.

Names follow the conventions of the model servers users know: base units (`_seconds`),
`_total` counters, labels ``model`` and ``version`` where they apply; inference
*executions* are counted apart from inference *rows* (as Triton does), so their ratio is the
mean batch size. The metrics are held here, not in prometheus_client's metric objects:
events arrive per batch with arrays of values (latencies of every prediction of a batch),
which a numpy histogram takes in one call where `Histogram.observe` would take one call per
row. A `prometheus_client` collector hands them to any registry.

==========================================================  =========  ============================
metric                                                      type       labels
==========================================================  =========  ============================
pipeline_records_consumed_total                             counter    topic
pipeline_records_produced_total                             counter    topic
pipeline_predictions_total                                  counter    model, version
pipeline_dead_letters_total                                 counter    stage, error_type
pipeline_inference_executions_total                         counter    model, version
pipeline_inference_rows_total                               counter    model, version
pipeline_rows_expired_total                                 counter    model, version
pipeline_batch_size                                         histogram  model, version
pipeline_queue_wait_seconds                                 histogram  model, version
pipeline_inference_seconds                                  histogram  model, version
pipeline_produce_ack_seconds                                histogram  model, version
pipeline_event_to_prediction_seconds                        histogram  model, version
pipeline_model_loads_total                                  counter    model, version
pipeline_model_load_failures_total                          counter    model, version
pipeline_model_evictions_total                              counter    model, version
pipeline_shadow_rows_total                                  counter    model, version, shadow
pipeline_shadow_agreements_total                            counter    model, version, shadow
pipeline_shadow_score_difference                            histogram  model, version, shadow
pipeline_shadow_errors_total                                counter    model, version, shadow,
                                                                       error_type
pipeline_shadow_rows_skipped_total                          counter    model, version, shadow
pipeline_consumer_lag                                       gauge      topic, partition
pipeline_partitions_assigned, pipeline_partitions_paused    gauge
pipeline_enrich_table_rows, pipeline_enrich_table_bytes     gauge      table
pipeline_enrich_defaults_total                              counter    table
pipeline_enrich_waits_total                                 counter    table, outcome
pipeline_enrich_wait_seconds_total                          counter    table
pipeline_rebalances_total                                   counter    kind
pipeline_transactions_total                                 counter    outcome
pipeline_share_acknowledgements_total                       counter    kind
pipeline_requests_total                                     counter    door, code
pipeline_request_seconds                                    histogram  door
==========================================================  =========  ============================
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pipeline.metrics.sensor import Sensor

__all__ = ["METRICS", "PrometheusSensor"]

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

_MV = ("model", "version")
_MVS = ("model", "version", "shadow")
_DIFFERENCES = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# name -> (type, help, label names, buckets for histograms)
METRICS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...]]] = {
    "records_consumed_total": ("counter", "Input records read", ("topic",), ()),
    "records_produced_total": ("counter", "Outputs acknowledged by the broker", ("topic",), ()),
    "predictions_total": (
        "counter",
        "Predictions acknowledged by the broker or answered by a door",
        _MV,
        (),
    ),
    "dead_letters_total": (
        "counter",
        "Dead letters acknowledged by the broker",
        ("stage", "error_type"),
        (),
    ),
    "inference_executions_total": ("counter", "Batches run through a model", _MV, ()),
    "inference_rows_total": ("counter", "Rows run through a model", _MV, ()),
    "rows_expired_total": ("counter", "Rows not run: their caller's deadline passed", _MV, ()),
    "batch_size": ("histogram", "Rows per inference batch", _MV, _ROWS),
    "queue_wait_seconds": (
        "histogram",
        "How long a batch's oldest row waited for the batch to run",
        _MV,
        _SECONDS,
    ),
    "inference_seconds": ("histogram", "How long one batch took in ONNX Runtime", _MV, _SECONDS),
    "produce_ack_seconds": (
        "histogram",
        "From a batch's first prediction produced to its last acknowledged by the broker",
        _MV,
        _SECONDS,
    ),
    "event_to_prediction_seconds": (
        "histogram",
        "From an event's time to its prediction's acknowledgement",
        _MV,
        _SECONDS,
    ),
    "model_loads_total": ("counter", "Model versions loaded and warmed", _MV, ()),
    "model_load_failures_total": ("counter", "Model versions that failed to load", _MV, ()),
    "model_evictions_total": ("counter", "Model versions dropped from the cache", _MV, ()),
    "shadow_rows_total": ("counter", "Served rows a shadow version answered", _MVS, ()),
    "shadow_agreements_total": (
        "counter",
        "Shadowed rows whose label the shadow version agreed with (labelled models)",
        _MVS,
        (),
    ),
    "shadow_score_difference": (
        "histogram",
        "Absolute difference between the shadow's probability of the served label and the "
        "served score (labelled models), or of the first shared output",
        _MVS,
        _DIFFERENCES,
    ),
    "shadow_errors_total": (
        "counter",
        "Served rows the shadow version failed on",
        (*_MVS, "error_type"),
        (),
    ),
    "shadow_rows_skipped_total": (
        "counter",
        "Served rows not shadowed because the shadow thread was behind",
        _MVS,
        (),
    ),
    "consumer_lag": (
        "gauge",
        "Records not yet read (librdkafka statistics)",
        ("topic", "partition"),
        (),
    ),
    "partitions_assigned": ("gauge", "Partitions this worker holds", (), ()),
    "partitions_paused": ("gauge", "Partitions paused for backpressure", (), ()),
    "enrich_table_rows": ("gauge", "Entities in an --enrich table", ("table",), ()),
    "enrich_table_bytes": (
        "gauge",
        "Estimated bytes an --enrich table holds (sys.getsizeof of its objects)",
        ("table",),
        (),
    ),
    "enrich_defaults_total": (
        "counter",
        "Rows that took the model's defaults because an --enrich table lacked their entity",
        ("table",),
        (),
    ),
    "enrich_waits_total": (
        "counter",
        "Missing entities waited for (--enrich-missing NAME=wait:MS), by whether they arrived",
        ("table", "outcome"),
        (),
    ),
    "enrich_wait_seconds_total": (
        "counter",
        "Seconds consumed batches waited for missing entities of an --enrich table",
        ("table",),
        (),
    ),
    "rebalances_total": ("counter", "Partitions assigned, revoked or lost", ("kind",), ()),
    "transactions_total": ("counter", "Transactions committed or aborted", ("outcome",), ()),
    "share_acknowledgements_total": (
        "counter",
        "Share groups: records accepted, released or rejected",
        ("kind",),
        (),
    ),
    "requests_total": ("counter", "Front-door requests by door and status", ("door", "code"), ()),
    "request_seconds": ("histogram", "Front-door request duration", ("door",), _SECONDS),
}


class _Histogram:
    """Bucket counts, sum and count per label set; takes arrays of observations, or one."""

    __slots__ = ("bounds", "edges", "series")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.edges = tuple(float(b) for b in bounds)
        self.series: dict[tuple[str, ...], list[Any]] = {}

    def _entry(self, labels: tuple[str, ...]) -> list[Any]:
        entry = self.series.get(labels)
        if entry is None:
            entry = self.series[labels] = [np.zeros(len(self.bounds) + 1, np.int64), 0.0, 0]
        return entry

    def observe(self, labels: tuple[str, ...], values: np.ndarray) -> None:
        entry = self._entry(labels)
        entry[0] += np.bincount(np.searchsorted(self.bounds, values, side="left"),
                                minlength=len(self.bounds) + 1)  # fmt: skip
        entry[1] += float(values.sum())
        entry[2] += len(values)

    def observe_one(self, labels: tuple[str, ...], value: float) -> None:
        """`observe` of one value, without numpy's per-call cost (a batch's timings, a
        request's duration: several per request at a front door)."""
        entry = self._entry(labels)
        # bisect_left is searchsorted's "left" for numbers; NaN sorts last there, as here.
        bucket = bisect.bisect_left(self.edges, value) if value == value else len(self.edges)
        entry[0][bucket] += 1
        entry[1] += value
        entry[2] += 1


class PrometheusSensor(Sensor, Collector):
    """Keeps every metric of the module docstring; `registry` exposes them.

    Args:
        prefix: Prepended to every name, with an underscore.
    """

    def __init__(self, *, prefix: str = "pipeline") -> None:
        self._prefix = prefix
        self._lock = threading.Lock()
        self._values: dict[str, dict[tuple[str, ...], float]] = {
            name: {} for name, (kind, *_) in METRICS.items() if kind != "histogram"
        }
        self._histograms = {
            name: _Histogram(buckets) for name, (kind, _, _, buckets) in METRICS.items()
            if kind == "histogram"
        }  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return bytes(generate_latest(self.registry))

    # -- updates ----------------------------------------------------------------------------

    def _add(self, name: str, labels: tuple[str, ...], n: float) -> None:
        with self._lock:
            series = self._values[name]
            series[labels] = series.get(labels, 0.0) + n

    def _set(self, name: str, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._values[name][labels] = value

    def _observe(self, name: str, labels: tuple[str, ...], values: np.ndarray) -> None:
        with self._lock:
            self._histograms[name].observe(labels, values)

    def _observe_one(self, name: str, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            self._histograms[name].observe_one(labels, value)

    # -- sensor events ----------------------------------------------------------------------

    def inference(
        self, model: str, version: str, rows: int, queue_wait_s: float, infer_s: float
    ) -> None:
        labels = (model, version)
        with self._lock:
            for name, n in (("inference_executions_total", 1), ("inference_rows_total", rows)):
                series = self._values[name]
                series[labels] = series.get(labels, 0.0) + n
            self._histograms["batch_size"].observe_one(labels, float(rows))
            self._histograms["queue_wait_seconds"].observe_one(labels, queue_wait_s)
            self._histograms["inference_seconds"].observe_one(labels, infer_s)

    def rows_expired(self, model: str, version: str, rows: int) -> None:
        self._add("rows_expired_total", (model, version), rows)

    def model_loaded(self, model: str, version: str, seconds: float) -> None:
        self._add("model_loads_total", (model, version), 1)

    def model_load_failed(self, model: str, version: str) -> None:
        self._add("model_load_failures_total", (model, version), 1)

    def model_evicted(self, model: str, version: str) -> None:
        self._add("model_evictions_total", (model, version), 1)

    def shadowed(
        self,
        model: str,
        version: str,
        shadow: str,
        rows: int,
        agreed: int | None,
        differences: np.ndarray,
    ) -> None:
        labels = (model, version, shadow)
        self._add("shadow_rows_total", labels, rows)
        if agreed is not None:
            self._add("shadow_agreements_total", labels, agreed)
        self._observe("shadow_score_difference", labels, np.asarray(differences, np.float64))

    def shadow_failed(
        self, model: str, version: str, shadow: str, error_type: str, rows: int
    ) -> None:
        self._add("shadow_errors_total", (model, version, shadow, error_type), rows)

    def shadow_skipped(self, model: str, version: str, shadow: str, rows: int) -> None:
        self._add("shadow_rows_skipped_total", (model, version, shadow), rows)

    def records_consumed(self, topic: str, n: int) -> None:
        self._add("records_consumed_total", (topic,), n)

    def records_produced(self, topic: str, n: int) -> None:
        self._add("records_produced_total", (topic,), n)

    def predictions(self, model: str, version: str, latencies_s: np.ndarray) -> None:
        labels = (model, version)
        with self._lock:
            series = self._values["predictions_total"]
            series[labels] = series.get(labels, 0.0) + len(latencies_s)
            self._histograms["event_to_prediction_seconds"].observe(labels, latencies_s)

    def answered(self, model: str, version: str, rows: int) -> None:
        self._add("predictions_total", (model, version), rows)

    def produce_acknowledged(self, model: str, version: str, seconds: float) -> None:
        self._observe_one("produce_ack_seconds", (model, version), seconds)

    def dead_letters(self, stage: str, error_type: str, n: int) -> None:
        self._add("dead_letters_total", (stage, error_type), n)

    def partitions(self, assigned: int, paused: int) -> None:
        self._set("partitions_assigned", (), assigned)
        self._set("partitions_paused", (), paused)

    def rebalance(self, kind: str, partitions: int) -> None:
        self._add("rebalances_total", (kind,), 1)

    def transaction(self, outcome: str) -> None:
        self._add("transactions_total", (outcome,), 1)

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        labels = (topic, str(partition))
        if lag >= 0:
            self._set("consumer_lag", labels, lag)
            return
        with self._lock:  # a partition revoked or lost: its last figure would go stale
            self._values["consumer_lag"].pop(labels, None)

    def enrich_table(self, table: str, rows: int, nbytes: int) -> None:
        self._set("enrich_table_rows", (table,), rows)
        self._set("enrich_table_bytes", (table,), nbytes)

    def enrich_defaulted(self, table: str, rows: int) -> None:
        self._add("enrich_defaults_total", (table,), rows)

    def enrich_waited(self, table: str, arrived: int, absent: int, seconds: float) -> None:
        self._add("enrich_waits_total", (table, "arrived"), arrived)
        self._add("enrich_waits_total", (table, "absent"), absent)
        self._add("enrich_wait_seconds_total", (table,), seconds)

    def records_acknowledged(self, kind: str, n: int) -> None:
        self._add("share_acknowledgements_total", (kind,), n)

    def request(self, door: str, status: str, seconds: float) -> None:
        self._add("requests_total", (door, status), 1)
        self._observe_one("request_seconds", (door,), seconds)

    # -- the collector ----------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        with self._lock:
            values = {name: dict(series) for name, series in self._values.items()}
            histograms = {
                name: {k: (v[0].copy(), v[1]) for k, v in h.series.items()}
                for name, h in self._histograms.items()
            }
        for name, (kind, text, label_names, buckets) in METRICS.items():
            full = f"{self._prefix}_{name}"
            if kind == "histogram":
                yield _histogram(full, text, label_names, buckets, histograms[name])
                continue
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family_name = full[: -len("_total")] if kind == "counter" else full
            family = family_type(family_name, text, labels=label_names)
            for labels, value in values[name].items():
                family.add_metric(list(labels), value)
            yield family


def _histogram(
    name: str,
    text: str,
    label_names: tuple[str, ...],
    bounds: Sequence[float],
    series: dict[tuple[str, ...], tuple[np.ndarray, float]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=label_names)
    for labels, (counts, total) in series.items():
        cumulative = np.cumsum(counts).tolist()
        edges = [
            *(repr(float(b)) if not float(b).is_integer() else str(int(b)) for b in bounds),
            "+Inf",
        ]
        family.add_metric(list(labels), list(zip(edges, cumulative, strict=True)), total)
    return family
