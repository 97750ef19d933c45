"""The errors this package raises, one base class and a few subclasses.

Hierarchy::

    PipelineError                 anything the pipeline raises on purpose
    +-- ConfigError               a setting is missing, malformed or out of range
    +-- BrokerError               the local Kafka broker could not be obtained, started or stopped
    +-- RegistryError             the local Schema Registry could not be fetched, started or stopped
    +-- RegistryUnreachable       no Schema Registry answered at start (`--schema-registry-url`)
    +-- ModelError                a model could not be found or loaded
    |   +-- ModelNotFoundError    no such model name or version in the store
    |   +-- ModelLoadError        the file exists but is unsafe, corrupt or fails its checksum
    +-- KafkaError                the Kafka path failed in a way the worker cannot route around
    |   +-- BrokerUnreachable     no broker answered within the bounded connection time
    |   +-- DeliveryFailed        an output was not delivered for good; nothing past it committed
    +-- Overloaded                the engine's queue for a model is full: retry later

Every message says what was expected, what arrived, and what to do. Each class ends the
`pipeline` command with its own exit code (`pipeline.exitcodes`).
A bad *event* is never an exception that escapes: it becomes a reject and a dead-letter record.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerUnreachable",
    "ConfigError",
    "DeliveryFailed",
    "KafkaError",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "Overloaded",
    "PipelineError",
    "RegistryError",
    "RegistryUnreachable",
]


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """A setting is missing, malformed or out of range."""


class BrokerError(PipelineError):
    """The local Kafka broker could not be obtained, started or stopped."""


class RegistryError(PipelineError):
    """The local Schema Registry could not be obtained, started or stopped."""


class RegistryUnreachable(PipelineError):
    """No Schema Registry answered at ``--schema-registry-url`` when the worker started."""


class ModelError(PipelineError):
    """A model could not be found or loaded."""


class ModelNotFoundError(ModelError):
    """No model of that name, or no such version of it, is in the store."""


class ModelLoadError(ModelError):
    """A model file exists but is unsafe, corrupt, or does not match its checksum."""


class KafkaError(PipelineError):
    """The Kafka path failed in a way the worker cannot route around."""


class BrokerUnreachable(KafkaError):
    """No Kafka broker answered within the bounded connection time."""


class DeliveryFailed(KafkaError):
    """An output (or an event `pipeline produce` sent) was not delivered for good."""


class Overloaded(PipelineError):
    """The engine's queue for a model version is full; the caller should retry later."""
