"""Dead-letter headers: the original headers as they arrived, then what failed and where."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pipeline.kafka.deadletter import MAX_OMIT, STAGES, dead_letter, dead_letter_headers

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "dead-letter.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text())
PIPELINE_HEADERS = [
    "pipeline.error.stage",
    "pipeline.error.type",
    "pipeline.error.message",
    "pipeline.source.topic",
    "pipeline.source.partition",
    "pipeline.source.offset",
    "pipeline.failed_at",
]


def headers_for(original: Any = None, **overrides: Any) -> list[tuple[str, bytes | None]]:
    fields: dict[str, Any] = {
        "stage": "validate",
        "error_type": "NonNumeric",
        "message": "features[1] must be a finite number, got string '15.79'",
        "topic": "features",
        "partition": 2,
        "offset": 1041,
        "failed_at_ms": 1_732_550_400_057,
    }
    return dead_letter_headers(original, **{**fields, **overrides})


def test_pipeline_headers_in_order_with_their_values() -> None:
    assert headers_for() == [
        ("pipeline.error.stage", b"validate"),
        ("pipeline.error.type", b"NonNumeric"),
        ("pipeline.error.message", b"features[1] must be a finite number, got string '15.79'"),
        ("pipeline.source.topic", b"features"),
        ("pipeline.source.partition", b"2"),
        ("pipeline.source.offset", b"1041"),
        ("pipeline.failed_at", b"1732550400057"),
    ]


@pytest.mark.parametrize("original", [None, [], ()])
def test_no_original_headers_gives_only_the_pipeline_headers(original: Any) -> None:
    assert [name for name, _ in headers_for(original)] == PIPELINE_HEADERS


def test_original_headers_come_first_unchanged_including_none_and_duplicates() -> None:
    original: list[tuple[str, bytes | None]] = [
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("tag", b"first"),
        ("empty", None),
        ("tag", b"second"),
        ("binary", b"\x00\xff\xfe"),
        ("blank", b""),
    ]
    before = list(original)

    headers = headers_for(original)

    assert headers[: len(original)] == original
    assert [name for name, _ in headers[len(original) :]] == PIPELINE_HEADERS
    assert original == before  # the record's own header list is not touched


def test_previous_pipeline_headers_are_kept_and_the_new_ones_come_last() -> None:
    # A replayed dead letter that fails again keeps its first failure's headers too.
    first = headers_for(stage="infer", offset=7)

    second = headers_for(first, stage="route", offset=8)

    assert second[:7] == first
    assert dict(second)["pipeline.error.stage"] == b"route"  # last wins when read as a map
    assert dict(second)["pipeline.source.offset"] == b"8"


def test_a_long_message_is_cut_to_1024_bytes() -> None:
    message = "".join(f"{i:05d}" for i in range(1000))  # 5000 ASCII bytes

    value = dict(headers_for(message=message))["pipeline.error.message"]

    assert value == message.encode()[:1024]


@pytest.mark.parametrize("length", [0, 1, 1023, 1024])
def test_a_message_up_to_1024_bytes_is_kept_whole(length: int) -> None:
    message = "m" * length

    value = dict(headers_for(message=message))["pipeline.error.message"]

    assert value == message.encode()


def test_non_ascii_text_is_utf8() -> None:
    headers = dict(headers_for(message="feature 'größe' is not a number", topic="événements"))

    assert headers["pipeline.error.message"] == "feature 'größe' is not a number".encode()
    assert headers["pipeline.source.topic"] == "événements".encode()


def test_a_cut_message_is_still_valid_utf8() -> None:
    message = "x" + "é" * 600  # 1 + 1200 bytes: byte 1024 falls inside an 'é'

    value = dict(headers_for(message=message))["pipeline.error.message"]

    assert value is not None
    assert len(value) <= 1024
    assert message.startswith(value.decode("utf-8"))


def test_stages_match_the_schema() -> None:
    assert list(STAGES) == SCHEMA["properties"]["pipeline.error.stage"]["enum"]


@pytest.mark.parametrize("stage", STAGES)
def test_headers_satisfy_the_dead_letter_schema(stage: str) -> None:
    original = [("traceparent", b"00-abc-01")]

    headers = headers_for(original, stage=stage, message="m" * 5000, partition=0, offset=0)

    document = {name: value.decode() for name, value in headers if value is not None}
    jsonschema.Draft202012Validator(SCHEMA).validate(document)


KEY = b"k" * 3000


def letter(omit: int, *, unreadable: bool = False) -> tuple[bytes | None, dict[str, Any]]:
    key, value, headers = dead_letter(
        KEY,
        b"x" * 2000,
        [("trace", b"t")],
        reason=("decode", "TooLarge", "too large"),
        topic="features",
        partition=1,
        offset=9,
        failed_at_ms=1,
        omit=omit,
        unreadable_headers=unreadable,
    )
    assert key == (None if omit >= MAX_OMIT else KEY)
    return value, dict(headers)


def test_a_whole_dead_letter_keeps_the_value_and_the_original_headers() -> None:
    value, headers = letter(0)

    assert value == b"x" * 2000
    assert headers["trace"] == b"t" and headers["pipeline.error.type"] == b"TooLarge"
    assert "pipeline.value.omitted" not in headers and "pipeline.headers.omitted" not in headers


def test_omit_1_leaves_the_value_out_and_says_how_large_it_was() -> None:
    value, headers = letter(1)

    assert value is None
    assert headers["pipeline.value.omitted"] == b"2000" and headers["trace"] == b"t"


def test_omit_2_also_leaves_the_original_headers_out() -> None:
    value, headers = letter(2)

    assert value is None and "trace" not in headers
    assert headers["pipeline.headers.omitted"] == b"1"
    assert headers["pipeline.source.offset"] == b"9"
    assert "pipeline.key.omitted" not in headers


def test_omit_3_also_leaves_the_key_out_and_says_how_large_it_was_and_which() -> None:
    value, headers = letter(MAX_OMIT)

    assert MAX_OMIT == 3 and value is None and "trace" not in headers
    assert headers["pipeline.key.omitted"] == b"3000"
    assert headers["pipeline.key.sha256"] == hashlib.sha256(KEY).hexdigest().encode()
    assert headers["pipeline.value.omitted"] == b"2000"


def test_unreadable_headers_are_left_out_and_said_to_be() -> None:
    value, headers = letter(0, unreadable=True)

    assert value == b"x" * 2000 and "trace" not in headers
    assert headers["pipeline.headers.omitted"] == b"1"
