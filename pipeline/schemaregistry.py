"""The Schema Registry client side: connecting at start, and reading framed Avro values.

The worker reads Schema Registry framed values (``--value-format avro|auto``) through
`AvroReader`, the engine's `FramedReader` that asks a registry: each schema id is fetched
once (the client caches it) and the payload is decoded with confluent-kafka's
`AvroDeserializer`. What goes wrong with one value becomes that value's ``decode`` reject:
a schema id the registry does not know (``UnknownSchema``), a registry that does not
answer for a schema not cached yet, after the client's own bounded retries
(``RegistryUnavailable``), or a payload that does not decode with its schema
(``InvalidAvro``).

The client's settings are the ``-X schema.registry.<setting>`` properties (the same
``[kafka]`` table and ``-X`` flags as librdkafka's, with this prefix), e.g.
``-X schema.registry.basic.auth.user.info=env:REGISTRY_AUTH``; they never reach
librdkafka, and their secrets are masked wherever settings are shown.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from pipeline.config import REGISTRY_PREFIX, WorkerConfig
from pipeline.engine.framing import FrameProblem
from pipeline.errors import ConfigError, RegistryUnreachable

__all__ = ["AvroReader", "avro_encoder", "connect", "framed_reader", "registry_settings"]

_NOT_FOUND = 404


def registry_settings(url: str, properties: Mapping[str, str]) -> dict[str, Any]:
    """The client's settings: `url` and every ``schema.registry.*`` property, unprefixed."""
    prefix = len(REGISTRY_PREFIX)
    extra = {k[prefix:]: v for k, v in properties.items() if k.startswith(REGISTRY_PREFIX)}
    return {**extra, "url": url}


def framed_reader(config: WorkerConfig) -> AvroReader | None:
    """The reader of framed values `config` asks for, connected; None for JSON text.

    Raises:
        ConfigError: The client refuses a ``schema.registry.*`` setting.
        RegistryUnreachable: The registry did not answer.
    """
    if config.value_format == "json":
        return None
    url = config.schema_registry_url
    return AvroReader(connect(url, config.kafka), url)


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
    try:
        schema = schema_file.read_text()
        json.loads(schema)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--schema {schema_file} must be an Avro schema in JSON: {exc}") from exc
    client = connect(url, properties)
    try:
        serializer = AvroSerializer(client, schema)
    except Exception as exc:  # fastavro's SchemaParseException and the like
        raise ConfigError(f"--schema {schema_file} is not a valid Avro schema: {exc}") from exc
    context = SerializationContext(topic, MessageField.VALUE)
    sent = 0

    def encode(value: bytes) -> bytes:
        nonlocal sent
        sent += 1
        try:
            framed = serializer(orjson.loads(value), context)
        except Exception as exc:  # fastavro: a field missing or of the wrong type
            raise ConfigError(
                f"event {sent} does not fit the Avro schema in {schema_file} "
                f"({type(exc).__name__}: {exc}): {value[:200]!r}"
            ) from exc
        if not isinstance(framed, bytes):
            raise ConfigError(f"event {sent} is JSON null; an Avro event must be an object")
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


class AvroReader:
    """Reads framed Avro values with the schemas of one registry (a `FramedReader`).

    Args:
        client: The registry's client; it caches each schema it fetched.
        url: The registry's address, for messages.
    """

    def __init__(self, client: SchemaRegistryClient, url: str) -> None:
        self._client = client
        self._url = url
        self._deserializer = AvroDeserializer(client)
        self._described: dict[int, str] = {}

    def read(self, schema_id: int, value: bytes) -> object:
        """Return the value's record as a dict, reading it with its writer's schema."""
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
        if schema.schema_type not in (None, "AVRO"):
            raise FrameProblem(
                "decode",
                "InvalidAvro",
                f"{self.describe(schema_id)} is a {schema.schema_type} schema; "
                "--value-format avro reads Avro values only",
            )
        try:
            return self._deserializer(value, None)
        except Exception as exc:  # fastavro: EOFError, ValueError, UnicodeDecodeError...
            raise FrameProblem(
                "decode",
                "InvalidAvro",
                f"the payload does not decode with {self.describe(schema_id)}: "
                f"{type(exc).__name__}: {exc or 'the value ends early'}",
            ) from None

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
