"""The Schema Registry client side: connecting at start, reading framed Avro, JSON Schema
and Protobuf values, and writing predictions as framed Avro, JSON Schema or Protobuf values.

The worker reads Schema Registry framed values
(``--value-format avro|jsonschema|protobuf|auto``)
through `RegistryReader`, the engine's `FramedReader` that asks a registry: each schema id
is fetched once and kept. An Avro payload is decoded with fastavro (confluent-kafka's
`AvroDeserializer` for a schema with references); a JSON Schema payload (the frame, then
JSON text, as confluent-kafka's `JSONSerializer` writes it) is parsed as JSON, and not
validated against its schema again: the serializer validated it, and the event contract's
own checks follow. A Protobuf payload is read with the message its frame's message indexes
name in the schema, compiled once per id (`pipeline.protoschema`), as the data of its JSON
twin. What goes wrong with one value becomes that value's ``decode`` reject:
a schema id the registry does not know (``UnknownSchema``), a registry that does not
answer for a schema not cached yet, after the client's own bounded retries
(``RegistryUnavailable``), a payload that does not decode with its schema (``InvalidAvro``,
``InvalidJson``, ``InvalidProtobuf``), message indexes cut short (``TruncatedFrame``), or a
schema of a type the format does not read (Avro under ``jsonschema``, say).

With ``--output-format avro``, `AvroPredictionWriter` writes each prediction as a framed
Avro value of its model's schema (`pipeline.engine.avroschema`), registered under the
subject that ``--output-subject-strategy`` names (``topic``: ``<output topic>-value``;
``record``: ``pipeline.prediction.<model>``; ``topic-record``: both, joined by ``-``). A
version is registered once, when it is first written (and for every version loaded at
start, before the worker reads a record): a registry that checks compatibility and refuses
the schema refuses the version, with the registry's reason, at start; a version first met
later has its predictions dead-lettered with that reason (``IncompatibleSchema``), never
written in a form consumers cannot read.

With ``--output-format jsonschema``, `JsonSchemaPredictionWriter` writes each prediction as
the JSON text ``--output-format json`` writes, framed with the id of the prediction
contract's JSON Schema (``schemas/prediction.schema.json``, shipped in the package),
registered once per subject of the same strategy.

With ``--output-format protobuf``, `ProtobufPredictionWriter` writes each prediction as a
``pipeline.prediction.Prediction`` message (``schemas/prediction-message.proto``, shipped in
the package, registered as its ``.proto`` text once per subject of the same strategy),
framed with that schema's id and the message index 0.

The client's settings are the ``-X schema.registry.<setting>`` properties (the same
``[kafka]`` table and ``-X`` flags as librdkafka's, with this prefix), e.g.
``-X schema.registry.basic.auth.user.info=env:REGISTRY_AUTH``; they never reach
librdkafka, and their secrets are masked wherever settings are shown.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeAlias

import msgspec
import numpy as np
import orjson
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from pipeline.config import REGISTRY_PREFIX, WorkerConfig
from pipeline.engine.avrodecode import event_reader, record_reader
from pipeline.engine.avroschema import NAMESPACE, avro_name, prediction_schema
from pipeline.engine.codec import ParsedEvent, encode_rows, prediction_documents
from pipeline.engine.framing import FRAME_HEADER_BYTES, FrameProblem, frame_header
from pipeline.engine.models import LoadedModel
from pipeline.engine.spec import ModelSpec
from pipeline.errors import ConfigError, RegistryUnreachable
from pipeline.protoschema import (
    FIRST_MESSAGE,
    ProtoFile,
    ProtoProblem,
    compile_schema,
    frame_indexes,
    message_data,
    prediction_message,
)

__all__ = [
    "AvroPredictionWriter",
    "JsonSchemaPredictionWriter",
    "PredictionWriter",
    "ProtobufPredictionWriter",
    "RegistryReader",
    "avro_encoder",
    "connect",
    "framed_reader",
    "json_schema_encoder",
    "prediction_writer",
    "protobuf_encoder",
    "registry_settings",
    "table_reader",
]

log = logging.getLogger("pipeline.schemaregistry")
_RESOLVED_BY_DESERIALIZER = object()  # a schema with references: AvroDeserializer reads it


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A flat Avro record's reader (`pipeline.engine.avrodecode`): of events (`event_reader`,
    giving `ParsedEvent`s) or of any record (`record_reader`, giving dicts)."""

    read: Callable[[bytes, int], Any]
    events: bool = False


_NOT_FOUND = 404
_AVRO, _JSON, _PROTOBUF = "AVRO", "JSON", "PROTOBUF"  # the registry's schema types
_SCHEMA_TYPES = {
    "avro": (_AVRO,),
    "jsonschema": (_JSON,),
    "protobuf": (_PROTOBUF,),
    "auto": (_AVRO, _JSON, _PROTOBUF),
}
_READ_BY = {
    _AVRO: "--value-format avro or auto",
    _JSON: "--value-format jsonschema or auto",
    _PROTOBUF: "--value-format protobuf or auto",
}
_INVALID = {_AVRO: "InvalidAvro", _JSON: "InvalidJson", _PROTOBUF: "InvalidProtobuf"}
_PARSED_AS_JSON = object()  # a JSON Schema id: its payloads are JSON text


def registry_settings(url: str, properties: Mapping[str, str]) -> dict[str, Any]:
    """The client's settings: `url` and every ``schema.registry.*`` property, unprefixed."""
    prefix = len(REGISTRY_PREFIX)
    extra = {k[prefix:]: v for k, v in properties.items() if k.startswith(REGISTRY_PREFIX)}
    return {**extra, "url": url}


def framed_reader(config: WorkerConfig) -> RegistryReader | None:
    """The reader of framed values `config` asks for, connected; None for JSON text.

    Raises:
        ConfigError: The client refuses a ``schema.registry.*`` setting.
        RegistryUnreachable: The registry did not answer.
    """
    if config.value_format == "json":
        return None
    url = config.schema_registry_url
    return RegistryReader(connect(url, config.kafka), url, _SCHEMA_TYPES[config.value_format])


def table_reader(config: WorkerConfig) -> RegistryReader | None:
    """The reader of `--enrich` table values written by a Schema Registry serializer (any
    schema type, each record as a dict), connected; None without --schema-registry-url.

    Raises:
        ConfigError: The client refuses a ``schema.registry.*`` setting.
        RegistryUnreachable: The registry did not answer.
    """
    url = config.schema_registry_url
    if not config.enrichments or not url:
        return None
    return RegistryReader(connect(url, config.kafka), url, _SCHEMA_TYPES["auto"], events=False)


def prediction_writer(
    config: WorkerConfig, models: Callable[[str, str], LoadedModel]
) -> PredictionWriter | None:
    """The writer of predictions `config` asks for, connected; None for JSON text.

    Args:
        config: The worker's settings (``--output-format`` and the registry's).
        models: Gives the loaded model of a name and version (the engine's cache ``get``).

    Raises:
        ConfigError: The client refuses a ``schema.registry.*`` setting.
        RegistryUnreachable: The registry did not answer.
    """
    if config.output_format == "json":
        return None
    client = connect(config.schema_registry_url, config.kafka)
    if config.output_format in ("jsonschema", "protobuf"):
        one_schema = (
            JsonSchemaPredictionWriter
            if config.output_format == "jsonschema"
            else ProtobufPredictionWriter
        )
        return one_schema(
            client,
            config.schema_registry_url,
            topic=config.output_topic,
            strategy=config.output_subject_strategy,
        )
    return AvroPredictionWriter(
        client,
        config.schema_registry_url,
        topic=config.output_topic,
        strategy=config.output_subject_strategy,
        models=models,
    )


def avro_encoder(
    url: str, properties: Mapping[str, str], schema_file: Path, topic: str
) -> Callable[[bytes], bytes]:
    """Turn JSON event values into framed Avro values of the schema in `schema_file`.

    The schema is registered under ``<topic>-value`` (the topic name strategy) with the
    first value, as confluent-kafka's `AvroSerializer` does.

    Raises:
        ConfigError: The schema file cannot be read or is not an Avro schema.
        RegistryUnreachable: The registry did not answer.
    """
    schema = _schema_text(schema_file, "an Avro schema in JSON")
    client = connect(url, properties)
    try:
        serializer = AvroSerializer(client, schema)
    except Exception as exc:  # fastavro's SchemaParseException and the like
        raise ConfigError(f"--schema {schema_file} is not a valid Avro schema: {exc}") from exc
    return _framing(serializer, topic, "Avro", schema_file)


def json_schema_encoder(
    url: str, properties: Mapping[str, str], schema_file: Path, topic: str
) -> Callable[[bytes], bytes]:
    """Turn JSON event values into framed JSON Schema values of the schema in
    `schema_file`, with confluent-kafka's `JSONSerializer`: it registers the schema under
    ``<topic>-value`` with the first value and validates every value against it.

    Raises:
        ConfigError: The schema file cannot be read or is not JSON, or the serializer's
            ``jsonschema`` package is not installed.
        RegistryUnreachable: The registry did not answer.
    """
    schema = _schema_text(schema_file, "a JSON Schema")
    try:
        from confluent_kafka.schema_registry.json_schema import JSONSerializer
    except ImportError as exc:  # jsonschema / referencing, confluent-kafka's [json] extra
        raise ConfigError(
            f"--value-format jsonschema needs confluent-kafka's JSON Schema support ({exc}); "
            "install it with `pip install 'confluent-kafka[json]'`"
        ) from exc
    client = connect(url, properties)
    serializer = JSONSerializer(schema, client)
    return _framing(serializer, topic, "JSON", schema_file)


def protobuf_encoder(
    url: str, properties: Mapping[str, str], schema_file: Path, topic: str
) -> Callable[[bytes], bytes]:
    """Turn JSON event values into framed Protobuf values of the first message of the
    ``.proto`` file `schema_file`: each event is read into the message as protobuf's JSON
    mapping reads it, and framed with the id its text is registered under, as
    ``<topic>-value``, and the message index 0.

    Raises:
        ConfigError: The file cannot be read, protoc does not compile it, or the registry
            refuses it.
        RegistryUnreachable: The registry did not answer.
    """
    try:
        text = schema_file.read_text()
        message = compile_schema(text).message_class([0])
    except OSError as exc:
        raise ConfigError(f"--schema {schema_file} cannot be read: {exc}") from exc
    except ProtoProblem as problem:
        raise ConfigError(f"--schema {schema_file}: {problem.message}") from None
    client = connect(url, properties)
    subject = f"{topic}-value"
    try:
        schema_id = client.register_schema(subject, Schema(text, _PROTOBUF))
    except SchemaRegistryError as exc:
        raise ConfigError(
            f"the Schema Registry at {url} refused {schema_file} under subject {subject!r} "
            f"(HTTP {exc.http_status_code}, error {exc.error_code}: {exc.error_message})"
        ) from None
    finally:
        client.close()  # registered once: the frame needs only its id
    header = frame_header(schema_id) + FIRST_MESSAGE
    name = message.DESCRIPTOR.full_name
    sent = 0

    def encode(value: bytes) -> bytes:
        nonlocal sent
        sent += 1
        try:
            event = json_format.ParseDict(orjson.loads(value), message())
        except (json_format.ParseError, orjson.JSONDecodeError) as exc:
            raise ConfigError(
                f"event {sent} does not fit message {name} of {schema_file} ({exc}): "
                f"{value[:200]!r}"
            ) from None
        data: bytes = event.SerializeToString()
        return header + data

    return encode


def _schema_text(schema_file: Path, kind: str) -> str:
    """The text of ``--schema`` FILE, which must be JSON."""
    try:
        schema = schema_file.read_text()
        json.loads(schema)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--schema {schema_file} must be {kind}: {exc}") from exc
    return schema


def _framing(
    serializer: Callable[[Any, SerializationContext], bytes | None],
    topic: str,
    kind: str,
    schema_file: Path,
) -> Callable[[bytes], bytes]:
    """Each JSON value through `serializer`; a value it refuses stops the command (exit 3)
    with the event's number, the reason and the value's start."""
    context = SerializationContext(topic, MessageField.VALUE)
    sent = 0

    def encode(value: bytes) -> bytes:
        nonlocal sent
        sent += 1
        try:
            framed = serializer(orjson.loads(value), context)
        except Exception as exc:  # a field missing or of the wrong type, a failed validation
            raise ConfigError(
                f"event {sent} does not fit the {kind} schema in {schema_file} "
                f"({type(exc).__name__}: {exc}): {value[:200]!r}"
            ) from exc
        if not isinstance(framed, bytes):
            raise ConfigError(f"event {sent} is JSON null; a framed event must be an object")
        return framed

    return encode


def connect(url: str, properties: Mapping[str, str]) -> SchemaRegistryClient:
    """Return a client of the registry at `url`, once it answered a request.

    Raises:
        ConfigError: The client refuses a ``schema.registry.*`` setting.
        RegistryUnreachable: The registry did not answer (or refused the credentials).
    """
    try:
        client = SchemaRegistryClient(registry_settings(url, properties))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"the Schema Registry client refuses its settings (--schema-registry-url and the "
            f"-X schema.registry.* properties): {exc}"
        ) from exc
    try:
        client.get_subjects()
    except Exception as exc:  # httpx's connection errors, or the registry's own answer
        client.close()
        raise RegistryUnreachable(
            f"the Schema Registry at {url} did not answer a request for its subjects "
            f"({type(exc).__name__}: {exc}); start it (`pipeline schema-registry start`), or "
            "check --schema-registry-url and the -X schema.registry.* credentials"
        ) from exc
    return client


class RegistryReader:
    """Reads framed values with the schemas of one registry (a `FramedReader`).

    Args:
        client: The registry's client; it caches each schema it fetched.
        url: The registry's address, for messages.
        types: The schema types read (``AVRO``, ``JSON``, ``PROTOBUF``); a value whose
            schema is of another type is a ``decode`` reject of the type read.
        events: Read Avro records of the event contract's shape as the decoder's
            `ParsedEvent` (`pipeline.engine.avrodecode.event_reader`), which it takes
            without checking their field types again; False reads them as dicts, like
            any other record.
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        url: str,
        types: Sequence[str] = (_AVRO,),
        *,
        events: bool = True,
    ) -> None:
        self._client = client
        self._events = events
        self._url = url
        self._types = tuple(types)
        self._deserializer = AvroDeserializer(client)
        self._described: dict[int, str] = {}
        self._parsed: dict[int, Any] = {}  # schema id -> the parsed writer schema

    def read(self, schema_id: int, value: bytes) -> object:
        """Return the value's record as a dict (or a `ParsedEvent`, see ``events``),
        reading it with its writer's schema.

        A schema fetched and parsed once is kept by id. A flat record (primitives,
        optional fields, arrays, maps and records of them: `pipeline.engine.avrodecode`)
        is read by a reader compiled for it; any other schema by fastavro's
        `schemaless_reader` directly: what `AvroDeserializer` does for a value without a
        serialization context, without its per-value look-ups. A schema with references to
        other subjects is read through `AvroDeserializer`, which resolves them.
        """
        parsed = self._parsed.get(schema_id)
        if parsed is None:
            parsed = self._writer_schema(schema_id)
        if type(parsed) is _Compiled:
            try:
                return parsed.read(value, FRAME_HEADER_BYTES)
            except (IndexError, EOFError, struct.error):
                raise self._invalid_avro(schema_id, "the value ends early") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise self._invalid_avro(schema_id, f"{type(exc).__name__}: {exc}") from None
        if isinstance(parsed, ProtoFile):
            return self._read_protobuf(schema_id, parsed, value)
        if parsed is _PARSED_AS_JSON:
            try:
                return orjson.loads(value[FRAME_HEADER_BYTES:])
            except orjson.JSONDecodeError as exc:
                raise FrameProblem(
                    "decode",
                    "InvalidJson",
                    f"the payload of a value framed with {self.describe(schema_id)} is not "
                    f"JSON text: {exc}",
                ) from None
        try:
            if parsed is _RESOLVED_BY_DESERIALIZER:
                return self._deserializer(value, None)
            return schemaless_reader(io.BytesIO(value[FRAME_HEADER_BYTES:]), parsed, None)
        except Exception as exc:  # fastavro: EOFError, ValueError, UnicodeDecodeError...
            said = f"{type(exc).__name__}: {exc or 'the value ends early'}"
            raise self._invalid_avro(schema_id, said) from None

    def event_reader(self, schema_id: int) -> Callable[[bytes, int], object] | None:
        """The compiled reader of this schema id's events, once its schema was fetched by
        `read` (see `pipeline.engine.framing.FramedReader`); never asks the registry."""
        parsed = self._parsed.get(schema_id)
        if type(parsed) is _Compiled and parsed.events:
            return parsed.read
        return None

    def _invalid_avro(self, schema_id: int, said: str) -> FrameProblem:
        return FrameProblem(
            "decode",
            "InvalidAvro",
            f"the payload does not decode with {self.describe(schema_id)}: {said}",
        )

    def _read_protobuf(self, schema_id: int, schema: ProtoFile, value: bytes) -> object:
        """The message the frame's indexes name, read from the rest of the value."""
        try:
            indexes, start = frame_indexes(value, FRAME_HEADER_BYTES)
            cls = schema.message_class(indexes)
        except ProtoProblem as problem:
            raise FrameProblem(
                "decode", problem.error_type, f"{problem.message} ({self.describe(schema_id)})"
            ) from None
        try:
            return message_data(cls.FromString(value[start:]))
        except DecodeError as exc:
            raise FrameProblem(
                "decode",
                "InvalidProtobuf",
                f"the payload does not decode as message {cls.DESCRIPTOR.full_name} of "
                f"{self.describe(schema_id)}: {exc}",
            ) from None

    def _writer_schema(self, schema_id: int) -> Any:
        """Fetch and parse schema `schema_id`, and keep it; a failure is not kept, so the
        next value of the id asks again."""
        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == _NOT_FOUND:
                raise FrameProblem(
                    "decode",
                    "UnknownSchema",
                    f"schema id {schema_id} is not in the Schema Registry at {self._url} "
                    f"({exc.error_message}); the value was written against another registry, "
                    "or its schema was deleted",
                ) from None
            raise self._unavailable(schema_id, exc) from None
        except Exception as exc:  # httpx: the registry does not answer
            raise self._unavailable(schema_id, exc) from None
        kind = schema.schema_type or _AVRO
        if kind not in self._types:
            wanted = " and ".join(self._types)
            raise FrameProblem(
                "decode",
                _INVALID[self._types[0]],
                f"{self.describe(schema_id)} has schema type {kind}; this worker reads "
                f"{wanted} schemas only"
                + (f" (run it with {_READ_BY[kind]})" if kind in _READ_BY else ""),
            )
        if kind == _JSON:
            parsed = _PARSED_AS_JSON
        elif kind == _PROTOBUF:
            parsed = self._protobuf_schema(schema_id, schema)
        elif schema.references:
            parsed = _RESOLVED_BY_DESERIALIZER
        else:
            try:
                raw = json.loads(schema.schema_str or "null")
                events = event_reader(raw, ParsedEvent, msgspec.UNSET) if self._events else None
                compiled = events or record_reader(raw)
                parsed = (
                    _Compiled(compiled, events is not None)
                    if compiled is not None
                    else parse_schema(raw)
                )
            except Exception as exc:  # fastavro's SchemaParseException, a JSON error
                raise FrameProblem(
                    "decode",
                    "InvalidAvro",
                    f"{self.describe(schema_id)} is not an Avro schema fastavro can read: "
                    f"{type(exc).__name__}: {exc}",
                ) from None
        self._parsed[schema_id] = parsed
        return parsed

    def _protobuf_schema(self, schema_id: int, schema: Schema) -> ProtoFile:
        """Compile a Protobuf schema with the files its references name."""
        try:
            imports = {
                str(ref.name): str(
                    self._client.get_version(
                        str(ref.subject), ref.version or "latest"
                    ).schema.schema_str
                )
                for ref in schema.references or ()
            }
            return compile_schema(schema.schema_str or "", imports)
        except ProtoProblem as problem:
            raise FrameProblem(
                "decode", problem.error_type, f"{self.describe(schema_id)}: {problem.message}"
            ) from None
        except Exception as exc:  # a reference the registry does not give
            raise self._unavailable(schema_id, exc) from None

    def describe(self, schema_id: int) -> str:
        """``schema id 3 (subject features-value, record example.FeatureEvent)``."""
        known = self._described.get(schema_id)
        if known is None:
            known = self._described[schema_id] = f"schema id {schema_id}{self._details(schema_id)}"
        return known

    def _details(self, schema_id: int) -> str:
        details: list[str] = []
        # What is known is said; a description never fails a value.
        with contextlib.suppress(Exception):
            subjects = self._client.get_subjects_by_schema_id(schema_id)
            if subjects:
                details.append(f"subject {', '.join(subjects)}")
        with contextlib.suppress(Exception):
            parsed = json.loads(self._client.get_schema(schema_id).schema_str or "null")
            if isinstance(parsed, dict) and parsed.get("name"):
                space = parsed.get("namespace")
                details.append(f"record {space + '.' if space else ''}{parsed['name']}")
        return f" ({', '.join(details)})" if details else ""

    def _unavailable(self, schema_id: int, exc: Exception) -> FrameProblem:
        return FrameProblem(
            "decode",
            "RegistryUnavailable",
            f"the Schema Registry at {self._url} did not give schema id {schema_id} "
            f"({type(exc).__name__}: {exc}) after the client's retries; the value is kept in "
            "the dead-letter topic to be replayed once the registry answers",
        )


def _register_at_start(
    versions: Iterable[tuple[str, str]], register: Callable[[str, str], object]
) -> None:
    """Register each version's prediction schema before the worker reads a record: a
    refusal is a configuration error (exit 3), no answer an unreachable registry."""
    for name, version in versions:
        try:
            register(name, version)
        except FrameProblem as problem:
            if problem.error_type == "SchemaNotRegistered":
                raise RegistryUnreachable(problem.message) from None
            raise ConfigError(problem.message) from None


def _subject(topic: str, strategy: str, model: str) -> str:
    """The subject of a model's predictions under `strategy` (``--output-subject-strategy``)."""
    record = f"{NAMESPACE}.{avro_name(model)}"
    return {"topic": f"{topic}-value", "record": record, "topic-record": f"{topic}-{record}"}[
        strategy
    ]


class _OneSchemaWriter:
    """Writes predictions framed with one schema of the prediction contract, registered
    once per subject (`_subject`) when a model's predictions are first written.

    Args:
        client: The registry's client.
        url: The registry's address, for messages.
        topic: The output topic (for the ``topic`` and ``topic-record`` subjects).
        strategy: ``topic``, ``record`` or ``topic-record``.
    """

    _kind = ""  # "JSON Schema", for messages
    _schema_type = ""  # the registry's schema type
    _file = ""  # the schema, in the package's _schemas
    _after_header = b""  # what the frame holds between the header and the payload

    def __init__(
        self, client: SchemaRegistryClient, url: str, *, topic: str, strategy: str
    ) -> None:
        self._client = client
        self._url = url
        self._topic = topic
        self._strategy = strategy
        self._text = (resources.files("pipeline") / "_schemas" / self._file).read_text()
        self._headers: dict[str, bytes] = {}  # subject -> frame header

    def prepare(self, versions: Iterable[tuple[str, str]]) -> None:
        """Register the schema under the subject of every model in `versions`.

        Raises:
            ConfigError: The registry refused the schema under a subject.
            RegistryUnreachable: The registry did not answer.
        """
        _register_at_start(versions, lambda name, _: self._header(name))

    def __call__(
        self,
        spec: ModelSpec,
        ids: Sequence[str],
        ts: Sequence[int],
        outputs: Mapping[str, np.ndarray[Any, Any]],
        predicted_at_ms: int,
        prediction_ids: Sequence[str] | None = None,
    ) -> list[bytes]:
        """One framed value per row (the arguments are `encode_rows`'s).

        Raises:
            FrameProblem: As `_header`.
        """
        header = self._header(spec.name)
        payloads = self._payloads(spec, ids, ts, outputs, predicted_at_ms, prediction_ids)
        return [header + payload for payload in payloads]

    def _payloads(
        self,
        spec: ModelSpec,
        ids: Sequence[str],
        ts: Sequence[int],
        outputs: Mapping[str, np.ndarray[Any, Any]],
        predicted_at_ms: int,
        prediction_ids: Sequence[str] | None,
    ) -> Iterable[bytes]:
        """Each row's payload, without the frame."""
        raise NotImplementedError

    def _header(self, model: str) -> bytes:
        """The frame of `model`'s predictions, registering the schema the first time.

        Raises:
            FrameProblem: The registry refused the schema (``IncompatibleSchema``) or did
                not answer (``SchemaNotRegistered``): every row of the batch is
                dead-lettered.
        """
        subject = _subject(self._topic, self._strategy, model)
        header = self._headers.get(subject)
        if header is not None:
            return header
        try:
            schema_id = self._client.register_schema(subject, Schema(self._text, self._schema_type))
        except SchemaRegistryError as exc:
            raise FrameProblem(
                "produce",
                "IncompatibleSchema",
                f"the Schema Registry at {self._url} refused the prediction {self._kind} under "
                f"subject {subject!r} (HTTP {exc.http_status_code}, error {exc.error_code}: "
                f"{exc.error_message}); the subject holds schemas of another kind or contract: "
                "write to another topic or choose another --output-subject-strategy",
            ) from None
        except Exception as exc:  # httpx: the registry does not answer
            raise FrameProblem(
                "produce",
                "SchemaNotRegistered",
                f"the Schema Registry at {self._url} did not register the prediction "
                f"{self._kind} under subject {subject!r} ({type(exc).__name__}: {exc}); the "
                "inputs are kept in the dead-letter topic to be replayed",
            ) from None
        header = frame_header(schema_id) + self._after_header
        self._headers[subject] = header
        log.info("predictions under subject %r are written as %s values: schema id %d",
                 subject, self._kind, schema_id)  # fmt: skip
        return header


class JsonSchemaPredictionWriter(_OneSchemaWriter):
    """Writes predictions as framed JSON Schema values: the frame of the prediction
    contract's schema (``schemas/prediction.schema.json``), then the prediction's JSON text
    as ``--output-format json`` writes it, so a consumer's `JSONDeserializer` reads (and
    validates) it."""

    _kind = "JSON Schema"
    _schema_type = _JSON
    _file = "prediction.schema.json"

    def _payloads(
        self,
        spec: ModelSpec,
        ids: Sequence[str],
        ts: Sequence[int],
        outputs: Mapping[str, np.ndarray[Any, Any]],
        predicted_at_ms: int,
        prediction_ids: Sequence[str] | None,
    ) -> Iterable[bytes]:
        return encode_rows(spec, ids, ts, outputs, predicted_at_ms, prediction_ids)


class ProtobufPredictionWriter(_OneSchemaWriter):
    """Writes predictions as framed Protobuf messages of ``schemas/prediction-message.proto``
    (``pipeline.prediction.Prediction``, the file's first message: message index 0), whose
    ``.proto`` text is what the registry holds, as a Java or Go serializer registers it."""

    _kind = "Protobuf schema"
    _schema_type = _PROTOBUF
    _file = "prediction-message.proto"
    _after_header = FIRST_MESSAGE

    def __init__(
        self, client: SchemaRegistryClient, url: str, *, topic: str, strategy: str
    ) -> None:
        super().__init__(client, url, topic=topic, strategy=strategy)
        self._message = compile_schema(self._text).message_class([0])

    def _payloads(
        self,
        spec: ModelSpec,
        ids: Sequence[str],
        ts: Sequence[int],
        outputs: Mapping[str, np.ndarray[Any, Any]],
        predicted_at_ms: int,
        prediction_ids: Sequence[str] | None,
    ) -> Iterable[bytes]:
        docs = prediction_documents(spec, ids, ts, outputs, predicted_at_ms, prediction_ids)
        return (prediction_message(self._message, doc) for doc in docs)


@dataclass(frozen=True, slots=True)
class _Written:
    """How one model version's predictions are written: its schema's id and parsed form,
    and the Avro names of outputs whose own names Avro does not allow."""

    header: bytes
    parsed: Any
    renamed: tuple[tuple[str, str], ...]


class AvroPredictionWriter:
    """Writes predictions as framed Avro values of their model's registered schema.

    Args:
        client: The registry's client.
        url: The registry's address, for messages.
        topic: The output topic (for the ``topic`` and ``topic-record`` subjects).
        strategy: ``topic``, ``record`` or ``topic-record``.
        models: Gives the loaded model of a name and version.
    """

    def __init__(
        self,
        client: SchemaRegistryClient,
        url: str,
        *,
        topic: str,
        strategy: str,
        models: Callable[[str, str], LoadedModel],
    ) -> None:
        self._client = client
        self._url = url
        self._topic = topic
        self._strategy = strategy
        self._models = models
        self._written: dict[tuple[str, str], _Written] = {}
        self._refused: dict[tuple[str, str], tuple[str, str]] = {}  # (error type, message)

    def subject(self, model: str) -> str:
        """The subject a model's prediction schema is registered under."""
        return _subject(self._topic, self._strategy, model)

    def prepare(self, versions: Iterable[tuple[str, str]]) -> None:
        """Register the schema of every version in `versions` (the ones loaded at start).

        Raises:
            ConfigError: The registry refused a version's schema (incompatible with the
                subject's earlier ones), or the version's outputs have no Avro form.
            RegistryUnreachable: The registry did not answer.
        """
        _register_at_start(versions, self._writing)

    def __call__(
        self,
        spec: ModelSpec,
        ids: Sequence[str],
        ts: Sequence[int],
        outputs: Mapping[str, np.ndarray[Any, Any]],
        predicted_at_ms: int,
        prediction_ids: Sequence[str] | None = None,
    ) -> list[bytes]:
        """One framed Avro value per row (the arguments are `encode_rows`'s).

        Raises:
            FrameProblem: The version's schema was refused, or the registry did not answer
                when it was first registered (every row of the batch is dead-lettered).
            ValueError: The outputs do not fit the manifest or the schema (OutputMismatch).
        """
        written = self._writing(spec.name, spec.version)
        docs = prediction_documents(spec, ids, ts, outputs, predicted_at_ms, prediction_ids)
        values = []
        for doc in docs:
            if written.renamed:
                row = doc["outputs"]
                doc["outputs"] = {new: row.get(old) for old, new in written.renamed}
            buffer = io.BytesIO()
            buffer.write(written.header)
            try:
                schemaless_writer(buffer, written.parsed, doc)
            except (ValueError, TypeError) as exc:  # fastavro: a value not of its field's type
                raise ValueError(
                    f"the outputs of {spec.describe()} do not fit its Avro schema ({exc}); "
                    "the graph declares other types or shapes than it returns"
                ) from None
            values.append(buffer.getvalue())
        return values

    def _writing(self, name: str, version: str) -> _Written:
        key = (name, version)
        written = self._written.get(key)
        if written is not None:
            return written
        refused = self._refused.get(key)
        if refused is not None:
            raise FrameProblem("produce", *refused)
        model = self._models(name, version)
        try:
            schema = prediction_schema(model.spec, model.outputs, model.map_outputs)
        except ValueError as exc:
            raise self._refuse(
                key, FrameProblem("produce", "UnwritableOutputs", str(exc))
            ) from None
        subject = self.subject(name)
        text = json.dumps(schema)
        try:
            schema_id = self._client.register_schema(subject, Schema(text, "AVRO"))
        except SchemaRegistryError as exc:
            raise self._refuse(key, FrameProblem(
                "produce",
                "IncompatibleSchema",
                f"the Schema Registry at {self._url} refused the prediction schema of "
                f"{model.spec.describe()} under subject {subject!r} (HTTP "
                f"{exc.http_status_code}, error {exc.error_code}: {exc.error_message}); "
                "a version whose outputs change type breaks the subject's compatibility: "
                "write it to another topic, use --output-subject-strategy record or "
                "topic-record if several models share the topic, or relax the subject's "
                "compatibility",
            )) from None  # fmt: skip
        except Exception as exc:  # httpx: the registry does not answer
            raise FrameProblem(
                "produce",
                "SchemaNotRegistered",
                f"the Schema Registry at {self._url} did not register the prediction schema "
                f"of {model.spec.describe()} under subject {subject!r} ({type(exc).__name__}: "
                f"{exc}); the inputs are kept in the dead-letter topic to be replayed",
            ) from None
        names = tuple((t.name, avro_name(t.name)) for t in model.outputs)
        renamed = names if any(old != new for old, new in names) else ()  # all, or none
        header = frame_header(schema_id)
        written = self._written[key] = _Written(header, parse_schema(schema), renamed)
        log.info(
            "predictions of model %r version %r are written as Avro: schema id %d, subject %r",
            name, version, schema_id, subject,
        )  # fmt: skip
        return written

    def _refuse(self, key: tuple[str, str], problem: FrameProblem) -> FrameProblem:
        """Remember that a version cannot be written, so its batches fail fast."""
        log.error("%s", problem.message)
        self._refused[key] = (problem.error_type, problem.message)
        return problem


PredictionWriter: TypeAlias = (
    AvroPredictionWriter | JsonSchemaPredictionWriter | ProtobufPredictionWriter
)
"""A writer of predictions framed for the registry (``--output-format`` other than json)."""
