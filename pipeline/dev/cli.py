"""`pipeline produce`, `pipeline consume` and `pipeline kafka`: the developer's commands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from pipeline.config import check_properties, parse_properties
from pipeline.dev.localkafka import DEFAULT_DATA_DIR, DEFAULT_PORT, LocalKafka
from pipeline.errors import ConfigError
from pipeline.kafka.cli import DEFAULT_BOOTSTRAP

__all__ = ["add_client_parsers", "add_kafka_parser"]


def _bootstrap(args: argparse.Namespace) -> str:
    return args.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


def _properties(args: argparse.Namespace) -> dict[str, str]:
    """The -X properties, refused if unsafe (as `pipeline run` refuses them)."""
    properties = parse_properties(args.X or [])
    check_properties(properties, allow_unsafe=args.allow_unsafe_kafka_properties)
    return properties


def _produce(args: argparse.Namespace) -> int:
    from pipeline.dev.tools import open_source, produce

    produce(
        bootstrap_servers=_bootstrap(args),
        topic=args.topic,
        kafka=_properties(args),
        source=open_source(args.file),
        synthetic=args.synthetic,
        count=args.count,
        rate=args.rate,
        key_field=args.key_field or None,
    )
    return 0


def _consume(args: argparse.Namespace) -> int:
    from pipeline.dev.tools import consume

    consume(
        bootstrap_servers=_bootstrap(args),
        topic=args.topic,
        kafka=_properties(args),
        count=args.count,
        from_beginning=args.from_beginning,
        timeout_s=args.timeout,
    )
    return 0


def add_client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline produce` and `pipeline consume` to the subcommands."""
    produce = sub.add_parser("produce", help="send JSON-lines or synthetic events to a topic")
    consume = sub.add_parser("consume", help="print a topic's records as JSON lines")
    for parser, topic in ((produce, "features"), (consume, "predictions")):
        parser.add_argument(
            "--bootstrap-servers",
            default=None,
            help=f"default: $KAFKA_BOOTSTRAP_SERVERS or {DEFAULT_BOOTSTRAP}",
        )
        parser.add_argument("--topic", default=topic, help=f"default: {topic}")
        parser.add_argument(
            "-X",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="librdkafka property (repeatable)",
        )
        parser.add_argument(
            "--allow-unsafe-kafka-properties",
            action="store_true",
            help="allow properties that load code or run commands (as for pipeline run)",
        )
        parser.add_argument(
            "--count",
            type=int,
            default=None,
            help="stop after this many events"
            if parser is produce
            else "stop after this many records",
        )
    source = produce.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", metavar="PATH", help="JSON-lines events; - for stdin")
    source.add_argument(
        "--synthetic",
        metavar="MODEL",
        help="example events for MODEL (real breast cancer rows); '' for no model field",
    )
    produce.add_argument(
        "--rate",
        type=float,
        default=None,
        help="events/s, open loop (default: as fast as possible)",
    )
    produce.add_argument(
        "--key-field",
        default="id",
        help="event field used as the Kafka key for --file events ('' for none; default: id)",
    )
    produce.set_defaults(handler=_produce)
    consume.add_argument(
        "--from-beginning", action="store_true", help="read from the earliest offset"
    )
    consume.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="stop after this many seconds without a record (default: 10)",
    )
    consume.set_defaults(handler=_consume)


def _kafka_start(args: argparse.Namespace) -> int:
    users = dict(_scram_user(u) for u in args.scram_user)
    if users and args.sasl_port is None:
        raise ConfigError("--scram-user needs --sasl-port, the port of the SASL listener")
    info, started = LocalKafka(data_dir=args.data_dir).start(
        port=args.port, timeout_s=args.timeout, sasl_port=args.sasl_port, scram_users=users
    )
    if started:
        print(info.bootstrap)
    else:
        print(f"{info.bootstrap} (already running, pid {info.pid}, data dir {info.data_dir})")
    return 0


def _scram_user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise ConfigError(f"--scram-user takes NAME:PASSWORD (or NAME:env:VAR), got {text!r}")
    return name, parse_properties([f"p={password}"])["p"]


def _kafka_stop(args: argparse.Namespace) -> int:
    info = LocalKafka(data_dir=args.data_dir).stop()
    if info is None:
        print(f"no local broker running for data dir {Path(args.data_dir).expanduser()}")
    else:
        print(f"stopped broker {info.bootstrap} (pid {info.pid})")
    return 0


def _kafka_status(args: argparse.Namespace) -> int:
    info = LocalKafka(data_dir=args.data_dir).running()
    if info is None:
        print(f"not running (data dir {Path(args.data_dir).expanduser()})")
        return 1
    print(f"running at {info.bootstrap} (pid {info.pid}, data dir {info.data_dir})")
    return 0


def add_kafka_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline kafka start|stop|status` to the subcommands."""
    kafka = sub.add_parser("kafka", help="run a local single-node Apache Kafka broker (KRaft)")
    actions = kafka.add_subparsers(dest="action", required=True, metavar="{start,stop,status}")
    handlers: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "start": (
            "start the broker in the background and print its bootstrap address",
            _kafka_start,
        ),
        "stop": ("stop the broker started from this data dir", _kafka_stop),
        "status": ("say whether the broker runs, and where (exit 1 if not)", _kafka_status),
    }
    for name, (help_text, handler) in handlers.items():
        action = actions.add_parser(name, help=help_text)
        action.add_argument(
            "--data-dir",
            type=Path,
            default=DEFAULT_DATA_DIR,
            help=f"broker state, logs and data (default: {DEFAULT_DATA_DIR})",
        )
        if name == "start":
            action.add_argument(
                "--port",
                type=int,
                default=DEFAULT_PORT,
                help=f"client port on 127.0.0.1 (default: {DEFAULT_PORT})",
            )
            action.add_argument(
                "--timeout",
                type=float,
                default=90.0,
                help="seconds to wait for the broker to answer (default: 90)",
            )
            action.add_argument(
                "--sasl-port",
                type=int,
                default=None,
                help="also listen for SASL_PLAINTEXT with SCRAM-SHA-256/512 on this port",
            )
            action.add_argument(
                "--scram-user",
                action="append",
                default=[],
                metavar="NAME:PASSWORD",
                help="create a SCRAM user (repeatable; NAME:env:VAR reads the password from VAR)",
            )
        action.set_defaults(handler=handler)
