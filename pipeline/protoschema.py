"""Protobuf schemas of the Schema Registry: a registered schema compiled to message classes,
the message indexes of a framed value, a message read as the event's data, and a
prediction written as a message.

A value of a Schema Registry Protobuf serializer (Confluent's wire format) is the magic byte
0, the 4-byte schema id, the *message indexes* (which message of the schema's file the
payload is: a zigzag varint count, then that many zigzag varint indexes, into the file's
messages and then into the nested ones; the single byte 0 says the first message), then
the message's bytes.

A registry keeps a Protobuf schema as the ``.proto`` file's text (what the Java and Go
serializers register) or as a base64 ``FileDescriptorProto`` (what confluent-kafka's
Python `ProtobufSerializer` registers; Apicurio gives it back as it was given). Text is
compiled with ``protoc`` from grpcio-tools, in a subprocess so its errors can be quoted,
once per schema, with the files it imports from other subjects (the schema's references)
beside it and the well-known types (``google/protobuf/*.proto``) on the include path.

A message is read as its JSON twin would be: each field by its name, a nested message as
an object, a repeated field as a list, a map as an object, an enum as its name. A proto3
field without presence is there with its default (0, "", false) even when the wire
leaves it out, so a feature of 0.0 is a feature; an ``optional`` or ``oneof`` field that is
not set is absent. At the top level, an empty ``model`` or ``version`` and a ``ts`` of 0 are
absent (the worker's default model, the newest version, the record's timestamp), as a null
is in the Avro contract.
"""

from __future__ import annotations

import base64
import binascii
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

__all__ = [
    "FIRST_MESSAGE",
    "ProtoFile",
    "ProtoProblem",
    "compile_schema",
    "frame_indexes",
    "message_data",
    "prediction_message",
]

FIRST_MESSAGE: Final = b"\x00"  # the message indexes [0] (the file's first message), one byte
_MAIN: Final = "schema.proto"  # the file name a compiled schema's text is given
_MAX_INDEXES: Final = 32  # message indexes deeper than this are not a real schema's
_ABSENT_WHEN_EMPTY: Final = (("model", ""), ("version", ""), ("ts", 0))
_PROTOC_TIMEOUT_S: Final = 60.0


class ProtoProblem(Exception):
    """A schema that does not compile, or a value that does not read with its schema."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@dataclass(slots=True)
class ProtoFile:
    """A compiled Protobuf schema: its file's descriptor and the pool that resolves it.

    Args:
        proto: The schema's own file.
        pool: A pool of its own holding the file and every file it imports (two schemas
            may declare the same message names: each keeps its own pool).
    """

    proto: descriptor_pb2.FileDescriptorProto
    pool: descriptor_pool.DescriptorPool
    _classes: dict[tuple[int, ...], type[Message]] = field(default_factory=dict)

    def message_class(self, indexes: Sequence[int]) -> type[Message]:
        """The message class the `indexes` of a frame name.

        Raises:
            ProtoProblem: ``InvalidProtobuf``: an index is past the messages at its level.
        """
        key = tuple(indexes)
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = message_factory.GetMessageClass(self._descriptor(key))
        return cls

    def _descriptor(self, indexes: tuple[int, ...]) -> Descriptor:
        names: list[str] = []
        level = self.proto.message_type
        for depth, index in enumerate(indexes):
            if not 0 <= index < len(level):
                where = "the file" if depth == 0 else f"message {'.'.join(names)}"
                raise ProtoProblem(
                    "InvalidProtobuf",
                    f"message indexes {list(indexes)} name message {index} of {where}, which "
                    f"holds {len(level)}: the value was written with another schema",
                )
            names.append(level[index].name)
            level = level[index].nested_type
        package = self.proto.package
        return self.pool.FindMessageTypeByName(".".join([package, *names] if package else names))


def compile_schema(schema: str, references: Mapping[str, str] | None = None) -> ProtoFile:
    """Compile a registered Protobuf schema (``.proto`` text or a base64
    ``FileDescriptorProto``) with the files it imports.

    Args:
        schema: The schema as the registry gives it.
        references: Each imported file's name (as the schema's ``import`` says it) -> its
            schema, for the imports the well-known types do not cover.

    Raises:
        ProtoProblem: ``InvalidProtobuf``: it does not compile; the message quotes protoc.
    """
    refs = dict(references or {})
    described = _descriptor_proto(schema)
    if described is not None:
        pool = descriptor_pool.DescriptorPool()
        _add_with_imports(pool, described, refs)
        return ProtoFile(described, pool)
    files = _protoc({**refs, _MAIN: schema})
    pool = descriptor_pool.DescriptorPool()
    main = None
    for proto in files.file:  # protoc lists every file after the files it imports
        pool.Add(proto)
        if proto.name == _MAIN:
            main = proto
    assert main is not None, "protoc gave no descriptor of the file it compiled"
    return ProtoFile(main, pool)


def _descriptor_proto(schema: str) -> descriptor_pb2.FileDescriptorProto | None:
    """The schema as a base64 FileDescriptorProto, or None if it is .proto text (whose
    spaces, quotes and semicolons base64 does not have)."""
    try:
        raw = base64.b64decode(schema, validate=True)
    except (binascii.Error, ValueError):
        return None
    proto = descriptor_pb2.FileDescriptorProto()
    try:
        proto.ParseFromString(raw)
    except DecodeError:
        return None
    return proto


def _add_with_imports(
    pool: descriptor_pool.DescriptorPool,
    proto: descriptor_pb2.FileDescriptorProto,
    refs: Mapping[str, str],
) -> None:
    """Add `proto` to `pool` after the files it imports: referenced base64 descriptors,
    else the well-known types protobuf ships."""
    for name in proto.dependency:
        try:
            pool.FindFileByName(name)
            continue
        except KeyError:
            pass
        ref = refs.get(name)
        imported = None if ref is None else _descriptor_proto(ref)
        if imported is None:
            imported = _well_known(name)
        imported.name = name
        _add_with_imports(pool, imported, refs)
    pool.Add(proto)


def _well_known(name: str) -> descriptor_pb2.FileDescriptorProto:
    from google.protobuf import (  # noqa: F401  # they put the well-known types in the default pool
        any_pb2,
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        struct_pb2,
        timestamp_pb2,
        wrappers_pb2,
    )

    try:
        found = descriptor_pool.Default().FindFileByName(name)
    except KeyError:
        raise ProtoProblem(
            "InvalidProtobuf",
            f"the schema imports {name!r}, which is neither a well-known type nor among its "
            "references: register it with a reference to the subject that holds that file",
        ) from None
    proto = descriptor_pb2.FileDescriptorProto()
    found.CopyToProto(proto)
    return proto


def _protoc(files: Mapping[str, str]) -> descriptor_pb2.FileDescriptorSet:
    """Compile `files` (name -> .proto text) with protoc; return the descriptors of
    `_MAIN` and every file it imports."""
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="pipeline-proto-") as tmp:
        root = Path(tmp)
        for name, text in files.items():
            path = root / "in" / name
            if not path.resolve().is_relative_to(root / "in"):
                raise ProtoProblem("InvalidProtobuf", f"reference name {name!r} leaves its folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        out = root / "out.pb"
        done = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{root / 'in'}", f"-I{well_known}",
             "--include_imports", f"--descriptor_set_out={out}", _MAIN],
            capture_output=True, text=True, timeout=_PROTOC_TIMEOUT_S, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().replace(f"{root / 'in'}/", "")
            raise ProtoProblem("InvalidProtobuf", f"protoc does not compile it: {said}")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def frame_indexes(value: bytes, start: int) -> tuple[list[int], int]:
    """The message indexes of a framed value whose indexes start at `start`, and where
    the message's bytes start.

    Raises:
        ProtoProblem: ``TruncatedFrame``: the value ends inside them, or they are not
            a count and that many indexes.
    """
    count, at = _zigzag(value, start)
    if count == 0:
        return [0], at
    if not 0 < count <= _MAX_INDEXES:
        raise ProtoProblem(
            "TruncatedFrame",
            f"the message indexes after the 5-byte header must start with their count (1 "
            f"to {_MAX_INDEXES}, or 0 for the first message), got {count}: the value was not "
            "written by a Protobuf serializer of the Schema Registry",
        )
    indexes = []
    for _ in range(count):
        index, at = _zigzag(value, at)
        indexes.append(index)
    return indexes, at


def _zigzag(value: bytes, at: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if at >= len(value) or shift > 63:
            raise ProtoProblem(
                "TruncatedFrame",
                f"the value ends inside its message indexes ({len(value)} bytes): it was cut "
                "short, or not written by a Protobuf serializer of the Schema Registry",
            )
        byte = value[at]
        at += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return (n >> 1) ^ -(n & 1), at


_SCALAR, _SCALARS, _OTHER = 0, 1, 2  # how a field is read: as is, sliced, or by `_one`


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    read: int  # _SCALAR, _SCALARS or _OTHER
    presence: bool  # an unset field is absent (optional, oneof, a message)
    repeated: bool
    nested: bool  # a message (a map's value, for a map)
    enum: EnumDescriptor | None
    map_value: FieldDescriptor | None


_FIELDS: dict[Descriptor, tuple[_Field, ...]] = {}


def _fields(desc: Descriptor) -> tuple[_Field, ...]:
    known = _FIELDS.get(desc)
    if known is not None:
        return known
    fields = []
    for f in desc.fields:
        entry = f.message_type
        is_map = entry is not None and entry.GetOptions().map_entry
        value = entry.fields_by_name["value"] if is_map and entry is not None else None
        kind = value if value is not None else f
        simple = kind.message_type is None and kind.enum_type is None and not is_map
        presence = f.has_presence and not f.is_repeated
        read = _OTHER if not simple or presence else _SCALARS if f.is_repeated else _SCALAR
        fields.append(
            _Field(
                name=f.name,
                read=read,
                presence=f.has_presence and not f.is_repeated,
                repeated=f.is_repeated,
                nested=kind.message_type is not None,
                enum=kind.enum_type,
                map_value=value,
            )
        )
    known = _FIELDS[desc] = tuple(fields)
    return known


def message_data(message: Message, *, top: bool = True) -> dict[str, Any]:
    """The message as its JSON twin's data (see the module docstring)."""
    data: dict[str, Any] = {}
    for f in _fields(message.DESCRIPTOR):
        if f.read == _SCALAR:
            data[f.name] = getattr(message, f.name)
            continue
        if f.read == _SCALARS:  # a slice is a list, made faster than list() makes one
            data[f.name] = getattr(message, f.name)[:]
            continue
        if f.presence and not message.HasField(f.name):
            continue
        value = getattr(message, f.name)
        if f.map_value is not None:
            data[f.name] = {k: _one(f, v) for k, v in value.items()}
        elif f.repeated:
            data[f.name] = [_one(f, v) for v in value]
        else:
            data[f.name] = _one(f, value)
    if top:
        for name, empty in _ABSENT_WHEN_EMPTY:
            if name in data and data[name] == empty and type(data[name]) is type(empty):
                del data[name]
    return data


def _one(f: _Field, value: Any) -> Any:
    if f.nested:
        return message_data(value, top=False)
    if f.enum is not None:
        named = f.enum.values_by_number.get(value)
        return value if named is None else named.name
    return value


def prediction_message(cls: type[Message], doc: Mapping[str, Any]) -> bytes:
    """A prediction document (`pipeline.engine.codec.prediction_documents`) as the bytes of
    a ``pipeline.prediction.Prediction`` message (``schemas/prediction-message.proto``)."""
    message: Any = cls(
        id=doc["id"],
        model=doc["model"],
        version=doc["version"],
        ts=doc["ts"],
        predicted_at=doc["predicted_at"],
    )
    if "prediction_id" in doc:
        message.prediction_id = doc["prediction_id"]
    if "label" in doc:
        message.label = doc["label"]
        message.score = doc["score"]
    for name, value in doc["outputs"].items():
        out = message.outputs[name]
        if isinstance(value, dict):
            out.probabilities.update({str(k): float(v) for k, v in value.items()})
            continue
        leaves: list[Any] = []
        out.shape.extend(_flatten(value, leaves))
        if leaves and all(type(v) is str for v in leaves):
            out.strings.extend(leaves)
        elif all(type(v) is int or type(v) is bool for v in leaves):
            out.integers.extend(int(v) for v in leaves)
        else:
            out.numbers.extend(float(v) for v in leaves)
    data: bytes = message.SerializeToString()
    return data


def _flatten(value: Any, leaves: list[Any]) -> list[int]:
    """Append `value`'s leaves to `leaves` (row-major); return its shape."""
    if not isinstance(value, list):
        leaves.append(value)
        return []
    shape = [len(value)]
    inner: list[int] = []
    for item in value:
        inner = _flatten(item, leaves)
    return shape + inner
