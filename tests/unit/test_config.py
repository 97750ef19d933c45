"""Worker settings: defaults, flags over environment over file, validation, secrets."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.config import WorkerConfig, load_config, parse_properties, redact
from pipeline.errors import ConfigError

SECRET_PROPERTIES = {
    "sasl.password": "pw-1f0e",
    "ssl.key.password": "pw-7c2a",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----MIIEv-9b1d",
    "sasl.oauthbearer.client.secret": "cs-44d8",
    "ssl.keystore.password": "pw-a3b9",
    "sasl.oauthbearer.config": "principal=admin-5e6f",
}
PLAIN_PROPERTIES = {
    "sasl.username": "alice",
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "ssl.ca.location": "/etc/ssl/ca.pem.d",
    "ssl.key.location": "/etc/ssl/client.key",
}


@pytest.fixture
def make_toml(tmp_path: Path) -> Callable[[str], Path]:
    """Write a TOML config file and return its path."""
    count = 0

    def make(text: str) -> Path:
        nonlocal count
        count += 1
        path = tmp_path / f"pipeline-{count}.toml"
        path.write_text(text)
        return path

    return make


def load(
    flags: dict[str, object] | None = None,
    *,
    env: dict[str, str] | None = None,
    config_file: Path | None = None,
) -> WorkerConfig:
    """`load_config` with an explicit (by default empty) environment, never os.environ."""
    return load_config(flags or {}, config_file=config_file, env=env or {})


def error_of(call: Callable[[], object]) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


# -- defaults ----------------------------------------------------------------------------


def test_defaults() -> None:
    config = WorkerConfig()

    assert config.bootstrap_servers == "127.0.0.1:9092"
    assert config.input_topics == ("features",)
    assert config.output_topic == "predictions"
    assert config.dlq_topic == "predictions.dlq"
    assert config.group_id == "pipeline"
    assert config.models == Path("models")
    assert config.default_model is None
    assert config.max_batch_size == 256
    assert config.max_wait_ms == 5.0
    assert config.guarantee == "at-least-once"
    assert config.offset_reset == "earliest"
    assert config.create_topics is True
    assert dict(config.kafka) == {}
    assert config.allow_unsafe_kafka_properties is False


def test_load_config_with_nothing_given_is_the_defaults() -> None:
    assert load() == WorkerConfig()


def test_config_is_frozen_and_keyword_only() -> None:
    config = WorkerConfig()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_batch_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        WorkerConfig("broker:9092")  # type: ignore[misc]


def test_dlq_topic_follows_the_output_topic_given_to_the_constructor() -> None:
    assert WorkerConfig(output_topic="scores").dlq_topic == "scores.dlq"


@pytest.mark.parametrize(
    ("flags", "env", "file_text"),
    [
        ({"output_topic": "scores"}, None, None),
        (None, {"PIPELINE_OUTPUT_TOPIC": "scores"}, None),
        (None, None, 'output_topic = "scores"\n'),
        (None, None, 'output-topic = "scores"\n'),
    ],
    ids=["flags", "env", "file", "file-dashes"],
)
def test_dlq_topic_follows_the_output_topic_from_any_source(
    flags: dict[str, object] | None,
    env: dict[str, str] | None,
    file_text: str | None,
    make_toml: Callable[[str], Path],
) -> None:
    config = load(flags, env=env, config_file=make_toml(file_text) if file_text else None)

    assert config.output_topic == "scores"
    assert config.dlq_topic == "scores.dlq"


def test_dlq_topic_follows_the_output_topic_of_the_highest_source(
    make_toml: Callable[[str], Path],
) -> None:
    path = make_toml('output_topic = "from-file"\n')

    config = load(
        {"output_topic": "from-flag"}, env={"PIPELINE_OUTPUT_TOPIC": "from-env"}, config_file=path
    )

    assert config.dlq_topic == "from-flag.dlq"


def test_an_explicit_dlq_topic_is_kept(make_toml: Callable[[str], Path]) -> None:
    path = make_toml('dlq_topic = "rejects"\n')

    config = load({"output_topic": "scores"}, config_file=path)

    assert config.dlq_topic == "rejects"


# -- precedence ---------------------------------------------------------------------------

FILE = """
bootstrap_servers = "file:9092"
group_id = "file-group"
max_batch_size = 10
input_topics = ["file-a", "file-b"]
"""
ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": "env:9092",
    "PIPELINE_GROUP_ID": "env-group",
    "PIPELINE_MAX_BATCH_SIZE": "20",
    "PIPELINE_INPUT_TOPIC": "env-a,env-b",
}
FLAGS: dict[str, object] = {
    "bootstrap_servers": "flag:9092",
    "group_id": "flag-group",
    "max_batch_size": 30,
    "input_topics": ("flag-a",),
}


@pytest.mark.parametrize(
    ("use_flags", "use_env", "use_file", "expected"),
    [
        (True, True, True, ("flag:9092", "flag-group", 30, ("flag-a",))),
        (False, True, True, ("env:9092", "env-group", 20, ("env-a", "env-b"))),
        (False, False, True, ("file:9092", "file-group", 10, ("file-a", "file-b"))),
        (False, False, False, ("127.0.0.1:9092", "pipeline", 256, ("features",))),
        (True, False, True, ("flag:9092", "flag-group", 30, ("flag-a",))),
        (True, False, False, ("flag:9092", "flag-group", 30, ("flag-a",))),
        (False, True, False, ("env:9092", "env-group", 20, ("env-a", "env-b"))),
    ],
)
def test_flags_over_environment_over_file_over_defaults(
    use_flags: bool,
    use_env: bool,
    use_file: bool,
    expected: tuple[object, ...],
    make_toml: Callable[[str], Path],
) -> None:
    config = load(
        FLAGS if use_flags else None,
        env=ENV if use_env else None,
        config_file=make_toml(FILE) if use_file else None,
    )

    got = (config.bootstrap_servers, config.group_id, config.max_batch_size, config.input_topics)
    assert got == expected


def test_sources_mix_field_by_field(make_toml: Callable[[str], Path]) -> None:
    path = make_toml('group_id = "file-group"\nmax_batch_size = 10\nworkers = 3\n')

    config = load(
        {"max_batch_size": 30},
        env={"PIPELINE_GROUP_ID": "env-group", "PIPELINE_MAX_BATCH_SIZE": "20"},
        config_file=path,
    )

    assert (config.max_batch_size, config.group_id, config.workers) == (30, "env-group", 3)


def test_pipeline_config_names_the_file_and_config_file_wins(
    make_toml: Callable[[str], Path],
) -> None:
    from_env = make_toml('group_id = "named-by-env"\n')
    given = make_toml('group_id = "given"\n')

    assert load(env={"PIPELINE_CONFIG": str(from_env)}).group_id == "named-by-env"
    assert load(env={"PIPELINE_CONFIG": str(from_env)}, config_file=given).group_id == "given"


def test_empty_environment_variables_are_ignored() -> None:
    config = load(env={"PIPELINE_OUTPUT_TOPIC": "", "KAFKA_BOOTSTRAP_SERVERS": ""})

    assert config.output_topic == "predictions"
    assert config.bootstrap_servers == "127.0.0.1:9092"


# -- coercion -----------------------------------------------------------------------------


def test_environment_strings_become_the_field_types() -> None:
    config = load(
        env={
            "PIPELINE_MAX_BATCH_SIZE": "64",
            "PIPELINE_MAX_WAIT_MS": "2.5",
            "PIPELINE_CREATE_TOPICS": "no",
            "PIPELINE_MODELS": "/srv/models",
            "PIPELINE_INPUT_TOPIC": " a, b ,,c ",
            "PIPELINE_STATS_INTERVAL_S": "10",
        }
    )

    assert config.max_batch_size == 64
    assert config.max_wait_ms == 2.5
    assert config.create_topics is False
    assert config.models == Path("/srv/models")
    assert config.input_topics == ("a", "b", "c")
    assert config.stats_interval_s == 10.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("False", False), ("no", False)],
)
def test_booleans_from_the_environment(raw: str, expected: bool) -> None:
    config = load(env={"PIPELINE_ALLOW_UNSAFE_KAFKA_PROPERTIES": raw})

    assert config.allow_unsafe_kafka_properties is expected


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("PIPELINE_MAX_BATCH_SIZE", "ten"),
        ("PIPELINE_MAX_BATCH_SIZE", "2.5"),
        ("PIPELINE_MAX_WAIT_MS", "fast"),
        ("PIPELINE_CREATE_TOPICS", "maybe"),
    ],
)
def test_a_bad_environment_value_names_the_variable(var: str, raw: str) -> None:
    message = error_of(lambda: load(env={var: raw}))

    assert var in message
    assert repr(raw) in message


def test_a_bad_int_names_the_setting_the_variable_and_the_value() -> None:
    message = error_of(lambda: load(env={"PIPELINE_MAX_BATCH_SIZE": "ten"}))

    assert message.startswith("max_batch_size from PIPELINE_MAX_BATCH_SIZE must be a")
    assert message.endswith("got 'ten'")


def test_file_keys_may_use_dashes_and_the_singular_input_topic(
    make_toml: Callable[[str], Path],
) -> None:
    path = make_toml('max-batch-size = 7\ninput_topic = "events"\ncreate-topics = false\n')

    config = load(config_file=path)

    assert (config.max_batch_size, config.input_topics, config.create_topics) == (
        7,
        ("events",),
        False,
    )


def test_file_strings_are_coerced_and_named_in_errors(make_toml: Callable[[str], Path]) -> None:
    good = make_toml('max_batch_size = "12"\nmodels = "/srv/m"\ninput_topics = "a,b"\n')
    bad = make_toml('max_batch_size = "twelve"\n')

    config = load(config_file=good)
    message = error_of(lambda: load(config_file=bad))

    assert (config.max_batch_size, config.models, config.input_topics) == (
        12,
        Path("/srv/m"),
        ("a", "b"),
    )
    assert str(bad) in message
    assert "'twelve'" in message


def test_an_unknown_file_key_lists_the_known_ones(make_toml: Callable[[str], Path]) -> None:
    path = make_toml("max_batchsize = 12\n")

    message = error_of(lambda: load(config_file=path))

    assert message.startswith(f"unknown setting 'max_batchsize' in {path}; known: ")
    known = message.split("known: ", 1)[1].split(", ")
    expected = sorted(f.name for f in dataclasses.fields(WorkerConfig) if f.name != "kafka")
    assert known == expected


def test_invalid_toml_names_the_file(make_toml: Callable[[str], Path]) -> None:
    path = make_toml("max_batch_size = = 3\n")

    with pytest.raises(ConfigError) as info:
        load(config_file=path)

    assert str(info.value).startswith(f"config file {path} is not valid TOML: ")
    assert isinstance(info.value.__cause__, tomllib.TOMLDecodeError)


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"

    message = error_of(lambda: load(config_file=path))

    assert message.startswith(f"cannot read config file {path}")


def test_a_kafka_key_that_is_not_a_table_is_refused(make_toml: Callable[[str], Path]) -> None:
    path = make_toml('kafka = "security.protocol=SSL"\n')

    message = error_of(lambda: load(config_file=path))

    assert message == f"[kafka] in {path} must be a table of librdkafka properties"


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_batch_size": True}, "max_batch_size must be an integer >= 1, got True"),
        ({"max_batch_size": 2.0}, "max_batch_size must be an integer >= 1, got 2.0"),
        ({"workers": 0}, "workers must be an integer >= 1, got 0"),
        ({"topic_partitions": -1}, "topic_partitions must be an integer >= 1, got -1"),
        ({"commit_interval_ms": 0}, "commit_interval_ms must be an integer >= 1, got 0"),
        (
            {"max_batch_size": 512, "max_in_flight": 100},
            "max_in_flight must be an integer >= 512, got 100",
        ),
        ({"max_wait_ms": -1}, "max_wait_ms must be a number from 0 to 60000, got -1"),
        ({"max_wait_ms": 60_001.0}, "max_wait_ms must be a number from 0 to 60000, got 60001.0"),
        ({"max_wait_ms": float("nan")}, "max_wait_ms must be a number from 0 to 60000, got nan"),
        ({"stats_interval_s": 0}, "stats_interval_s must be > 0, got 0"),
        (
            {"guarantee": "at-most-once"},
            "guarantee must be one of at-least-once, exactly-once, got 'at-most-once'",
        ),
        ({"offset_reset": "newest"}, "offset_reset must be earliest or latest, got 'newest'"),
        ({"input_topics": ()}, "at least one non-empty --input-topic is needed, got []"),
        (
            {"input_topics": ("a", "")},
            "at least one non-empty --input-topic is needed, got ['a', '']",
        ),
    ],
)
def test_validation_messages(settings: dict[str, object], message: str) -> None:
    assert error_of(lambda: WorkerConfig(**settings)) == message  # type: ignore[arg-type]


@pytest.mark.parametrize("max_wait_ms", [0, 0.0, 60_000])
def test_max_wait_ms_bounds_are_inclusive(max_wait_ms: float) -> None:
    assert WorkerConfig(max_wait_ms=max_wait_ms).max_wait_ms == max_wait_ms


@pytest.mark.parametrize(
    "settings",
    [
        {"input_topics": ("features", "predictions")},
        {"input_topics": ("scores",), "output_topic": "scores"},
        {"input_topics": ("predictions.dlq",)},
        {"input_topics": ("rejects",), "dlq_topic": "rejects"},
    ],
)
def test_an_input_topic_equal_to_an_output_topic_is_refused(settings: dict[str, object]) -> None:
    message = error_of(lambda: WorkerConfig(**settings))  # type: ignore[arg-type]

    assert "must differ from the input topics" in message
    assert "loop back" in message


def test_validation_applies_to_values_from_the_environment() -> None:
    message = error_of(lambda: load(env={"PIPELINE_MAX_BATCH_SIZE": "0"}))

    assert message == "max_batch_size must be an integer >= 1, got 0"


def test_an_input_topic_from_env_equal_to_the_output_from_flags_is_refused() -> None:
    message = error_of(
        lambda: load({"output_topic": "events"}, env={"PIPELINE_INPUT_TOPIC": "raw,events"})
    )

    assert "'events'" in message


def test_a_nan_stats_interval_is_refused() -> None:
    with pytest.raises(ConfigError, match="stats_interval_s"):
        load(env={"PIPELINE_STATS_INTERVAL_S": "nan"})


# -- -X properties and secret references --------------------------------------------------


def test_x_flags_split_at_the_first_equals_sign() -> None:
    props = parse_properties(["a=b=c", " security.protocol =SSL", "empty="])

    assert props == {"a": "b=c", "security.protocol": "SSL", "empty": ""}


@pytest.mark.parametrize("pair", ["no-equals-sign", "=value", "  =value", ""])
def test_x_flags_without_a_key_and_equals_sign_are_refused(pair: str) -> None:
    assert error_of(lambda: parse_properties([pair])) == f"-X takes key=value, got {pair!r}"


def test_x_flags_later_ones_win() -> None:
    assert parse_properties(["linger.ms=5", "linger.ms=50"]) == {"linger.ms": "50"}


def test_file_secret_references_are_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "sasl-password"
    secret.write_text("s3cr3t-from-file\n")

    props = parse_properties([f"sasl.password=file:{secret}"])

    assert props == {"sasl.password": "s3cr3t-from-file"}


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope"

    message = error_of(lambda: parse_properties([f"sasl.password=file:{missing}"]))

    assert message.startswith(f"cannot read secret file {missing}")


def test_env_secret_references_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Secret references read the process environment, so this test must set it.
    monkeypatch.setenv("PIPELINE_TEST_SASL_PASSWORD", "s3cr3t-from-env")

    props = parse_properties(["sasl.password=env:PIPELINE_TEST_SASL_PASSWORD"])

    assert props == {"sasl.password": "s3cr3t-from-env"}


def test_an_unset_env_secret_reference_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPELINE_TEST_UNSET", raising=False)

    message = error_of(lambda: parse_properties(["sasl.password=env:PIPELINE_TEST_UNSET"]))

    assert message == (
        "environment variable PIPELINE_TEST_UNSET named by a Kafka property is not set"
    )


def test_secret_references_in_the_file_kafka_table_are_resolved(
    tmp_path: Path, make_toml: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
    path = make_toml(
        "[kafka]\n"
        f'"ssl.key.pem" = "file:{key}"\n'
        '"sasl.password" = "env:PIPELINE_TEST_SASL_PASSWORD"\n'
    )

    config = load(config_file=path, env={"PIPELINE_TEST_SASL_PASSWORD": "s3cr3t-from-env"})

    assert dict(config.kafka) == {
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----",
        "sasl.password": "s3cr3t-from-env",
    }


def test_env_secret_references_in_the_file_use_the_given_environment(
    make_toml: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINE_TEST_SASL_PASSWORD", raising=False)
    path = make_toml('[kafka]\n"sasl.password" = "env:PIPELINE_TEST_SASL_PASSWORD"\n')

    config = load(env={"PIPELINE_TEST_SASL_PASSWORD": "s3cr3t"}, config_file=path)

    assert config.kafka["sasl.password"] == "s3cr3t"


# -- pass-through and redaction -----------------------------------------------------------


def test_sasl_and_tls_properties_pass_through_unchanged(make_toml: Callable[[str], Path]) -> None:
    path = make_toml(
        "[kafka]\n"
        '"security.protocol" = "SASL_SSL"\n'
        '"sasl.mechanism" = "PLAIN"\n'
        '"sasl.username" = "from-file"\n'
        '"enable.idempotence" = true\n'
        '"linger.ms" = 5\n'
    )
    flags = {"kafka": {**SECRET_PROPERTIES, "sasl.username": "alice"}}

    config = load(flags, config_file=path)

    assert dict(config.kafka) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "alice",  # the flag wins, key by key
        "enable.idempotence": "true",  # TOML booleans as librdkafka spells them
        "linger.ms": "5",
        **SECRET_PROPERTIES,
    }


def test_dotted_keys_in_the_kafka_table_are_properties_or_refused(
    make_toml: Callable[[str], Path],
) -> None:
    path = make_toml(
        '[kafka]\nsecurity.protocol = "SASL_SSL"\nsasl.username = "alice"\n'
        'sasl.password = "pw-1f0e"\n'
    )

    try:
        config = load(config_file=path)
    except ConfigError:
        return  # refusing nested tables would do as well
    assert "pw-1f0e" not in str(config.redacted)
    assert dict(config.kafka) == {
        "security.protocol": "SASL_SSL",
        "sasl.username": "alice",
        "sasl.password": "pw-1f0e",
    }


@pytest.mark.parametrize("key", sorted(SECRET_PROPERTIES))
def test_redact_masks_secret_properties(key: str) -> None:
    assert redact({key: SECRET_PROPERTIES[key]}) == {key: "***"}


@pytest.mark.parametrize("key", sorted(PLAIN_PROPERTIES))
def test_redact_shows_other_properties(key: str) -> None:
    assert redact({key: PLAIN_PROPERTIES[key]}) == {key: PLAIN_PROPERTIES[key]}


def test_redact_masks_the_oauthbearer_private_key_passphrase() -> None:
    key = "sasl.oauthbearer.assertion.private.key.passphrase"

    assert redact({key: "pp-0d1e"}) == {key: "***"}


def test_redacted_config_never_contains_a_secret_value() -> None:
    config = load({"kafka": {**SECRET_PROPERTIES, **PLAIN_PROPERTIES}})

    shown = config.redacted

    for value in SECRET_PROPERTIES.values():
        assert value not in str(shown)
        assert value not in repr(shown)
    assert shown["kafka"] == {
        **dict.fromkeys(SECRET_PROPERTIES, "***"),
        **PLAIN_PROPERTIES,
    }
    assert dict(config.kafka) == {**SECRET_PROPERTIES, **PLAIN_PROPERTIES}  # client gets them


def test_redacted_config_shows_every_setting() -> None:
    config = WorkerConfig(output_topic="scores")

    shown = config.redacted

    assert set(shown) == {f.name for f in dataclasses.fields(WorkerConfig)}
    assert shown["dlq_topic"] == "scores.dlq"
    assert shown["models"] == "models"


# -- unsafe properties --------------------------------------------------------------------


@pytest.mark.parametrize("key", ["plugin.library.paths", "sasl.kerberos.kinit.cmd"])
def test_unsafe_properties_are_refused_by_name(key: str) -> None:
    message = error_of(lambda: load({"kafka": {key: "/tmp/x"}}))

    assert repr(key) in message
    assert "--allow-unsafe-kafka-properties" in message


def test_all_unsafe_properties_are_named_sorted(make_toml: Callable[[str], Path]) -> None:
    path = make_toml('[kafka]\n"sasl.kerberos.kinit.cmd" = "kinit"\n')

    message = error_of(lambda: load({"kafka": {"plugin.library.paths": "x.so"}}, config_file=path))

    assert "['plugin.library.paths', 'sasl.kerberos.kinit.cmd']" in message


@pytest.mark.parametrize(
    "allow",
    [
        {"flags": {"allow_unsafe_kafka_properties": True}},
        {"env": {"PIPELINE_ALLOW_UNSAFE_KAFKA_PROPERTIES": "true"}},
    ],
    ids=["flag", "env"],
)
def test_unsafe_properties_are_allowed_when_asked(allow: dict[str, dict[str, object]]) -> None:
    unsafe = {"plugin.library.paths": "monitoring.so", "sasl.kerberos.kinit.cmd": "kinit -k"}
    flags = {**allow.get("flags", {}), "kafka": unsafe}

    config = load(flags, env=allow.get("env"))  # type: ignore[arg-type]

    assert dict(config.kafka) == unsafe


@pytest.mark.parametrize("key", ["ssl.engine.location", "ssl.providers"])
def test_properties_that_load_a_library_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load({"kafka": {key: "/tmp/evil.so"}})


@pytest.mark.parametrize("key", ["enable.auto.commit", "enable.auto.offset.store"])
def test_properties_that_would_break_at_least_once_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}.*offsets are committed only after"):
        load({"kafka": {key: "true"}})


@pytest.mark.parametrize("command", ["produce", "consume"])
def test_produce_and_consume_refuse_unsafe_properties_too(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    args = [command, "--bootstrap-servers", "127.0.0.1:1", "-X", "plugin.library.paths=x.so"]
    if command == "produce":
        args += ["--synthetic", "m", "--count", "1"]
    assert main(args) == 3  # a configuration error (pipeline.exitcodes.CONFIG)
    assert "plugin.library.paths" in capsys.readouterr().err


def test_pins_from_flags_env_and_file(make_toml: Callable[[str], Path]) -> None:
    assert load({"pins": ("a=1", "b=v2")}).pinned() == {"a": "1", "b": "v2"}
    assert load({}, env={"PIPELINE_PINS": "a=1, b=2"}).pinned() == {"a": "1", "b": "2"}
    assert load({}, config_file=make_toml('pins = ["c=3"]\n')).pinned() == {"c": "3"}
    with pytest.raises(ConfigError, match="--pin takes model=version"):
        load({"pins": ("a/../b=1",)})


@pytest.mark.parametrize(
    ("interval_ms", "kafka"),
    [(7_501, {}), (15_000, {}), (30_000, {}), (30_001, {"transaction.timeout.ms": "60000"})],
)
def test_exactly_once_refuses_a_commit_interval_over_half_the_transaction_timeout(
    interval_ms: int, kafka: dict[str, str]
) -> None:
    with pytest.raises(ConfigError, match=rf"--commit-interval-ms {interval_ms} .* at most half"):
        WorkerConfig(guarantee="exactly-once", commit_interval_ms=interval_ms, kafka=kafka)


@pytest.mark.parametrize(
    ("guarantee", "interval_ms", "kafka"),
    [
        ("exactly-once", 7_500, {}),
        ("exactly-once", 30_000, {"transaction.timeout.ms": "60000"}),
        ("at-least-once", 30_000, {}),
    ],
)
def test_a_commit_interval_within_half_the_transaction_timeout_is_taken(
    guarantee: str, interval_ms: int, kafka: dict[str, str]
) -> None:
    config = WorkerConfig(guarantee=guarantee, commit_interval_ms=interval_ms, kafka=kafka)
    assert config.commit_interval_ms == interval_ms


def test_a_share_group_refuses_the_consumer_group_properties_its_consumer_refuses() -> None:
    kafka = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1500", "linger.ms": "5"}
    with pytest.raises(ConfigError, match=r"\['heartbeat.interval.ms', 'session.timeout.ms'\]"):
        WorkerConfig(group_type="share", kafka=kafka)
    assert WorkerConfig(group_type="consumer", kafka=kafka).kafka == kafka


@pytest.mark.parametrize(
    ("flags", "env", "file", "expected"),
    [
        ({}, {}, "", "127.0.0.1:40001"),  # nothing given: the local broker
        ({"bootstrap_servers": "flag:1"}, {}, "", "flag:1"),
        ({}, {"KAFKA_BOOTSTRAP_SERVERS": "env:1"}, "", "env:1"),
        ({}, {"PIPELINE_BOOTSTRAP_SERVERS": "env:2"}, "", "env:2"),
        ({}, {}, 'bootstrap_servers = "file:1"\n', "file:1"),
    ],
)
def test_the_local_broker_is_used_only_where_nothing_names_the_bootstrap_servers(
    tmp_path: Path, flags: dict[str, object], env: dict[str, str], file: str, expected: str
) -> None:
    path = None
    if file:
        path = tmp_path / "pipeline.toml"
        path.write_text(file)
    config = load_config(flags, config_file=path, env=env, local_broker=lambda: "127.0.0.1:40001")
    assert config.bootstrap_servers == expected


def test_with_no_local_broker_running_the_default_stays() -> None:
    assert load_config({}, env={}, local_broker=lambda: None).bootstrap_servers == "127.0.0.1:9092"


def test_the_start_up_line_shows_where_and_what_differs_not_every_setting() -> None:
    """Issue 26 item 9: `worker starting with {...}` ran to 1,500 characters."""
    config = load_config({"input_topics": ("payments",), "max_batch_size": 64,
                          "kafka": {"sasl.password": "pw-1f0e"}}, env={})  # fmt: skip

    assert config.summary == {
        "bootstrap_servers": "127.0.0.1:9092",
        "input_topics": ("payments",),
        "output_topic": "predictions",
        "group_id": "pipeline",
        "max_batch_size": 64,
        "kafka": {"sasl.password": "***"},
    }
    assert len(str(config.summary)) < len(str(config.redacted)) // 4


def test_a_framed_value_format_needs_a_schema_registry_url() -> None:
    with pytest.raises(ConfigError, match="--value-format avro reads Schema Registry framed"):
        WorkerConfig(value_format="avro")
    with pytest.raises(ConfigError, match="--value-format protobuf reads Schema Registry"):
        WorkerConfig(value_format="protobuf")
    with pytest.raises(
        ConfigError, match="value_format must be one of json, avro, jsonschema, protobuf, auto"
    ):
        WorkerConfig(value_format="thrift", schema_registry_url="http://127.0.0.1:8081")
    config = WorkerConfig(value_format="auto", schema_registry_url="http://127.0.0.1:8081")
    assert config.value_format == "auto" and WorkerConfig().value_format == "json"


def test_registry_client_settings_are_masked_and_kept_from_librdkafka() -> None:
    from pipeline.kafka.clientlog import client_settings
    from pipeline.schemaregistry import registry_settings

    kafka = {
        "schema.registry.basic.auth.user.info": "user:secret-pw",
        "schema.registry.bearer.auth.token": "tok-7f3a9",
        "client.id": "me",
    }
    config = WorkerConfig(kafka=kafka)
    assert "secret-pw" not in repr(config) and "tok-7f3a9" not in str(config.redacted)
    assert redact(kafka)["schema.registry.basic.auth.user.info"] == "***"
    settings = client_settings("127.0.0.1:9092", kafka)
    assert not any(k.startswith("schema.registry.") for k in settings)
    assert settings["client.id"] == "me"
    assert registry_settings("http://r:8081", kafka) == {
        "basic.auth.user.info": "user:secret-pw",
        "bearer.auth.token": "tok-7f3a9",
        "url": "http://r:8081",
    }


def test_avro_predictions_need_a_schema_registry_url_and_a_known_subject_strategy() -> None:
    url = "http://127.0.0.1:8081"
    with pytest.raises(ConfigError, match=r"--output-format avro registers .* needs --schema-reg"):
        WorkerConfig(output_format="avro")
    with pytest.raises(
        ConfigError, match="must be one of json, avro, jsonschema, protobuf, got 'xml'"
    ):
        WorkerConfig(output_format="xml", schema_registry_url=url)
    with pytest.raises(ConfigError, match=r"--output-format jsonschema registers .* needs"):
        WorkerConfig(output_format="jsonschema")
    with pytest.raises(ConfigError, match="output_subject_strategy must be one of topic, rec"):
        WorkerConfig(output_format="avro", schema_registry_url=url, output_subject_strategy="x")
    config = WorkerConfig(output_format="avro", schema_registry_url=url)
    assert config.output_subject_strategy == "topic"
