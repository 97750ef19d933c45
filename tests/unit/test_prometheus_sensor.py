"""The Prometheus reader of the sensor events, read back with Prometheus's text parser."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from pipeline.metrics.prometheus import PrometheusSensor, _Histogram


def _samples(sensor: PrometheusSensor) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = sensor.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_partition_no_longer_held_drops_its_lag() -> None:
    sensor = PrometheusSensor()
    sensor.consumer_lag("in", 0, 120)
    sensor.consumer_lag("in", 1, 7)
    lag = {k[1]: v for k, v in _samples(sensor).items() if k[0] == "pipeline_consumer_lag"}
    assert lag == {
        (("partition", "0"), ("topic", "in")): 120,
        (("partition", "1"), ("topic", "in")): 7,
    }
    sensor.consumer_lag("in", 0, -1)  # revoked or lost: another member reports it now
    lag = {k[1]: v for k, v in _samples(sensor).items() if k[0] == "pipeline_consumer_lag"}
    assert lag == {(("partition", "1"), ("topic", "in")): 7}
    sensor.consumer_lag("in", 5, -1)  # never held: nothing to drop, nothing raised


def test_batch_stages_are_histograms_by_model_version() -> None:
    sensor = PrometheusSensor()
    sensor.inference("m", "1", 10, 0.002, 0.0004)
    sensor.produce_acknowledged("m", "1", 0.003)
    sensor.predictions("m", "1", np.array([0.004, 0.02]))
    samples = _samples(sensor)
    mv = (("model", "m"), ("version", "1"))
    assert samples[("pipeline_inference_rows_total", mv)] == 10
    assert samples[("pipeline_produce_ack_seconds_count", mv)] == 1
    assert samples[("pipeline_event_to_prediction_seconds_count", mv)] == 2
    assert samples[("pipeline_predictions_total", mv)] == 2


_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.1, 1.0, 10.0)
_EDGY = st.sampled_from([*_BOUNDS, 0.0, -1.0, math.inf, -math.inf, math.nan, 5e-324])


@given(st.lists(st.one_of(_EDGY, st.floats(allow_nan=True)), max_size=40))
def test_one_value_at_a_time_fills_the_buckets_an_array_would(values: list[float]) -> None:
    one, many = _Histogram(_BOUNDS), _Histogram(_BOUNDS)
    for v in values:
        one.observe_one(("m",), v)
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf, 1e308 + 1e308
        many.observe(("m",), np.asarray(values, dtype=np.float64))
    if not values:
        assert one.series == {}
        return
    (counts, total, n), (counts_a, total_a, n_a) = one.series[("m",)], many.series[("m",)]
    assert counts.tolist() == counts_a.tolist()
    assert n == n_a == len(values)
    if all(math.isfinite(v) for v in values):
        assert total == pytest.approx(total_a)
