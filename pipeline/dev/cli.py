"""`pipeline produce`, `pipeline consume` and `pipeline kafka`: the developer's commands."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline.config import WorkerConfig, load_config, parse_properties
from pipeline.dev.localkafka import DEFAULT_DATA_DIR, DEFAULT_PORT, LocalBootstrap, LocalKafka
from pipeline.errors import ConfigError
from pipeline.flags import add_config_flag, add_property_flags
from pipeline.kafka.cli import DEFAULT_BOOTSTRAP
from pipeline.logs import setup_logging

__all__ = ["add_client_parsers", "add_kafka_parser", "add_replay_parser"]


def _client_settings(args: argparse.Namespace, *, models: Path | None = None) -> WorkerConfig:
    """The Kafka settings produce and consume share with `pipeline run`: bootstrap servers
    and librdkafka properties from flags, environment and the --config file. Logs
    librdkafka's warnings, each repeated one once, as `pipeline run` does."""
    flags: dict[str, object] = {}
    if args.bootstrap_servers:
        flags["bootstrap_servers"] = args.bootstrap_servers
    if getattr(args, "allow_unsafe_kafka_properties", False):
        flags["allow_unsafe_kafka_properties"] = True
    if models is not None:
        flags["models"] = models
    local = LocalBootstrap()
    settings = load_config(flags, config_file=args.config, properties=args.X, local_broker=local)
    setup_logging(level=logging.WARNING)
    if said := local.said():
        print(said, file=sys.stderr)
    return settings


def _produce(args: argparse.Namespace) -> int:
    from pipeline.dev.tools import open_source, parse_headers, produce

    if args.key_delimiter is not None and args.key_field is not None:
        raise ConfigError("-K and --key-field both choose the key: give one of them")
    settings = _client_settings(args)
    encode = None
    if args.value_format != "json":
        kind = {"avro": "an Avro schema", "jsonschema": "a JSON Schema",
                "protobuf": "a .proto file"}[args.value_format]  # fmt: skip
        if not args.schema or not args.schema_registry_url:
            raise ConfigError(
                f"--value-format {args.value_format} needs --schema FILE ({kind}) and "
                "--schema-registry-url URL"
            )
        from pipeline.schemaregistry import avro_encoder, json_schema_encoder, protobuf_encoder

        make = {"avro": avro_encoder, "jsonschema": json_schema_encoder,
                "protobuf": protobuf_encoder}[args.value_format]  # fmt: skip
        encode = make(args.schema_registry_url, settings.kafka, Path(args.schema), args.topic)
    produce(
        encode=encode,
        bootstrap_servers=settings.bootstrap_servers,
        topic=args.topic,
        kafka=settings.kafka,
        source=open_source(args.file),
        synthetic=args.synthetic,
        count=args.count,
        rate=args.rate,
        key_field="id" if args.key_field is None else args.key_field or None,
        key_delimiter=args.key_delimiter,
        headers=parse_headers(args.header),
        partition=args.partition,
    )
    return 0


def _consume(args: argparse.Namespace) -> int:
    from pipeline.startup import remember_early_stop

    remember_early_stop()  # a Ctrl-C while it imports and connects still ends it with 0
    from pipeline.dev.consume import ConsumeOptions, consume

    options = ConsumeOptions(
        topic=args.topic,
        partitions=tuple(args.partition),
        group=args.group,
        offset=_offset(args),
        count=args.count,
        exit_at_end=args.exit,
        timeout_s=args.timeout,
        fmt=args.format,
        key_delimiter=args.key_delimiter,
    )
    settings = _client_settings(args)
    consume(options, bootstrap_servers=settings.bootstrap_servers, kafka=settings.kafka)
    return 0


def _offset(args: argparse.Namespace) -> str:
    """--offset, --from-beginning, or the default: the group's offsets, else the end."""
    if args.from_beginning and args.offset is not None:
        raise ConfigError("--from-beginning is --offset beginning: give one of them")
    if args.from_beginning:
        return "beginning"
    return args.offset or ("stored" if args.group else "end")


def add_client_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline produce` and `pipeline consume` to the subcommands."""
    produce = sub.add_parser(
        "produce",
        help="send JSON-lines or synthetic events to a topic",
        description="Send JSON-lines events from a file or stdin, or synthetic events for an "
        "example model, and wait for every acknowledgement. Like kcat -P: -K DELIM takes each "
        "line's key from before DELIM, -H adds headers, --partition picks the partition. "
        "Settings as for pipeline run: --config, -X, KAFKA_BOOTSTRAP_SERVERS.",
    )
    consumer = sub.add_parser(
        "consume",
        help="print a topic's records, following it (like kcat -C)",
        description="Print a topic's records as JSON lines (or values), following the topic "
        "until --count records or Ctrl-C; with --exit, stop at the end of every partition. "
        "Without --group it reads every partition (or --partition) directly and commits "
        "nothing; with --group it joins that group and commits what it printed. Reads "
        "read_committed. Settings as for pipeline run: --config, -X, KAFKA_BOOTSTRAP_SERVERS.",
    )
    for parser, topic in ((produce, "features"), (consumer, "predictions")):
        add = parser.add_argument
        _add_connection_flags(add)
        add("--topic", default=topic, help=f"default: {topic}")
        add(
            "--count",
            type=int,
            default=None,
            help="stop after this many events"
            if parser is produce
            else "stop after this many records",
        )
        add(
            "-K",
            dest="key_delimiter",
            default=None,
            metavar="DELIM",
            help="each line is KEY DELIM VALUE (kcat -K)"
            if parser is produce
            else "with --format value: print the key and DELIM before the value",
        )
    _add_produce_flags(produce)
    _add_consume_flags(consumer)


def _add_connection_flags(add: Callable[..., Any]) -> None:
    """--bootstrap-servers, --config and -X, as every client command takes them."""
    add(
        "--bootstrap-servers",
        default=None,
        help=f"default: $PIPELINE_BOOTSTRAP_SERVERS, $KAFKA_BOOTSTRAP_SERVERS, the "
        f"--config file's, the broker `pipeline kafka start` runs, or {DEFAULT_BOOTSTRAP}",
    )
    add_config_flag(add)
    add_property_flags(add)


def _topics(args: argparse.Namespace) -> int:
    from pipeline.dev.groups import list_topics

    settings = _client_settings(args)
    return list_topics(settings.bootstrap_servers, settings.kafka, sys.stdout,
                       internal=args.internal)  # fmt: skip


def _groups(args: argparse.Namespace) -> int:
    from pipeline.dev.groups import describe_group, list_groups

    settings = _client_settings(args)
    if args.action == "describe":
        return describe_group(settings.bootstrap_servers, settings.kafka, args.group, sys.stdout)
    return list_groups(settings.bootstrap_servers, settings.kafka, sys.stdout)


def add_cluster_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline topics` and `pipeline groups [list | describe G]`."""
    topics = sub.add_parser(
        "topics",
        help="list the topics: partitions, replicas, records held",
        description="List the cluster's topics with their partitions, replication factor "
        "and the records each holds (end minus start, summed over partitions).",
    )
    _add_connection_flags(topics.add_argument)
    topics.add_argument("--internal", action="store_true", help="also list __internal topics")
    topics.set_defaults(handler=_topics)
    groups = sub.add_parser(
        "groups",
        help="list consumer groups, or describe one with its lag per partition",
        description="`pipeline groups` lists the groups with their type and state; "
        "`pipeline groups describe G` prints G's committed offset, end (last stable offset) "
        "and lag per partition, and the member holding each (like kafka-consumer-groups.sh "
        "--describe).",
    )
    actions = groups.add_subparsers(dest="action")
    listing = actions.add_parser("list", help="list the groups (the default)")
    describe = actions.add_parser("describe", help="one group's lag per partition")
    describe.add_argument("group", help="the group's id (pipeline run's --group-id)")
    for parser in (groups, listing, describe):
        _add_connection_flags(parser.add_argument)
    groups.set_defaults(handler=_groups, action="list")


def _replay(args: argparse.Namespace) -> int:
    from pipeline.engine.setup import build_engine
    from pipeline.kafka.replay import Range, ReplayOptions, progress_stream, replay
    from pipeline.metrics import NULL_SENSOR

    model, at, version = args.model.partition("@")
    if not at or not model or not version:
        raise ConfigError(f"--model takes NAME@VERSION, got {args.model!r}; e.g. fraud@2")
    span = Range(
        from_offset=args.from_offset,
        from_time_ms=_time_ms(args.from_time, "--from-time"),
        to_offset=args.to_offset,
        to_time_ms=_time_ms(args.to_time, "--to-time"),
    )
    settings = _client_settings(args, models=args.models)
    engine = build_engine(settings, NULL_SENSOR, max_queue=None)
    options = ReplayOptions(
        input_topic=args.input_topic,
        model=model,
        version=version,
        range=span,
        against=args.against,
        against_dlq=args.against_dlq,
        output_topic=args.output_topic,
        largest=args.largest,
    )
    report = replay(options, engine, bootstrap_servers=settings.bootstrap_servers,
                    kafka=settings.kafka, progress=progress_stream())  # fmt: skip
    if args.json:
        sys.stdout.write(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        sys.stdout.write(report.table())
    sys.stdout.write("\n")
    return 0


def _time_ms(text: str | None, flag: str) -> int | None:
    """A time as ms since the epoch: a number of ms, or ISO 8601 (UTC unless it says)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{flag} takes milliseconds since the epoch or an ISO 8601 time "
            f"(2026-12-06T09:00:00Z), got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def add_replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline replay`."""
    replay = sub.add_parser(
        "replay",
        help="run a range of an input topic through one model version and compare its "
        "answers with what was served",
        description="Read a range of an input topic with a group of its own (the live "
        "workers' offsets are untouched), run every event of the model through VERSION, "
        "and report against the served predictions of --against (joined by prediction_id): "
        "label agreement, score differences, the largest, a confusion table. A range "
        "starts at --from-* (included; default: the first offset) and stops before --to-* "
        "(default: the end when the replay starts); offsets apply to every partition.",
    )
    add = replay.add_argument
    add("--input-topic", required=True, help="the topic whose events are replayed")
    add("--model", required=True, metavar="NAME@VERSION", help="the candidate, e.g. fraud@2")
    add("--from-offset", type=int, help="first offset replayed, in each partition")
    add("--from-time", metavar="TIME", help="first record time replayed (ms or ISO 8601)")
    add("--to-offset", type=int, help="offset the replay stops before, in each partition")
    add("--to-time", metavar="TIME", help="record time the replay stops before")
    add("--against", metavar="OUTPUT_TOPIC", help="the served predictions to compare with")
    add("--against-dlq", metavar="DLQ_TOPIC", help="also count the served dead letters")
    add("--output-topic", help="write the candidate's predictions here")
    add("--models", type=Path, default=None, help="model store directory (default: models)")
    add("--largest", type=int, default=5, help="largest differences shown (default: 5)")
    add("--json", action="store_true", help="print the report as JSON")
    _add_connection_flags(add)
    replay.set_defaults(handler=_replay)


def _add_produce_flags(produce: argparse.ArgumentParser) -> None:
    source = produce.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", metavar="PATH", help="JSON-lines events; - for stdin")
    source.add_argument(
        "--synthetic",
        metavar="MODEL",
        help="example events for MODEL (real breast cancer rows); '' for no model field",
    )
    add = produce.add_argument
    add(
        "--rate",
        type=float,
        default=None,
        help="events/s, open loop (default: as fast as possible)",
    )
    add(
        "--key-field",
        default=None,
        help="event field used as the Kafka key for --file events ('' for none; default: id)",
    )
    add(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="add this header to every record (repeatable)",
    )
    add("--partition", type=int, default=None, help="send every record to this partition")
    add(
        "--value-format",
        choices=("json", "avro", "jsonschema", "protobuf"),
        default="json",
        help="json: the events as they are (default); avro, jsonschema, protobuf: each event "
        "framed as Avro, JSON Schema or Protobuf (the first message of the .proto file) with "
        "--schema, registered under TOPIC-value in --schema-registry-url",
    )
    add(
        "--schema",
        metavar="FILE",
        default=None,
        help="with avro, jsonschema or protobuf: the events' schema (e.g. "
        "schemas/feature-event.avsc, schemas/feature-event.schema.json, "
        "schemas/feature-event.proto)",
    )
    add(
        "--schema-registry-url",
        metavar="URL",
        default=None,
        help="with avro or jsonschema: the Schema Registry (its client takes -X "
        "schema.registry.* settings)",
    )
    produce.set_defaults(handler=_produce)


def _add_consume_flags(consumer: argparse.ArgumentParser) -> None:
    add = consumer.add_argument
    add("--group", default=None, help="join this consumer group and commit what was printed")
    add(
        "--partition",
        type=int,
        action="append",
        default=[],
        help="read only this partition (repeatable; default: every partition)",
    )
    add(
        "--offset",
        default=None,
        help="where to start: beginning, end, stored (the group's), N, -N (N before the end) "
        "or s@TS (ms since the epoch) (default: end; with --group: stored, else the end)",
    )
    add("--from-beginning", action="store_true", help="the same as --offset beginning")
    add(
        "--exit",
        action="store_true",
        help="stop at the end of every partition instead of waiting for more (kcat -e)",
    )
    add(
        "--timeout",
        type=float,
        default=None,
        help="with --exit: also stop after this many seconds without a record (default: 10)",
    )
    add(
        "--format",
        choices=("json", "value"),
        default="json",
        help="json: topic, partition, offset, timestamp, key, headers and value as one JSON "
        "object a line; value: the value alone (default: json)",
    )
    consumer.set_defaults(handler=_consume)


def _kafka_start(args: argparse.Namespace) -> int:
    # stdout carries the bootstrap address alone (scripts read it); the steps go to stderr
    kafka = LocalKafka(data_dir=args.data_dir, progress=_progress)
    if args.node is not None:
        return _kafka_start_node(kafka, args)
    nodes = args.nodes if args.nodes is not None else kafka.size
    if nodes == 1:
        return _kafka_start_single(kafka, args)
    if args.sasl_port is not None or args.scram_user:
        raise ConfigError("--sasl-port and --scram-user are for a single node, not --nodes 3")
    cluster, started = kafka.start_cluster(nodes=nodes, port=args.port, timeout_s=args.timeout)
    return _said_started(cluster.bootstrap, started, f"{nodes} nodes, data dir {cluster.data_dir}")


def _progress(text: str) -> None:
    print(f"pipeline kafka: {text}", file=sys.stderr, flush=True)


def _said_started(bootstrap: str, started: bool, detail: str) -> int:
    """Print the bootstrap address, or that it was running already; return exit code 0."""
    print(bootstrap if started else f"{bootstrap} (already running, {detail})")
    return 0


def _kafka_start_single(kafka: LocalKafka, args: argparse.Namespace) -> int:
    users = dict(_scram_user(u) for u in args.scram_user)
    if users and args.sasl_port is None:
        raise ConfigError("--scram-user needs --sasl-port, the port of the SASL listener")
    info, started = kafka.start(
        port=DEFAULT_PORT if args.port is None else args.port,
        timeout_s=args.timeout,
        sasl_port=args.sasl_port,
        scram_users=users,
    )
    return _said_started(info.bootstrap, started, f"pid {info.pid}, data dir {info.data_dir}")


def _kafka_start_node(kafka: LocalKafka, args: argparse.Namespace) -> int:
    if args.nodes is not None or args.port is not None:
        raise ConfigError(
            "--node restarts one node of an existing cluster, on the ports it had; "
            "drop --nodes and --port"
        )
    info, started = kafka.start_node(args.node, timeout_s=args.timeout)
    how = "started" if started else "already running"
    print(f"node {info.node_id} {how} at {info.bootstrap} (pid {info.pid})")
    return 0


def _scram_user(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise ConfigError(f"--scram-user takes NAME:PASSWORD (or NAME:env:VAR), got {text!r}")
    return name, parse_properties([f"p={password}"])["p"]


def _kafka_stop(args: argparse.Namespace) -> int:
    kafka = LocalKafka(data_dir=args.data_dir)
    stopped = kafka.stop(node=args.node)
    if not stopped:
        which = "broker" if args.node is None else f"node {args.node}"
        print(f"no local {which} running for data dir {Path(args.data_dir).expanduser()}")
    elif kafka.size == 1:
        print(f"stopped broker {stopped[0].bootstrap} (pid {stopped[0].pid})")
    for info in stopped if kafka.size > 1 else []:
        print(f"stopped node {info.node_id} at {info.bootstrap} (pid {info.pid})")
    return 0


def _kafka_status(args: argparse.Namespace) -> int:
    kafka = LocalKafka(data_dir=args.data_dir)
    cluster = kafka.cluster()
    if cluster is None:
        print(f"not running (data dir {Path(args.data_dir).expanduser()})")
        return 1
    if cluster.size == 1:
        info = cluster.nodes[0]
        print(f"running at {info.bootstrap} (pid {info.pid}, data dir {info.data_dir})")
        return 0
    # The first line keeps the single node's shape, so `sed 's/^running at ([^ ]+).*/\1/'`
    # yields a bootstrap list of the running nodes.
    count = len(cluster.nodes)
    nodes = f"{count} nodes" if count == cluster.size else f"{count} of {cluster.size} nodes"
    print(f"running at {cluster.bootstrap} ({nodes}, data dir {cluster.data_dir})")
    for node_id in range(1, cluster.size + 1):
        live = kafka.node(node_id)
        state = f"(pid {live.pid})" if live else "stopped"
        print(f"node {node_id} at {kafka.address(node_id)} {state}")
    return 0


def add_kafka_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline kafka start|stop|status` to the subcommands."""
    kafka = sub.add_parser(
        "kafka",
        help="run a local Apache Kafka broker, or a cluster of three (KRaft)",
        description="Start, stop or ask about an Apache Kafka broker (or a cluster of three "
        "KRaft nodes) running on 127.0.0.1 from this machine's Java, for development and "
        "tests. Its jars come from Maven Central once, or from KAFKA_HOME.",
    )
    actions = kafka.add_subparsers(dest="action", required=True, metavar="{start,stop,status}")
    handlers: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
        "start": (
            "start the broker (or the cluster's nodes) in the background and print the "
            "bootstrap address",
            _kafka_start,
        ),
        "stop": ("stop the broker (or cluster) started from this data dir", _kafka_stop),
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
            _add_start_flags(action)
        if name in ("start", "stop"):
            verb = "restart only" if name == "start" else "stop only"
            action.add_argument(
                "--node",
                type=int,
                default=None,
                metavar="N",
                help=f"{verb} node N of the cluster (its data is kept)",
            )
        action.set_defaults(handler=handler)


def _add_start_flags(action: argparse.ArgumentParser) -> None:
    action.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"client port on 127.0.0.1; a cluster's node N gets PORT+N-1, and 0 picks free "
        f"ones (default: {DEFAULT_PORT}, or the cluster's own)",
    )
    action.add_argument(
        "--nodes",
        type=int,
        default=None,
        metavar="N",
        help="1 for a single broker, 3 for a cluster of three broker+controller nodes "
        "(default: what the data dir holds, else 1)",
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
