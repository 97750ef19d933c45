"""Where an event's time goes, from the worker's own histograms over one window.

The benchmark scrapes the worker's ``/metrics`` before and after a measured window and
subtracts, so each stage's histogram holds that window only:

=====================  ===========================================  ====================
stage                  histogram                                    one observation per
=====================  ===========================================  ====================
queue wait             ``pipeline_queue_wait_seconds``              batch (its oldest row)
inference              ``pipeline_inference_seconds``               batch
produce + ack          ``pipeline_produce_ack_seconds``             batch of one partition
event to prediction    ``pipeline_event_to_prediction_seconds``     event (``ts`` to ack)
=====================  ===========================================  ====================

What the three batch stages do not explain of the event-to-prediction time is the
broker and the fetch: the producer's acknowledgement, the consumer's fetch, decoding.
Quantiles are estimated from the buckets as Prometheus's ``histogram_quantile`` does
(linear within a bucket), so they are as coarse as the buckets (0.5, 1, 2.5, 5, 10, 25,
50, 100, 250 ms, ...).
"""

from __future__ import annotations

import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["STAGES", "Snapshot", "quantile", "scrape", "stage_figures"]

STAGES: dict[str, str] = {
    "queue_wait": "pipeline_queue_wait_seconds",
    "inference": "pipeline_inference_seconds",
    "produce_ack": "pipeline_produce_ack_seconds",
    "event_to_prediction": "pipeline_event_to_prediction_seconds",
}

Snapshot = dict[str, dict[float, float]]
"""Histogram name -> upper bound (seconds, ``inf`` last) -> cumulative count, all labels."""


def scrape(port: int, timeout_s: float = 5.0) -> Snapshot:
    """The stage histograms from the worker's ``/metrics`` on 127.0.0.1:`port`."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        text = answer.read().decode()
    wanted = set(STAGES.values())
    snapshot: Snapshot = {name: {} for name in wanted}
    for family in text_string_to_metric_families(text):
        if family.name not in wanted:
            continue
        buckets = snapshot[family.name]
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return snapshot


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The `q` quantile (0-1) of a cumulative histogram, as ``histogram_quantile`` does."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bucket: its bound, as Prometheus
            share = (rank - lower_count) / max(count - lower_count, 1e-12)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def stage_figures(before: Snapshot, after: Snapshot) -> dict[str, dict[str, Any]]:
    """Per stage over the window between two snapshots: count, p50 and p99 (ms), buckets.

    ``buckets`` maps each upper bound in ms (``"+Inf"`` last) to the window's
    observations at or below it (cumulative, as Prometheus keeps them).
    """
    figures: dict[str, dict[str, Any]] = {}
    for stage, name in STAGES.items():
        window = {
            bound: count - before.get(name, {}).get(bound, 0.0)
            for bound, count in after.get(name, {}).items()
        }
        count = window.get(float("inf"), 0.0)
        p50, p99 = quantile(window, 0.5), quantile(window, 0.99)
        figures[stage] = {
            "count": int(count),
            "p50_ms": None if p50 is None else p50 * 1000,
            "p99_ms": None if p99 is None else p99 * 1000,
            "buckets": {
                ("+Inf" if b == float("inf") else f"{b * 1000:g}"): int(window[b])
                for b in sorted(window)
            },
        }
    return figures
