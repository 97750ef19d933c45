"""`pipeline schema-registry start|stop|status`: the local Schema Registry's command line."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pipeline.dev.localregistry import (
    APICURIO_VERSION,
    DEFAULT_DATA_DIR,
    DEFAULT_PORT,
    LocalRegistry,
)

__all__ = ["add_registry_parser"]


def _start(args: argparse.Namespace) -> int:
    info, started = LocalRegistry(args.data_dir).start(port=args.port, timeout_s=args.timeout)
    verb = "started" if started else "already running"
    print(f"{verb}: Schema Registry at {info.url} (pid {info.pid})")
    return 0


def _stop(args: argparse.Namespace) -> int:
    info = LocalRegistry(args.data_dir).stop()
    if info is None:
        print(f"no local Schema Registry running for data dir {Path(args.data_dir).expanduser()}")
    else:
        print(f"stopped Schema Registry {info.url} (pid {info.pid})")
    return 0


def _status(args: argparse.Namespace) -> int:
    info = LocalRegistry(args.data_dir).running()
    if info is None:
        print(f"not running (data dir {Path(args.data_dir).expanduser()})")
        return 1
    print(f"running at {info.url} (pid {info.pid}, data dir {Path(args.data_dir).expanduser()})")
    return 0


def add_registry_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline schema-registry start|stop|status` to the subcommands."""
    registry = sub.add_parser(
        "schema-registry",
        help="run a local Schema Registry (Apicurio, Confluent-compatible API)",
        description=f"Start, stop or ask about Apicurio Registry {APICURIO_VERSION} running on "
        "127.0.0.1 from this machine's Java (17+), with in-memory storage, for development "
        "and tests. Its server comes from Maven Central once. Point --schema-registry-url at "
        "the URL `start` prints (the Confluent-compatible API, /apis/ccompat/v7).",
    )
    actions = registry.add_subparsers(dest="action", required=True, metavar="{start,stop,status}")
    handlers: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "start": ("start the registry in the background and print its URL", _start),
        "stop": ("stop the registry started from this data dir", _stop),
        "status": ("say whether the registry runs, and where (exit 1 if not)", _status),
    }
    for name, (help_text, handler) in handlers.items():
        action = actions.add_parser(name, help=help_text)
        action.add_argument(
            "--data-dir",
            type=Path,
            default=DEFAULT_DATA_DIR,
            help=f"the registry's pid file and log (default: {DEFAULT_DATA_DIR})",
        )
        if name == "start":
            action.add_argument(
                "--port",
                type=int,
                default=DEFAULT_PORT,
                help=f"HTTP port on 127.0.0.1; 0 picks a free one (default: {DEFAULT_PORT})",
            )
            action.add_argument(
                "--timeout",
                type=float,
                default=90.0,
                help="seconds to wait for the registry to be ready (default: 90)",
            )
        action.set_defaults(handler=handler)
