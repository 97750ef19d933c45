"""`EventDecoder` reads JSON text two ways: msgspec parses and checks a value against the
contract in one C pass, and whatever it does not accept takes the full path (orjson and
the checks in Python). Which path a value takes must never show: the same rows, the same
rejects with the same reasons, for every value, good or bad."""

from __future__ import annotations

import io
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka.schema_registry import Schema
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engine.codec import Decoded, EventDecoder
from pipeline.engine.framing import frame_header
from pipeline.engine.signature import TensorSpec
from pipeline.engine.spec import ModelSpec
from pipeline.schemaregistry import RegistryReader

from .test_codec import BC1, BC2, NAMES, PLAIN, DictCatalog

ROOT = Path(__file__).resolve().parents[2]
TYPED = ModelSpec(
    name="typed",
    version="1",
    n_features=0,
    inputs=(TensorSpec("amount", "FP64", (1,)), TensorSpec("country", "BYTES", (1,))),
)
ONE_EACH = ModelSpec(  # one value per input and row: its columns are checked at once
    name="one-each",
    version="1",
    n_features=0,
    inputs=(
        TensorSpec("amount", "FP32", ()),
        TensorSpec("hour", "INT8", (1,)),
        TensorSpec("card", "UINT64", ()),
        TensorSpec("online", "BOOL", (1,)),
        TensorSpec("country", "BYTES", ()),
    ),
)

_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=3e38, max_value=1e300)  # past float32's range
    | st.text(max_size=6)
)
_JSON = st.recursive(
    _LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
_NUMBERS = st.integers(-(2**65), 2**65) | st.floats(allow_nan=False, allow_infinity=False)
_FEATURES = (
    st.lists(_NUMBERS, min_size=2, max_size=4)
    | st.dictionaries(st.sampled_from([*NAMES, "colour"]), _NUMBERS | _JSON, max_size=4)
    | st.fixed_dictionaries({"amount": _NUMBERS | _JSON, "country": st.text(max_size=3) | _JSON})
    | _JSON
)
_EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(min_size=1, max_size=8) | st.text(min_size=255, max_size=258) | _JSON,
        "features": _FEATURES,
        "model": st.sampled_from(["bc", "plain", "typed", "nope", "broken", ""]) | _JSON,
        "version": st.sampled_from(["1", "2", "9"]) | _JSON,
        "ts": st.integers(-3, 2**64) | _JSON,
        "extra": _JSON,
        "nested": st.just([[[[[[[[[1]]]]]]]]]),  # deeper than the limit, in a field not read
    },
)


def _mostly(good: st.SearchStrategy[Any], *other: Any) -> st.SearchStrategy[Any]:
    """`good` four times in five, else a value of another kind (or out of range)."""
    return st.one_of(good, good, good, good, st.sampled_from(other))


_ONE_EACH = st.fixed_dictionaries({
    "amount": _mostly(st.floats(-1e39, 1e39) | st.integers(-(2**64), 2**64), True, "1", 1e300),
    "hour": _mostly(st.integers(-128, 127), 3.0, 2.5, [4], [[4]], None, 128, -129),
    "card": _mostly(st.integers(0, 2**64 - 1), -1, 2**64, 7.0, [7]),
    "online": _mostly(st.booleans(), [True], 1, "true"),
    "country": _mostly(st.text(max_size=3), ["DE"], 5, None),
})  # fmt: skip
_GOOD = st.fixed_dictionaries(  # events the contract accepts, or nearly
    {"id": st.text(min_size=1, max_size=8), "features": st.lists(_NUMBERS, min_size=2, max_size=4)
     | st.dictionaries(st.sampled_from(NAMES), _NUMBERS, min_size=3, max_size=3)},
    optional={"model": st.sampled_from(["bc", "plain", "typed", "nope"]),
              "version": st.sampled_from(["1", "2", "9"]), "ts": st.integers(0, 2**63 - 1)},
)  # fmt: skip
_GOOD_ONE_EACH = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=8), "model": st.just("one-each"), "features": _ONE_EACH}
)


@st.composite
def _values(draw: st.DrawFn) -> bytes | None:
    """A value as a producer might send it: an event, an event cut short or with a key
    repeated, something that is not an event, or nothing."""
    kind = draw(
        st.sampled_from(
            ["good"] * 6 + ["one-each"] * 4 + ["event"] * 4 + ["cut", "repeated", "other", "none"]
        )
    )
    if kind == "good":
        return json.dumps(draw(_GOOD)).encode()
    if kind == "one-each":
        return json.dumps(draw(_GOOD_ONE_EACH)).encode()
    if kind == "none":
        return draw(st.sampled_from([None, b""]))
    if kind == "other":
        return json.dumps(draw(_JSON)).encode()
    text = json.dumps(draw(_EVENTS), separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    if kind == "cut":
        return text.encode()[: draw(st.integers(0, len(text)))]
    if kind == "repeated" and len(text) > 2:  # a key repeated: the last one counts
        return ('{"id": "first", "features": [1, 2, 3], ' + text[1:]).encode()
    return text.encode()


def _decoders(**kwargs: Any) -> tuple[EventDecoder, EventDecoder]:
    catalog = DictCatalog(BC1, BC2, PLAIN, TYPED, ONE_EACH, broken=("broken",))
    fast = EventDecoder(catalog=catalog, default_model="bc", **kwargs)
    full = EventDecoder(catalog=catalog, default_model="bc", **kwargs)
    full._fast = False  # the reference: every value the full way
    assert fast._fast
    return fast, full


def _same(fast: Decoded, full: Decoded) -> None:
    assert fast.rejects == full.rejects
    assert fast.blocks.keys() == full.blocks.keys()
    for key, block in fast.blocks.items():
        other = full.blocks[key]
        assert (block.spec, block.indices, block.ids, block.ts) == (
            other.spec, other.indices, other.ids, other.ts
        )  # fmt: skip
        assert block.feed.keys() == other.feed.keys()
        for name, array in block.feed.items():
            assert array.dtype == other.feed[name].dtype
            assert np.array_equal(array, other.feed[name], equal_nan=array.dtype.kind == "f")
    assert fast.defaulted == full.defaulted


@settings(max_examples=400, deadline=None)
@given(st.lists(_values(), min_size=1, max_size=12))
def test_both_paths_decide_every_value_alike(values: list[bytes | None]) -> None:
    fast, full = _decoders(max_value_bytes=400)
    ts = [1_700_000_000_000 + i for i in range(len(values))]
    _same(fast.decode(values, ts), full.decode(values, ts))


@settings(max_examples=400, deadline=None)
@given(st.lists(_values(), min_size=1, max_size=12))
def test_every_value_alone_is_decided_alike(values: list[bytes | None]) -> None:
    """After one refusal the rest of a batch takes the full path, so each value alone too:
    then msgspec sees every one."""
    fast, full = _decoders(max_value_bytes=400)
    for index, value in enumerate(values):
        _same(fast.decode([value], [index]), full.decode([value], [index]))


# -- Avro records: a `ParsedEvent` with packed doubles, or a dict --------------------------
#
# A record of the contract's shape reaches the decoder as a `ParsedEvent` whose features
# are the array's raw doubles (`event_reader`); any other record as a dict. Which one a
# record became must never show either.

_AVRO_EVENT = json.loads((ROOT / "schemas/feature-event.avsc").read_text())
_DOUBLES = (
    st.floats(allow_nan=False, allow_infinity=False)
    | st.floats(min_value=3e38, max_value=1e300)  # past float32's range
    | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])
)
_RECORDS = st.fixed_dictionaries({
    "id": st.text(max_size=8) | st.text(min_size=255, max_size=258),
    "model": st.none() | st.sampled_from(["bc", "plain", "typed", "nope", "broken", ""]),
    "version": st.none() | st.sampled_from(["1", "2", "9"]),
    "ts": st.none() | st.integers(-3, 3) | st.integers(2**63 - 3, 2**63 - 1),
    "features": st.lists(_DOUBLES, max_size=5),
})  # fmt: skip


@st.composite
def _avro_values(draw: st.DrawFn) -> bytes | None:
    """A framed Avro event as a serializer writes it, its array in several blocks, cut
    short, or no value at all."""
    record = draw(_RECORDS)
    kind = draw(st.sampled_from(["whole"] * 6 + ["blocks", "cut", "none"]))
    if kind == "none":
        return None
    payload = _avro_written(record)
    if kind == "blocks" and record["features"]:  # one block per double
        head = _avro_written({**record, "features": []})[:-1]  # features is the last field
        blocks = b"".join(b"\x02" + struct.pack("<d", x) for x in record["features"])
        payload = head + blocks + b"\x00"
    if kind == "cut":
        payload = payload[: draw(st.integers(0, len(payload) - 1))]
    return frame_header(1) + payload


def _avro_written(record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(_AVRO_EVENT), record)
    return out.getvalue()


class _OneSchema:
    """A registry client holding the event schema under id 1."""

    def get_schema(self, schema_id: int, *_: Any) -> Schema:
        return Schema(json.dumps(_AVRO_EVENT), "AVRO")


def _avro_decoders() -> tuple[EventDecoder, EventDecoder]:
    catalog = DictCatalog(BC1, BC2, PLAIN, TYPED, ONE_EACH, broken=("broken",))
    decoders = [
        EventDecoder(
            catalog=catalog,
            default_model="bc",
            value_format="avro",
            framed=RegistryReader(_OneSchema(), "memory", events=events),  # type: ignore[arg-type]
        )
        for events in (True, False)
    ]
    return decoders[0], decoders[1]


@settings(max_examples=400, deadline=None)
@given(st.lists(_avro_values(), min_size=1, max_size=12))
def test_avro_records_read_as_events_or_dicts_are_decided_alike(
    values: list[bytes | None],
) -> None:
    events, dicts = _avro_decoders()
    ts = [1_700_000_000_000 + i for i in range(len(values))]
    _same(events.decode(values, ts), dicts.decode(values, ts))


def test_a_batch_of_packed_rows_and_listed_rows_keeps_every_row_in_place() -> None:
    """A batch mixing arrays in one block (packed) and in several (floats) for one model."""
    events, dicts = _avro_decoders()
    rows = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 1e39, 8.0], [0.5, 0.25, 0.125]]
    values = []
    for i, row in enumerate(rows):
        record = {"id": f"e{i}", "model": None, "version": None, "ts": None, "features": row}
        payload = _avro_written(record)
        if i % 2:
            head = _avro_written({**record, "features": []})[:-1]
            payload = head + b"".join(b"\x02" + struct.pack("<d", x) for x in row) + b"\x00"
        values.append(frame_header(1) + payload)
    decoded = events.decode(values, [0] * 4)
    _same(decoded, dicts.decode(values, [0] * 4))
    (block,) = decoded.blocks.values()
    assert block.ids == ["e0", "e1", "e3"]
    assert [r.error_type for r in decoded.rejects] == ["Float32Overflow"]
    assert block.feed["features"].tolist() == [rows[0], rows[1], rows[3]]
