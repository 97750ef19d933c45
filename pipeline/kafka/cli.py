"""`pipeline run`: the stream worker's command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import load_config, parse_properties
from pipeline.flags import add_door_flags, add_engine_flags
from pipeline.logs import setup_logging

__all__ = ["DEFAULT_BOOTSTRAP", "add_run_parser"]

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def _run(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "config", "X")}
    if args.X:
        flags["kafka"] = parse_properties(args.X)
    for name in ("input_topics", "pins"):
        if name in flags:
            flags[name] = tuple(flags[name])
    config = load_config(flags, config_file=args.config)
    setup_logging()
    if config.workers > 1:
        from pipeline.kafka.supervisor import supervise

        return supervise(config)
    from pipeline.kafka.worker import run_worker

    return run_worker(config)


def add_run_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline run` to the subcommands."""
    run = sub.add_parser(
        "run",
        help="run the stream worker",
        description="Consume feature events, micro-batch them per model, run ONNX Runtime, "
        "publish predictions; with --http-port or --grpc-port, also answer requests from the "
        "same engine. Flags win over environment (PIPELINE_<FLAG>, KAFKA_BOOTSTRAP_SERVERS), "
        "which wins over the --config TOML file.",
        argument_default=argparse.SUPPRESS,
    )
    add = run.add_argument
    add("--bootstrap-servers", help=f"Kafka bootstrap servers (default {DEFAULT_BOOTSTRAP})")
    add(
        "--input-topic",
        dest="input_topics",
        action="append",
        metavar="TOPIC",
        help="topic to consume feature events from (repeatable; default: features)",
    )
    add("--output-topic", help="topic for predictions (default: predictions)")
    add("--dlq-topic", help="dead-letter topic (default: the output topic + .dlq)")
    add("--group-id", help="consumer group, or share group (default: pipeline)")
    add(
        "--group-type",
        choices=("consumer", "share"),
        help="consumer: a consumer group (default); share: a share group (KIP-932): more "
        "workers than partitions, no order within a partition, at-least-once",
    )
    add(
        "--max-delivery-attempts",
        type=int,
        help="share groups: a record acquired more often than this goes to the dead-letter "
        "topic (default: 5)",
    )
    add_engine_flags(add)
    add_door_flags(add, http_default=0, grpc_default=0)
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
        "--replication-factor",
        type=int,
        help="replicas of topics it creates (default: 3 on a cluster of 3+ brokers, else 1)",
    )
    add(
        "--min-insync-replicas",
        type=int,
        help="min.insync.replicas of topics it creates (default: 2 with 3 replicas, else 1)",
    )
    add(
        "--max-in-flight",
        type=int,
        help="events consumed but not yet acknowledged before partitions pause (default: 20000)",
    )
    add(
        "--commit-interval-ms",
        type=int,
        help="how often finished offsets (or, exactly-once, transactions) are committed "
        "(default: 100)",
    )
    add(
        "--commit-every-events",
        type=int,
        help="at-least-once: also commit once this many events finished since the last "
        "commit (default: 10000)",
    )
    add(
        "--metrics-port",
        type=int,
        help="serve /metrics, /healthz and /readyz on this port (0: off; with --workers N, "
        "worker i uses this port + i)",
    )
    add("--metrics-host", help="address of the metrics endpoint (default: 127.0.0.1)")
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
