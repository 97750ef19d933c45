"""The input headers a prediction carries: the W3C trace context, nothing else."""

from __future__ import annotations

import pytest

from pipeline.kafka.headers import CARRIED, MAX_VALUE_BYTES, carried_headers

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_trace_context_and_baggage_are_carried_in_order() -> None:
    headers = [
        ("baggage", b"userId=alice"),
        ("app", b"x"),
        ("tracestate", b"congo=t61rcWkgMzE"),
        ("traceparent", TRACEPARENT),
    ]

    assert carried_headers(headers) == [
        ("traceparent", TRACEPARENT),
        ("tracestate", b"congo=t61rcWkgMzE"),
        ("baggage", b"userId=alice"),
    ]


@pytest.mark.parametrize("headers", [None, [], [("app", b"1"), ("pipeline.error.stage", b"x")]])
def test_nothing_to_carry(headers: list[tuple[str, bytes]] | None) -> None:
    assert carried_headers(headers) == []


def test_names_match_whatever_their_case_and_are_written_in_lower_case() -> None:
    assert carried_headers([("TraceParent", TRACEPARENT)]) == [("traceparent", TRACEPARENT)]


def test_the_first_usable_one_of_each_is_carried() -> None:
    headers = [
        ("traceparent", None),
        ("traceparent", b"x" * (MAX_VALUE_BYTES + 1)),
        ("traceparent", TRACEPARENT),
        ("traceparent", b"later"),
    ]

    assert carried_headers(headers) == [("traceparent", TRACEPARENT)]


def test_string_values_become_bytes() -> None:
    assert carried_headers([("tracestate", "a=1")]) == [("tracestate", b"a=1")]


def test_the_carried_names_are_the_documented_ones() -> None:
    assert CARRIED == ("traceparent", "tracestate", "baggage")
