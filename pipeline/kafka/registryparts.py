"""The Schema Registry's parts of a worker, imported only when it names a registry.

``confluent_kafka.schema_registry`` (with httpx, authlib, fastavro and protobuf) takes
about a third of a second to import, a third of a worker's start, and a worker without
``--schema-registry-url`` uses none of it. `registry_parts` imports `pipeline.schemaregistry`
only when the worker has a registry's address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import WorkerConfig
from pipeline.engine.models import LoadedModel

if TYPE_CHECKING:
    from pipeline.schemaregistry import PredictionWriter, RegistryReader

__all__ = ["RegistryParts", "registry_parts"]


@dataclass(frozen=True, slots=True)
class RegistryParts:
    """What a worker reads and writes through the registry (None: JSON text, no registry).

    Attributes:
        tables: Reads ``--enrich`` table values a registry serializer wrote.
        events: Reads framed event values (``--value-format`` other than json).
        writer: Writes predictions (``--output-format`` other than json).
    """

    tables: RegistryReader | None = None
    events: RegistryReader | None = None
    writer: PredictionWriter | None = None


def registry_parts(
    config: WorkerConfig, models: Callable[[str, str], LoadedModel]
) -> RegistryParts:
    """The registry's readers and writer `config` asks for, connected.

    Args:
        config: The worker's settings.
        models: Gives the loaded model of a name and version (the engine's cache ``get``).

    Raises:
        ConfigError: The client refuses a ``schema.registry.*`` setting.
        RegistryUnreachable: The registry did not answer.
    """
    if not config.schema_registry_url:  # config checked that no format needs one
        return RegistryParts()
    from pipeline.schemaregistry import framed_reader, prediction_writer, table_reader

    return RegistryParts(
        tables=table_reader(config),
        events=framed_reader(config),
        writer=prediction_writer(config, models),
    )
