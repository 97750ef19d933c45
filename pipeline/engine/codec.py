"""The codec: raw Kafka values in, per-model feeds and rejects out; predictions to bytes.

This module owns the wire contract users see on their topics. `EventDecoder.decode`
turns a batch of record values into one `RowBlock` per (model, version) that actually
runs (per (model, version, row shapes) for inputs of symbolic shape), plus one `Reject`
for every value that cannot become a row, each naming the stage (``decode``,
``validate``, ``route`` or ``enrich``), a short error type and a message that says what
was expected and what arrived. One bad value never affects the others in its batch.
`encode_predictions` turns one block's inference outputs into one JSON document per row.

A block's rows are a *feed*: one array per model input (`pipeline.engine.signature`).
A vector model (one floating-point matrix input) takes ``features`` as an array or as an
object of named columns, its fast path; any model takes an object of input name -> one
row's value (`pipeline.engine.values` checks each value against the input's datatype and
per-row shape). The decode path is the hot path, so the work per value is kept to one
`orjson.loads`, a few dictionary look-ups and one exact type check of the feature row;
range checks and the conversion to the input's dtype are vectorised once per block. For
JSON text, msgspec first parses each value into `ParsedEvent`, checking the contract's
field types in C; a value it refuses, and the rest of its batch, take that full path, so
reasons never depend on which path ran (a property test holds both to the same outcome).
An Avro record of the contract's shape arrives as a `ParsedEvent` too
(`pipeline.engine.avrodecode.event_reader`), its features as the bytes of the doubles,
copied into the block's matrix in one step. Each distinct (model, version) is resolved
through the `ModelCatalog` at most once per `decode` call.

Hostile values cost O(len) at most: the size limit is checked before parsing, orjson
and msgspec parse in linear time, orjson stops at depth 1024 and msgspec at Python's
recursion limit (the value then takes the full path), and the nesting-depth limit is checked
with a byte scan whenever depth could exceed it: when parsing or checking fails, or
when the event has fields the codec does not read. An accepted event without such
fields provably nests two levels deep (an object holding scalars and one flat array or
object of numbers), so the common case pays nothing for the depth limit.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Final

import msgspec
import numpy as np
import orjson

from pipeline.engine.enrich import Enrichment, EnrichProblem, enrich
from pipeline.engine.framing import (
    FRAME_HEADER_BYTES,
    MAGIC_BYTE,
    VALUE_FORMATS,
    FramedReader,
    FrameProblem,
    frame_schema_id,
    is_framed,
    looks_framed,
)
from pipeline.engine.names import PLAIN_NAME_RULE, is_plain_name
from pipeline.engine.rollout import Canary, Rollouts
from pipeline.engine.signature import FLOAT_LIMITS, Feed
from pipeline.engine.spec import ModelCatalog, ModelSpec
from pipeline.engine.values import OVERFLOW as _OVERFLOW
from pipeline.engine.values import ValueProblem, column_array, one_value_column, row_value
from pipeline.engine.values import show_value as _show
from pipeline.errors import ModelLoadError, ModelNotFoundError

__all__ = [
    "FLOAT32_LIMIT",
    "MAX_ID_LENGTH",
    "Decoded",
    "EventDecoder",
    "ParsedEvent",
    "Reject",
    "RowBlock",
    "class_probabilities",
    "encode_predictions",
    "encode_rows",
    "is_plain_name",
    "output_rows",
    "prediction_documents",
]

MAX_ID_LENGTH: Final = 256
"""The longest event `id` accepted, in characters."""

FLOAT32_LIMIT: Final = FLOAT_LIMITS["FP32"]
"""The largest magnitude that still converts to a finite float32."""

_MAX_TS: Final = 2**63 - 1
_NUMBER_TYPES: Final = frozenset((int, float))
_STRING_LITERAL: Final = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKET: Final = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS: Final = np.frombuffer(b"[{", dtype=np.uint8)
_FLOAT32_JSON: Final = orjson.OPT_SERIALIZE_NUMPY
_EVENT_FIELDS: Final = frozenset(("id", "model", "version", "features", "ts"))
_ABSENT: Final = object()  # a field the event does not have, distinct from null
_UNSET: Final = msgspec.UNSET


class ParsedEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An event whose field types the reader already checked: JSON text as msgspec checks
    it while parsing (`EventDecoder`'s fast path), or a framed record whose schema has the
    contract's types (`pipeline.engine.avrodecode.event_reader`).

    From JSON, a value msgspec accepts would pass `EventDecoder._take_event`'s checks of
    `id`, `ts` and the type of `features`, and every feature of an array is a float (a
    JSON integer is read as the float it converts to, as NumPy converts it in `_finish`).
    Fields of its own are refused: only the full path checks how deep they nest. A framed
    record's `id` length and `ts` range are checked by the decoder (its schema cannot say
    them), and its `features` may be the bytes of little-endian doubles.
    """

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH)]
    features: list[float] | dict[str, Any]
    model: str | msgspec.UnsetType = _UNSET
    version: str | msgspec.UnsetType = _UNSET
    ts: Annotated[int, msgspec.Meta(ge=0, le=_MAX_TS)] | msgspec.UnsetType = _UNSET


_parse_event: Final = msgspec.json.Decoder(ParsedEvent).decode


@dataclass(frozen=True, slots=True)
class Reject:
    """A value that could not become a row, and why.

    Attributes:
        index: Position of the value in the sequence given to `EventDecoder.decode`.
        stage: ``"decode"``, ``"validate"``, ``"route"`` or ``"enrich"``.
        error_type: Short CamelCase kind, e.g. ``"InvalidJson"`` or ``"FeatureCount"``.
        message: Names the field, the kind of value that arrived and what was expected.
    """

    index: int
    stage: str
    error_type: str
    message: str


@dataclass(slots=True)
class RowBlock:
    """The accepted rows for one (model, version), in input order.

    Attributes:
        spec: The resolved spec; its version is the one that runs.
        feed: One array per model input, each with the block's ``n`` rows on its first
            axis, of the input's dtype (a vector model's: ``(n, spec.n_features)``).
        indices: Position in the input sequence of each row.
        ids: The event id of each row.
        ts: Event time of each row, ms since epoch (the event's `ts`, else the fallback).
    """

    spec: ModelSpec
    feed: Feed
    indices: list[int]
    ids: list[str]
    ts: list[int]

    @property
    def rows(self) -> int:
        """How many rows the block has."""
        return len(self.indices)


@dataclass(slots=True)
class Decoded:
    """The result of decoding one batch of values.

    Attributes:
        blocks: One block per (model name, resolved version), and per shape of a row
            where a model's inputs have symbolic dimensions; only non-empty blocks.
        rejects: One reject per value that did not become a row, ordered by index.
        defaulted: For a value whose entity an enrichment table lacked and whose row took
            the model's defaults instead (``--enrich-missing NAME=defaults``), its index ->
            those tables' names.
    """

    blocks: dict[tuple[Any, ...], RowBlock]
    rejects: list[Reject]
    defaulted: dict[int, tuple[str, ...]] = field(default_factory=dict)


class _Rejected(Exception):
    """Raised inside the decoder to turn one value into a `Reject`; never escapes it."""

    def __init__(self, stage: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.error_type = error_type
        self.message = message


@dataclass(slots=True)
class _Group:
    """Rows of named inputs that share their shapes, collected before conversion."""

    shapes: tuple[tuple[int, ...], ...]
    columns: list[list[list[Any]]]  # per input, per row: the checked leaves
    indices: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _OneValueRows:
    """Rows of a model whose inputs take one value each (`ModelSpec.one_value_inputs`),
    kept as sent (input name -> value) until their columns are checked at once."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Pending:
    """Rows collected for one model version during a `decode` call, before conversion.

    `by_column` lets the rows of a model whose inputs take one value each wait unchecked
    in `one_value` (the decoder's fast way); `_finish_one_value` checks them a column at a
    time, and row by row (`_add_inputs`) only if a column holds a value of another kind.
    """

    spec: ModelSpec
    by_column: bool = False
    rows: list[Any] = field(default_factory=list)  # a vector model's rows: lists, or bytes
    packed: int = 0  # how many rows are packed little-endian doubles (bytes)
    indices: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    named: set[int] = field(default_factory=set)  # row positions sent as name -> value
    groups: dict[tuple[tuple[int, ...], ...], _Group] = field(default_factory=dict)
    one_value: _OneValueRows | None = None

    def add(self, index: int, event_id: str, ts: int, features: Any) -> None:
        """Check `features` (an array or an object) against the spec and keep the row."""
        spec = self.spec
        if type(features) is list:
            if not spec.vector:
                raise _array_for_inputs(spec)
            self._keep(index, event_id, ts, _checked_row(features, None, spec))
        elif spec.vector and spec.feature_names and spec.inputs[0].name not in features:
            self.named.add(len(self.rows))
            self._keep(index, event_id, ts, _named_row(features, spec))
        elif self.by_column and features.keys() == spec.one_value_inputs:
            rows = self.one_value
            if rows is None:
                rows = self.one_value = _OneValueRows()
            rows.rows.append(features)
            rows.indices.append(index)
            rows.ids.append(event_id)
            rows.ts.append(ts)
        else:
            self._add_inputs(index, event_id, ts, features)

    def add_parsed(self, index: int, event_id: str, ts: int, features: Any) -> None:
        """`add` for features a reader checked (`ParsedEvent`): an array is floats already,
        so one of the right length for a vector model is kept without the type check, and
        so are packed doubles (`bytes`, 8 per value), converted with the block."""
        spec = self.spec
        kind = type(features)
        if kind is list and spec.vector and len(features) == spec.n_features:
            self._keep(index, event_id, ts, features)
        elif kind is bytes:
            if spec.vector and len(features) == 8 * spec.n_features:
                self.packed += 1
                self._keep(index, event_id, ts, features)
            else:  # the checks of `add` say what is wrong with it
                self.add(index, event_id, ts, _doubles(features))
        else:
            self.add(index, event_id, ts, features)

    def _keep(self, index: int, event_id: str, ts: int, row: list[Any]) -> None:
        self.rows.append(row)
        self.indices.append(index)
        self.ids.append(event_id)
        self.ts.append(ts)

    def _add_inputs(self, index: int, event_id: str, ts: int, features: dict[str, Any]) -> None:
        """Keep a row given as input name -> value, with the rows of its shapes."""
        leaves, shapes = _input_row(features, self.spec)
        group = self.groups.get(shapes)
        if group is None:
            group = self.groups[shapes] = _Group(shapes, [[] for _ in shapes])
        for column, values in zip(group.columns, leaves, strict=True):
            column.append(values)
        group.indices.append(index)
        group.ids.append(event_id)
        group.ts.append(ts)


@dataclass(slots=True)
class _Split:
    """Events of a model naming no version while it has a canary: a share of keys goes
    to the canary version's block, the rest to the served version's."""

    served: _Pending
    canary: Canary
    fields: tuple[object, object]  # the canary's (model, version) fields, to route by


@dataclass(slots=True)
class _CallState:
    """What one `decode` call remembers between values."""

    pending: dict[tuple[str, str], _Pending] = field(default_factory=dict)  # by spec
    routes: dict[tuple[object, object], _Pending | _Split] = field(default_factory=dict)
    failures: dict[tuple[object, object], tuple[str, str, str]] = field(default_factory=dict)
    keys: Sequence[bytes | None] | None = None  # the records' keys, for canary splits
    defaulted: dict[int, tuple[str, ...]] = field(default_factory=dict)  # see `Decoded`


class EventDecoder:
    """Decodes feature-event values into per-model row blocks and rejects.

    Args:
        catalog: Resolves a model name and optional version to a `ModelSpec`.
        default_model: The model used for events without a `model` field; None means
            every event must name its model.
        max_value_bytes: Values longer than this are rejected before parsing.
        max_depth: Values nesting arrays/objects deeper than this are rejected as
            ``TooDeep`` (the event object itself is depth 1, its `features` depth 2).
        value_format: ``json`` (text), ``avro``, ``jsonschema`` or ``protobuf`` (Schema
            Registry framed values) or ``auto`` (framed values and JSON text, told apart
            per value); see `pipeline.engine.framing`. A framed record's fields are the
            event's, and a null `model`, `version` or `ts` counts as absent.
        framed: Reads framed values' payloads; needed unless `value_format` is ``json``.
        enrichments: Tables that fill the named features an event's ``features`` object
            does not carry, joined on an event field (`pipeline.engine.enrich`).
        rollouts: Canary splits (`pipeline.engine.rollout`): an event naming no version
            of a model with a canary goes to the canary version when its key (the record
            key given to `decode`, else its `id`) falls in the canary's share.

    Raises:
        ValueError: `max_value_bytes` is below 1 or `max_depth` below 2, `value_format` is
            unknown, or it reads framed values and `framed` is None.
    """

    def __init__(
        self,
        *,
        catalog: ModelCatalog,
        default_model: str | None = None,
        max_value_bytes: int = 65536,
        max_depth: int = 8,
        value_format: str = "json",
        framed: FramedReader | None = None,
        enrichments: Sequence[Enrichment] = (),
        rollouts: Rollouts | None = None,
    ) -> None:
        if value_format not in VALUE_FORMATS:
            raise ValueError(
                f"value_format must be one of {', '.join(VALUE_FORMATS)}, got {value_format!r}"
            )
        if value_format != "json" and framed is None:
            raise ValueError(f"value_format {value_format!r} needs a reader of framed values")
        if max_value_bytes < 1:
            raise ValueError(f"max_value_bytes must be an integer >= 1, got {max_value_bytes}")
        if max_depth < 2:
            raise ValueError(f"max_depth must be an integer >= 2, got {max_depth}")
        self._catalog = catalog
        self._default_model = default_model
        self._max_value_bytes = max_value_bytes
        self._max_depth = max_depth
        self._framed = framed
        self._reads_frames = value_format != "json"
        self._read = {
            "json": self._parse,
            "avro": self._parse_framed,
            "jsonschema": self._parse_framed,
            "protobuf": self._parse_framed,
            "auto": self._parse_any,
        }[value_format]
        self._enrichments = tuple(enrichments)
        self._rollouts = rollouts
        # JSON text without enrichment is first parsed and checked by msgspec (`ParsedEvent`):
        # about 30% less time per event; anything it does not accept takes the full path.
        self._fast = value_format == "json" and not self._enrichments
        # Framed Avro events of the contract's shape skip `_parse_framed` and the dict
        # (`FramedReader.event_reader`).
        self._framed_events = (
            framed.event_reader if framed is not None and value_format in ("avro", "auto")
            else None
        )  # fmt: skip

    def decode(
        self,
        values: Sequence[bytes | None],
        fallback_ts: Sequence[int],
        keys: Sequence[bytes | None] | None = None,
    ) -> Decoded:
        """Decode a batch of record values.

        Args:
            values: Kafka record values, in order; None for a record without a value.
            fallback_ts: One timestamp per value (ms since epoch, normally the record's
                timestamp), used as event time when the event has no `ts`.
            keys: The records' keys, for canary splits; None (or a None key) splits by
                the event's `id`.

        Returns:
            The accepted rows grouped per (model, version) and one reject per other value.

        Raises:
            ValueError: `values` and `fallback_ts` differ in length.
        """
        if len(values) != len(fallback_ts):
            raise ValueError(
                f"fallback_ts must have one entry per value ({len(values)}), got {len(fallback_ts)}"
            )
        state = _CallState(keys=keys)
        rejects: list[Reject] = []
        read, take = self._read, self._take_event  # once per call, not per value
        fast, take_parsed, max_bytes = self._fast, self._take_parsed, self._max_value_bytes
        framed_events, take_record = self._framed_events, self._take_record
        readers: dict[bytes, Callable[[bytes, int], Any] | None] = {}  # by frame header
        for index, value in enumerate(values):
            try:
                if (
                    framed_events
                    and value
                    and FRAME_HEADER_BYTES < len(value) <= max_bytes
                    and value[0] == MAGIC_BYTE
                ):
                    # A framed value whose schema has a compiled event reader is read
                    # straight into a `ParsedEvent`; whatever that reader cannot read, the
                    # full path reads again, and says why.
                    header = value[:FRAME_HEADER_BYTES]
                    read_event = readers.get(header)
                    if read_event is None and header not in readers:
                        read_event = readers[header] = framed_events(frame_schema_id(value))
                    if read_event is not None:
                        try:
                            record = read_event(value, FRAME_HEADER_BYTES)
                        except (IndexError, EOFError, ValueError, struct.error):
                            pass
                        else:
                            take_record(index, record, fallback_ts[index], state)
                            continue
                elif fast and value and len(value) <= max_bytes:
                    try:
                        parsed = _parse_event(value)
                    except (msgspec.MsgspecError, RecursionError):
                        # The full path gives this value its reason; the rest of the batch
                        # goes that way too (one refusal costs a batch at most one wasted
                        # parse: producers that add fields of their own add them to every
                        # event, and msgspec refuses fields it does not know).
                        fast = False
                    else:
                        take_parsed(index, parsed, fallback_ts[index], state)
                        continue
                event = read(value)
                if isinstance(event, ParsedEvent):  # a framed record of the contract's types
                    take_record(index, event, fallback_ts[index], state)
                else:
                    take(index, event, fallback_ts[index], state)
            except _Rejected as exc:
                if exc.stage != "decode" and value:
                    if self._reads_frames and is_framed(value):
                        exc = self._in_frame(value, exc)
                    else:  # a field we checked may nest deeply
                        exc = self._depth_problem(value) or exc
                rejects.append(Reject(index, exc.stage, exc.error_type, exc.message))
        return _decoded(state, rejects)

    def decode_events(
        self, events: Sequence[object], fallback_ts: int, key: bytes | None = None
    ) -> Decoded:
        """Check events that are already parsed JSON (a front door's request bodies) the
        way `decode` checks record values, from the `id` field on.

        Args:
            events: Parsed JSON values, each meant to be an event object.
            fallback_ts: Event time of events without a `ts` (ms since epoch).
            key: The caller's routing key for canary splits, for every event; None splits
                by each event's `id`.

        Returns:
            The accepted rows grouped per (model, version) and one reject per other event;
            a reject's index is the event's position in `events`.
        """
        state = _CallState(keys=None if key is None else [key] * len(events))
        rejects: list[Reject] = []
        for index, event in enumerate(events):
            try:
                if type(event) is not dict:
                    raise _Rejected(
                        "decode",
                        "NotAnObject",
                        f"value must be a JSON object, got {_show(event)}",
                    )
                self._take_event(index, event, fallback_ts, state)
            except _Rejected as exc:
                rejects.append(Reject(index, exc.stage, exc.error_type, exc.message))
        return _decoded(state, rejects)

    def _take_event(
        self, index: int, event: dict[str, Any], fallback_ts: int, state: _CallState
    ) -> None:
        """Check one parsed event and add its row to its block, or raise `_Rejected`."""
        event_id = event.get("id")
        if type(event_id) is not str or not 0 < len(event_id) <= MAX_ID_LENGTH:
            raise _bad_id(event)
        ts = event.get("ts", _ABSENT)
        if ts is _ABSENT:
            ts = fallback_ts
        elif type(ts) is not int or not 0 <= ts <= _MAX_TS:
            raise _bad_ts(ts)
        features = event.get("features")
        if type(features) is not list and type(features) is not dict:
            raise _bad_features(event)
        fields = (event.get("model", _ABSENT), event.get("version", _ABSENT))
        pending = self._block(fields, index, event_id, state)
        if self._enrichments and type(features) is dict:
            try:
                features, defaulted = enrich(event, features, pending.spec, self._enrichments)
            except EnrichProblem as exc:
                raise _Rejected(exc.stage, exc.error_type, exc.message) from None
            if defaulted:
                state.defaulted[index] = defaulted
        pending.add(index, event_id, ts, features)

    def _take_record(
        self, index: int, event: ParsedEvent, fallback_ts: int, state: _CallState
    ) -> None:
        """`_take_parsed` for a framed record, after the checks its schema cannot make."""
        if not 0 < len(event.id) <= MAX_ID_LENGTH:
            raise _bad_id({"id": event.id})
        if event.ts is not _UNSET and not 0 <= event.ts <= _MAX_TS:
            raise _bad_ts(event.ts)
        self._take_parsed(index, event, fallback_ts, state)

    def _take_parsed(
        self, index: int, event: ParsedEvent, fallback_ts: int, state: _CallState
    ) -> None:
        """`_take_event` for an event whose field types were checked (`ParsedEvent`)."""
        ts = fallback_ts if event.ts is _UNSET else event.ts
        model = _ABSENT if event.model is _UNSET else event.model
        version = _ABSENT if event.version is _UNSET else event.version
        pending = self._block((model, version), index, event.id, state)
        pending.add_parsed(index, event.id, ts, event.features)

    def _parse(self, value: bytes | None) -> dict[str, Any]:
        """Bound, parse and shape-check one value; return the event object."""
        if not value or len(value) > self._max_value_bytes:
            value = self._bounded(value, "a JSON object")  # raises
        try:  # linear in len(value), which is bounded; orjson stops at depth 1024
            event = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise self._depth_problem(value) or _unparsable(value, exc) from None
        if type(event) is not dict:
            raise self._depth_problem(value) or _Rejected(
                "decode", "NotAnObject", f"value must be a JSON object, got {_show(event)}"
            )
        if not _EVENT_FIELDS.issuperset(event):  # fields we skip could nest deeply
            problem = self._depth_problem(value)
            if problem is not None:
                raise problem
        return event

    def _bounded(self, value: bytes | None, expected: str) -> bytes:
        """Return `value` if it is neither missing, empty, nor over the size limit."""
        if not value:
            what = "null (a record without a value)" if value is None else "empty (0 bytes)"
            raise _Rejected("decode", "EmptyValue", f"value is {what}, expected {expected}")
        if len(value) > self._max_value_bytes:
            raise _Rejected(
                "decode",
                "TooLarge",
                f"value is {len(value)} bytes, more than the limit of "
                f"{self._max_value_bytes} bytes (max_value_bytes)",
            )
        return value

    def _parse_any(self, value: bytes | None) -> dict[str, Any] | ParsedEvent:
        """A framed value or JSON text, told apart by the first byte."""
        if value and looks_framed(value):
            return self._parse_framed(value)
        return self._parse(value)

    def _parse_framed(self, value: bytes | None) -> dict[str, Any] | ParsedEvent:
        """Bound and read one Schema Registry framed value; return the event record (a
        `ParsedEvent` where the reader checked the contract's types)."""
        value = self._bounded(value, "a Schema Registry framed value")
        assert self._framed is not None  # checked in __init__ for every format that frames
        try:
            schema_id = frame_schema_id(value)
            event = self._framed.read(schema_id, value)
        except FrameProblem as problem:
            raise _Rejected(problem.stage, problem.error_type, problem.message) from None
        if type(event) is ParsedEvent:
            return event
        if type(event) is not dict:
            raise _Rejected(
                "decode",
                "NotAnObject",
                f"value must be a record, got {_show(event)} ({self._framed.describe(schema_id)})",
            )
        for name in ("model", "version", "ts"):  # an optional field's null is its absence
            if name in event and event[name] is None:
                del event[name]
        return event

    def _in_frame(self, value: bytes, exc: _Rejected) -> _Rejected:
        """Name the schema of the framed value a field check rejected."""
        assert self._framed is not None  # only framed values get here
        schema = self._framed.describe(frame_schema_id(value))
        return _Rejected(exc.stage, exc.error_type, f"{exc.message} ({schema})")

    def _depth_problem(self, value: bytes) -> _Rejected | None:
        """Return a TooDeep reject if `value` nests deeper than the limit (O(len))."""
        if value.count(b"[") + value.count(b"{") <= self._max_depth:
            return None
        depth = _nesting_depth(value)
        if depth <= self._max_depth:
            return None
        return _Rejected(
            "decode",
            "TooDeep",
            f"value nests arrays/objects {depth} levels deep, more than the limit "
            f"of {self._max_depth} (max_depth)",
        )

    def _block(
        self, fields: tuple[object, object], index: int, event_id: str, state: _CallState
    ) -> _Pending:
        """The block of an event's model and version fields (`_ABSENT` where it has none);
        a canary takes a share of a model's keys."""
        pending = self._route_fields(fields, state)
        if isinstance(pending, _Split):
            return self._split(pending, index, event_id, state)
        return pending

    def _route_fields(self, key: tuple[object, object], state: _CallState) -> _Pending | _Split:
        try:
            return state.routes[key]
        except (KeyError, TypeError):  # TypeError: an array or object where a name belongs
            return self._first_route(key, state)

    def _first_route(self, key: tuple[object, object], state: _CallState) -> _Pending | _Split:
        """Resolve a pair of fields not met before in this call; remember the outcome."""
        model, version = key
        memo = _is_name_or_absent(model) and _is_name_or_absent(version)  # True == 1 == 1.0
        if memo and key in state.failures:
            raise _Rejected(*state.failures[key])
        try:
            spec = self._resolve(model, version)
        except _Rejected as exc:
            if memo:
                state.failures[key] = (exc.stage, exc.error_type, exc.message)
            raise
        block: _Pending | _Split = state.pending.setdefault(
            (spec.name, spec.version), _Pending(spec, by_column=self._fast)
        )
        canary = self._canary(spec) if version is _ABSENT else None
        if canary is not None:
            assert isinstance(block, _Pending)
            block = _Split(block, canary, (spec.name, canary.version))
        if memo:
            state.routes[key] = block
        return block

    def _split(self, split: _Split, index: int, event_id: str, state: _CallState) -> _Pending:
        """The block of the version that the event's key (else its id) falls to."""
        key = state.keys[index] if state.keys is not None else None
        if not split.canary.takes(event_id.encode() if key is None else key):
            return split.served
        block = self._route_fields(split.fields, state)  # names a version: never a split
        assert type(block) is _Pending
        return block

    def _canary(self, spec: ModelSpec) -> Canary | None:
        """The canary of the model of `spec` (its served version), if one is in force."""
        if self._rollouts is None:
            return None
        canary = self._rollouts.canary_of(spec.name)
        return canary if canary is not None and canary.version != spec.version else None

    def _resolve(self, model: object, version: object) -> ModelSpec:
        """Check the model name and version fields, then ask the catalog."""
        if model is _ABSENT:
            if self._default_model is None:
                raise _Rejected(
                    "validate",
                    "MissingField",
                    "model is required: this worker has no default model to use",
                )
            model = self._default_model
        if version is _ABSENT:
            version = None
        elif type(version) is not str:
            raise _Rejected(
                "validate", "InvalidField", f"version must be a string, got {_show(version)}"
            )
        if type(model) is not str:
            raise _Rejected(
                "validate", "InvalidField", f"model must be a string, got {_show(model)}"
            )
        for name, given in (("model", model), ("version", version)):
            if given is not None and not is_plain_name(given):
                raise _Rejected(
                    "route",
                    "InvalidModelName",
                    f"{name} must be a plain name ({PLAIN_NAME_RULE}), got {_show(given)}",
                )
        return self._ask_catalog(model, version)

    def _ask_catalog(self, model: str, version: str | None) -> ModelSpec:
        """Resolve through the catalog, telling an unknown model from an unknown version."""
        try:
            return self._catalog.resolve(model, version)
        except ModelLoadError as exc:
            raise _Rejected("route", "ModelLoadFailed", str(exc)) from exc
        except ModelNotFoundError as exc:
            # Model names come from events: the message names only what the event asked for.
            if version is None or not self._model_exists(model):
                raise _Rejected(
                    "route", "UnknownModel", f"model {model!r} is not in the store"
                ) from exc
            raise _Rejected(
                "route", "UnknownVersion", f"model {model!r} has no version {version!r}"
            ) from exc

    def _model_exists(self, model: str) -> bool:
        """Tell whether the catalog knows `model` at all (at its newest version)."""
        try:
            self._catalog.resolve(model, None)
        except ModelNotFoundError:
            return False
        except ModelLoadError:
            return True
        return True


def _decoded(state: _CallState, rejects: list[Reject]) -> Decoded:
    """Convert the rows collected in one call to blocks; order the rejects."""
    blocks: dict[tuple[Any, ...], RowBlock] = {}
    for key, collected in state.pending.items():
        block = _finish(collected, rejects)
        if block is not None:
            blocks[key] = block
        checked = _finish_one_value(collected, rejects) if collected.one_value else None
        if checked is not None:
            shapes = tuple(tensor.shape for tensor in collected.spec.inputs)
            alone = block is None and not collected.groups
            blocks[key if alone else (*key, shapes)] = checked
        for shapes, group in collected.groups.items():
            typed = _finish_group(collected.spec, group, rejects)
            if typed is not None:
                alone = block is None and checked is None and len(collected.groups) == 1
                blocks[key if alone else (*key, shapes)] = typed
    rejects.sort(key=lambda r: r.index)
    return Decoded(blocks, rejects, state.defaulted)


def _is_name_or_absent(value: object) -> bool:
    """Tell whether `value` may key the route memo (a string, or the field is absent)."""
    return type(value) is str or value is _ABSENT


def _named_row(features: dict[str, Any], spec: ModelSpec) -> list[Any]:
    """Map a name -> value object to a row in the spec's column order, and check it."""
    names = spec.feature_names or ()
    try:
        row = [features[name] for name in names]
    except KeyError:
        raise _name_problem(features, spec) from None
    if len(features) != len(names):
        raise _name_problem(features, spec)
    return _checked_row(row, names, spec)


def _checked_row(row: list[Any], names: tuple[str, ...] | None, spec: ModelSpec) -> list[Any]:
    """Check a row's length and that every value is an int or float (never a bool)."""
    if len(row) != spec.n_features:
        raise _Rejected(
            "validate",
            "FeatureCount",
            f"features must have {spec.n_features} values for model {spec.name!r} "
            f"version {spec.version!r}, got {len(row)}",
        )
    if not _NUMBER_TYPES.issuperset(map(type, row)):
        raise _value_problem(row, names)
    return row


def _finish(p: _Pending, rejects: list[Reject]) -> RowBlock | None:
    """Convert a vector model's rows to its input's dtype, rejecting rows out of that
    dtype's finite range."""
    if not p.rows:
        return None
    (vector,) = p.spec.inputs
    if not p.packed:
        matrix = np.array(p.rows, dtype=np.float64)
    elif p.packed == len(p.rows):  # one copy of every row's doubles, no Python floats
        matrix = np.frombuffer(b"".join(p.rows), dtype="<f8").reshape(len(p.rows), -1)
    else:
        matrix = np.array([_row_values(row) for row in p.rows], dtype=np.float64)
    in_range = np.abs(matrix) <= FLOAT_LIMITS[vector.datatype]  # NaN compares False
    if not in_range.all():
        matrix = _drop_out_of_range(p, matrix, in_range, rejects)
        if not p.indices:
            return None
    return RowBlock(p.spec, {vector.name: matrix.astype(vector.dtype)}, p.indices, p.ids, p.ts)


def _input_row(
    features: dict[str, Any], spec: ModelSpec
) -> tuple[list[list[Any]], tuple[tuple[int, ...], ...]]:
    """Check a row given as input name -> value; return each input's leaves and shape."""
    if len(features) != len(spec.inputs) or not all(n in features for n in spec.input_index):
        raise _input_name_problem(features, spec)
    leaves, shapes = [], []
    for tensor in spec.inputs:
        try:
            values, shape = row_value(tensor, features[tensor.name], _where(tensor.name))
        except ValueProblem as problem:
            raise _Rejected(problem.stage, problem.error_type, problem.message) from None
        leaves.append(values)
        shapes.append(shape)
    return leaves, tuple(shapes)


def _finish_one_value(p: _Pending, rejects: list[Reject]) -> RowBlock | None:
    """Convert the rows of `p.one_value` a column at a time. If a column holds a value of
    another kind, check every row of them the full way instead (`_Pending._add_inputs`:
    the same rows and reasons as if they had never waited) and return None."""
    pending = p.one_value
    assert pending is not None
    p.one_value = None
    feed: Feed = {}
    refused: dict[int, ValueProblem] = {}
    for tensor in p.spec.inputs:
        name = tensor.name
        converted = one_value_column(tensor, [row[name] for row in pending.rows], _where(name))
        if converted is None:
            rows = zip(pending.indices, pending.ids, pending.ts, pending.rows, strict=True)
            for index, event_id, ts, features in rows:
                try:
                    p._add_inputs(index, event_id, ts, features)
                except _Rejected as exc:
                    rejects.append(Reject(index, exc.stage, exc.error_type, exc.message))
            return None
        feed[name], problems = converted
        for row, problem in problems.items():
            refused.setdefault(row, problem)
    return _kept(p.spec, pending, feed, refused, rejects)


def _finish_group(spec: ModelSpec, group: _Group, rejects: list[Reject]) -> RowBlock | None:
    """Convert rows of named inputs to one array per input; reject rows a float input
    cannot hold (beyond its datatype's finite range)."""
    feed: Feed = {}
    refused: dict[int, ValueProblem] = {}
    for tensor, column, shape in zip(spec.inputs, group.columns, group.shapes, strict=True):
        feed[tensor.name], problems = column_array(tensor, column, shape, _where(tensor.name))
        for row, problem in problems.items():
            refused.setdefault(row, problem)
    return _kept(spec, group, feed, refused, rejects)


def _kept(
    spec: ModelSpec,
    group: _Group | _OneValueRows,
    feed: Feed,
    refused: dict[int, ValueProblem],
    rejects: list[Reject],
) -> RowBlock | None:
    """The block of `group`'s rows without those `refused` (by position), which become
    rejects; None if none is left."""
    if refused:
        for row, problem in sorted(refused.items()):
            rejects.append(Reject(group.indices[row], problem.stage, problem.error_type,
                                  problem.message))  # fmt: skip
        keep = np.ones(len(group.indices), dtype=bool)
        keep[list(refused)] = False
        if not keep.any():
            return None
        feed = {name: array[keep] for name, array in feed.items()}
        kept = np.flatnonzero(keep).tolist()
        group.indices = [group.indices[k] for k in kept]
        group.ids = [group.ids[k] for k in kept]
        group.ts = [group.ts[k] for k in kept]
    return RowBlock(spec, feed, group.indices, group.ids, group.ts)


def _where(name: str) -> str:
    return f"features[{_quote(name)}]"


def _inputs_listing(spec: ModelSpec, limit: int = 5) -> str:
    """``'amount' (FP32 [1]), 'country' (BYTES [1])``: a model's inputs, for messages."""
    shown = [f"{_quote(t.name)} ({t.describe()})" for t in spec.inputs[:limit]]
    more = len(spec.inputs) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _array_for_inputs(spec: ModelSpec) -> _Rejected:
    """An array of features sent to a model with named, typed inputs."""
    return _Rejected(
        "validate",
        "InvalidField",
        f"features must be an object of input name -> value: {spec.describe()} takes "
        f"{_plural(len(spec.inputs), 'input')}: {_inputs_listing(spec)}; got an array",
    )


def _input_name_problem(features: dict[str, Any], spec: ModelSpec) -> _Rejected:
    """Describe unknown or missing input names of a name -> value object."""
    unknown = [name for name in features if name not in spec.input_index]
    missing = [t.name for t in spec.inputs if t.name not in features]
    takes = f"{spec.describe()} takes {_plural(len(spec.inputs), 'input')}: {_inputs_listing(spec)}"
    if spec.vector and spec.feature_names:
        takes += f", or its {spec.n_features} features by name"
    if unknown:
        also = f"; also missing {_list(missing)}" if missing else ""
        return _Rejected(
            "validate",
            "UnknownFeature",
            f"features has unknown {'name' if len(unknown) == 1 else 'names'} "
            f"{_list(unknown)}; {takes}{also}",
        )
    return _Rejected(
        "validate",
        "MissingFeature",
        f"features is missing {_plural(len(missing), 'input')} {_list(missing)}; {takes}",
    )


def _drop_out_of_range(
    p: _Pending,
    matrix: np.ndarray[Any, np.dtype[np.float64]],
    in_range: np.ndarray[Any, np.dtype[np.bool_]],
    rejects: list[Reject],
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Reject the rows with a value out of range, drop them from `p`, return the rest."""
    row_ok = np.asarray(in_range.all(axis=1))
    for r in np.flatnonzero(~row_ok).tolist():
        col = int(np.argmin(in_range[r]))  # the first value out of range
        names = p.spec.feature_names if r in p.named else None
        row = _row_values(p.rows[r])
        problem = _value_problem(row[col:], names, col, p.spec.inputs[0].datatype)
        rejects.append(Reject(p.indices[r], problem.stage, problem.error_type, problem.message))
    kept: list[int] = np.flatnonzero(row_ok).tolist()
    p.indices = [p.indices[k] for k in kept]
    p.ids = [p.ids[k] for k in kept]
    p.ts = [p.ts[k] for k in kept]
    kept_rows: np.ndarray[Any, np.dtype[np.float64]] = matrix[row_ok]
    return kept_rows


def _doubles(packed: bytes) -> list[float]:
    """Packed little-endian doubles (an Avro array's block) as a list of floats."""
    return list(struct.unpack(f"<{len(packed) // 8}d", packed))


def _row_values(row: list[Any] | bytes) -> list[Any]:
    """A vector row's values as a list, whether kept as one or packed."""
    return _doubles(row) if isinstance(row, bytes) else row


def _value_problem(
    row: list[Any], names: tuple[str, ...] | None, offset: int = 0, datatype: str = "FP32"
) -> _Rejected:
    """Describe the first value of `row` that is not a finite number that fits the vector
    input's datatype (float32 unless the model says otherwise)."""
    limit = FLOAT_LIMITS[datatype]
    for col, value in enumerate(row, start=offset):
        where = f"features[{col}]" if names is None else f"features[{_quote(names[col])}]"
        if type(value) not in _NUMBER_TYPES:
            return _Rejected(
                "validate",
                "NonNumeric",
                f"{where} must be a finite number, got {_show(value)}",
            )
        if not math.isfinite(value):
            return _Rejected(
                "validate", "NonFinite", f"{where} must be a finite number, got {value!r}"
            )
        if abs(value) > limit:
            bits = datatype.removeprefix("FP")
            return _Rejected(
                *_OVERFLOW[datatype],
                f"{where} must fit in float{bits} (magnitude <= {limit!r}), got {value!r}",
            )
    return _Rejected("validate", "NonNumeric", "features must all be finite numbers")


def _name_problem(features: dict[str, Any], spec: ModelSpec) -> _Rejected:
    """Describe unknown or missing feature names of a name -> value object."""
    unknown = [name for name in features if name not in spec.feature_index]
    known = list(spec.feature_names or ())
    missing = [name for name in known if name not in features]
    model = f"model {spec.name!r} version {spec.version!r}"
    if unknown:
        also = f"; also missing {_list(missing)}" if missing else ""
        return _Rejected(
            "validate",
            "UnknownFeature",
            f"features has unknown {'name' if len(unknown) == 1 else 'names'} {_list(unknown)}; "
            f"{model} takes {spec.n_features} features named {_list(known, 3)}{also}",
        )
    return _Rejected(
        "validate",
        "MissingFeature",
        f"features is missing {len(missing)} of the {spec.n_features} features of "
        f"{model}: {_list(missing)}",
    )


def _nesting_depth(value: bytes) -> int:
    """Return the deepest array/object nesting in `value`, ignoring string contents."""
    brackets = _STRING_LITERAL.sub(b"", value).translate(None, _NOT_BRACKET)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where(np.isin(codes, _OPENERS), 1, -1)
    return int(np.cumsum(steps).max())


def _unparsable(value: bytes, exc: orjson.JSONDecodeError) -> _Rejected:
    """Classify a parse failure as bad UTF-8 or bad JSON."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return _Rejected(
            "decode",
            "InvalidUtf8",
            f"value must be UTF-8 text, got byte 0x{value[bad.start]:02x} at offset "
            f"{bad.start} ({bad.reason})",
        )
    return _Rejected("decode", "InvalidJson", f"value must be one JSON object, got: {exc}")


def _bad_id(event: dict[str, Any]) -> _Rejected:
    """Describe a missing or malformed `id`."""
    expected = f"a string of 1 to {MAX_ID_LENGTH} characters"
    if "id" not in event:
        return _Rejected("validate", "MissingField", f"id is required ({expected})")
    event_id = event["id"]
    if type(event_id) is str:
        got = "an empty string" if not event_id else f"a string of {len(event_id)} characters"
    else:
        got = _show(event_id)
    return _Rejected("validate", "InvalidField", f"id must be {expected}, got {got}")


def _bad_ts(ts: Any) -> _Rejected:
    """Describe a `ts` that is not a non-negative integer."""
    return _Rejected(
        "validate",
        "InvalidField",
        f"ts must be a non-negative 64-bit integer (event time, ms since epoch), got {_show(ts)}",
    )


def _bad_features(event: dict[str, Any]) -> _Rejected:
    """Describe a missing `features`, or one that is neither an array nor an object."""
    expected = "an array of numbers, or an object of feature name -> number or input name -> value"
    if "features" not in event:
        return _Rejected("validate", "MissingField", f"features is required ({expected})")
    return _Rejected(
        "validate",
        "InvalidField",
        f"features must be {expected}, got {_show(event['features'])}",
    )


def _plural(count: int, noun: str) -> str:
    """Say `count noun` with the right plural, for messages."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _quote(text: str, limit: int = 40) -> str:
    """Quote `text` for a message, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def _list(names: list[str], limit: int = 5) -> str:
    """List names for a message, at most `limit` of them."""
    shown = ", ".join(_quote(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def encode_predictions(
    block: RowBlock, outputs: Mapping[str, np.ndarray[Any, Any]], predicted_at_ms: int
) -> list[bytes]:
    """Encode one prediction document per row of `block`.

    Each document has `id`, `model`, `version`, `outputs` (output name -> this row's
    number or list of numbers), `ts` and `predicted_at`; when the spec has `labels` and a
    `probability_output`, also `label` (the label of the row's largest probability) and
    `score` (that probability). float32 values are written in their shortest form.

    Args:
        block: The rows the outputs were computed for.
        outputs: ONNX output name -> array with one entry per block row on the first axis.
        predicted_at_ms: When the prediction was made, ms since epoch.

    Returns:
        One orjson-encoded document per row, in block order.

    Raises:
        ValueError: An output has the wrong number of rows, or the probability output is
            missing or does not have one column per label.
    """
    return encode_rows(block.spec, block.ids, block.ts, outputs, predicted_at_ms)


def encode_rows(
    spec: ModelSpec,
    ids: Sequence[str],
    ts: Sequence[int],
    outputs: Mapping[str, np.ndarray[Any, Any]],
    predicted_at_ms: int,
    prediction_ids: Sequence[str] | None = None,
) -> list[bytes]:
    """`encode_predictions` for rows given by their ids and event times; with
    `prediction_ids`, each document also carries its ``prediction_id``."""
    docs = prediction_documents(spec, ids, ts, outputs, predicted_at_ms, prediction_ids)
    # orjson over-allocates its output buffer and shrinks it in place; keeping hundreds of
    # those alive makes glibc grow and trim the heap on almost every call (about 2 us each
    # on the reference machine). Copying into an exactly-sized object costs ~0.05 us.
    return [orjson.dumps(doc).decode().encode() for doc in docs]


def prediction_documents(
    spec: ModelSpec,
    ids: Sequence[str],
    ts: Sequence[int],
    outputs: Mapping[str, np.ndarray[Any, Any]],
    predicted_at_ms: int,
    prediction_ids: Sequence[str] | None = None,
) -> Iterable[dict[str, Any]]:
    """The prediction documents `encode_rows` writes as JSON, one dict per row, for a
    writer of another format (`pipeline.schemaregistry.AvroPredictionWriter`).

    Raises:
        ValueError: As `encode_predictions`.
    """
    n = len(ids)
    names = list(outputs)
    columns = [_output_rows(name, outputs[name], n) for name in names]
    per_row = _per_row_outputs(names, columns, n)
    labelled = _labels_and_scores(spec, names, columns, outputs, n)
    model, version, at = spec.name, spec.version, predicted_at_ms
    # One dict display per row, "prediction_id" first when there is one: the worker's
    # path, where building each dict and copying it into another cost 0.3 us a row.
    if labelled is None:
        if prediction_ids is None:
            return (
                {"id": i, "model": model, "version": version, "outputs": o, "ts": t,
                 "predicted_at": at}
                for i, o, t in zip(ids, per_row, ts, strict=True)
            )  # fmt: skip
        return (
            {"prediction_id": p, "id": i, "model": model, "version": version, "outputs": o,
             "ts": t, "predicted_at": at}
            for p, i, o, t in zip(prediction_ids, ids, per_row, ts, strict=True)
        )  # fmt: skip
    if prediction_ids is None:
        return (
            {"id": i, "model": model, "version": version, "label": label, "score": score,
             "outputs": o, "ts": t, "predicted_at": at}
            for i, o, t, label, score in zip(ids, per_row, ts, *labelled, strict=True)
        )  # fmt: skip
    return (
        {"prediction_id": p, "id": i, "model": model, "version": version, "label": label,
         "score": score, "outputs": o, "ts": t, "predicted_at": at}
        for p, i, o, t, label, score in zip(prediction_ids, ids, per_row, ts, *labelled,
                                            strict=True)
    )  # fmt: skip


def output_rows(outputs: Mapping[str, np.ndarray[Any, Any]], n: int) -> list[dict[str, Any]]:
    """Each row's outputs as JSON-ready values (output name -> number, list or object), the
    way predictions carry them in their ``outputs`` field."""
    names = list(outputs)
    columns = [_output_rows(name, outputs[name], n) for name in names]
    return _per_row_outputs(names, columns, n)


def _per_row_outputs(names: list[str], columns: list[list[Any]], n: int) -> list[dict[str, Any]]:
    """Build each row's `outputs` object (dict displays for the common 1 and 2 outputs)."""
    if len(names) == 1:
        (only,) = names
        return [{only: x} for x in columns[0]]
    if len(names) == 2:
        first, second = names
        return [{first: x, second: y} for x, y in zip(*columns, strict=True)]
    if not names:
        return [{} for _ in range(n)]
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def _output_rows(name: str, array: np.ndarray[Any, Any], n: int) -> list[Any]:
    """Split one output array into per-row Python values (float32 kept short).

    An object array of maps (a sequence-of-maps output such as skl2onnx's ZipMap) gives one
    JSON object per row, its keys as strings.
    """
    if array.ndim == 0 or array.shape[0] != n:
        raise ValueError(
            f"output {name!r} must have one entry per row ({n}) on its first axis, "
            f"got shape {array.shape}"
        )
    if array.dtype == np.float32 or array.dtype == np.float16:
        rows: list[Any] = orjson.loads(
            orjson.dumps(np.ascontiguousarray(array), option=_FLOAT32_JSON)
        )
        return rows
    if array.dtype == object and n and isinstance(array[0], dict):
        return [_json_map(name, row) for row in array]
    return array.tolist()  # type: ignore[no-any-return]


def _json_map(name: str, row: object) -> dict[str, Any]:
    """One row of a map output as a JSON object: string keys, float32 values kept short."""
    if not isinstance(row, dict):
        raise ValueError(f"output {name!r} must hold one map per row, got {type(row).__name__}")
    values = orjson.loads(orjson.dumps(np.asarray(list(row.values()), dtype=np.float32),
                                       option=_FLOAT32_JSON))  # fmt: skip
    return dict(zip(map(str, row), values, strict=True))


def _map_columns(name: str, maps: np.ndarray[Any, Any], n_labels: int) -> np.ndarray[Any, Any]:
    """A map output (one ``{class: probability}`` per row) as an (n, classes) matrix, its
    columns in the maps' key order (the class order of the model)."""
    rows = [list(row.values()) if isinstance(row, dict) else [] for row in maps]
    if any(len(row) != n_labels for row in rows):
        raise ValueError(
            f"probability output {name!r} must map each of the {n_labels} labels to a "
            "probability in every row"
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), n_labels)


def class_probabilities(
    spec: ModelSpec, outputs: Mapping[str, np.ndarray[Any, Any]], n: int
) -> np.ndarray[Any, Any] | None:
    """The probability output as a matrix, one row per prediction and one column per
    label of the manifest (a map output's values in key order); None for a model without
    labels.

    Raises:
        ValueError: the output is missing or is not one probability per label per row.
    """
    if not spec.labels or not spec.probability_output:
        return None
    output = spec.probability_output
    probs = outputs.get(output)
    if probs is not None and probs.dtype == object and probs.ndim == 1:
        probs = _map_columns(output, probs, len(spec.labels))
    if probs is None or probs.ndim != 2 or probs.shape[1] != len(spec.labels):
        got = "no such output" if probs is None else f"shape {probs.shape}"
        raise ValueError(
            f"probability output {output!r} of model {spec.name!r} version {spec.version!r} "
            f"must have shape ({n}, {len(spec.labels)}), one column per label; got {got}"
        )
    return probs


def _labels_and_scores(
    spec: ModelSpec,
    names: list[str],
    columns: list[list[Any]],
    outputs: Mapping[str, np.ndarray[Any, Any]],
    n: int,
) -> tuple[list[str], list[Any]] | None:
    """Pick each row's most probable label and its probability, if the spec has labels."""
    probs = class_probabilities(spec, outputs, n)
    if probs is None:
        return None
    assert spec.labels is not None and spec.probability_output is not None
    best = np.argmax(probs, axis=1).tolist()
    rows = columns[names.index(spec.probability_output)]
    if rows and isinstance(rows[0], dict):  # a map output: its values in key order
        rows = [list(row.values()) for row in rows]
    return [spec.labels[j] for j in best], [row[j] for row, j in zip(rows, best, strict=True)]
