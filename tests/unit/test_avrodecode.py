"""The flat Avro record reader (`pipeline.engine.avrodecode`) against fastavro: the same
values for every record fastavro writes, blocks of either sign, an error for every value
cut short, and None for the schemas it leaves to fastavro; no registry."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.avrodecode import event_reader, record_reader

ROOT = Path(__file__).resolve().parents[2]
EVENT = json.loads((ROOT / "schemas/feature-event.avsc").read_text())
WIDE = {
    "type": "record",
    "name": "Wide",
    "fields": [
        {"name": "flag", "type": "boolean"},
        {"name": "small", "type": "int"},
        {"name": "big", "type": "long"},
        {"name": "f32", "type": "float"},
        {"name": "f64", "type": "double"},
        {"name": "raw", "type": "bytes"},
        {"name": "text", "type": "string"},
        {"name": "maybe", "type": ["null", "string"]},
        {"name": "either", "type": ["string", "null", "long", "double"]},
        {"name": "floats", "type": {"type": "array", "items": "float"}},
        {"name": "words", "type": {"type": "array", "items": "string"}},
        {"name": "counts", "type": {"type": "map", "values": "long"}},
        {"name": "inputs", "type": {"type": "record", "name": "Inputs", "fields": [
            {"name": "amount", "type": "double"}, {"name": "country", "type": "string"}]}},
        {"name": "history", "type": {"type": "array", "items": {
            "type": "record", "name": "Past", "fields": [{"name": "n", "type": "int"}]}}},
    ],
}  # fmt: skip

_F32 = st.floats(width=32, allow_nan=False)
_F64 = st.floats(allow_nan=False)
_I32 = st.integers(-(2**31), 2**31 - 1)
_I64 = st.integers(-(2**63), 2**63 - 1)
_TEXT = st.text(max_size=12)

EVENTS = st.fixed_dictionaries({
    "id": _TEXT, "model": st.none() | _TEXT, "version": st.none() | _TEXT,
    "ts": st.none() | _I64, "features": st.lists(_F64, max_size=40),
})  # fmt: skip
WIDES = st.fixed_dictionaries({
    "flag": st.booleans(), "small": _I32, "big": _I64, "f32": _F32, "f64": _F64,
    "raw": st.binary(max_size=12), "text": _TEXT, "maybe": st.none() | _TEXT,
    "either": _TEXT | st.none() | _I64 | _F64, "floats": st.lists(_F32, max_size=6),
    "words": st.lists(_TEXT, max_size=4), "counts": st.dictionaries(_TEXT, _I64, max_size=4),
    "inputs": st.fixed_dictionaries({"amount": _F64, "country": _TEXT}),
    "history": st.lists(st.fixed_dictionaries({"n": _I32}), max_size=3),
})  # fmt: skip


def _written(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(schema), record)
    return out.getvalue()


def _fastavro(schema: dict[str, Any], payload: bytes) -> Any:
    return schemaless_reader(io.BytesIO(payload), parse_schema(schema), None)


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_an_event_reads_as_fastavro_reads_it(record: dict[str, Any]) -> None:
    payload = _written(EVENT, record)
    read = record_reader(EVENT)
    assert read is not None
    assert read(b"\0\0\0\0\1" + payload, 5) == _fastavro(EVENT, payload)


@settings(max_examples=200, deadline=None)
@given(WIDES)
def test_every_kind_of_field_reads_as_fastavro_reads_it(record: dict[str, Any]) -> None:
    payload = _written(WIDE, record)
    read = record_reader(WIDE)
    assert read is not None
    assert read(payload, 0) == _fastavro(WIDE, payload)


@settings(max_examples=50, deadline=None)
@given(WIDES)
def test_a_value_cut_short_is_an_error_never_a_record(record: dict[str, Any]) -> None:
    payload = _written(WIDE, record)
    read = record_reader(WIDE)
    assert read is not None
    for end in range(len(payload)):
        with pytest.raises((IndexError, EOFError, ValueError, struct.error)):
            read(payload[:end], 0)


def test_arrays_in_several_blocks_and_blocks_with_their_size_read_whole() -> None:
    """Java's blocking encoder writes a negative count followed by the block's size."""
    schema = {"type": "record", "name": "R", "fields": [
        {"name": "xs", "type": {"type": "array", "items": "double"}},
        {"name": "m", "type": {"type": "map", "values": "string"}}]}  # fmt: skip
    doubles = b"".join(v.to_bytes(8, "little") for v in (0x3FF0000000000000, 0x4000000000000000))
    payload = (
        b"\x02" + doubles[:8]  # a block of 1
        + b"\x01" + b"\x10" + doubles[8:]  # a block of -1, 8 bytes long
        + b"\x00"  # the end
        + b"\x01\x0a" + b"\x02k" + b"\x02v" + b"\x00"  # a map block of -1, 5 bytes long
    )  # fmt: skip
    read = record_reader(schema)
    assert read is not None
    assert read(payload, 0) == {"xs": [1.0, 2.0], "m": {"k": "v"}} == _fastavro(schema, payload)


@pytest.mark.parametrize(
    "field",
    [
        {"type": "enum", "name": "E", "symbols": ["A"]},
        {"type": "fixed", "name": "F", "size": 2},
        {"type": "long", "logicalType": "timestamp-millis"},
        "Self",  # a recursive record
    ],
)
def test_a_schema_it_does_not_read_is_left_to_fastavro(field: Any) -> None:
    schema = {"type": "record", "name": "Self", "fields": [{"name": "x", "type": field}]}
    assert record_reader(schema) is None
    assert record_reader({"type": "array", "items": "long"}) is None  # not a record


def test_field_names_reach_the_reader_as_data_never_as_code() -> None:
    """The reader is generated Python source: a name that would close the record's dict
    and run a statement stays a key."""
    name = "x'}; raise SystemExit('injected'); {'y"
    schema = {"type": "record", "name": "N'\nraise SystemExit", "fields": [
        {"name": name, "type": "long"}, {"name": "s", "type": "string"}]}  # fmt: skip
    read = record_reader(schema)
    assert read is not None
    assert read(b"\x04" + b"\x02a", 0) == {name: 2, "s": "a"}


# -- records of the event contract's shape (`event_reader`) ------------------------------

_ABSENT = object()


def _as_event(*fields: Any) -> dict[str, Any]:
    """What `event_reader` gives `make`, as the dict `record_reader` would have given."""
    event_id, features, model, version, ts = fields
    if type(features) is bytes:  # one block, kept packed
        features = list(struct.unpack(f"<{len(features) // 8}d", features))
    named = {"model": model, "version": version, "ts": ts}
    return {"id": event_id, "features": features} | {
        k: (None if v is _ABSENT else v) for k, v in named.items()
    }


EVOLVED = {**EVENT, "fields": [
    *EVENT["fields"][:2],
    {"name": "source", "type": ["null", {"type": "record", "name": "Source", "fields": [
        {"name": "region", "type": ["null", "string"]}]}], "default": None},
    *EVENT["fields"][2:],
    {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
]}  # fmt: skip
EVOLVED_EVENTS = st.fixed_dictionaries({
    "id": _TEXT, "model": st.none() | _TEXT, "version": st.none() | _TEXT,
    "ts": st.none() | _I64, "features": st.lists(_F64, max_size=40),
    "source": st.none() | st.fixed_dictionaries({"region": st.none() | _TEXT}),
    "tags": st.dictionaries(_TEXT, _TEXT, max_size=3),
})  # fmt: skip


def _event_reader(schema: dict[str, Any]) -> Any:
    read = event_reader(schema, _as_event, _ABSENT)
    assert read is not None
    return read


@settings(max_examples=200, deadline=None)
@given(EVENTS)
def test_an_event_record_reads_as_the_record_reader_reads_it(record: dict[str, Any]) -> None:
    payload = b"\0\0\0\0\1" + _written(EVENT, record)
    plain = record_reader(EVENT)
    assert plain is not None
    assert _event_reader(EVENT)(payload, 5) == plain(payload, 5)


@settings(max_examples=100, deadline=None)
@given(EVOLVED_EVENTS)
def test_fields_of_its_own_are_read_past_and_dropped(record: dict[str, Any]) -> None:
    payload = _written(EVOLVED, record)
    plain = _fastavro(EVOLVED, payload)
    assert _event_reader(EVOLVED)(payload, 0) == {
        k: plain[k] for k in ("id", "features", "model", "version", "ts")
    }


def test_a_single_block_of_doubles_stays_packed_and_several_become_floats() -> None:
    seen: list[Any] = []
    read = event_reader(EVENT, lambda *fields: seen.append(fields[1]), _ABSENT)
    assert read is not None
    one, two = struct.pack("<d", 1.5), struct.pack("<d", -2.0)
    head = b"\x02a" + b"\x00\x00\x00"  # id "a", no model, version or ts
    read(head + b"\x04" + one + two + b"\x00", 0)  # one block of 2
    read(head + b"\x03\x20" + one + two + b"\x00", 0)  # a block of -2, 16 bytes long
    read(head + b"\x02" + one + b"\x02" + two + b"\x00", 0)  # two blocks of 1
    read(head + b"\x00", 0)  # empty
    assert seen == [one + two, one + two, [1.5, -2.0], []]


@settings(max_examples=50, deadline=None)
@given(EVENTS)
def test_an_event_record_cut_short_is_an_error_never_an_event(record: dict[str, Any]) -> None:
    payload = _written(EVENT, record)
    read = _event_reader(EVENT)
    for end in range(len(payload)):
        with pytest.raises((IndexError, EOFError, ValueError, struct.error)):
            read(payload[:end], 0)


def _with(name: str, kind: Any) -> dict[str, Any]:
    fields = [f for f in EVENT["fields"] if f["name"] != name]
    return {**EVENT, "fields": [*fields, *([{"name": name, "type": kind}] if kind else [])]}


@pytest.mark.parametrize(
    "schema",
    [
        _with("features", None),  # no features
        _with("id", None),  # no id
        _with("features", {"type": "array", "items": "float"}),
        _with("features", {"type": "map", "values": "double"}),  # named inputs: a dict
        _with("id", "bytes"),
        _with("ts", ["null", "string"]),
        _with("ts", {"type": "long", "logicalType": "timestamp-millis"}),
        _with("model", ["null", "string", "long"]),
        {"type": "array", "items": "double"},  # not a record
    ],
)
def test_a_schema_off_the_contracts_types_reads_as_a_plain_record(schema: Any) -> None:
    assert event_reader(schema, _as_event, _ABSENT) is None


def test_required_fields_and_spelled_out_types_are_the_contracts_too() -> None:
    schema = _with("ts", {"type": "long"})
    schema = {**schema, "fields": [*schema["fields"][:1], {"name": "model", "type": "string"},
                                   *schema["fields"][2:]]}  # fmt: skip
    read = event_reader(schema, lambda *fields: fields, _ABSENT)
    assert read is not None
    payload = _written(schema, {"id": "e", "model": "m", "version": None, "ts": 7,
                                "features": [0.5]})  # fmt: skip
    assert read(payload, 0) == ("e", struct.pack("<d", 0.5), "m", _ABSENT, 7)
