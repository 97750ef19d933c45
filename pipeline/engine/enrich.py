"""Enrichment: fill the features an event does not carry from tables of the latest value
per entity, before the row is decoded for its model.

Kafka-free: a table is anything with ``get(key) -> mapping of name -> value, or None``
(`Table`); `EntityTable` is the in-memory one the Kafka worker fills from a compacted topic
(`pipeline.kafka.enrich`), and a front door could fill one from elsewhere.

The join rule, for an event routed to a model:

* The names a row needs are the model's input names, or, for a single-vector model whose
  manifest names its feature columns and whose event does not send the vector input by
  name, those column names.
* If the event's ``features`` object carries all of them, nothing is looked up. Otherwise
  the event's top-level field ``KEY_FIELD`` (a string, or an integer taken as its decimal
  text) is looked up in every table, in the order of the ``--enrich`` flags, and each name
  the row still lacks is taken from the first table that has it. The event's own values
  always win; names a table carries that the model does not take are ignored.
* An event whose ``features`` is an array carries its whole row: it is never looked up.
* A key that is not in a table is the ``EntityNotFound`` reject of stage ``enrich``, unless
  the table's policy (``--enrich-missing NAME=defaults``) is ``defaults``: then the
  names still lacking after every table are taken from the model manifest's ``defaults``
  (still ``EntityNotFound`` if it has none for one of them), and the codec reports which
  tables defaulted, for the prediction to say so. With ``wait:MS`` the reject is the same
  ``EntityNotFound``; the Kafka worker waits up to MS for the entity and decodes again
  before it takes the reject (`pipeline.kafka.enrich.TableWaits`). An event without the
  key field is ``MissingField``, one with a key of another type ``InvalidField``.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from pipeline.engine.names import PLAIN_NAME_RULE, is_plain_name
from pipeline.engine.spec import ModelSpec
from pipeline.engine.values import show_value

__all__ = [
    "EnrichProblem",
    "EnrichSpec",
    "Enrichment",
    "EntityTable",
    "Table",
    "enrich",
    "missing_policies",
]

_MAX_KEY_LENGTH: Final = 1024
_DEAD_LETTER: Final = "dead-letter"
_DEFAULTS: Final = "defaults"
_WAIT: Final = "wait:"
_MISSING_POLICIES: Final = (_DEAD_LETTER, _DEFAULTS, f"{_WAIT}MS")
_MAX_WAIT_MS: Final = 10_000  # a consumed batch waits at most this; share locks last 30 s


class Table(Protocol):
    """The lookup the codec sees: the latest value of an entity, or None."""

    def get(self, key: str, /) -> Mapping[str, Any] | None:
        """Return the entity's named values, or None if the table has no such key."""


@dataclass(frozen=True, slots=True)
class EnrichSpec:
    """One ``--enrich NAME=TOPIC:KEY_FIELD``: which table, and the event field keying it.

    Attributes:
        name: The enrichment's name (metrics label, messages).
        topic: The table's topic: a compacted topic of JSON objects keyed by entity.
        key_field: The event's top-level field whose value is the entity's key.
        missing: What an event whose entity is not in the table gets: ``dead-letter``,
            ``defaults`` or ``wait:MS`` (`missing_policies`).
    """

    name: str
    topic: str
    key_field: str
    missing: str = _DEAD_LETTER

    @classmethod
    def parse(cls, text: str) -> EnrichSpec:
        """Parse ``NAME=TOPIC:KEY_FIELD``.

        Raises:
            ValueError: The text is not of that form; the message shows an example.
        """
        name, eq, rest = text.partition("=")
        topic, colon, key_field = rest.rpartition(":")
        example = "e.g. --enrich stats=card-stats:card_id"
        if not eq or not colon or not name or not topic or not key_field:
            raise ValueError(f"--enrich must be NAME=TOPIC:KEY_FIELD ({example}), got {text!r}")
        if not is_plain_name(name):
            raise ValueError(
                f"--enrich NAME must be a plain name ({PLAIN_NAME_RULE}), got {name!r}"
            )
        if key_field in ("id", "model", "version", "features", "ts"):
            raise ValueError(
                f"--enrich KEY_FIELD must be a field of its own beside the event's id, model, "
                f"version, features and ts, got {key_field!r} ({example})"
            )
        return cls(name, topic, key_field)

    def __str__(self) -> str:
        return f"{self.name}={self.topic}:{self.key_field}"

    def with_missing(self, policy: str) -> EnrichSpec:
        """This spec with its missing-entity policy (``dead-letter``, ``defaults`` or
        ``wait:MS``)."""
        return EnrichSpec(self.name, self.topic, self.key_field, policy)

    @property
    def wait_ms(self) -> int:
        """How long a batch may wait for a missing entity to arrive (``wait:MS``), else 0."""
        return _wait_ms(self.missing)


def missing_policies(texts: Sequence[str]) -> dict[str, str]:
    """Parse ``--enrich-missing NAME=POLICY`` flags into table name -> policy.

    Raises:
        ValueError: A flag is not of that form, names a table twice, or names no policy we
            have; the message shows an example.
    """
    policies: dict[str, str] = {}
    for text in texts:
        name, eq, policy = text.partition("=")
        if not eq or not name or not (policy in _MISSING_POLICIES or _wait_ms(policy)):
            raise ValueError(
                f"--enrich-missing must be NAME=POLICY with POLICY one of "
                f"{', '.join(_MISSING_POLICIES)} (MS from 1 to {_MAX_WAIT_MS}; e.g. "
                f"--enrich-missing stats=defaults or stats=wait:200), got {text!r}"
            )
        if name in policies:
            raise ValueError(f"--enrich-missing names {name!r} twice")
        policies[name] = policy
    return policies


def _wait_ms(policy: str) -> int:
    """MS of a ``wait:MS`` policy within bounds, else 0."""
    ms = policy.removeprefix(_WAIT)
    if ms == policy or not ms.isdigit() or not 0 < int(ms) <= _MAX_WAIT_MS:
        return 0
    return int(ms)


@dataclass(frozen=True, slots=True)
class Enrichment:
    """A table to join, with what keys it."""

    spec: EnrichSpec
    table: Table


class EnrichProblem(Exception):
    """An event that cannot be joined: the codec turns it into a reject."""

    def __init__(self, stage: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.error_type = error_type
        self.message = message


def enrich(
    event: Mapping[str, Any],
    features: dict[str, Any],
    spec: ModelSpec,
    enrichments: Sequence[Enrichment],
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Return `features` with the names it lacks filled from the tables (see the module
    docstring for the rule), and the names of the tables that lacked the entity and whose
    policy is ``defaults`` (the model's defaults then fill what is still lacking);
    `features` itself is never changed.

    Raises:
        EnrichProblem: The key field is missing or not a string or integer, or the entity
            is not in a table whose policy is ``dead-letter``, or the model has no default
            for a name that is still lacking.
    """
    if spec.vector and spec.feature_names and spec.inputs[0].name not in features:
        needed: Sequence[str] = spec.feature_names
    else:
        needed = [t.name for t in spec.inputs]
    lacking = [name for name in needed if name not in features]
    if not lacking:
        return features, ()
    joined = dict(features)
    defaulted: list[tuple[EnrichSpec, str]] = []
    for enrichment in enrichments:
        key = _key(event, enrichment.spec)
        row = enrichment.table.get(key)
        if row is None:
            if enrichment.spec.missing != _DEFAULTS:
                raise _not_found(enrichment.spec, key, lacking, "")
            defaulted.append((enrichment.spec, key))
            continue
        for name in lacking:
            if name not in joined and name in row:
                joined[name] = row[name]
    still = [name for name in lacking if name not in joined]
    if not defaulted or not still:  # no table lacked the entity, or the others filled all
        return joined, ()
    defaults = dict(spec.defaults)
    for name in still:
        if name in defaults:
            joined[name] = defaults[name]
    undefaulted = [name for name in still if name not in joined]
    if undefaulted:
        first, key = defaulted[0]
        raise _not_found(
            first, key, undefaulted,
            f", and {spec.describe()} has no defaults for {_names(undefaulted)} (its "
            "model.json 'defaults')",
        )  # fmt: skip
    return joined, tuple(s.name for s, _ in defaulted)


def _not_found(s: EnrichSpec, key: str, lacking: list[str], more: str) -> EnrichProblem:
    if s.wait_ms:
        flag = f"--enrich-missing {s.name}={s.missing}"
        more = f", not even after a wait of up to {s.wait_ms} ms ({flag}){more}"
    return EnrichProblem(
        "enrich",
        "EntityNotFound",
        f"{s.key_field} {key!r} is not in table topic {s.topic!r} (--enrich {s}){more}: "
        f"produce the entity's values to {s.topic!r} keyed {key!r}, or send "
        f"{_names(lacking)} in features",
    )


def _key(event: Mapping[str, Any], spec: EnrichSpec) -> str:
    """The event's entity key for `spec`, as the table's key text."""
    value = event.get(spec.key_field)
    if type(value) is str and 0 < len(value) <= _MAX_KEY_LENGTH:
        return value
    if type(value) is int:
        return str(value)
    if spec.key_field not in event:
        raise EnrichProblem(
            "validate",
            "MissingField",
            f"{spec.key_field} is required: it keys table topic {spec.topic!r} "
            f"(--enrich {spec}), which fills the features the event does not carry",
        )
    raise EnrichProblem(
        "validate",
        "InvalidField",
        f"{spec.key_field} must be a string of 1 to {_MAX_KEY_LENGTH} characters or an "
        f"integer (the key of table topic {spec.topic!r}), got {show_value(value)}",
    )


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


class EntityTable:
    """The latest value of each entity, in memory, with its size estimated as it changes.

    A value is a JSON object of named values. One whose values are all JSON numbers with a
    fraction or exponent (floats) is kept packed: 8 bytes a value plus its tuple of names,
    shared by every entity with the same names; any other object is kept as its JSON bytes
    and parsed on lookup.

    `nbytes` is the sum of `sys.getsizeof` of every object the table holds (keys, packed
    values or JSON bytes, the tuples pairing names with values, each distinct tuple of
    names and its strings once) plus the dictionary's own table: the Python heap the table
    keeps alive, without the allocator's slack.
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[tuple[str, ...], bytes] | bytes] = {}
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._held = 0  # bytes of keys and values, without the dict's own table

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def nbytes(self) -> int:
        """Estimated bytes the table holds (see the class docstring)."""
        return self._held + sys.getsizeof(self._rows)

    def __contains__(self, key: object, /) -> bool:
        return key in self._rows

    def get(self, key: str, /) -> Mapping[str, Any] | None:
        """The entity's named values, or None."""
        stored = self._rows.get(key)
        if stored is None:
            return None
        if isinstance(stored, tuple):
            names, packed = stored
            return dict(zip(names, array("d", packed), strict=True))
        value: dict[str, Any] = orjson.loads(stored)
        return value

    def put(self, key: str, value: bytes | None) -> str | None:
        """Keep `value` as the entity's latest (None, a tombstone, deletes it).

        Returns:
            None, or why the value was not kept (it is not a JSON object); the entity's
            previous value then stays.
        """
        if value is None:
            self._drop(key)
            return None
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return f"the value must be a JSON object of named values, got invalid JSON: {exc}"
        if type(parsed) is not dict:
            return f"the value must be a JSON object of named values, got {show_value(parsed)}"
        self._keep(key, parsed, bytes(value))
        return None

    def put_record(self, key: str, record: object) -> str | None:
        """Keep a record read from a Schema Registry framed value (a dict of named values)
        as the entity's latest, as `put` keeps a JSON object.

        Returns:
            None, or why the record was not kept; the entity's previous value then stays.
        """
        if type(record) is not dict:
            return f"the value must be a record of named values, got {show_value(record)}"
        try:
            text = orjson.dumps(record)
        except TypeError as exc:  # an Avro bytes field, say: not a named input's value
            return f"the record's values must be numbers, strings, arrays or records ({exc})"
        self._keep(key, record, text)
        return None

    def _keep(self, key: str, parsed: dict[str, Any], text: bytes) -> None:
        """Keep `parsed` (whose JSON is `text`): packed if its values are all floats."""
        self._drop(key)
        stored: tuple[tuple[str, ...], bytes] | bytes
        if parsed and all(type(v) is float for v in parsed.values()):
            stored = (self._shape(tuple(parsed)), array("d", parsed.values()).tobytes())
        else:
            stored = text
        self._rows[key] = stored
        self._held += _size(key, stored)

    def _drop(self, key: str) -> None:
        old = self._rows.pop(key, None)
        if old is not None:
            self._held -= _size(key, old)

    def _shape(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The one shared tuple equal to `names` (counted once)."""
        shared = self._shapes.get(names)
        if shared is None:
            shared = self._shapes[names] = names
            self._held += sys.getsizeof(names) + sum(sys.getsizeof(n) for n in names)
        return shared


def _size(key: str, stored: tuple[tuple[str, ...], bytes] | bytes) -> int:
    """Bytes of one entry's objects: its key and its value (its slot is in the dict's size)."""
    if type(stored) is tuple:
        value = sys.getsizeof(stored) + sys.getsizeof(stored[1])
    else:
        value = sys.getsizeof(stored)
    return sys.getsizeof(key) + value
