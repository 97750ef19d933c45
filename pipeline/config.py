"""One frozen settings object for the worker, built from flags, environment and a TOML file.

Precedence, highest first: command-line flags, environment variables, the TOML file named
by ``--config`` (or ``PIPELINE_CONFIG``), then defaults. Every setting has one name used
three ways: the flag ``--max-batch-size``, the environment variable
``PIPELINE_MAX_BATCH_SIZE``, and the file key ``max_batch_size``. The bootstrap servers
also come from the usual ``KAFKA_BOOTSTRAP_SERVERS``. librdkafka properties come from
``-X key=value`` flags and the file's ``[kafka]`` table, and are passed through unchanged.

Secrets (SASL passwords, TLS keys) are never printed: `WorkerConfig.redacted` is the only
form that goes to logs.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["WorkerConfig", "check_properties", "load_config", "parse_properties", "redact"]

_SECRET_KEY = re.compile(
    r"password|passphrase|secret|\.pem$|key\.pem|private\.key|sasl\.oauthbearer\.config", re.I
)
GUARANTEES = ("at-least-once", "exactly-once")
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


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class WorkerConfig:
    """Everything one worker process needs, validated at start-up."""

    bootstrap_servers: str = "127.0.0.1:9092"
    input_topics: tuple[str, ...] = ("features",)
    output_topic: str = "predictions"
    dlq_topic: str = ""  # "" means output_topic + ".dlq"
    group_id: str = "pipeline"
    models: Path = Path("models")
    default_model: str | None = None
    max_batch_size: int = 256
    max_wait_ms: float = 5.0
    workers: int = 1
    guarantee: str = "at-least-once"
    transactional_id: str = ""  # exactly-once; "" means pipeline-<group>-<host>-<index>-<pid>
    offset_reset: str = "earliest"
    create_topics: bool = True
    topic_partitions: int = 4
    max_in_flight: int = 20_000
    commit_interval_ms: int = 1_000
    stats_interval_s: float = 5.0
    model_threads: int = 1
    max_loaded_models: int = 8
    kafka: Mapping[str, str] = field(default_factory=dict)
    allow_unsafe_kafka_properties: bool = False

    def __post_init__(self) -> None:
        if not self.dlq_topic:
            object.__setattr__(self, "dlq_topic", f"{self.output_topic}.dlq")
        _check_int(self.max_batch_size, "max_batch_size", 1)
        _check_int(self.workers, "workers", 1)
        _check_int(self.topic_partitions, "topic_partitions", 1)
        _check_int(self.commit_interval_ms, "commit_interval_ms", 1)
        _check_int(self.model_threads, "model_threads", 1)
        _check_int(self.max_loaded_models, "max_loaded_models", 1)
        _check_int(self.max_in_flight, "max_in_flight", self.max_batch_size)
        if not (isinstance(self.max_wait_ms, int | float) and 0 <= self.max_wait_ms <= 60_000):
            raise ConfigError(
                f"max_wait_ms must be a number from 0 to 60000, got {self.max_wait_ms!r}"
            )
        if not (isinstance(self.stats_interval_s, int | float) and 0 < self.stats_interval_s < 1e9):
            raise ConfigError(f"stats_interval_s must be > 0, got {self.stats_interval_s!r}")
        if self.guarantee not in GUARANTEES:
            raise ConfigError(
                f"guarantee must be one of {', '.join(GUARANTEES)}, got {self.guarantee!r}"
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

        if self.dlq_topic == self.output_topic:
            raise ConfigError(
                f"the DLQ topic must differ from the output topic, both are {self.output_topic!r}; "
                "consumers of predictions would read dead letters as predictions"
            )
        check_properties(self.kafka, allow_unsafe=self.allow_unsafe_kafka_properties)
        owned = sorted(k for k in self.kafka if k in OWNED_PROPERTIES)
        if owned:
            raise ConfigError(
                f"librdkafka properties {owned} are set by the worker and cannot be changed: "
                "offsets are committed only after the output they paid for is acknowledged, "
                "and automatic commits or offset stores would commit before. Remove them "
                "from -X and the [kafka] table; --commit-interval-ms sets how often it commits"
            )

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.redacted.items())
        return f"WorkerConfig({shown})"

    @property
    def redacted(self) -> dict[str, Any]:
        """The settings as a dict for logs, with secret librdkafka properties masked."""
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["models"] = str(self.models)
        shown["kafka"] = redact(self.kafka)
        return shown


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


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _coerce(name: str, raw: object, source: str) -> object:
    """Turn a string from the environment (or a TOML value) into the field's type."""
    kind = {f.name: f.type for f in fields(WorkerConfig)}[name]
    if not isinstance(raw, str):
        if name == "input_topics" and isinstance(raw, list):
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
    if name == "input_topics":
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


def _from_file(path: Path, env: Mapping[str, str]) -> tuple[dict[str, object], dict[str, str]]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    kafka = data.pop("kafka", {})
    if not isinstance(kafka, dict):
        raise ConfigError(f"[kafka] in {path} must be a table of librdkafka properties")
    known = {f.name for f in fields(WorkerConfig)} - {"kafka"}
    settings: dict[str, object] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "input_topic":
            name = "input_topics"
        if name not in known:
            raise ConfigError(
                f"unknown setting {key!r} in {path}; known: {', '.join(sorted(known))}"
            )
        settings[name] = _coerce(name, value, str(path))
    properties = {
        k: _secret_value(str(v).lower() if isinstance(v, bool) else str(v), env)
        for k, v in _flatten(kafka).items()
    }
    return settings, properties


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    settings: dict[str, object] = {}
    if env.get("KAFKA_BOOTSTRAP_SERVERS"):
        settings["bootstrap_servers"] = env["KAFKA_BOOTSTRAP_SERVERS"]
    for f in fields(WorkerConfig):
        var = "PIPELINE_INPUT_TOPIC" if f.name == "input_topics" else f"PIPELINE_{f.name.upper()}"
        if f.name != "kafka" and env.get(var):
            settings[f.name] = _coerce(f.name, env[var], var)
    return settings


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


def parse_properties(pairs: list[str], env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parse ``-X key=value`` flags into librdkafka properties."""
    env = os.environ if env is None else env
    props: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-X takes key=value, got {pair!r}")
        props[key.strip()] = _secret_value(value, env)
    return props


def load_config(
    flags: Mapping[str, object],
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> WorkerConfig:
    """Build the worker's settings: flags over environment over file over defaults.

    Args:
        flags: Settings given on the command line (only those the user actually passed),
            plus ``kafka`` for the ``-X`` properties.
        config_file: The TOML file, if any (else ``PIPELINE_CONFIG`` from `env`).
        env: The environment (default: ``os.environ``).
    """
    env = os.environ if env is None else env
    path = config_file or (Path(env["PIPELINE_CONFIG"]) if env.get("PIPELINE_CONFIG") else None)
    file_settings, file_kafka = _from_file(path, env) if path else ({}, {})
    settings = {
        **file_settings,
        **_from_env(env),
        **{k: v for k, v in flags.items() if k != "kafka"},
    }
    kafka = {**file_kafka, **dict(flags.get("kafka") or {})}  # type: ignore[call-overload]
    return WorkerConfig(**settings, kafka=kafka)  # type: ignore[arg-type]
