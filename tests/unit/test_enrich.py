"""The join decisions of `pipeline.engine.enrich` through the codec, the entity table, the
``--enrich`` syntax and its settings; no broker."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.config import WorkerConfig
from pipeline.engine.codec import Decoded, EventDecoder
from pipeline.engine.enrich import Enrichment, EnrichSpec, EntityTable
from pipeline.engine.signature import TensorSpec
from pipeline.engine.spec import ModelSpec
from pipeline.errors import ConfigError
from pipeline.kafka.enrich import TableFeed, TableWaits
from pipeline.metrics import Sensor
from tests.unit.test_codec import DictCatalog

VECTOR = ModelSpec(
    name="fraud",
    version="1",
    n_features=3,
    feature_names=("amount", "spend_1h", "tx_1h"),
)
TYPED = ModelSpec(
    name="rec",
    version="1",
    inputs=(TensorSpec("x", "FP32", (2,)), TensorSpec("country", "BYTES", (1,))),
)
STATS = EnrichSpec("stats", "card-stats", "card_id")
MERCHANT = EnrichSpec("merchant", "merchant-stats", "merchant_id")


def table(**rows: dict[str, Any]) -> EntityTable:
    t = EntityTable()
    for key, row in rows.items():
        assert t.put(key, orjson.dumps(row)) is None
    return t


def decode(events: list[dict[str, Any]], *enrichments: Enrichment, model: str = "fraud") -> Decoded:
    decoder = EventDecoder(
        catalog=DictCatalog(VECTOR, TYPED), default_model=model, enrichments=enrichments
    )
    return decoder.decode([orjson.dumps(e) for e in events], [0] * len(events))


def test_the_table_fills_the_named_features_the_event_lacks_and_the_event_wins() -> None:
    stats = Enrichment(STATS, table(c1={"spend_1h": 120.5, "tx_1h": 3.0, "unused": 9.5}))

    decoded = decode(
        [
            {"id": "a", "card_id": "c1", "features": {"amount": 10.0}},
            {"id": "b", "card_id": "c1", "features": {"amount": 20.0, "tx_1h": 7}},
        ],
        stats,
    )

    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    np.testing.assert_array_equal(
        block.feed["features"], np.array([[10.0, 120.5, 3.0], [20.0, 120.5, 7.0]], np.float32)
    )


def test_named_inputs_of_a_typed_model_are_filled_too() -> None:
    stats = Enrichment(STATS, table(c1={"country": "DE"}))

    decoded = decode([{"id": "a", "card_id": "c1", "features": {"x": [1, 2]}}], stats, model="rec")

    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    assert block.feed["country"].tolist() == [["DE"]]


def test_a_missing_entity_is_an_enrich_reject_naming_the_topic_and_the_key() -> None:
    stats = Enrichment(STATS, table(c1={"spend_1h": 1.5, "tx_1h": 1.5}))

    decoded = decode([{"id": "a", "card_id": "c9", "features": {"amount": 1.0}}], stats)

    (reject,) = decoded.rejects
    assert (reject.stage, reject.error_type) == ("enrich", "EntityNotFound")
    assert "'c9'" in reject.message and "'card-stats'" in reject.message
    assert "'spend_1h', 'tx_1h'" in reject.message  # what the event could send instead


DEFAULTED = ModelSpec(
    name="fraud",
    version="1",
    n_features=3,
    feature_names=("amount", "spend_1h", "tx_1h"),
    defaults=(("spend_1h", 0.0), ("tx_1h", 1.0)),
)


def decode_with(spec: ModelSpec, events: list[dict[str, Any]], *enrichments: Enrichment) -> Decoded:
    decoder = EventDecoder(catalog=DictCatalog(spec), default_model=spec.name,
                           enrichments=enrichments)  # fmt: skip
    return decoder.decode([orjson.dumps(e) for e in events], [0] * len(events))


def test_with_the_defaults_policy_a_missing_entity_takes_the_models_defaults() -> None:
    stats = Enrichment(STATS.with_missing("defaults"), table(c1={"spend_1h": 7.0, "tx_1h": 2.0}))
    events = [
        {"id": "known", "card_id": "c1", "features": {"amount": 1.0}},
        {"id": "unknown", "card_id": "c9", "features": {"amount": 2.0}},
        {"id": "own", "card_id": "c9", "features": {"amount": 3.0, "tx_1h": 5.0}},
    ]

    decoded = decode_with(DEFAULTED, events, stats)

    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    assert block.feed["features"].tolist() == [[1.0, 7.0, 2.0], [2.0, 0.0, 1.0], [3.0, 0.0, 5.0]]
    assert decoded.defaulted == {1: ("stats",), 2: ("stats",)}  # the event's own value won


def test_a_prediction_is_marked_defaulted_only_where_a_default_was_taken() -> None:
    stats = Enrichment(STATS, table(c1={"spend_1h": 7.0, "tx_1h": 2.0}))
    merchant = Enrichment(MERCHANT.with_missing("defaults"), table())  # lacks every merchant
    event = {"id": "a", "card_id": "c1", "merchant_id": "m9", "features": {"amount": 1.0}}

    decoded = decode_with(DEFAULTED, [event], stats, merchant)

    assert decoded.rejects == [] and decoded.defaulted == {}  # stats filled it all


def test_with_the_defaults_policy_a_name_without_a_default_is_still_entity_not_found() -> None:
    stats = Enrichment(STATS.with_missing("defaults"), table())

    decoded = decode([{"id": "a", "card_id": "c9", "features": {"amount": 1.0}}], stats)

    (reject,) = decoded.rejects
    assert (reject.stage, reject.error_type) == ("enrich", "EntityNotFound")
    assert "has no defaults for 'spend_1h', 'tx_1h'" in reject.message
    assert decoded.defaulted == {}


def test_a_complete_event_or_an_array_is_not_looked_up() -> None:
    stats = Enrichment(STATS, table())  # empty: a look-up would be EntityNotFound

    decoded = decode(
        [
            {"id": "a", "card_id": "c9", "features": {"amount": 1, "spend_1h": 2, "tx_1h": 3}},
            {"id": "b", "features": [1, 2, 3]},
        ],
        stats,
    )

    assert decoded.rejects == []
    assert sum(b.rows for b in decoded.blocks.values()) == 2


@pytest.mark.parametrize(
    ("key", "error_type", "says"),
    [(None, "MissingField", "card_id is required"), (1.5, "InvalidField", "got number 1.5")],
)
def test_a_missing_or_malformed_key_field_is_a_validate_reject(
    key: Any, error_type: str, says: str
) -> None:
    event: dict[str, Any] = {"id": "a", "features": {"amount": 1.0}}
    if key is not None:
        event["card_id"] = key
    decoded = decode([event], Enrichment(STATS, table()))

    (reject,) = decoded.rejects
    assert (reject.stage, reject.error_type) == ("validate", error_type)
    assert says in reject.message


def test_an_integer_key_is_looked_up_as_its_decimal_text() -> None:
    stats = Enrichment(STATS, table(**{"42": {"spend_1h": 1.5, "tx_1h": 2.5}}))

    decoded = decode([{"id": "a", "card_id": 42, "features": {"amount": 1.0}}], stats)

    assert decoded.rejects == []


def test_the_first_table_listed_wins_and_every_table_is_consulted() -> None:
    first = Enrichment(STATS, table(c1={"spend_1h": 1.5}))
    second = Enrichment(MERCHANT, table(m1={"spend_1h": 99.5, "tx_1h": 4.5}))

    decoded = decode(
        [
            {"id": "a", "card_id": "c1", "merchant_id": "m1", "features": {"amount": 1.0}},
            {"id": "b", "card_id": "c1", "merchant_id": "m2", "features": {"amount": 1.0}},
        ],
        first,
        second,
    )

    (block,) = decoded.blocks.values()
    assert block.feed["features"].tolist() == [[1.0, 1.5, 4.5]]
    (reject,) = decoded.rejects
    assert reject.index == 1 and "'merchant-stats'" in reject.message


def test_a_table_row_lacking_a_feature_leaves_it_missing() -> None:
    stats = Enrichment(STATS, table(c1={"spend_1h": 1.5}))

    decoded = decode([{"id": "a", "card_id": "c1", "features": {"amount": 1.0}}], stats)

    (reject,) = decoded.rejects
    assert (reject.error_type, "'tx_1h'" in reject.message) == ("MissingFeature", True)


def test_the_table_keeps_the_latest_value_and_a_tombstone_deletes() -> None:
    t = EntityTable()
    t.put("c1", b'{"a": 1.5, "b": 2.5}')
    t.put("c1", b'{"a": 3.5, "b": 4.5}')
    t.put("c2", b'{"a": 1, "s": "x"}')  # not all floats: kept as JSON

    assert (len(t), t.get("c1"), t.get("c2")) == (2, {"a": 3.5, "b": 4.5}, {"a": 1, "s": "x"})
    assert t.put("c1", None) is None
    assert (len(t), t.get("c1")) == (1, None)


def test_a_value_that_is_not_an_object_is_refused_and_the_previous_one_stays() -> None:
    t = table(c1={"a": 1.5})

    assert "got an array" in (t.put("c1", b"[1, 2]") or "")
    assert "invalid JSON" in (t.put("c1", b"{") or "")
    assert t.get("c1") == {"a": 1.5}


def test_the_size_estimate_follows_puts_and_deletes() -> None:
    t = EntityTable()
    empty = t.nbytes
    for i in range(1000):
        t.put(f"card-{i}", orjson.dumps({f"f{j}": j + 0.5 for j in range(20)}))
    full = t.nbytes
    per_row = (full - empty) / 1000
    # key + pair tuple + 160 packed bytes, plus the dict's slots: names are shared
    assert sys.getsizeof("card-999") + 56 + 33 + 160 < per_row < 400
    for i in range(1000):
        t.put(f"card-{i}", None)
    assert len(t) == 0 and t.nbytes - sys.getsizeof(t._rows) < 20 * 80  # the names only


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("stats=card-stats", "NAME=TOPIC:KEY_FIELD"),
        ("card-stats:card_id", "NAME=TOPIC:KEY_FIELD"),
        ("a/b=card-stats:card_id", "plain name"),
        ("stats=card-stats:id", "beside the event's id"),
    ],
)
def test_a_malformed_enrich_flag_says_what_was_expected(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        EnrichSpec.parse(text)


def test_the_enrich_settings_are_checked_at_start() -> None:
    cfg = WorkerConfig(enrich=("stats=my:topic:card_id",))
    assert cfg.enrichments == (EnrichSpec("stats", "my:topic", "card_id"),)
    with pytest.raises(ConfigError, match="must differ"):
        WorkerConfig(enrich=("s=a:k", "s=b:k"))
    with pytest.raises(ConfigError, match="also input"):
        WorkerConfig(enrich=("s=features:k",))
    assert WorkerConfig(enrich=("s=a:k",), group_type="share").enrichments  # share groups too
    with pytest.raises(ConfigError, match="enrich_max_bytes"):
        WorkerConfig(enrich_max_bytes=0)


def test_the_missing_entity_policy_is_set_per_table_and_checked_at_start() -> None:
    cfg = WorkerConfig(enrich=("s=a:k", "t=b:k"), enrich_missing=("t=defaults",))
    assert [e.missing for e in cfg.enrichments] == ["dead-letter", "defaults"]
    with pytest.raises(ConfigError, match="which no --enrich flag names"):
        WorkerConfig(enrich=("s=a:k",), enrich_missing=("x=defaults",))
    with pytest.raises(ConfigError, match="names 's' twice"):
        WorkerConfig(enrich=("s=a:k",), enrich_missing=("s=defaults", "s=dead-letter"))


def test_the_wait_policy_takes_a_bounded_number_of_milliseconds() -> None:
    (spec,) = WorkerConfig(enrich=("s=a:k",), enrich_missing=("s=wait:200",)).enrichments
    assert (spec.missing, spec.wait_ms) == ("wait:200", 200)
    assert STATS.wait_ms == 0 and STATS.with_missing("defaults").wait_ms == 0
    for bad in ("s=wait", "s=wait:", "s=wait:0", "s=wait:10001", "s=wait:2s", "s=wait:-5"):
        with pytest.raises(ConfigError, match=r"dead-letter, defaults, wait:MS \(MS from 1 to"):
            WorkerConfig(enrich=("s=a:k",), enrich_missing=(bad,))


def test_with_the_wait_policy_a_missing_entity_says_how_long_it_was_waited_for() -> None:
    stats = Enrichment(STATS.with_missing("wait:200"), table(c1={"spend_1h": 1.5, "tx_1h": 1.5}))

    decoded = decode([{"id": "a", "card_id": "c9", "features": {"amount": 1.0}}], stats)

    (reject,) = decoded.rejects
    assert (reject.stage, reject.error_type) == ("enrich", "EntityNotFound")
    assert "not even after a wait of up to 200 ms (--enrich-missing stats=wait:200)" in (
        reject.message
    )


class _Record:
    """What `TableFeed` reads of a consumed table record."""

    def __init__(self, offset: int, key: str, value: dict[str, Any]) -> None:
        self._offset, self._key, self._value = offset, key.encode(), orjson.dumps(value)

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


class _LateTable:
    """A table topic's consumer whose records arrive `after_s` after it is made."""

    def __init__(self, records: list[_Record], after_s: float) -> None:
        self._records = records
        self._due = time.monotonic() + after_s

    def consume(self, n: int, timeout: float) -> list[_Record]:
        left = self._due - time.monotonic()
        if left > 0:
            time.sleep(min(left, timeout))
        if time.monotonic() < self._due or not self._records:
            return []
        taken, self._records = self._records, []
        return taken

    def get_watermark_offsets(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        return (0, 0)


class _Waits(Sensor):
    def __init__(self) -> None:
        self.waits: list[tuple[str, int, int, float]] = []

    def enrich_waited(self, table: str, arrived: int, absent: int, seconds: float) -> None:
        self.waits.append((table, arrived, absent, seconds))


def _waiting_feed(consumer: _LateTable, sensor: Sensor) -> TableFeed:
    feed = TableFeed(
        STATS.with_missing("wait:300"),
        {},
        lambda _: consumer,
        sensor,
        1 << 20,  # type: ignore[arg-type,return-value]
    )
    assert feed.table.put("c1", orjson.dumps({"spend_1h": 1.5, "tx_1h": 1.5})) is None
    return feed


def _decode_through(waits: TableWaits, feed: TableFeed, card: str) -> Decoded:
    decoder = EventDecoder(catalog=DictCatalog(VECTOR), default_model="fraud",
                           enrichments=[Enrichment(feed.spec, feed.lookup)])  # fmt: skip
    event = orjson.dumps({"id": card, "card_id": card, "features": {"amount": 1.0}})
    decoded, _ = waits.decode(lambda: decoder.decode([event], [0]))
    return decoded


def test_an_entity_arriving_within_the_wait_is_joined_after_a_second_decode() -> None:
    sensor = _Waits()
    late = _LateTable([_Record(0, "c9", {"spend_1h": 2.0, "tx_1h": 3.0})], after_s=0.05)
    feed = _waiting_feed(late, sensor)
    waits = TableWaits([feed], sensor)
    waits.begin()

    decoded = _decode_through(waits, feed, "c9")

    assert decoded.rejects == []
    (block,) = decoded.blocks.values()
    np.testing.assert_array_equal(block.feed["features"], np.array([[1.0, 2.0, 3.0]], np.float32))
    ((table_name, arrived, absent, seconds),) = sensor.waits
    assert (table_name, arrived, absent) == ("stats", 1, 0) and 0.03 < seconds < 0.3


def test_an_entity_that_never_arrives_is_waited_for_once_per_batch_then_dead_lettered() -> None:
    sensor = _Waits()
    feed = _waiting_feed(_LateTable([], after_s=0.0), sensor)
    waits = TableWaits([feed], sensor)
    waits.begin()

    started = time.monotonic()
    (first,) = _decode_through(waits, feed, "c9").rejects
    waited = time.monotonic() - started
    started = time.monotonic()
    (second,) = _decode_through(waits, feed, "c8").rejects  # the same batch: its wait is spent
    again = time.monotonic() - started

    assert 0.29 < waited < 1.0 and again < 0.1, (waited, again)
    assert first.error_type == second.error_type == "EntityNotFound"
    assert "not even after a wait of up to 300 ms" in first.message
    assert [(w[1], w[2]) for w in sensor.waits] == [(0, 1), (0, 1)]
    waits.begin()  # the next batch waits afresh
    started = time.monotonic()
    _decode_through(waits, feed, "c7")
    assert time.monotonic() - started > 0.29


def test_a_record_from_a_registry_framed_value_is_kept_as_a_json_object_would_be() -> None:
    t = EntityTable()
    assert t.put_record("c1", {"spend_1h": 1.5, "tx_1h": 2.5}) is None  # packed
    assert t.put_record("c2", {"country": "DE", "n": 3}) is None
    assert (t.get("c1"), t.get("c2")) == (
        {"spend_1h": 1.5, "tx_1h": 2.5},
        {"country": "DE", "n": 3},
    )
    assert "got an array" in (t.put_record("c1", [1.5]) or "")
    assert "numbers, strings" in (t.put_record("c1", {"raw": b"\x00"}) or "")
    assert t.get("c1") == {"spend_1h": 1.5, "tx_1h": 2.5}  # the previous value stays


class _OneRecord:
    """A framed reader that reads every value as `record`."""

    def __init__(self, record: object) -> None:
        self.record = record

    def read(self, schema_id: int, value: bytes) -> object:
        return self.record

    def describe(self, schema_id: int) -> str:
        return f"schema id {schema_id}"


def _framed_record(value: bytes) -> _Record:
    record = _Record(0, "c1", {})
    record._value = value
    return record


@pytest.mark.parametrize("framed", [None, _OneRecord({"spend_1h": 4.5, "tx_1h": 1.0})])
def test_a_framed_table_value_is_read_with_the_registry_or_skipped_saying_to_give_it(
    framed: _OneRecord | None, caplog: pytest.LogCaptureFixture
) -> None:
    feed = TableFeed(STATS, {}, lambda _: None, Sensor(), 1 << 20, framed=framed)  # type: ignore[arg-type,return-value]
    feed._apply([_framed_record(b"\x00\x00\x00\x00\x07" + b"payload")])  # type: ignore[list-item]
    if framed is None:
        assert feed.table.get("c1") is None
        assert "schema id 7" in caplog.text and "--schema-registry-url" in caplog.text
    else:
        assert feed.table.get("c1") == {"spend_1h": 4.5, "tx_1h": 1.0}
    feed._apply([_framed_record(b"\x00\x00")])  # type: ignore[list-item]
    assert "TruncatedFrame" in caplog.text
