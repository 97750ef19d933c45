"""The exit codes of the `pipeline` command, defined once.

A supervisor (systemd, Kubernetes, compose) can tell from the code whether starting again
may help: a usage or configuration error will fail the same way every time, an
unreachable broker or a failed delivery may not. `exit_code` maps an exception to its
code; `EXIT_CODES` is the documented table (the README's is generated from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pipeline.errors import (
    BrokerUnreachable,
    ConfigError,
    DeliveryFailed,
    KafkaError,
    RegistryUnreachable,
)

__all__ = [
    "BROKER_UNREACHABLE",
    "CONFIG",
    "DELIVERY_FAILED",
    "EXIT_CODES",
    "FAILED",
    "INTERRUPTED",
    "KAFKA_FATAL",
    "OK",
    "REGISTRY_UNREACHABLE",
    "USAGE",
    "ExitCode",
    "exit_code",
]


@dataclass(frozen=True, slots=True)
class ExitCode:
    """One exit code: its number, a short name, when it happens, and whether a restart helps.

    Attributes:
        code: The process exit status.
        name: A short name for tables and logs.
        meaning: When the command exits with it.
        restart: Whether starting the same command again may succeed.
    """

    code: int
    name: str
    meaning: str
    restart: bool


OK: Final = 0
FAILED: Final = 1
USAGE: Final = 2
CONFIG: Final = 3
BROKER_UNREACHABLE: Final = 4
DELIVERY_FAILED: Final = 5
KAFKA_FATAL: Final = 6
REGISTRY_UNREACHABLE: Final = 7
INTERRUPTED: Final = 130

EXIT_CODES: Final = (
    ExitCode(OK, "ok", "done; a worker or server stopped cleanly on SIGTERM or SIGINT", False),
    ExitCode(
        FAILED,
        "failed",
        "the command ran and the answer is no (`kafka status`: not running; `models validate`: "
        "a model fails), a model could not be imported, the local broker could not be "
        "started, or a `--workers` child died of a signal",
        True,
    ),
    ExitCode(USAGE, "usage", "the command line is wrong (an unknown flag, a missing value)", False),
    ExitCode(
        CONFIG,
        "config",
        "a setting is wrong: a flag value, a `PIPELINE_*` variable (unknown ones too), the "
        "`--config` file, a `-X` property, a secret file or variable it names",
        False,
    ),
    ExitCode(
        BROKER_UNREACHABLE,
        "broker-unreachable",
        "no broker answered within 10 s: the address, the network or the `-X` security settings",
        True,
    ),
    ExitCode(
        DELIVERY_FAILED,
        "delivery-failed",
        "an output was not delivered for good (the worker committed nothing past it, so a "
        "restart redoes it), or `pipeline produce` could not deliver every event",
        True,
    ),
    ExitCode(
        KAFKA_FATAL,
        "kafka-fatal",
        "any other Kafka error the worker cannot route around: missing topics with "
        "`--no-create-topics`, a topic it may not create, transactions refused, a "
        "transactional id fenced twice within 60 s (another live worker uses it), a fatal "
        "client error",
        True,
    ),
    ExitCode(
        REGISTRY_UNREACHABLE,
        "registry-unreachable",
        "`--value-format avro|auto`: the Schema Registry at `--schema-registry-url` did not "
        "answer at start (the address, or the `-X schema.registry.*` credentials)",
        True,
    ),
    ExitCode(INTERRUPTED, "interrupted", "a command other than run or serve got Ctrl-C", False),
)


def exit_code(exc: BaseException) -> int:
    """The exit code the `pipeline` command ends with when `exc` escapes a subcommand."""
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, ConfigError):
        return CONFIG
    if isinstance(exc, RegistryUnreachable):
        return REGISTRY_UNREACHABLE
    if isinstance(exc, BrokerUnreachable):
        return BROKER_UNREACHABLE
    if isinstance(exc, DeliveryFailed):
        return DELIVERY_FAILED
    if isinstance(exc, KafkaError):
        return KAFKA_FATAL
    return FAILED
