"""A reader of flat Avro records, compiled once per writer schema: what a feature event
usually is (strings, numbers, optional fields, an array of doubles, a record or map of
named values), read without fastavro's per-value walk of the schema.

`record_reader` turns a writer schema into a function of the payload's bytes, or returns
None for a schema it does not read (an enum, a fixed, a logical type, a union of two
non-null types of which one is complex, a recursive record...): the caller reads those
with fastavro. What it returns equals fastavro's `schemaless_reader` on every value it
reads (a property test holds it to that): bytes as bytes, an absent optional as None, an
array as a list, a map or record as a dict.

How: the schema becomes the source of one Python function that reads its fields in
order, straight-line, with one-byte varints (lengths, union branches, counts) and every
int or long field read inline, and an array of doubles or floats taken by one `struct`
call per block. A function per field, as a first version had, spent most of its time
calling: the benchmark's event (an id, two optional strings, an optional long, 30
doubles) read in about half the time this way (`pipeline.dev.bench.micro`). Field names
reach the source only through `repr`, so a schema cannot inject code. A reader's source
is kept on it as ``read.source``, for a person debugging one.

`event_reader` compiles a record of the event contract's shape (`id` a string, `features`
an array of doubles, `model` and `version` optional strings, `ts` an optional long, any
other fields read and dropped) into a reader that builds the decoder's own event object
instead of a dict, and keeps an array of doubles that arrives in one block (what
serializers write) as its raw little-endian bytes: the decoder copies a batch of those
into its matrix at once instead of making 30 Python floats per event.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["event_reader", "record_reader"]

_STRUCT_CODES: Final = {"double": ("d", 8), "float": ("f", 4)}
_CACHED_COUNTS: Final = 1024  # packed arrays up to this length keep their Struct


def record_reader(schema: Any) -> Callable[[bytes, int], Any] | None:
    """A reader of records of `schema` (Avro's JSON form) starting at a position, or None
    if the schema is not one this module reads.

    The reader raises IndexError, EOFError or struct.error for a value that ends early,
    ValueError for a union branch or boolean byte the schema does not allow, and
    UnicodeDecodeError for a string that is not UTF-8.
    """
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        return None
    source = _Source()
    try:
        source.value(schema, "record", 1, {})
    except _Unsupported:
        return None
    return source.compile(str(schema.get("name", "record")))


# The event contract's fields, each with the Avro types that carry it as the contract
# says (an optional field may also be required in the writer's schema).
_EVENT_FIELDS: Final = {
    "id": ("string",),
    "features": ({"type": "array", "items": "double"},),
    "model": ("string", ["null", "string"], ["string", "null"]),
    "version": ("string", ["null", "string"], ["string", "null"]),
    "ts": ("long", "int", ["null", "long"], ["long", "null"], ["null", "int"], ["int", "null"]),
}
_REQUIRED_EVENT_FIELDS: Final = ("id", "features")


def event_reader(
    schema: Any, make: Callable[..., Any], absent: object
) -> Callable[[bytes, int], Any] | None:
    """A reader of records of `schema` that returns ``make(id, features, model, version,
    ts)``, or None unless `schema` is a record of the event contract's shape.

    An optional field's null, and a field the schema lacks, is passed as `absent`.
    `features` is the bytes of the array's doubles (8 per value, little-endian) when the
    array arrives in one block, else a list of floats, as `record_reader` gives it. The
    reader raises what `record_reader`'s does.
    """
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        return None
    fields = {str(f.get("name")): f.get("type") for f in schema.get("fields", ())}
    if any(name not in fields for name in _REQUIRED_EVENT_FIELDS) or any(
        _canonical(fields[name]) not in kinds
        for name, kinds in _EVENT_FIELDS.items()
        if name in fields
    ):
        return None
    source = _Source(absent=absent)
    try:
        kept = source.fields(schema, 1, {str(schema.get("name")): schema}, event=True)
    except _Unsupported:
        return None
    args = (kept.get(name, "_ABSENT") for name in ("id", "features", "model", "version", "ts"))
    source.add(1, f"record = _make({', '.join(args)})")
    return source.compile(str(schema.get("name", "record")), _make=make, _ABSENT=absent)


def _canonical(schema: Any) -> Any:
    """A field's type without what does not change how it reads (a primitive written as
    ``{"type": "long"}``, an array's other attributes)."""
    if isinstance(schema, Mapping):
        kind = schema.get("type")
        if kind == "array":
            return {"type": "array", "items": _canonical(schema.get("items"))}
        if isinstance(kind, str) and kind in _PRIMITIVES and "logicalType" not in schema:
            return kind
        return dict(schema)
    if isinstance(schema, list):
        return [_canonical(branch) for branch in schema]
    return schema


class _Unsupported(Exception):
    """A part of the schema this module leaves to fastavro."""


class _Source:
    """The lines of one reader function: ``b`` is the payload, ``p`` the position, ``n``
    the payload's length; each `value` call adds the lines that read one value into a
    variable."""

    def __init__(self, *, absent: object = None) -> None:
        self.lines: list[str] = []
        self._names = 0
        self._null = "None" if absent is None else "_ABSENT"  # what an optional's null reads as

    def compile(self, name: str, **names: Any) -> Callable[[bytes, int], Any]:
        text = "\n".join(
            ["def read_record(b, p):", "    n = len(b)", *self.lines, "    return record"]
        )
        namespace: dict[str, Any] = {
            "_long_rest": _long_rest,
            "_unpacker": _unpacker,
            "_DOUBLE": struct.Struct("<d").unpack_from,
            "_FLOAT": struct.Struct("<f").unpack_from,
            **names,
        }
        exec(compile(text, f"<avro reader of {name}>", "exec"), namespace)  # noqa: S102
        read: Callable[[bytes, int], Any] = namespace["read_record"]
        read.source = text  # type: ignore[attr-defined]
        return read

    def fresh(self, stem: str) -> str:
        self._names += 1
        return f"{stem}{self._names}"

    def add(self, depth: int, *lines: str) -> None:
        self.lines.extend("    " * depth + line for line in lines)

    def value(self, schema: Any, into: str, depth: int, named: dict[str, Any]) -> None:
        """Add the lines reading one value of `schema` into variable `into`."""
        if isinstance(schema, str):
            if schema not in _PRIMITIVES:
                raise _Unsupported(schema)  # a named type used again: a recursive record
            self.primitive(schema, into, depth)
        elif isinstance(schema, list):
            self.union(schema, into, depth, named)
        elif not isinstance(schema, Mapping) or "logicalType" in schema:
            raise _Unsupported(schema)  # fastavro turns logical types into dates, decimals
        elif schema.get("type") == "record":
            self.record(schema, into, depth, named)
        elif schema.get("type") == "array":
            self.array(schema["items"], into, depth, named)
        elif schema.get("type") == "map":
            self.map(schema["values"], into, depth, named)
        elif isinstance(schema.get("type"), str) and schema["type"] in _PRIMITIVES:
            self.primitive(schema["type"], into, depth)
        else:
            raise _Unsupported(schema.get("type"))

    def primitive(self, kind: str, into: str, depth: int) -> None:
        if kind == "null":
            self.add(depth, f"{into} = None")
        elif kind == "boolean":
            self.add(depth, f"{into} = b[p]", "p += 1",
                     f"if {into} > 1: raise ValueError("
                     f"f'a boolean must be byte 0 or 1, got {{{into}}}')",
                     f"{into} = {into} == 1")  # fmt: skip
        elif kind in ("int", "long"):
            self.long_value(into, depth)
        elif kind in _STRUCT_CODES:
            code, width = _STRUCT_CODES[kind]
            unpack = "_DOUBLE" if code == "d" else "_FLOAT"
            self.add(depth, f"{into} = {unpack}(b, p)[0]", f"p += {width}")
        else:  # bytes, string
            size, end = self.fresh("size"), self.fresh("end")
            self.long(size, depth)
            self.add(depth, f"{end} = p + {size}",
                     f"if {size} < 0 or {end} > n: raise EOFError("
                     f"f'{{{size}}} bytes from byte {{p}} of {{n}}')",
                     f"{into} = b[p:{end}]" + (".decode()" if kind == "string" else ""),
                     f"p = {end}")  # fmt: skip

    def long(self, into: str, depth: int) -> None:
        """A zigzag varint (Avro's int and long); one byte inline, more by `_long_rest`."""
        self.add(depth, f"{into} = b[p]", "p += 1",
                 f"if {into} < 128: {into} = ({into} >> 1) ^ -({into} & 1)",
                 f"else: {into}, p = _long_rest(b, p, {into})")  # fmt: skip

    def long_value(self, into: str, depth: int) -> None:
        """A field's zigzag varint, read inline however long: a timestamp in milliseconds
        takes six bytes, and a call per value to `_long_rest` cost ~10% of a read."""
        shift = self.fresh("shift")
        self.add(depth, f"{into} = b[p]", "p += 1",
                 f"if {into} < 128: {into} = ({into} >> 1) ^ -({into} & 1)", "else:")  # fmt: skip
        self.add(depth + 1, f"{into} &= 127", f"{shift} = 7", "while True:")
        self.add(depth + 2, "byte = b[p]", "p += 1", f"{into} |= (byte & 127) << {shift}",
                 "if byte < 128: break", f"{shift} += 7")  # fmt: skip
        self.add(depth + 1, f"{into} = ({into} >> 1) ^ -({into} & 1)")

    def count(self, into: str, depth: int) -> None:
        """A block's item count; a negative count is followed by the block's size."""
        self.long(into, depth)
        skipped = self.fresh("skipped")
        self.add(depth, f"if {into} < 0:")
        self.add(depth + 1, f"{into} = -{into}")
        self.long(skipped, depth + 1)

    def union(self, branches: list[Any], into: str, depth: int, named: dict[str, Any]) -> None:
        branch = self.fresh("branch")
        if len(branches) == 2 and "null" in branches:  # an optional field: one byte
            null = branches.index("null")
            self.add(depth, f"{branch} = b[p]", "p += 1",
                     f"if {branch} == {2 * null}: {into} = {self._null}",  # zigzag of index
                     f"elif {branch} == {2 - 2 * null}:")  # fmt: skip
            self.value(branches[1 - null], into, depth + 1, named)
            self.add(depth, "else: raise ValueError("
                     f"f'union branch byte {{{branch}}} of an optional field')")  # fmt: skip
            return
        self.long(branch, depth)
        for index, schema in enumerate(branches):
            self.add(depth, f"{'if' if index == 0 else 'elif'} {branch} == {index}:")
            self.value(schema, into, depth + 1, named)
        self.add(depth, f"else: raise ValueError(f'union branch {{{branch}}} of "
                 f"{len(branches)}')")  # fmt: skip

    def record(
        self, schema: Mapping[str, Any], into: str, depth: int, named: dict[str, Any]
    ) -> None:
        name = schema.get("name")
        if name in named:
            raise _Unsupported(name)
        named[str(name)] = schema
        fields = self.fields(schema, depth, named)
        self.add(depth, f"{into} = {{{', '.join(f'{k!r}: {v}' for k, v in fields.items())}}}")

    def fields(
        self, schema: Mapping[str, Any], depth: int, named: dict[str, Any], *, event: bool = False
    ) -> dict[str, str]:
        """Add the lines reading a record's fields in order; return field name -> the
        variable holding it. The event record itself (`event`) reads an optional's null as
        its reader's absent value and keeps a single block of `features` as bytes; every
        other record, as fastavro does (None, a list)."""
        kept = {}
        null = self._null
        if not event:
            self._null = "None"
        for field in schema["fields"]:
            value = self.fresh("field")
            field_name = str(field["name"])
            if event and field_name == "features":
                self.packed_doubles(value, depth)
            else:
                self.value(field["type"], value, depth, named)
            kept[field_name] = value
        self._null = null
        return kept

    def packed_doubles(self, into: str, depth: int) -> None:
        """An array of doubles as the bytes of its one block, or, when it arrives in
        several, as a list of floats."""
        count, end = self.fresh("count"), self.fresh("end")
        self.count(count, depth)
        self.add(depth, f"if {count}:")
        self.add(depth + 1, f"{end} = p + {count} * 8",
                 f"if {end} > n: raise EOFError(f'{{{count}}} doubles from byte {{p}} of {{n}}')",
                 f"{into} = b[p:{end}]", f"p = {end}")  # fmt: skip
        self.count(count, depth + 1)
        self.add(depth + 1, f"if {count}:")
        self.add(depth + 2, f"{into} = list(_unpacker('d', len({into}) // 8)({into}, 0))",
                 f"while {count}:")  # fmt: skip
        self.add(depth + 3, f"{into} += _unpacker('d', {count})(b, p)", f"p += {count} * 8")
        self.count(count, depth + 3)
        self.add(depth, f"else: {into} = []")

    def array(self, items: Any, into: str, depth: int, named: dict[str, Any]) -> None:
        count = self.fresh("count")
        self.add(depth, f"{into} = []")
        self.count(count, depth)
        self.add(depth, f"while {count}:")
        packed = _STRUCT_CODES.get(items) if isinstance(items, str) else None
        if packed is not None:
            code, size = packed
            self.add(depth + 1, f"{into} += _unpacker({code!r}, {count})(b, p)",
                     f"p += {count} * {size}")  # fmt: skip
        else:
            item = self.fresh("item")
            self.add(depth + 1, f"for _ in range({count}):")
            self.value(items, item, depth + 2, named)
            self.add(depth + 2, f"{into}.append({item})")
        self.count(count, depth + 1)

    def map(self, values: Any, into: str, depth: int, named: dict[str, Any]) -> None:
        count, key, value = self.fresh("count"), self.fresh("key"), self.fresh("value")
        self.add(depth, f"{into} = {{}}")
        self.count(count, depth)
        self.add(depth, f"while {count}:")
        self.add(depth + 1, f"for _ in range({count}):")
        self.primitive("string", key, depth + 2)
        self.value(values, value, depth + 2, named)
        self.add(depth + 2, f"{into}[{key}] = {value}")
        self.count(count, depth + 1)


_PRIMITIVES: Final = frozenset(("null", "boolean", "int", "long", "float", "double",
                                "bytes", "string"))  # fmt: skip
_UNPACKERS: dict[tuple[str, int], Callable[[bytes, int], tuple[Any, ...]]] = {}


def _unpacker(code: str, count: int) -> Callable[[bytes, int], tuple[Any, ...]]:
    """The unpacker of `count` little-endian values of struct `code`, kept for short
    blocks (a feature vector's length repeats in every value)."""
    unpack = _UNPACKERS.get((code, count))
    if unpack is None:
        unpack = struct.Struct(f"<{count}{code}").unpack_from
        if count <= _CACHED_COUNTS:
            _UNPACKERS[(code, count)] = unpack
    return unpack


def _long_rest(payload: bytes, pos: int, byte: int) -> tuple[int, int]:
    """The rest of a zigzag varint whose first byte (`byte`, at pos - 1) has more."""
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = payload[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos
