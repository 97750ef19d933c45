"""The `pipeline` command: parses arguments and hands each subcommand to its module.

Subcommands:
    run                       the stream worker (pipeline.worker, pipeline.supervisor)
    produce                   send events to a topic (pipeline.tools)
    consume                   print a topic's records as JSON lines (pipeline.tools)
    kafka start|stop|status   the embedded local broker (pipeline.localkafka)
    bench                     the side-by-side benchmark (pipeline.bench)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.bench.cli import add_bench_parser
from pipeline.config import load_config, parse_properties
from pipeline.errors import ConfigError, PipelineError
from pipeline.localkafka import DEFAULT_DATA_DIR, DEFAULT_PORT, LocalKafka

__all__ = ["build_parser", "main", "setup_logging"]

_DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def setup_logging(*, prefix: str = "", level: int = logging.INFO) -> None:
    """One line per record, to stderr."""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def _run(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "config", "X")}
    if args.X:
        flags["kafka"] = parse_properties(args.X)
    if "input_topics" in flags:
        flags["input_topics"] = tuple(flags["input_topics"])
    config = load_config(flags, config_file=args.config)
    setup_logging()
    if config.workers > 1:
        from pipeline.supervisor import supervise

        return supervise(config)
    from pipeline.worker import run_worker

    return run_worker(config)


def _bootstrap(args: argparse.Namespace) -> str:
    return args.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or _DEFAULT_BOOTSTRAP


def _produce(args: argparse.Namespace) -> int:
    from pipeline.tools import open_source, produce

    produce(
        bootstrap_servers=_bootstrap(args),
        topic=args.topic,
        kafka=parse_properties(args.X or []),
        source=open_source(args.file),
        synthetic=args.synthetic,
        count=args.count,
        rate=args.rate,
        key_field=args.key_field or None,
    )
    return 0


def _consume(args: argparse.Namespace) -> int:
    from pipeline.tools import consume

    consume(
        bootstrap_servers=_bootstrap(args),
        topic=args.topic,
        kafka=parse_properties(args.X or []),
        count=args.count,
        from_beginning=args.from_beginning,
        timeout_s=args.timeout,
    )
    return 0


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the stream worker",
        description="Consume feature events, micro-batch them per model, run ONNX Runtime, "
        "publish predictions. Flags win over environment (PIPELINE_<FLAG>, "
        "KAFKA_BOOTSTRAP_SERVERS), which wins over the --config TOML file.",
        argument_default=argparse.SUPPRESS,
    )
    add = run.add_argument
    add("--bootstrap-servers", help=f"Kafka bootstrap servers (default {_DEFAULT_BOOTSTRAP})")
    add(
        "--input-topic",
        dest="input_topics",
        action="append",
        metavar="TOPIC",
        help="topic to consume feature events from (repeatable; default: features)",
    )
    add("--output-topic", help="topic for predictions (default: predictions)")
    add("--dlq-topic", help="dead-letter topic (default: the output topic + .dlq)")
    add("--group-id", help="consumer group (default: pipeline)")
    add("--models", type=Path, metavar="DIR", help="model store directory (default: models)")
    add("--default-model", metavar="NAME", help="model for events that name none")
    add("--max-batch-size", type=int, help="rows per inference batch at most (default: 256)")
    add("--max-wait-ms", type=float, help="longest a row waits for its batch (default: 5)")
    add("--workers", type=int, metavar="N", help="worker processes in this group (default: 1)")
    add(
        "--guarantee",
        choices=("at-least-once", "exactly-once"),
        help="delivery guarantee (default: at-least-once)",
    )
    add(
        "--transactional-id",
        metavar="ID",
        help="exactly-once: transactional.id, unique per live worker process "
        "(default: pipeline-<group>-<hostname>-<index>-<pid>)",
    )
    add(
        "--offset-reset",
        choices=("earliest", "latest"),
        help="where a new group starts reading (default: earliest)",
    )
    add(
        "--no-create-topics",
        dest="create_topics",
        action="store_false",
        help="fail instead of creating missing topics",
    )
    add("--topic-partitions", type=int, help="partitions of topics it creates (default: 4)")
    add(
        "--max-in-flight",
        type=int,
        help="events consumed but not yet acknowledged before partitions pause (default: 20000)",
    )
    add("--commit-interval-ms", type=int, help="how often offsets are committed (default: 1000)")
    add("--stats-interval-s", type=float, help="seconds between stats lines (default: 5)")
    add("--model-threads", type=int, help="ONNX Runtime intra-op threads (default: 1)")
    add("--max-loaded-models", type=int, help="sessions kept loaded, LRU (default: 8)")
    add(
        "--allow-unsafe-kafka-properties",
        action="store_true",
        help="allow plugin.library.paths and sasl.kerberos.kinit.cmd",
    )
    add("--config", type=Path, default=None, metavar="FILE", help="TOML settings file")
    add(
        "-X",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka property, e.g. -X security.protocol=SASL_SSL (repeatable; "
        "file:PATH and env:NAME values are read from there)",
    )
    run.set_defaults(handler=_run)


def _add_clients(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    produce = sub.add_parser("produce", help="send JSON-lines or synthetic events to a topic")
    consume = sub.add_parser("consume", help="print a topic's records as JSON lines")
    for parser, topic in ((produce, "features"), (consume, "predictions")):
        parser.add_argument(
            "--bootstrap-servers",
            default=None,
            help=f"default: $KAFKA_BOOTSTRAP_SERVERS or {_DEFAULT_BOOTSTRAP}",
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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `pipeline` command."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Kafka-native prediction pipeline: feature events in, ONNX predictions out.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_clients(sub)
    _add_kafka(sub)
    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pipeline` command; return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    worker = sys.modules.get("pipeline.worker")  # loaded only if this command ran one
    if worker is not None:
        worker.exit_if_abandoned(code)
    return code
