"""Command-line flags shared by the commands that run the engine and its doors.

`pipeline run` and `pipeline serve` both take the engine's flags (model store, batching)
and the doors' flags (where they listen, their bounds); each name maps to a field of
`pipeline.config.EngineSettings` or `DoorSettings`, so the environment variable
``PIPELINE_<FLAG>`` and the TOML key work the same for both commands. Parsers are built
with ``argument_default=SUPPRESS``: only flags actually given reach the settings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_door_flags", "add_engine_flags"]

Add = Callable[..., Any]


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


def add_door_flags(add: Add, *, http_default: int, grpc_default: int) -> None:
    """The doors' flags: where they listen and what they accept."""
    off = " (0: off)"
    add("--host", help="address the doors listen on (default: 127.0.0.1)")
    add("--http-port", type=int, help=f"HTTP door port{off}; default: {http_default}")
    add("--grpc-port", type=int, help=f"gRPC door port{off}; default: {grpc_default}")
    add(
        "--max-queue",
        type=int,
        help="rows that may wait per model version before callers get 429 / "
        "RESOURCE_EXHAUSTED (default: 10000)",
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
