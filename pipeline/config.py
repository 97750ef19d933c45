"""One frozen settings object for the worker, built from flags, environment and a TOML file.

Precedence, highest first: command-line flags, environment variables, the TOML file named
by ``--config`` (or ``PIPELINE_CONFIG``), then defaults. Every setting has one name used
three ways: the file key ``max_batch_size`` (the field's name), the environment variable
``PIPELINE_MAX_BATCH_SIZE`` (`setting_variables`), and a flag, ``--max-batch-size``
(``--no-create-topics`` for ``create_topics``; the parsers are the source of the flags).
The bootstrap servers also come from the usual ``KAFKA_BOOTSTRAP_SERVERS``. librdkafka
properties come from ``-X key=value`` flags and the file's ``[kafka]`` table, and are
passed through unchanged.

An unknown ``PIPELINE_*`` variable is refused like an unknown file key, naming the known
ones: a typo must not silently fall back to a default. `RESERVED_VARIABLES` are the
others the project reads, and a variable named by an ``env:NAME`` reference is the
user's own.

Secrets (SASL passwords, TLS keys) are never printed: `WorkerConfig.redacted` is the only
form that goes to logs.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, TypeVar

from pipeline.engine.enrich import EnrichSpec, missing_policies
from pipeline.engine.framing import VALUE_FORMATS
from pipeline.engine.names import is_plain_name
from pipeline.engine.rollout import Canary, parse_canaries, parse_shadows
from pipeline.errors import ConfigError

__all__ = [
    "CONFIG_VARIABLE",
    "DISPATCHES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "OUTPUT_FORMATS",
    "REGISTRY_PREFIX",
    "RESERVED_VARIABLES",
    "SUBJECT_STRATEGIES",
    "UNSAFE_PROPERTIES",
    "DoorSettings",
    "EngineSettings",
    "LogSettings",
    "ServeConfig",
    "Settings",
    "WorkerConfig",
    "check_properties",
    "load_config",
    "load_settings",
    "parse_properties",
    "redact",
    "setting_variables",
]

# repeatable flags
_LISTS: Final = ("input_topics", "pins", "enrich", "enrich_missing", "shadows", "canaries")
_SECRET_KEY = re.compile(
    r"password|passphrase|secret|\.pem$|key\.pem|private\.key|sasl\.oauthbearer\.config"
    r"|user\.info|bearer\.auth\.token",
    re.I,
)
REGISTRY_PREFIX = "schema.registry."
"""``-X`` properties with this prefix configure the Schema Registry client, not librdkafka."""
GUARANTEES = ("at-least-once", "exactly-once")
GROUP_TYPES = ("consumer", "share")
OFFSET_RESETS = ("earliest", "latest")
# librdkafka properties that load code or run commands: refused unless explicitly allowed.
UNSAFE_PROPERTIES = (
    "plugin.library.paths",
    "sasl.kerberos.kinit.cmd",
    "ssl.engine.location",
    "ssl.providers",
)
# librdkafka properties the worker sets itself because its delivery guarantee rests on them:
# offsets are stored and committed only after the output they paid for is acknowledged.
OWNED_PROPERTIES = ("enable.auto.commit", "enable.auto.offset.store")
# Consumer-group properties librdkafka's share consumer refuses with a ValueError (checked
# one by one against confluent-kafka 2.x): refused here first, as a setting error.
SHARE_REFUSED_PROPERTIES = (
    "auto.offset.reset",
    "enable.partition.eof",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "heartbeat.interval.ms",
    "isolation.level",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "session.timeout.ms",
)
# The transactional producer's transaction.timeout.ms unless -X sets it (see
# pipeline.kafka.transactions): how long a dead worker's open transaction can hide later
# outputs from read_committed readers. --commit-interval-ms may be at most half of it.
TRANSACTION_TIMEOUT_MS = 15_000
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
CONFIG_VARIABLE = "PIPELINE_CONFIG"
# PIPELINE_* variables that are not settings, and what reads them (the README lists them).
RESERVED_VARIABLES = {
    CONFIG_VARIABLE: "the TOML settings file, as --config",
    "PIPELINE_HOME": "where `pipeline kafka` keeps the local broker (default "
    "~/.local/share/pipeline)",
    "PIPELINE_SOAK": "tests: run the fault suite at full size (`make soak`)",
    "PIPELINE_RELIABILITY_REPORT": "tests: the JSON-lines file the fault suite appends to",
    "PIPELINE_RELIABILITY_SEED": "tests: replay the fault suite's random kill points",
    "PIPELINE_TRITONCLIENT_PYTHON": "tests: a python with tritonclient for the door tests",
}


@dataclass(frozen=True, kw_only=True, repr=False)
class EngineSettings:
    """What every process that runs the engine needs: the model store and batching."""

    models: Path = Path("models")
    default_model: str | None = None
    max_batch_size: int = 256
    max_wait_ms: float = 5.0
    model_threads: int = 1
    max_loaded_models: int = 8
    stats_interval_s: float = 5.0
    pins: tuple[str, ...] = ()  # "model=version": served when an event or request names none
    latency_target_ms: float = 0.0  # > 0: size batches from this target, not max_wait_ms
    shadows: tuple[str, ...] = ()  # "model=version": runs on the served rows, answers nobody
    shadow_fraction: float = 1.0  # share of the served rows a shadow runs on
    canaries: tuple[str, ...] = ()  # "model=version:percent": that share of keys gets it

    def __post_init__(self) -> None:
        _check_int(self.max_batch_size, "max_batch_size", 1)
        _check_int(self.model_threads, "model_threads", 1)
        _check_int(self.max_loaded_models, "max_loaded_models", 1)
        if not (isinstance(self.max_wait_ms, int | float) and 0 <= self.max_wait_ms <= 60_000):
            raise ConfigError(
                f"max_wait_ms must be a number from 0 to 60000, got {self.max_wait_ms!r}"
            )
        if not (isinstance(self.stats_interval_s, int | float) and 0 < self.stats_interval_s < 1e9):
            raise ConfigError(f"stats_interval_s must be > 0, got {self.stats_interval_s!r}")
        target = self.latency_target_ms
        if not (isinstance(target, int | float) and 0 <= target <= 60_000):
            raise ConfigError(
                f"latency_target_ms must be a number from 0 (off) to 60000, got {target!r}"
            )
        self.pinned()
        self.shadowed()
        self.canaried()
        if not (isinstance(self.shadow_fraction, int | float) and 0 < self.shadow_fraction <= 1):
            raise ConfigError(
                f"shadow_fraction must be a number above 0 and at most 1, got "
                f"{self.shadow_fraction!r}"
            )

    def shadowed(self) -> dict[str, str]:
        """The ``--shadow`` settings as model name -> version (raises `ConfigError`)."""
        return parse_shadows(self.shadows)

    def canaried(self) -> dict[str, Canary]:
        """The ``--canary`` settings as model name -> `Canary` (raises `ConfigError`)."""
        return parse_canaries(self.canaries)

    def pinned(self) -> dict[str, str]:
        """The ``--pin`` settings as model name -> version.

        Raises:
            ConfigError: an entry is not ``model=version`` of plain names.
        """
        pins: dict[str, str] = {}
        for entry in self.pins:
            name, sep, version = entry.partition("=")
            if not sep or not is_plain_name(name.strip()) or not is_plain_name(version.strip()):
                raise ConfigError(f"--pin takes model=version (plain names), got {entry!r}")
            pins[name.strip()] = version.strip()
        return pins


@dataclass(frozen=True, kw_only=True, repr=False)
class DoorSettings:
    """The request/response front doors (HTTP and gRPC): where they listen and their bounds.

    A port of 0 turns that door off.
    """

    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    max_queue: int = 10_000  # rows waiting per model version before callers get 429
    max_body_bytes: int = 4 * 1024 * 1024
    max_rows_per_request: int = 10_000
    # TLS: a path, file:PATH or env:NAME (the PEM itself); a client CA makes it mutual TLS
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    auth_token_file: str | None = None  # bearer tokens, one per line; same forms
    open_health: bool = False  # health (and metrics) endpoints without a token
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_concurrent_streams: int = 100  # gRPC calls at once on one connection; more wait

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be a port from 0 (off) to 65535, got {port!r}")
        if self.http_port and self.http_port == self.grpc_port:
            raise ConfigError(f"http_port and grpc_port must differ, both are {self.http_port}")
        _check_int(self.max_queue, "max_queue", 1)
        _check_int(self.max_body_bytes, "max_body_bytes", 64)
        _check_int(self.max_rows_per_request, "max_rows_per_request", 1)
        _check_int(self.max_header_bytes, "max_header_bytes", 1024)
        _check_int(self.max_concurrent_streams, "max_concurrent_streams", 1)
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value <= 3600):
                raise ConfigError(
                    f"{name} must be a number of seconds from 0 to 3600, got {value!r}"
                )
        if not self.host:
            raise ConfigError("host must be an address to listen on, got an empty string")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give both, or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")


@dataclass(frozen=True, kw_only=True, repr=False)
class LogSettings:
    """How a long-running command logs: the least severe level shown, and the line format.

    ``text`` is one human-readable line per record; ``json`` one JSON object per line.
    """

    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        if isinstance(self.log_level, str):  # INFO and info alike
            object.__setattr__(self, "log_level", self.log_level.lower())
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                f"log_format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )


@dataclass(frozen=True, kw_only=True, repr=False)
class WorkerConfig(EngineSettings, DoorSettings, LogSettings):
    """Everything one worker process (`pipeline run`) needs, validated at start-up."""

    bootstrap_servers: str = "127.0.0.1:9092"
    input_topics: tuple[str, ...] = ("features",)
    output_topic: str = "predictions"
    dlq_topic: str = ""  # "" means output_topic + ".dlq"
    group_id: str = "pipeline"
    group_type: str = "consumer"  # "share": a share group (KIP-932), see pipeline.kafka.share
    max_delivery_attempts: int = 5  # share groups: acquired more often, a record is dead-lettered
    workers: int = 1
    guarantee: str = "at-least-once"
    transactional_id: str = ""  # exactly-once; "" means pipeline-<group>-<host>-<index>-<pid>
    offset_reset: str = "earliest"
    create_topics: bool = True
    topic_partitions: int = 4
    replication_factor: int = 0  # of topics it creates; 0: 3 on clusters of 3+ nodes, else 1
    min_insync_replicas: int = 0  # of topics it creates; 0: 2 when replicated 3 times, else 1
    max_in_flight: int = 20_000
    commit_interval_ms: int = 100
    commit_every_events: int = 10_000
    metrics_port: int = 0  # 0: no /metrics endpoint of its own (an HTTP door serves one)
    metrics_host: str = "127.0.0.1"
    delivery_stall_s: int = 120  # /healthz fails once outputs are owed this long undelivered
    enrich: tuple[str, ...] = ()  # "NAME=TOPIC:KEY_FIELD": tables joined before decoding
    enrich_max_bytes: int = 1 << 30  # per table, estimated; over it while loading: refuse
    enrich_missing: tuple[str, ...] = ()  # "NAME=POLICY": dead-letter (default), defaults, wait:MS
    kafka: Mapping[str, str] = field(default_factory=dict)
    allow_unsafe_kafka_properties: bool = False
    value_format: str = "json"  # json, avro, jsonschema, protobuf, auto: see engine.framing
    schema_registry_url: str = ""  # needed by avro and auto; -X schema.registry.* configure it
    output_format: str = "json"  # json, avro, jsonschema or protobuf: see pipeline.schemaregistry
    output_subject_strategy: str = "topic"  # topic, record or topic-record
    shadow_topic: str = ""  # "": shadow versions' answers go to metrics only

    def __post_init__(self) -> None:
        EngineSettings.__post_init__(self)
        DoorSettings.__post_init__(self)
        LogSettings.__post_init__(self)
        if not self.dlq_topic:
            object.__setattr__(self, "dlq_topic", f"{self.output_topic}.dlq")
        self._check_enrich()
        _check_int(self.workers, "workers", 1)
        _check_int(self.topic_partitions, "topic_partitions", 1)
        _check_int(self.replication_factor, "replication_factor", 0)
        _check_int(self.min_insync_replicas, "min_insync_replicas", 0)
        if self.replication_factor and self.min_insync_replicas > self.replication_factor:
            raise ConfigError(
                f"min_insync_replicas {self.min_insync_replicas} cannot exceed "
                f"replication_factor {self.replication_factor}: every write would fail"
            )
        _check_int(self.commit_interval_ms, "commit_interval_ms", 1)
        _check_int(self.commit_every_events, "commit_every_events", 1)
        if (
            isinstance(self.metrics_port, bool)
            or not isinstance(self.metrics_port, int)
            or not (0 <= self.metrics_port <= 65535 - self.workers + 1)
        ):
            raise ConfigError(
                f"metrics_port must be a port from 0 (off) to 65535, leaving room for one per "
                f"worker process, got {self.metrics_port!r}"
            )
        _check_int(self.max_in_flight, "max_in_flight", self.max_batch_size)
        _check_int(self.delivery_stall_s, "delivery_stall_s", 0)
        if self.guarantee not in GUARANTEES:
            raise ConfigError(
                f"guarantee must be one of {', '.join(GUARANTEES)}, got {self.guarantee!r}"
            )
        if self.group_type not in GROUP_TYPES:
            raise ConfigError(f"group_type must be consumer or share, got {self.group_type!r}")
        _check_int(self.max_delivery_attempts, "max_delivery_attempts", 1)
        if self.group_type == "share" and self.guarantee == "exactly-once":
            raise ConfigError(
                "--group-type share gives at-least-once only: share groups acknowledge records "
                "one by one, outside transactions. Use --group-type consumer for exactly-once"
            )
        refused = sorted(k for k in self.kafka if k in SHARE_REFUSED_PROPERTIES)
        if self.group_type == "share" and refused:
            raise ConfigError(
                f"librdkafka properties {refused} do not apply to --group-type share: the "
                "share consumer refuses them (its session and heartbeat are set on the "
                "broker, group.share.*; --offset-reset sets where a new share group starts). "
                "Remove them from -X and the [kafka] table"
            )
        if self.group_type == "share" and self.max_in_flight != 20_000:
            raise ConfigError(
                "--max-in-flight does not apply to --group-type share: each poll's records "
                "are finished before the next poll, which bounds memory; remove it"
            )
        if self.offset_reset not in OFFSET_RESETS:
            raise ConfigError(f"offset_reset must be earliest or latest, got {self.offset_reset!r}")
        if not self.input_topics or not all(self.input_topics):
            raise ConfigError(
                f"at least one non-empty --input-topic is needed, got {list(self.input_topics)}"
            )
        if self.output_topic in self.input_topics or self.dlq_topic in self.input_topics:
            raise ConfigError(
                f"the output topic {self.output_topic!r} and DLQ topic {self.dlq_topic!r} must "
                f"differ from the input topics {list(self.input_topics)}, or predictions would "
                "loop back in"
            )
        if self.shadow_topic in (*self.input_topics, self.output_topic, self.dlq_topic):
            raise ConfigError(
                f"--shadow-topic {self.shadow_topic!r} must differ from the input, output and "
                "dead-letter topics: consumers of predictions would read a candidate's answers"
            )
        if self.dlq_topic == self.output_topic:
            raise ConfigError(
                f"the DLQ topic must differ from the output topic, both are {self.output_topic!r}; "
                "consumers of predictions would read dead letters as predictions"
            )
        if self.workers > 1 and (self.http_port or self.grpc_port):
            raise ConfigError(
                f"--workers {self.workers} with --http-port/--grpc-port: the doors serve from "
                "one process's engine; run `pipeline serve` beside the workers instead, or use "
                "one worker process"
            )
        check_properties(self.kafka, allow_unsafe=self.allow_unsafe_kafka_properties)
        _check_value_format(self.value_format, self.schema_registry_url)
        _check_output_format(
            self.output_format, self.output_subject_strategy, self.schema_registry_url
        )
        if self.guarantee == "exactly-once":
            _check_transaction_timeout(self.commit_interval_ms, self.kafka)
        owned = sorted(k for k in self.kafka if k in OWNED_PROPERTIES)
        if owned:
            raise ConfigError(
                f"librdkafka properties {owned} are set by the worker and cannot be changed: "
                "offsets are committed only after the output they paid for is acknowledged, "
                "and automatic commits or offset stores would commit before. Remove them "
                "from -X and the [kafka] table; --commit-interval-ms sets how often it commits"
            )

    def __repr__(self) -> str:
        return _repr(self)

    @property
    def enrichments(self) -> tuple[EnrichSpec, ...]:
        """The parsed ``--enrich`` specs, in flag order, each with its ``--enrich-missing``
        policy."""
        policies = missing_policies(self.enrich_missing)
        specs = tuple(EnrichSpec.parse(text) for text in self.enrich)
        unknown = sorted(set(policies) - {s.name for s in specs})
        if unknown:
            raise ValueError(
                f"--enrich-missing names {unknown}, which no --enrich flag names "
                f"(it names {[s.name for s in specs]})"
            )
        return tuple(s.with_missing(policies.get(s.name, s.missing)) for s in specs)

    def _check_enrich(self) -> None:
        _check_int(self.enrich_max_bytes, "enrich_max_bytes", 1)
        try:
            specs = self.enrichments
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        names = [s.name for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"--enrich names must differ, {twice} given more than once")
        ours = {*self.input_topics, self.output_topic, self.dlq_topic}
        clash = sorted(s.topic for s in specs if s.topic in ours)
        if clash:
            raise ConfigError(
                f"--enrich table topics {clash} are also input, output or dead-letter "
                "topics: a table topic holds one entity's latest values per key"
            )

    @property
    def redacted(self) -> dict[str, Any]:
        """The settings as a dict for logs, with secret librdkafka properties masked."""
        return _redacted(self)

    @property
    def summary(self) -> dict[str, Any]:
        """`redacted`, short enough for a start-up line: where it reads, writes and which
        group, and every setting that is not its default (--print-config shows all)."""
        return _summary(self, ("bootstrap_servers", "input_topics", "output_topic", "group_id"))


@dataclass(frozen=True, kw_only=True, repr=False)
class ServeConfig(EngineSettings, DoorSettings, LogSettings):
    """Everything `pipeline serve` needs: the engine and its front doors, no Kafka."""

    http_port: int = 8080
    grpc_port: int = 50051
    dispatch: str = "when-idle"  # or "when-due": see pipeline.engine.engine.EngineLoop

    def __post_init__(self) -> None:
        EngineSettings.__post_init__(self)
        DoorSettings.__post_init__(self)
        LogSettings.__post_init__(self)
        _check_choice("dispatch", self.dispatch, DISPATCHES)
        if not self.http_port and not self.grpc_port:
            raise ConfigError("pipeline serve needs a door: --http-port or --grpc-port above 0")

    def __repr__(self) -> str:
        return _repr(self)

    @property
    def redacted(self) -> dict[str, Any]:
        """The settings as a dict for logs."""
        return _redacted(self)

    @property
    def summary(self) -> dict[str, Any]:
        """`redacted`, short enough for a start-up line: the ports and every setting that
        is not its default (--print-config shows all)."""
        return _summary(self, ("http_port", "grpc_port"))


Settings = TypeVar("Settings", WorkerConfig, ServeConfig)


def _redacted(settings: object) -> dict[str, Any]:
    shown = {f.name: getattr(settings, f.name) for f in fields(settings)}  # type: ignore[arg-type]
    shown["models"] = str(shown["models"])
    if "kafka" in shown:
        shown["kafka"] = redact(shown["kafka"])
    return shown


def _summary(settings: object, always: Sequence[str]) -> dict[str, Any]:
    shown = _redacted(settings)
    defaults = _redacted(type(settings)())
    return {k: v for k, v in shown.items() if k in always or v != defaults.get(k)}


def _repr(settings: object) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in _redacted(settings).items())
    return f"{type(settings).__name__}({shown})"


def check_properties(properties: Mapping[str, str], *, allow_unsafe: bool) -> None:
    """Refuse librdkafka properties that load code or run commands, unless allowed.

    Raises:
        ConfigError: such a property is set and `allow_unsafe` is False.
    """
    unsafe = sorted(k for k in properties if k in UNSAFE_PROPERTIES)
    if unsafe and not allow_unsafe:
        raise ConfigError(
            f"librdkafka properties {unsafe} load code or run commands and are refused; "
            "pass --allow-unsafe-kafka-properties if you really mean it"
        )


def redact(properties: Mapping[str, str]) -> dict[str, str]:
    """Return `properties` with the values of secret-bearing keys replaced by ``***``."""
    return {k: ("***" if _SECRET_KEY.search(k) else v) for k, v in properties.items()}


def _check_transaction_timeout(interval_ms: int, kafka: Mapping[str, str]) -> None:
    """Exactly-once: a transaction lasts one commit interval plus the commit's own steps,
    and the broker aborts one older than transaction.timeout.ms, so an interval near the
    timeout would never commit. Refused rather than derived: a longer timeout also hides a
    dead worker's outputs from read_committed readers for longer, which is the user's call."""
    try:
        timeout_ms = int(kafka.get("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS))
    except (TypeError, ValueError):
        return  # librdkafka names the bad value when the producer is made
    if 2 * interval_ms <= timeout_ms:
        return
    raise ConfigError(
        f"--commit-interval-ms {interval_ms} with --guarantee exactly-once must be at most "
        f"half the transaction timeout (transaction.timeout.ms {timeout_ms}): a transaction "
        "lasts one commit interval plus the commit's steps, and the broker aborts it at the "
        f"timeout, so nothing would ever be committed. Lower --commit-interval-ms to "
        f"{timeout_ms // 2} or less, or raise -X transaction.timeout.ms to {2 * interval_ms} or "
        "more (the broker caps it at its transaction.max.timeout.ms, 900000 by default); a "
        "longer timeout also hides a dead worker's open transaction from read_committed "
        "readers for longer"
    )


OUTPUT_FORMATS: Final = ("json", "avro", "jsonschema", "protobuf")
DISPATCHES: Final = ("when-idle", "when-due")  # when `pipeline serve` runs the rows that wait
SUBJECT_STRATEGIES: Final = ("topic", "record", "topic-record")


def _check_value_format(value_format: str, url: str) -> None:
    _check_choice("value_format", value_format, VALUE_FORMATS)
    _check_registry(f"--value-format {value_format} reads Schema Registry framed values",
                    value_format, url)  # fmt: skip


def _check_output_format(output_format: str, strategy: str, url: str) -> None:
    _check_choice("output_format", output_format, OUTPUT_FORMATS)
    _check_choice("output_subject_strategy", strategy, SUBJECT_STRATEGIES)
    _check_registry(f"--output-format {output_format} registers the predictions' schema",
                    output_format, url)  # fmt: skip


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_registry(what: str, value_format: str, url: str) -> None:
    """A format other than JSON needs the registry's address."""
    if value_format != "json" and not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"{what} and needs --schema-registry-url http(s)://HOST:PORT, got {url!r}; "
            "`pipeline schema-registry start` runs one locally"
        )


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _coerce(cls: type[Any], name: str, raw: object, source: str) -> object:
    """Turn a string from the environment (or a TOML value) into the field's type."""
    kind = {f.name: f.type for f in fields(cls)}[name]
    if not isinstance(raw, str):
        if name in _LISTS and isinstance(raw, list):
            return tuple(str(t) for t in raw)
        if name == "models":
            return Path(str(raw))
        return raw
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
    except ValueError as exc:
        article = "an" if kind == "int" else "a"
        raise ConfigError(f"{name} from {source} must be {article} {kind}, got {raw!r}") from exc
    if name in _LISTS:
        return tuple(t.strip() for t in raw.split(",") if t.strip())
    if name == "models":
        return Path(raw)
    return raw or None if name == "default_model" else raw


def _flatten(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """``sasl.password = "x"`` unquoted in TOML is a nested table; librdkafka wants the dots."""
    flat: dict[str, object] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _from_file(
    cls: type[Any], path: Path, env: Mapping[str, str]
) -> tuple[dict[str, object], dict[str, str], set[str]]:
    """The file's settings, its resolved ``[kafka]`` table, and the variables it refers to."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    kafka = data.pop("kafka", {})
    if not isinstance(kafka, dict):
        raise ConfigError(f"[kafka] in {path} must be a table of librdkafka properties")
    known = {f.name for f in fields(cls)} - {"kafka"}
    if kafka and "kafka" not in {f.name for f in fields(cls)}:
        raise ConfigError(f"{path} has a [kafka] table, but this command uses no Kafka")
    settings: dict[str, object] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "input_topic":
            name = "input_topics"
        if name not in known:
            raise ConfigError(
                f"unknown setting {key!r} in {path}; known: {', '.join(sorted(known))}"
            )
        settings[name] = _coerce(cls, name, value, str(path))
    raw = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in _flatten(kafka).items()}
    properties = {k: _secret_value(v, env) for k, v in raw.items()}
    return settings, properties, _references([*raw.values(), *settings.values()])


def setting_variables(name: str) -> tuple[str, ...]:
    """The environment variables of setting `name`, the first one winning.

    ``PIPELINE_<NAME>`` for every setting (``PIPELINE_INPUT_TOPIC`` for ``input_topics``),
    and ``KAFKA_BOOTSTRAP_SERVERS`` after ``PIPELINE_BOOTSTRAP_SERVERS``.
    """
    if name == "input_topics":
        return ("PIPELINE_INPUT_TOPIC",)
    if name == "bootstrap_servers":
        return ("PIPELINE_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS")
    return (f"PIPELINE_{name.upper()}",)


def _setting_names(cls: type[Any]) -> list[str]:
    return [f.name for f in fields(cls) if f.name != "kafka"]


def _from_env(cls: type[Any], env: Mapping[str, str]) -> dict[str, object]:
    settings: dict[str, object] = {}
    for name in _setting_names(cls):
        var = next((v for v in setting_variables(name) if env.get(v)), None)
        if var is not None:
            settings[name] = _coerce(cls, name, env[var], var)
    return settings


def _known_variables() -> set[str]:
    """Every PIPELINE_* variable some command reads: all settings, and the reserved ones."""
    names = {*_setting_names(WorkerConfig), *_setting_names(ServeConfig)}
    return {v for n in names for v in setting_variables(n)} | set(RESERVED_VARIABLES)


def _check_variables(env: Mapping[str, str], referenced: set[str]) -> None:
    """Refuse ``PIPELINE_*`` variables no command reads (a typo would silently do nothing)."""
    known = _known_variables()
    unknown = sorted(
        v for v in env if v.startswith("PIPELINE_") and v not in known and v not in referenced
    )
    if not unknown:
        return
    hints = [
        f"{v} (did you mean {close[0]}?)" if close else v
        for v in unknown
        for close in [difflib.get_close_matches(v, known, n=1)]
    ]
    raise ConfigError(
        f"unknown environment variable{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: "
        "pipeline reads PIPELINE_* variables only for its settings; unset or rename it. "
        f"Known: {', '.join(sorted(known))}"
    )


def _references(values: Iterable[object]) -> set[str]:
    """Names of the variables that ``env:NAME`` values refer to."""
    return {v[4:] for v in values if isinstance(v, str) and v.startswith("env:")}


def _secret_value(value: str, env: Mapping[str, str]) -> str:
    """Resolve ``file:/path`` and ``env:NAME`` references, so secrets need not sit in files."""
    if value.startswith("file:"):
        try:
            return Path(value[5:]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {value[5:]}: {exc.strerror}") from exc
    if value.startswith("env:"):
        name = value[4:]
        if name not in env:
            raise ConfigError(f"environment variable {name} named by a Kafka property is not set")
        return env[name]
    return value


def parse_properties(pairs: Sequence[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parse ``-X key=value`` flags into librdkafka properties."""
    env = os.environ if env is None else env
    return {key: _secret_value(value, env) for key, value in _split_pairs(pairs).items()}


def _split_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``-X key=value`` flags as a dict of unresolved values; later ones win."""
    props: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-X takes key=value, got {pair!r}")
        props[key.strip()] = value
    return props


def load_config(
    flags: Mapping[str, object],
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    properties: Sequence[str] = (),
    local_broker: Callable[[], str | None] | None = None,
) -> WorkerConfig:
    """Build the worker's settings: flags over environment over file over defaults.

    Args:
        flags: Settings given on the command line (only those the user actually passed),
            plus ``kafka`` for librdkafka properties already parsed.
        config_file: The TOML file, if any (else ``PIPELINE_CONFIG`` from `env`).
        env: The environment (default: ``os.environ``).
        properties: ``-X key=value`` flags, resolved here (they win over ``kafka``).
        local_broker: Where no flag, variable or file names the bootstrap servers, the
            address of a local broker to use before the default (None: use the default).

    Raises:
        ConfigError: a setting is malformed or out of range, a file key or a
            ``PIPELINE_*`` variable is unknown, or a property is refused.
    """
    return load_settings(
        WorkerConfig,
        flags,
        config_file=config_file,
        env=env,
        properties=properties,
        local_broker=local_broker,
    )


def load_settings(
    cls: type[Settings],
    flags: Mapping[str, object],
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    properties: Sequence[str] = (),
    local_broker: Callable[[], str | None] | None = None,
) -> Settings:
    """Build `cls` (`WorkerConfig` or `ServeConfig`): flags over environment over file over
    defaults; see `load_config`."""
    env = os.environ if env is None else env
    given = env.get(CONFIG_VARIABLE)
    path = config_file or (Path(given) if given else None)
    file_settings, file_kafka, file_refs = _from_file(cls, path, env) if path else ({}, {}, set())
    pairs: dict[str, str] = _split_pairs(properties)
    if pairs and cls is not WorkerConfig:
        raise ConfigError("-X sets librdkafka properties, but this command uses no Kafka")
    _check_variables(env, file_refs | _references([*pairs.values(), *flags.values()]))
    settings = {
        **file_settings,
        **_from_env(cls, env),
        **{k: v for k, v in flags.items() if k != "kafka"},
    }
    if cls is WorkerConfig:
        if "bootstrap_servers" not in settings and local_broker is not None:
            found = local_broker()
            if found:
                settings["bootstrap_servers"] = found
        resolved = {k: _secret_value(v, env) for k, v in pairs.items()}
        settings["kafka"] = {**file_kafka, **dict(flags.get("kafka") or {}), **resolved}  # type: ignore[call-overload]
    return cls(**settings)  # type: ignore[arg-type]
