"""A reader of flat Avro records, compiled once per writer schema: what a feature event
usually is (strings, numbers, optional fields, an array of doubles, a record or map of
named values), read without fastavro's per-value walk of the schema.

`record_reader` turns a writer schema into a function of the payload's bytes, or returns
None for a schema it does not read (an enum, a fixed, a logical type, a union of two
non-null types of which one is complex, a recursive record...): the caller reads those
with fastavro. What it returns equals fastavro's `schemaless_reader` on every value it
reads (a property test holds it to that): bytes as bytes, an absent optional as None, an
array as a list, a map or record as a dict.

Why: fastavro walks the schema for every value; reading the 30 doubles of the benchmark's
events one by one was most of Avro's cost (`pipeline.dev.bench.micro`). Here an array of
doubles or floats is one `struct` call per block, and each field one closure call.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["record_reader"]

Read = Callable[[bytes, int], tuple[Any, int]]  # (value, position) -> (decoded, next position)

_DOUBLE: Final = struct.Struct("<d")
_FLOAT: Final = struct.Struct("<f")
_STRUCT_TYPES: Final = {"double": "d", "float": "f"}


def record_reader(schema: Any) -> Callable[[bytes, int], Any] | None:
    """A reader of records of `schema` (Avro's JSON form) starting at a position, or None
    if the schema is not one this module reads."""
    if not isinstance(schema, Mapping) or schema.get("type") != "record":
        return None
    try:
        read = _reader(schema, {})
    except _Unsupported:
        return None

    def read_record(payload: bytes, start: int) -> Any:
        return read(payload, start)[0]

    return read_record


class _Unsupported(Exception):
    """A part of the schema this module leaves to fastavro."""


def _reader(schema: Any, named: dict[str, Any]) -> Read:
    """The reader of one schema (a name, a primitive, or a complex type's object)."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return _PRIMITIVES[schema]
        raise _Unsupported(schema)  # a named type used again: a recursive record, say
    if isinstance(schema, list):
        return _union(schema, named)
    if not isinstance(schema, Mapping) or "logicalType" in schema:
        raise _Unsupported(schema)  # fastavro turns logical types into dates, decimals
    kind = schema.get("type")
    if kind == "record":
        return _record(schema, named)
    if kind == "array":
        return _array(schema["items"], named)
    if kind == "map":
        return _map(schema["values"], named)
    if isinstance(kind, str) and kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    raise _Unsupported(kind)


def _record(schema: Mapping[str, Any], named: dict[str, Any]) -> Read:
    name = schema.get("name")
    if name in named:
        raise _Unsupported(name)
    named[str(name)] = schema
    fields = tuple((str(f["name"]), _reader(f["type"], named)) for f in schema["fields"])

    def read(payload: bytes, pos: int) -> tuple[Any, int]:
        record = {}
        for field, read_field in fields:
            record[field], pos = read_field(payload, pos)
        return record, pos

    return read


def _union(branches: list[Any], named: dict[str, Any]) -> Read:
    readers = tuple(_reader(branch, named) for branch in branches)
    if len(branches) == 2 and "null" in branches:  # an optional field: index 0 or 1, one byte
        null_byte = 2 * branches.index("null")  # the zigzag varint of its index
        other_byte = 2 - null_byte
        read_other = readers[1 - branches.index("null")]

        def read_optional(payload: bytes, pos: int) -> tuple[Any, int]:
            byte = payload[pos]
            if byte == null_byte:
                return None, pos + 1
            if byte == other_byte:
                return read_other(payload, pos + 1)
            raise ValueError(f"union branch byte {byte} of an optional field")

        return read_optional

    def read(payload: bytes, pos: int) -> tuple[Any, int]:
        index, pos = _long(payload, pos)
        if not 0 <= index < len(readers):
            raise ValueError(f"union branch {index} of {len(readers)}")
        return readers[index](payload, pos)

    return read


def _array(items: Any, named: dict[str, Any]) -> Read:
    packed = _STRUCT_TYPES.get(items) if isinstance(items, str) else None
    if packed is not None:
        size = struct.calcsize(packed)

        def read_packed(payload: bytes, pos: int) -> tuple[Any, int]:
            values: list[Any] = []
            count, pos = _block_count(payload, pos)
            while count:
                values.extend(struct.unpack_from(f"<{count}{packed}", payload, pos))
                pos += count * size
                count, pos = _block_count(payload, pos)
            return values, pos

        return read_packed
    read_item = _reader(items, named)

    def read(payload: bytes, pos: int) -> tuple[Any, int]:
        values = []
        count, pos = _block_count(payload, pos)
        while count:
            for _ in range(count):
                value, pos = read_item(payload, pos)
                values.append(value)
            count, pos = _block_count(payload, pos)
        return values, pos

    return read


def _map(values: Any, named: dict[str, Any]) -> Read:
    read_value = _reader(values, named)

    def read(payload: bytes, pos: int) -> tuple[Any, int]:
        entries = {}
        count, pos = _block_count(payload, pos)
        while count:
            for _ in range(count):
                key, pos = _string(payload, pos)
                entries[key], pos = read_value(payload, pos)
            count, pos = _block_count(payload, pos)
        return entries, pos

    return read


def _block_count(payload: bytes, pos: int) -> tuple[int, int]:
    """A block's item count; a negative count is followed by the block's size in bytes."""
    count, pos = _long(payload, pos)
    if count < 0:
        _, pos = _long(payload, pos)
        count = -count
    return count, pos


def _long(payload: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (Avro's int and long)."""
    byte = payload[pos]
    pos += 1
    if byte < 0x80:  # most lengths, counts and union branches: one byte
        return (byte >> 1) ^ -(byte & 1), pos
    n = byte & 0x7F
    shift = 7
    while byte & 0x80:
        byte = payload[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _null(payload: bytes, pos: int) -> tuple[None, int]:
    return None, pos


def _boolean(payload: bytes, pos: int) -> tuple[bool, int]:
    byte = payload[pos]
    if byte > 1:
        raise ValueError(f"a boolean must be byte 0 or 1, got {byte}")
    return byte == 1, pos + 1


def _double(payload: bytes, pos: int) -> tuple[float, int]:
    return _DOUBLE.unpack_from(payload, pos)[0], pos + 8


def _float(payload: bytes, pos: int) -> tuple[float, int]:
    return _FLOAT.unpack_from(payload, pos)[0], pos + 4


def _bytes(payload: bytes, pos: int) -> tuple[bytes, int]:
    size, pos = _long(payload, pos)
    end = pos + size
    if size < 0 or end > len(payload):
        raise EOFError(f"{size} bytes from byte {pos} of {len(payload)}")
    return payload[pos:end], end


def _string(payload: bytes, pos: int) -> tuple[str, int]:
    raw, pos = _bytes(payload, pos)
    return raw.decode("utf-8"), pos


_PRIMITIVES: Final[dict[str, Read]] = {
    "null": _null,
    "boolean": _boolean,
    "int": _long,
    "long": _long,
    "float": _float,
    "double": _double,
    "bytes": _bytes,
    "string": _string,
}
