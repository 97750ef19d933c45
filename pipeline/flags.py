"""Command-line flags shared by the commands that run the engine and its doors.

`pipeline run` and `pipeline serve` both take the engine's flags (model store, batching),
the doors' flags (where they listen, their bounds) and the logging flags; each flag's
destination is a field of `pipeline.config.EngineSettings`, `DoorSettings` or
`LogSettings`, so its environment variable (`pipeline.config.setting_variables`) and TOML
key work the same for both commands. Parsers are built with ``argument_default=SUPPRESS``:
only flags actually given reach the settings. The README's tables of flags are generated
from these parsers (``python -m pipeline.dev.reference``).
"""

from __future__ import annotations

from argparse import SUPPRESS
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import LOG_FORMATS, LOG_LEVELS, UNSAFE_PROPERTIES

__all__ = [
    "NOT_SETTINGS",
    "add_config_flag",
    "add_door_flags",
    "add_engine_flags",
    "add_output_flags",
    "add_property_flags",
    "setting_flags",
]

Add = Callable[..., Any]
# Destinations of flags that are not settings: they say where settings come from, or what
# the command does with them.
NOT_SETTINGS = frozenset(("config", "X", "print_config", "help"))


def setting_flags(args: Any) -> dict[str, object]:
    """The settings given on the command line: every parsed flag but `NOT_SETTINGS`; the
    values of repeatable flags (``--input-topic``, ``--pin``) as tuples."""
    skip = NOT_SETTINGS | {"handler", "command"}
    return {
        k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k not in skip
    }


def add_config_flag(add: Add) -> None:
    """--config: the TOML settings file."""
    add(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML settings file: the same names as the flags, with underscores, and a "
        "[kafka] table of librdkafka properties",
    )


def add_output_flags(add: Add) -> None:
    """How a long-running command logs, and --print-config."""
    add(
        "--log-level",
        choices=LOG_LEVELS,
        default=SUPPRESS,
        help="least severe log level shown (default: info)",
    )
    add(
        "--log-format",
        choices=LOG_FORMATS,
        default=SUPPRESS,
        help="text: one line per record; json: one JSON object per line, the stats line's "
        "figures as fields (default: text)",
    )
    add(
        "--print-config",
        action="store_true",
        default=False,
        help="print the effective settings as JSON, secrets masked, and exit before "
        "connecting to anything",
    )


def add_property_flags(add: Add) -> None:
    """-X librdkafka properties and the switch that lets unsafe ones through."""
    add(
        "-X",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka property, e.g. -X security.protocol=SASL_SSL (repeatable; "
        "file:PATH and env:NAME values are read from there)",
    )
    add(
        "--allow-unsafe-kafka-properties",
        action="store_true",
        default=SUPPRESS,
        help=f"allow the properties that load code or run commands: {', '.join(UNSAFE_PROPERTIES)}",
    )


def add_engine_flags(add: Add) -> None:
    """The engine's flags: the model store and how rows are batched."""
    add("--models", type=Path, metavar="DIR", help="model store directory (default: models)")
    add("--default-model", metavar="NAME", help="model for events and requests that name none")
    add("--max-batch-size", type=int, help="rows per inference batch at most (default: 256)")
    add("--max-wait-ms", type=float, help="longest a row waits for its batch (default: 5)")
    add(
        "--latency-target-ms",
        type=float,
        help="size batches from this target for an event's time through the worker, from "
        "the measured cost per batch size, instead of --max-wait-ms (default: 0, off)",
    )
    add("--stats-interval-s", type=float, help="seconds between stats lines (default: 5)")
    add("--model-threads", type=int, help="ONNX Runtime intra-op threads (default: 1)")
    add("--max-loaded-models", type=int, help="sessions kept loaded, LRU (default: 8)")
    add(
        "--pin",
        dest="pins",
        action="append",
        metavar="MODEL=VERSION",
        help="serve this version to events and requests that name none, instead of the "
        "newest (repeatable; a store's <model>/PINNED file does the same without a restart)",
    )
    add(
        "--shadow",
        dest="shadows",
        action="append",
        metavar="MODEL=VERSION",
        help="also run this version on the served rows and compare its answers "
        "(pipeline_shadow_* metrics); it answers nobody (repeatable; a store's "
        "<model>/SHADOW file does the same without a restart)",
    )
    add(
        "--shadow-fraction",
        type=float,
        help="share of the served rows a shadow version runs on, above 0 to 1 (default: 1)",
    )
    add(
        "--canary",
        dest="canaries",
        action="append",
        metavar="MODEL=VERSION:PERCENT",
        help="answer PERCENT of the keys of events that name no version with this version, "
        "by a stable hash of the record key (repeatable; a store's <model>/CANARY file "
        "holding VERSION:PERCENT does the same without a restart)",
    )


def add_door_flags(add: Add, *, http_default: int, grpc_default: int) -> None:
    """The doors' flags: where they listen and what they accept."""
    off = " (0: off)"
    add("--host", help="address the doors listen on (default: 127.0.0.1)")
    add("--http-port", type=int, help=f"HTTP door port{off}; default: {http_default}")
    add("--grpc-port", type=int, help=f"gRPC door port{off}; default: {grpc_default}")
    add(
        "--max-queue",
        type=int,
        help="rows of the doors that may wait per model version before callers get 429 / "
        "RESOURCE_EXHAUSTED; the stream's rows do not count (default: 10000)",
    )
    add(
        "--max-body-bytes",
        type=int,
        help="largest request body (HTTP) or message (gRPC); larger ones get 413 "
        "(default: 4194304)",
    )
    add("--max-rows-per-request", type=int, help="rows one request may carry (default: 10000)")
    add(
        "--tls-cert",
        metavar="PEM",
        help="serve TLS with this certificate (a path, file:PATH or env:NAME)",
    )
    add("--tls-key", metavar="PEM", help="the certificate's private key (same forms)")
    add(
        "--tls-client-ca",
        metavar="PEM",
        help="mutual TLS: refuse callers without a certificate signed by this CA (same forms)",
    )
    add(
        "--auth-token-file",
        metavar="FILE",
        help="require a bearer token from this file (one per line; same forms); re-read on change",
    )
    add(
        "--open-health",
        action="store_true",
        help="with --auth-token-file: let health and metrics endpoints in without a token",
    )
    add("--header-timeout-s", type=float, help="HTTP headers must arrive within (default: 10)")
    add("--body-timeout-s", type=float, help="an HTTP body must arrive within (default: 30)")
    add(
        "--max-header-bytes",
        type=int,
        help="largest HTTP header block; 431 beyond (default: 16384)",
    )
    add(
        "--max-concurrent-streams",
        type=int,
        help="gRPC calls running at once on one connection; a client queues more (default: 100)",
    )
