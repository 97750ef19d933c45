"""Schema Registry framed values through the codec: the frame's checks, the reasons that
name the schema, ``auto`` telling frames from JSON text, and JSON left as it was."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.engine.codec import EventDecoder
from pipeline.engine.framing import FrameProblem, frame_schema_id, looks_framed
from pipeline.engine.spec import ModelSpec

from .test_codec import DictCatalog

PLAIN = ModelSpec(name="plain", version="1", n_features=2)


class Records:
    """A FramedReader over a dict: the payload after the header is a key into `records`."""

    def __init__(self, records: dict[bytes, Any], known: tuple[int, ...] = (7,)) -> None:
        self.records = records
        self.known = known

    def read(self, schema_id: int, value: bytes) -> object:
        if schema_id not in self.known:
            raise FrameProblem("decode", "UnknownSchema", f"schema id {schema_id} is unknown")
        try:
            record = self.records[value[5:]]
        except KeyError:
            raise FrameProblem("decode", "InvalidAvro", "the payload ends early") from None
        return dict(record) if isinstance(record, dict) else record  # each read, a new one

    def describe(self, schema_id: int) -> str:
        return f"schema id {schema_id} (record example.FeatureEvent)"

    def event_reader(self, schema_id: int) -> None:
        return None  # every value through `read`


def framed(payload: bytes, schema_id: int = 7, magic: int = 0) -> bytes:
    return bytes([magic]) + schema_id.to_bytes(4, "big") + payload


RECORDS: dict[bytes, Any] = {
    b"good": {"id": "a", "model": None, "version": None, "ts": None, "features": [1.0, 2.0]},
    b"named": {"id": "b", "model": "plain", "features": [3.0, 4.0], "added": "later"},
    b"nofeatures": {"id": "c", "model": None},
    b"array": [1, 2],
}


def decoder(value_format: str) -> EventDecoder:
    return EventDecoder(
        catalog=DictCatalog(PLAIN),
        default_model="plain",
        value_format=value_format,
        framed=Records(RECORDS),
    )


def rejects(value_format: str, *values: bytes) -> list[tuple[str, str, str]]:
    decoded = decoder(value_format).decode(list(values), [1] * len(values))
    return [(r.stage, r.error_type, r.message) for r in decoded.rejects]


def test_framed_records_become_rows_and_a_null_optional_field_is_absent() -> None:
    decoded = decoder("avro").decode([framed(b"good"), framed(b"named")], [5, 6])
    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    assert block.ids == ["a", "b"] and block.ts == [5, 6]  # a null ts falls back
    assert block.feed["features"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("value", "error_type", "says"),
    [
        (framed(b"good", magic=1), "UnknownMagicByte", "got byte 0x01"),
        (framed(b"good")[:4], "TruncatedFrame", "got 4 bytes"),
        (framed(b""), "TruncatedFrame", "got 5 bytes"),
        (framed(b"good", schema_id=8), "UnknownSchema", "schema id 8"),
        (framed(b"go"), "InvalidAvro", "ends early"),
        (framed(b"array"), "NotAnObject", "must be a record, got an array"),
        (b"", "EmptyValue", "expected a Schema Registry framed value"),
        (b'{"id": "j", "features": [1, 2]}', "UnknownMagicByte", "got byte 0x7b"),
    ],
)
def test_each_bad_frame_is_one_decode_reject_with_its_reason(
    value: bytes, error_type: str, says: str
) -> None:
    values = [framed(b"good"), value, framed(b"named")]
    decoded = decoder("avro").decode(values, [1, 1, 1])
    ((stage, kind, message),) = [(r.stage, r.error_type, r.message) for r in decoded.rejects]
    assert (stage, kind) == ("decode", error_type) and says in message
    assert decoded.rejects[0].index == 1
    assert sum(b.rows for b in decoded.blocks.values()) == 2


def test_a_record_without_features_names_its_schema() -> None:
    ((stage, kind, message),) = rejects("avro", framed(b"nofeatures"))
    assert (stage, kind) == ("validate", "MissingField")
    assert message.startswith("features is required")
    assert message.endswith("(schema id 7 (record example.FeatureEvent))")


def test_auto_reads_frames_and_json_text_per_value() -> None:
    values = [framed(b"good"), b' {"id": "j", "features": [1, 2]}', framed(b"good", magic=1)]
    decoded = decoder("auto").decode(values, [1, 1, 1])
    (block,) = decoded.blocks.values()
    assert block.ids == ["a", "j"]
    assert [(r.index, r.error_type) for r in decoded.rejects] == [(2, "UnknownMagicByte")]
    assert rejects("auto", b"\xff") == rejects("json", b"\xff")  # not a frame: JSON's reason


def test_json_values_are_decoded_as_before() -> None:
    values = [b'{"id": "j", "features": [1, 2]}', framed(b"good"), b'{"id": 1}']
    plain = EventDecoder(catalog=DictCatalog(PLAIN), default_model="plain")
    before, now = plain.decode(values, [1, 1, 1]), decoder("json").decode(values, [1, 1, 1])
    assert now.rejects == before.rejects
    assert (
        [b.ids for b in now.blocks.values()] == [b.ids for b in before.blocks.values()] == [["j"]]
    )
    assert rejects("json", framed(b"good"))[0][1] == "InvalidJson"


def test_the_frame_header_and_which_values_look_framed() -> None:
    assert frame_schema_id(framed(b"x", schema_id=0x01020304)) == 0x01020304
    assert [looks_framed(v) for v in (b"\x00", b"\x01", b"\t{", b"{", b"\xef", b"")] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]


def test_a_format_that_reads_frames_needs_a_reader() -> None:
    with pytest.raises(ValueError, match="'avro' needs a reader of framed values"):
        EventDecoder(catalog=DictCatalog(PLAIN), value_format="avro")
    with pytest.raises(ValueError, match="'protobuf' needs a reader of framed values"):
        EventDecoder(catalog=DictCatalog(PLAIN), value_format="protobuf")
    with pytest.raises(
        ValueError, match="value_format must be one of json, avro, jsonschema, protobuf, auto"
    ):
        EventDecoder(catalog=DictCatalog(PLAIN), value_format="thrift")
