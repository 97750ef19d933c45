"""`pipeline run`: the stream worker's command line."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from pipeline.config import OUTPUT_FORMATS, SUBJECT_STRATEGIES, WorkerConfig
from pipeline.engine.framing import VALUE_FORMATS
from pipeline.flags import (
    add_config_flag,
    add_door_flags,
    add_engine_flags,
    add_output_flags,
    add_property_flags,
)
from pipeline.startup import (
    print_config,
    remember_early_stop,
    settings_from_args,
    start_logging,
)

__all__ = ["DEFAULT_BOOTSTRAP", "add_run_parser"]

DEFAULT_BOOTSTRAP = WorkerConfig.bootstrap_servers

log = logging.getLogger("pipeline.worker")


def _run(args: argparse.Namespace) -> int:
    remember_early_stop()
    from pipeline.dev.localkafka import LocalBootstrap

    local = LocalBootstrap()
    config = settings_from_args(WorkerConfig, args, local_broker=local)
    if args.print_config:
        return print_config(config)
    start_logging(config)
    if said := local.said():
        log.info("%s", said)
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
        "same engine. Flags win over environment (PIPELINE_<SETTING>, "
        "KAFKA_BOOTSTRAP_SERVERS), which wins over the --config TOML file.",
        argument_default=argparse.SUPPRESS,
    )
    _add_worker_flags(run.add_argument_group("worker").add_argument)
    add_engine_flags(run.add_argument_group("engine").add_argument)
    add_door_flags(
        run.add_argument_group("doors (off unless a port is given)").add_argument,
        http_default=0,
        grpc_default=0,
    )
    settings = run.add_argument_group("settings and output")
    add_config_flag(settings.add_argument)
    add_property_flags(settings.add_argument)
    add_output_flags(settings.add_argument)
    run.set_defaults(handler=_run)


def _add_worker_flags(add: Callable[..., Any]) -> None:
    """Kafka, the group, delivery, the topics it creates, and its own metrics endpoint."""
    add(
        "--bootstrap-servers",
        help="Kafka bootstrap servers (default: the broker `pipeline kafka start` runs, if "
        f"one does, else {DEFAULT_BOOTSTRAP})",
    )
    add(
        "--input-topic",
        dest="input_topics",
        action="append",
        metavar="TOPIC",
        help="topic to consume feature events from (repeatable; comma-separated in the "
        "environment, a list in the file; default: features)",
    )
    add("--output-topic", help="topic for predictions (default: predictions)")
    add("--dlq-topic", help="dead-letter topic (default: the output topic + .dlq)")
    add(
        "--shadow-topic",
        help="also write the --shadow versions' predictions here, each with the served "
        "prediction's id as served_prediction_id (default: metrics only)",
    )
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
        "topic; sets the group's share.delivery.count.limit to this + 1 (default: 5)",
    )
    add("--workers", type=int, metavar="N", help="worker processes in this group (default: 1)")
    add(
        "--guarantee",
        choices=("at-least-once", "exactly-once"),
        help="delivery guarantee (default: at-least-once)",
    )
    add(
        "--transactional-id",
        metavar="ID",
        help="exactly-once: transactional.id, unique per live worker process; with --workers "
        "N, child i uses ID-i (default: pipeline-<group>-<hostname>-<index>-<pid>)",
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
        help="how often finished offsets (or, exactly-once, transactions) are committed; "
        "exactly-once: at most half of transaction.timeout.ms (default: 100)",
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
        "--delivery-stall-s",
        type=int,
        help="/healthz fails once outputs have been owed this long with no delivery, so an "
        "orchestrator restarts a stuck worker (0: never; default: 120)",
    )
    add(
        "--value-format",
        choices=VALUE_FORMATS,
        help="json: JSON text (default); avro: Schema Registry framed Avro values; "
        "jsonschema: framed JSON Schema values (confluent-kafka's JSONSerializer); protobuf: "
        "framed Protobuf messages; auto: any of these, told apart per record",
    )
    add(
        "--output-format",
        choices=OUTPUT_FORMATS,
        help="json: predictions as JSON text (default); avro: framed Avro values of each "
        "model's prediction schema, registered in the Schema Registry; jsonschema: the JSON "
        "text framed with schemas/prediction.schema.json, registered there; protobuf: "
        "framed messages of schemas/prediction-message.proto, registered there",
    )
    add(
        "--output-subject-strategy",
        choices=SUBJECT_STRATEGIES,
        help="the subject of the predictions' schema: topic (<output topic>-value, the "
        "default), record (pipeline.prediction.<model>) or topic-record (both)",
    )
    add(
        "--schema-registry-url",
        metavar="URL",
        help="the Schema Registry that framed values (--value-format avro, jsonschema, "
        "protobuf, auto; --enrich table values) are read with and --output-format registers "
        "in, e.g. http://127.0.0.1:8081/apis/ccompat/v7; its client takes -X "
        "schema.registry.* settings",
    )
    add(
        "--enrich",
        action="append",
        metavar="NAME=TOPIC:KEY_FIELD",
        help="join each event with the latest values of its entity from the compacted topic "
        "TOPIC, keyed by the event's field KEY_FIELD; they fill the model's named inputs "
        "or features the event lacks, and an entity not in the table is a dead letter "
        "(EntityNotFound) (repeatable; comma-separated in the environment, a list in the file)",
    )
    add(
        "--enrich-missing",
        action="append",
        metavar="NAME=POLICY",
        help="what an event whose entity is not in --enrich table NAME gets: dead-letter (the "
        "default: EntityNotFound) or defaults (the model manifest's defaults fill what the "
        "event lacks; the prediction's pipeline.enriched.defaults header names the table) "
        "or wait:MS (the consumed batch waits up to MS, 1 to 10000, for the entity to arrive, "
        "then dead-letters it) (repeatable)",
    )
    add(
        "--enrich-max-bytes",
        type=int,
        metavar="BYTES",
        help="refuse to start if an --enrich table is estimated over this many bytes once "
        "loaded (default: 1073741824, 1 GiB)",
    )
