"""Schema Registry framed values: the frame's checks, and the seam to the schema reader.

A value written by a Schema Registry serializer (Confluent's wire format, which Apicurio's
Confluent-compatible API shares) is one magic byte 0, a 4-byte big-endian schema id, and
the payload encoded with that schema. This module checks the frame and names what is
wrong with it; reading the payload needs the schema, which lives in the registry, so it is
a `FramedReader`'s job (`pipeline.schemaregistry` has the one that asks a registry). The
engine stays free of network I/O: it is handed a reader.

`VALUE_FORMATS` are the formats a worker reads: ``json`` (text, the default), ``avro``,
``jsonschema`` and ``protobuf`` (every value framed, with an Avro, a JSON Schema or a
Protobuf schema) and ``auto`` (per record: a value starting with a control byte that JSON
text cannot start with, the magic byte 0 or another, is read as a frame of any of those
types; any other value as JSON text).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

__all__ = [
    "FRAME_HEADER_BYTES",
    "MAGIC_BYTE",
    "VALUE_FORMATS",
    "FrameProblem",
    "FramedReader",
    "frame_header",
    "frame_schema_id",
    "is_framed",
    "looks_framed",
]

MAGIC_BYTE: Final = 0
FRAME_HEADER_BYTES: Final = 5  # the magic byte and the schema id
VALUE_FORMATS: Final = ("json", "avro", "jsonschema", "protobuf", "auto")


class FrameProblem(Exception):
    """Why a framed value cannot become an event: a ``decode`` reject.

    Args:
        stage: The reject's stage: ``"decode"``.
        error_type: The reject's error type, e.g. ``"UnknownSchema"``.
        message: What was expected, what arrived, and the schema id (and subject) concerned.
    """

    def __init__(self, stage: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.error_type = error_type
        self.message = message


class FramedReader(Protocol):
    """Reads the payload of a framed value with the schema its id names."""

    def read(self, schema_id: int, value: bytes) -> object:
        """Return the value's payload as Python data (an Avro record is a dict).

        Args:
            schema_id: The id in the value's frame (checked by `frame_schema_id`).
            value: The whole value, frame included.

        Raises:
            FrameProblem: The schema is unknown or unavailable, or the payload does not
                decode with it.
        """
        ...

    def describe(self, schema_id: int) -> str:
        """Name the schema for messages: ``schema id 3 (subject features-value, record
        FeatureEvent)``, with what is known of it."""
        ...

    def event_reader(self, schema_id: int) -> Callable[[bytes, int], object] | None:
        """The reader of this schema id's values as the decoder's `ParsedEvent`s, if one is
        ready (the schema fetched, of the event contract's shape): a function of the whole
        value and the payload's offset. Any error it raises means only "read this value
        with `read`", which says what is wrong. None: read every value with `read`."""
        ...


def is_framed(value: bytes) -> bool:
    """Whether `value` starts like a framed value (JSON text never starts with byte 0)."""
    return bool(value) and value[0] == MAGIC_BYTE


def looks_framed(value: bytes) -> bool:
    """Whether `value` starts with a byte JSON text cannot start with (a control byte
    other than whitespace): read as a frame, it gets the frame's reasons (a magic byte 1
    is ``UnknownMagicByte``, not ``InvalidUtf8``)."""
    return bool(value) and value[0] < 0x20 and value[0] not in b"\t\n\r"


def frame_header(schema_id: int) -> bytes:
    """The 5-byte header a framed value of schema `schema_id` starts with (what
    `frame_schema_id` reads back)."""
    return bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big")


def frame_schema_id(value: bytes) -> int:
    """Check a framed value's header and return its schema id.

    Raises:
        FrameProblem: ``UnknownMagicByte`` if the first byte is not 0, ``TruncatedFrame`` if
            the value ends before the header and one byte of payload.
    """
    if value[0] != MAGIC_BYTE:
        raise FrameProblem(
            "decode",
            "UnknownMagicByte",
            f"value must start with the Schema Registry magic byte 0, got byte "
            f"0x{value[0]:02x}: it was not written by a Schema Registry serializer (or the "
            "worker should read it with --value-format json)",
        )
    if len(value) <= FRAME_HEADER_BYTES:
        raise FrameProblem(
            "decode",
            "TruncatedFrame",
            f"value must hold the 5-byte Schema Registry header (magic byte, schema id) and "
            f"a payload, got {len(value)} bytes",
        )
    return int.from_bytes(value[1:FRAME_HEADER_BYTES], "big")
