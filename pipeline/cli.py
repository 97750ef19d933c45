"""The `pipeline` command: parses arguments and hands each subcommand to its module.

Subcommands:
    kafka start|stop|status   the embedded local broker (pipeline.localkafka)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.localkafka import DEFAULT_DATA_DIR, DEFAULT_PORT, LocalKafka

__all__ = ["main"]


def _kafka_start(args: argparse.Namespace) -> int:
    info, started = LocalKafka(data_dir=args.data_dir).start(port=args.port, timeout_s=args.timeout)
    if started:
        print(info.bootstrap)
    else:
        print(f"{info.bootstrap} (already running, pid {info.pid}, data dir {info.data_dir})")
    return 0


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


def _add_kafka(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        action.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `pipeline` command."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Kafka-native prediction pipeline: feature events in, ONNX predictions out.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_kafka(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pipeline` command; return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
