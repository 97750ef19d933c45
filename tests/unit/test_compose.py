"""docker-compose.yml and the Dockerfile keep their promises, checked without a Docker engine.

Nothing here builds an image or starts a container. The tests read both files and hold them
against the code they configure: every `pipeline` command line goes through the real
argument parser, every ``PIPELINE_*`` variable through the real config loader, every model
name through the model store, and the broker's listeners, the topics, the bootstrap
addresses and the published ports against each other. What they cannot show is that the
images pull, the image builds, or the broker starts; that needs ``docker compose up``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from pipeline.cli import build_parser
from pipeline.config import (
    RESERVED_VARIABLES,
    ServeConfig,
    WorkerConfig,
    load_config,
    load_settings,
    setting_variables,
)
from pipeline.engine.models import ModelStore
from pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
BUILDERS = {service["image"]: name for name, service in SERVICES.items() if "build" in service}
# The services that run the image built here: the one that builds it, and those naming it.
BUILT = sorted(
    name
    for name, service in SERVICES.items()
    if "build" in service or service.get("image") in BUILDERS
)
BROKER = "kafka"  # the broker's service name, which is also its host name in the network
TOPICS = "topics"  # the one-shot service that creates the topics
PROFILE = "cluster"  # the profile of the three-node cluster
CLUSTER = sorted(  # its nodes
    name
    for name, service in SERVICES.items()
    if PROFILE in service.get("profiles", []) and name.startswith(f"{BROKER}-")
)
CLUSTER_TOPICS = "cluster-topics"  # the one-shot service that creates the topics on it
AVRO = "avro"  # the profile of the Schema Registry and the Avro worker and producer
REGISTRY = "schema-registry"  # its registry service, which is also its host name
LOOPBACK = "127.0.0.1"
# PIPELINE_* variables that are not settings but are still read by `pipeline`.
NON_SETTING_VARS = set(RESERVED_VARIABLES)


@dataclasses.dataclass
class Image:
    """What the last stage of a Dockerfile sets up, as far as these tests need it."""

    context: Path
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    copies: list[tuple[list[str], str]] = dataclasses.field(default_factory=list)
    entrypoint: list[str] = dataclasses.field(default_factory=list)
    cmd: list[str] = dataclasses.field(default_factory=list)
    user: str = "root"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """Return ``(KEYWORD, arguments)`` pairs, with continuation lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, arguments = (pending + text).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def _words(arguments: str) -> list[str]:
    """Split exec form (a JSON list) or shell form."""
    return list(json.loads(arguments)) if arguments.startswith("[") else shlex.split(arguments)


def _image(service: Mapping[str, Any]) -> Image:
    if "build" not in service:  # runs the image another service builds
        service = SERVICES[BUILDERS[service["image"]]]
    build = service["build"]
    if isinstance(build, str):
        context, dockerfile = REPO / build, "Dockerfile"
    else:
        context, dockerfile = (
            REPO / build.get("context", "."),
            build.get("dockerfile", "Dockerfile"),
        )
    image = Image(context=context)
    workdir = PurePosixPath("/")
    for keyword, arguments in _instructions(context / dockerfile):
        if keyword == "FROM":
            image = Image(context=context)  # only the last stage becomes the image
            workdir = PurePosixPath("/")
        elif keyword == "WORKDIR":
            workdir = workdir / arguments
        elif keyword == "ENV":
            words = shlex.split(arguments)
            if "=" not in words[0]:  # the legacy `ENV KEY value` form
                image.env[words[0]] = " ".join(words[1:])
            else:
                image.env.update(word.split("=", 1) for word in words)
        elif keyword in ("COPY", "ADD"):
            words = _words(arguments)
            if any(word.startswith("--from") for word in words):
                continue
            paths = [word for word in words if not word.startswith("--")]
            image.copies.append((paths[:-1], str(workdir / paths[-1]).rstrip("/")))
        elif keyword == "ENTRYPOINT":
            image.entrypoint = _words(arguments)
        elif keyword == "CMD":
            image.cmd = _words(arguments)
        elif keyword == "USER":
            image.user = arguments
    return image


def _environment(
    service: Mapping[str, Any], host: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables a container of `service` sees: its image's, then the service's own,
    with ``${VAR}`` interpolated from `host` (the shell running compose; empty by default).
    Empty values are dropped: pipeline ignores an empty variable."""
    env = (
        dict(_image(service).env) if service.get("image") in BUILDERS or "build" in service else {}
    )
    declared = service.get("environment") or {}
    if isinstance(declared, list):
        pairs = (item.partition("=") for item in declared)
        declared = {key: value if sep else None for key, sep, value in pairs}
    for key, value in declared.items():
        if value is None:  # `KEY:` with no value passes the host's KEY through, if set
            continue
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[key] = _interpolate(text, host or {})
    return {key: value for key, value in env.items() if value}


def _interpolate(text: str, host: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+alternative}``."""

    def one(match: re.Match[str]) -> str:
        name, op, word = match.group(1), match.group(2), match.group(3) or ""
        value = host.get(name, "")
        if op == ":-":
            return value or word
        if op == ":+":
            return word if value else ""
        return value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-+])([^}]*))?\}", one, text)


def _argv(service: Mapping[str, Any]) -> list[str]:
    """The arguments `pipeline` gets in a container of `service` (a service built here)."""
    command = service.get("command")
    if command is None:
        return _image(service).cmd
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def parse_or_fail(argv: list[str], where: str) -> argparse.Namespace:
    """Parse `argv` with pipeline's own parser, or fail saying `where` runs what it refuses."""
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            return build_parser().parse_args(argv)
    except SystemExit:
        reason = message.getvalue().strip().rpartition("\n")[2]
        pytest.fail(
            f"{where} runs `pipeline {shlex.join(argv)}`, which pipeline's argument parser "
            f"refuses: {reason}"
        )


def _parse(name: str) -> argparse.Namespace:
    """Parse service `name`'s arguments with pipeline's own parser, or fail saying why."""
    return parse_or_fail(_argv(SERVICES[name]), f"service {name!r}")


def _settings_by_variable() -> dict[str, str]:
    """Map each environment variable the config loader reads to its settings field."""
    names = {f.name for cls in (WorkerConfig, ServeConfig) for f in dataclasses.fields(cls)}
    return {v: n for n in names - {"kafka"} for v in setting_variables(n)}


def _run_config(name: str, host: Mapping[str, str] | None = None) -> WorkerConfig:
    """The settings the worker of service `name` would start with, or fail saying why."""
    args = _parse(name)
    settings = set(_settings_by_variable().values())
    flags: dict[str, object] = {k: v for k, v in vars(args).items() if k in settings}
    if "input_topics" in flags:
        flags["input_topics"] = tuple(args.input_topics)
    try:
        return load_config(flags, env=_environment(SERVICES[name], host))
    except PipelineError as exc:
        pytest.fail(f"service {name!r}: pipeline refuses its settings: {exc}")


def _services_running(subcommand: str) -> list[str]:
    """Services whose pipeline command is `subcommand` (a `--print-config` check is not)."""
    return [
        name
        for name in BUILT
        if _argv(SERVICES[name])[:1] == [subcommand]
        and "--print-config" not in _argv(SERVICES[name])
    ]


def _profiles(name: str) -> set[str]:
    """The profiles service `name` belongs to (none: the default stack)."""
    return set(SERVICES[name].get("profiles", []))


def _ports(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Published ports as ``(host_ip, host_port, container_port)``; ``""`` when unset."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append(
                (
                    str(port.get("host_ip", "")),
                    str(port.get("published", "")),
                    str(port["target"]),
                )
            )
            continue
        parts = str(port).split("/")[0].rsplit(":", 2)
        host_ip = parts[0].strip("[]") if len(parts) == 3 else ""
        host_port = parts[-2] if len(parts) >= 2 else ""
        found.append((host_ip, host_port, parts[-1]))
    return found


def _listeners(variable: str, broker: str = BROKER) -> dict[str, tuple[str, str]]:
    """Parse a broker listener list into ``{name: (host, port)}``."""
    value = _environment(SERVICES[broker])[variable]
    found = {}
    for listener in value.split(","):
        name, _, address = listener.partition("://")
        host, _, port = address.rpartition(":")
        found[name] = (host, port)
    return found


def _kafka_topics_calls(name: str) -> list[argparse.Namespace]:
    """The ``kafka-topics.sh`` invocations in service `name`'s command, parsed."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--bootstrap-server", "--topic", "--partitions", "--replication-factor"):
        parser.add_argument(flag)
    for flag in ("--create", "--if-not-exists"):
        parser.add_argument(flag, action="store_true")
    command = SERVICES[name]["command"]
    script = command if isinstance(command, str) else "\n".join(map(str, command))
    return [
        parser.parse_known_args(shlex.split(line.split("kafka-topics.sh", 1)[1]))[0]
        for line in script.splitlines()
        if "kafka-topics.sh" in line
    ]


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore leaves `path` (relative, with /) out of the build context.

    Follows Docker's rules closely enough for a check: the last matching pattern wins, a
    pattern matching a directory excludes everything in it, ``!`` re-includes. Here ``*``
    also crosses ``/``, so this errs towards reporting a file as left out.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        pattern = raw.removeprefix("!").strip().strip("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            ignored = not raw.startswith("!")
    return ignored


def _model_store(name: str, container_path: Path) -> ModelStore:
    """The repository directory the image of service `name` copies to `container_path`."""
    image = _image(SERVICES[name])
    for sources, destination in image.copies:
        if destination == str(container_path) and len(sources) == 1:
            return ModelStore(image.context / sources[0])
    pytest.fail(
        f"service {name!r} reads models from {container_path}, but its Dockerfile copies "
        f"nothing there (copies: {image.copies})"
    )


@pytest.mark.parametrize("name", sorted(BUILDERS.values()))
def test_build_context_and_dockerfile_exist(name: str) -> None:
    build = SERVICES[name]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    assert (REPO / context).is_dir(), f"service {name!r}: build context {context} is missing"
    assert (REPO / context / dockerfile).is_file(), f"service {name!r}: no {dockerfile}"


@pytest.mark.parametrize("name", BUILT)
def test_dockerfile_copies_files_that_exist_and_reach_the_build_context(name: str) -> None:
    image = _image(SERVICES[name])
    ignore = image.context / ".dockerignore"
    patterns = [
        line.strip()
        for line in (ignore.read_text().splitlines() if ignore.is_file() else [])
        if line.strip() and not line.strip().startswith("#")
    ]
    assert image.copies, "the Dockerfile copies nothing"
    for sources, _ in image.copies:
        for source in sources:
            path = image.context / source
            assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(image.context).as_posix()
                if "__pycache__" in file.parts or file.suffix == ".pyc":
                    continue
                assert not _dockerignored(relative, patterns), (
                    f"{relative} is copied into the image but .dockerignore leaves it out"
                )


@pytest.mark.parametrize("name", BUILT)
def test_image_runs_the_pipeline_command_as_a_non_root_user(name: str) -> None:
    image = _image(SERVICES[name])
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert image.entrypoint == ["pipeline"], f"ENTRYPOINT is {image.entrypoint}"
    assert scripts["pipeline"] == f"{build_parser.__module__}:main"
    assert image.cmd == ["run"], f"CMD is {image.cmd}"
    assert _argv(SERVICES[name])[0] in {"run", "serve", "produce", "consume"}
    assert image.user.split(":")[0] not in ("root", "0"), f"the image runs as {image.user!r}"
    assert "entrypoint" not in SERVICES[name], (
        f"service {name!r} replaces the `pipeline` entrypoint, so its command is not checked"
    )


@pytest.mark.parametrize("name", BUILT)
def test_command_is_accepted_by_the_cli(name: str) -> None:
    _parse(name)


@pytest.mark.parametrize("name", BUILT)
def test_pipeline_variables_name_real_settings(name: str) -> None:
    known = set(_settings_by_variable()) | NON_SETTING_VARS
    env = _environment(SERVICES[name])
    unknown = sorted(var for var in env if var.startswith("PIPELINE_") and var not in known)
    assert not unknown, (
        f"service {name!r} sets {unknown}, which pipeline never reads; "
        f"the settings are {sorted(known)}"
    )


@pytest.mark.parametrize("name", _services_running("run"))
def test_worker_settings_load_and_name_an_existing_model(name: str) -> None:
    config = _run_config(name)
    store = _model_store(name, config.models)
    if config.default_model:
        store.latest(config.default_model)  # raises ModelNotFoundError if there is none


@pytest.mark.parametrize("name", _services_running("produce"))
def test_producer_feeds_a_worker_a_model_it_has(name: str) -> None:
    """Every worker that starts with a producer (the same profiles) reads what it writes."""
    args = _parse(name)
    workers = [w for w in _services_running("run") if _profiles(w) == _profiles(name)]
    assert workers, f"nothing that starts with {name!r} runs `pipeline run`"
    for worker in workers:
        config = _run_config(worker)
        assert args.topic in config.input_topics, (
            f"{name!r} produces to {args.topic!r}; {worker!r} reads {config.input_topics}"
        )
        if args.synthetic:
            _model_store(worker, config.models).latest(args.synthetic)


def test_workers_wait_for_a_healthy_broker_and_can_scale() -> None:
    assert "healthcheck" in SERVICES[BROKER], "service_healthy needs a broker healthcheck"
    for name in _services_running("run"):
        service = SERVICES[name]
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name!r}: depends_on needs conditions"
        assert depends.get(BROKER, {}).get("condition") == "service_healthy", (
            f"{name!r} does not wait for a healthy broker"
        )
        assert depends.get(TOPICS, {}).get("condition") == "service_completed_successfully"
        assert "container_name" not in service, f"{name!r} has a fixed name: cannot scale"
        fixed = [port for port in _ports(service) if port[1]]
        assert not fixed, f"{name!r} publishes fixed host ports {fixed}: cannot scale"


def test_published_ports_listen_on_loopback_only() -> None:
    for name, service in SERVICES.items():
        for host_ip, host_port, target in _ports(service):
            assert host_ip == LOOPBACK, (
                f"service {name!r} publishes {host_port or '?'}:{target} on "
                f"{host_ip or 'every interface'}; bind it to {LOOPBACK}"
            )


def test_broker_is_apache_kafka_4() -> None:
    image = SERVICES[BROKER]["image"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", image), f"broker image is {image}"
    assert SERVICES[TOPICS]["image"] == image, "the topics service uses another Kafka image"


def _check_listeners(broker: str) -> None:
    """The broker's listeners, advertised addresses, own quorum vote, published ports and
    healthcheck agree with each other."""
    env = _environment(SERVICES[broker])
    listeners = _listeners("KAFKA_LISTENERS", broker)
    advertised = _listeners("KAFKA_ADVERTISED_LISTENERS", broker)
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert set(listeners) <= set(protocols), f"listeners without a protocol: {protocols}"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert controller in listeners and controller not in advertised
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert f"{env['KAFKA_NODE_ID']}@{broker}:{listeners[controller][1]}" in voters, voters
    published = {(host_port, target) for _ip, host_port, target in _ports(SERVICES[broker])}
    for name, (host, port) in advertised.items():
        assert name in listeners and listeners[name][1] == port, f"{name} is advertised on {port}"
        if host in ("localhost", LOOPBACK):  # for clients on the host: must be published
            assert (port, port) in published, f"{name} advertises {host}:{port}, not published"
        else:
            assert host == broker, f"{name} advertises {host}, not reachable in the network"
    health = " ".join(SERVICES[broker]["healthcheck"]["test"])
    probe = re.search(r"--bootstrap-server\s+localhost:(\d+)", health)
    assert probe and probe.group(1) in {port for _, port in listeners.values()}


def test_broker_listeners_are_consistent() -> None:
    _check_listeners(BROKER)
    voters = _environment(SERVICES[BROKER])["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert len(voters.split(",")) == 1, f"the single broker is its own quorum, not {voters}"


def test_clients_bootstrap_from_the_internal_listener() -> None:
    internal = {
        f"{host}:{port}"
        for host, port in _listeners("KAFKA_ADVERTISED_LISTENERS").values()
        if host == BROKER
    }
    used = {name: _run_config(name).bootstrap_servers for name in _services_running("run")}
    for name in _services_running("produce") + _services_running("consume"):
        env = _environment(SERVICES[name])
        used[name] = _parse(name).bootstrap_servers or env.get("KAFKA_BOOTSTRAP_SERVERS", "")
    used[TOPICS] = ",".join(call.bootstrap_server for call in _kafka_topics_calls(TOPICS))
    used["kafka-ui"] = _environment(SERVICES["kafka-ui"])["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"]
    for name, servers in used.items():
        assert servers and set(servers.split(",")) <= internal, (
            f"service {name!r} bootstraps from {servers!r}; the broker advertises {internal}"
        )


def test_topics_service_creates_what_the_workers_use() -> None:
    calls = _kafka_topics_calls(TOPICS)
    assert calls and all(c.create and c.if_not_exists for c in calls), (
        "use --create --if-not-exists"
    )
    created = {call.topic: int(call.partitions) for call in calls}
    assert all(count >= 1 for count in created.values()), f"partitions: {created}"
    used: set[str] = set()
    for name in _services_running("run"):
        config = _run_config(name)
        own = {*config.input_topics, config.output_topic, config.dlq_topic}
        assert own <= set(created), f"{TOPICS!r} creates {sorted(created)}; {name!r} uses {own}"
        used |= own
    assert used == set(created), f"{TOPICS!r} creates {sorted(set(created) - used)} for nobody"


# -- the `cluster` profile: three nodes ---------------------------------------------------


def test_the_cluster_profile_has_three_kafka_nodes_of_one_image() -> None:
    assert CLUSTER == ["kafka-1", "kafka-2", "kafka-3"], CLUSTER
    images = {SERVICES[name]["image"] for name in [*CLUSTER, CLUSTER_TOPICS]}
    assert len(images) == 1, f"the cluster services use several images: {images}"
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", images.pop())
    assert SERVICES[CLUSTER_TOPICS].get("profiles") == [PROFILE]


def test_the_default_stack_leaves_the_profiles_out() -> None:
    """A service starts with a profile's services only if it is in that profile too."""
    for name, service in SERVICES.items():
        for dependency in service.get("depends_on", {}):
            assert _profiles(dependency) <= _profiles(name), (
                f"{name!r} (profiles {sorted(_profiles(name))}) depends on {dependency!r}, "
                f"which starts only with {sorted(_profiles(dependency))}"
            )


@pytest.mark.parametrize("name", CLUSTER)
def test_cluster_node_listeners_are_consistent(name: str) -> None:
    _check_listeners(name)


def test_cluster_nodes_form_one_quorum_of_one_cluster() -> None:
    envs = {name: _environment(SERVICES[name]) for name in CLUSTER}
    ids = sorted(int(env["KAFKA_NODE_ID"]) for env in envs.values())
    assert ids == [1, 2, 3], f"node ids {ids}"
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert len(voters) == 1, f"the nodes disagree on the quorum: {voters}"
    named = {vote.split("@")[1].split(":")[0] for vote in voters.pop().split(",")}
    assert named == set(CLUSTER), f"the quorum names {named}"
    cluster_ids = {env.get("CLUSTER_ID") for env in envs.values()}
    assert len(cluster_ids) == 1, f"the nodes would format different clusters: {cluster_ids}"
    cluster_id = cluster_ids.pop() or ""
    # StorageTool takes an id starting with "-" for an option; 22 characters of URL-safe
    # base64 are one UUID.
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id), cluster_id


def test_cluster_replicates_three_times_and_writes_need_two_in_sync() -> None:
    for name in CLUSTER:
        env = _environment(SERVICES[name])
        for variable in (
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
            "KAFKA_DEFAULT_REPLICATION_FACTOR",
        ):
            assert env.get(variable) == "3", f"{name}: {variable}={env.get(variable)}"
        for variable in (
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR",
            "KAFKA_MIN_INSYNC_REPLICAS",
        ):
            assert env.get(variable) == "2", f"{name}: {variable}={env.get(variable)}"
        assert env.get("KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE") == "false", name


def test_cluster_topics_are_the_workers_own_replicated_on_the_cluster() -> None:
    calls = _kafka_topics_calls(CLUSTER_TOPICS)
    command = SERVICES[CLUSTER_TOPICS]["command"]
    script = command if isinstance(command, str) else "\n".join(map(str, command))
    internal = {
        f"{host}:{port}"
        for name in CLUSTER
        for host, port in _listeners("KAFKA_ADVERTISED_LISTENERS", name).values()
        if host == name
    }
    assert calls and all(c.create and c.if_not_exists for c in calls)
    for call in calls:
        assert set(call.bootstrap_server.split(",")) == internal, call.bootstrap_server
        assert call.replication_factor == "3", f"{call.topic}: RF {call.replication_factor}"
    assert script.count("--config min.insync.replicas=2") == len(calls), script
    json_worker = _run_config("worker")  # the cluster runs the default worker's topics
    own = {*json_worker.input_topics, json_worker.output_topic, json_worker.dlq_topic}
    assert {c.topic for c in calls} == own
    depends = SERVICES[CLUSTER_TOPICS]["depends_on"]
    assert {name: d["condition"] for name, d in depends.items()} == dict.fromkeys(
        CLUSTER, "service_healthy"
    )


# -- one image, models, shutdown, serve, doors, sizing ---------------------------------------

CHECK = "config-check"  # builds the image and validates the workers' settings
SERVE = "serve"


def _seconds(duration: str) -> float:
    """A compose duration (``35s``, ``1m30s``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def test_one_image_is_built_once_and_run_by_every_pipeline_service() -> None:
    assert list(BUILDERS.values()) == [CHECK], f"services building an image: {BUILDERS}"
    (image,) = BUILDERS
    for name in BUILT:
        service = SERVICES[name]
        assert service["image"] == image, f"{name!r} runs {service.get('image')}"
        if name != CHECK:
            assert "build" not in service, f"{name!r} builds the image again"
            assert service.get("pull_policy") == "never", f"{name!r} would pull {image}"
            depends = service.get("depends_on", {})
            assert depends.get(CHECK, {}).get("condition") == "service_completed_successfully"


def test_the_config_check_validates_the_workers_settings_once() -> None:
    """Every worker starts with the environment the check validated; one that differs (the
    Avro worker) does so only by its flags, which the parser checks at its start."""
    check = SERVICES[CHECK]
    assert _argv(check) == ["run", "--print-config"]
    assert check.get("restart") == "no"
    checked = _run_config(CHECK)
    for name in _services_running("run"):
        assert SERVICES[name]["environment"] == check["environment"], name
        flags = {k: v for k, v in vars(_parse(name)).items() if v is not None}
        expected = dataclasses.replace(
            checked, **{f.name: getattr(_run_config(name), f.name)
                        for f in dataclasses.fields(WorkerConfig) if f.name in flags},
        )  # fmt: skip
        assert _run_config(name) == expected, f"{name!r} differs beyond its flags"


def test_a_bad_worker_setting_stops_the_check_with_exit_3() -> None:
    from pipeline.cli import main

    env = {**_environment(SERVICES[CHECK]), "PIPELINE_MAX_BATCH_SIZ": "512"}
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("PIPELINE_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(_argv(SERVICES[CHECK]))
    assert code == 3


@pytest.mark.parametrize("name", [*_services_running("run"), *_services_running("serve")])
def test_the_model_store_is_mounted_for_hot_reload(name: str) -> None:
    models = _environment(SERVICES[name])["PIPELINE_MODELS"]
    mounts = [v.split(":") for v in SERVICES[name].get("volumes", [])]
    assert ["./models", models, "ro"] in mounts, f"{name!r} mounts {mounts}"
    assert (REPO / "models").is_dir()


def test_the_stop_grace_periods_cover_the_shutdown_bounds() -> None:
    from pipeline.kafka import committer, transactions, worker
    from pipeline.serve import server

    bound = committer.DRAIN_TIMEOUT_S + transactions.STEP_TIMEOUT_S + worker._CLOSE_TIMEOUT_S
    for name in _services_running("run"):
        grace = _seconds(SERVICES[name]["stop_grace_period"])
        assert bound < grace <= bound + 10, f"{name!r}: {grace} s for a {bound} s shutdown"
    grace = _seconds(SERVICES[SERVE]["stop_grace_period"])
    assert server._GRACE_S < grace <= server._GRACE_S + 10


def test_the_serve_service_serves_a_model_it_has_on_both_ports() -> None:
    service = SERVICES[SERVE]
    assert _argv(service)[0] == "serve"
    args = _parse(SERVE)
    flags = {k: v for k, v in vars(args).items() if k in _settings_by_variable().values()}
    settings = load_settings(ServeConfig, flags, env=_environment(service))
    assert settings.host == "0.0.0.0", "inside a container the doors must listen on all"
    published = {(target, host_port) for _ip, host_port, target in _ports(service)}
    assert published == {
        (str(settings.http_port), str(settings.http_port)),
        (str(settings.grpc_port), str(settings.grpc_port)),
    }
    assert settings.default_model
    _model_store(SERVE, settings.models).latest(settings.default_model)
    assert str(service.get("restart", "")).startswith("on-failure:"), "bounded retries"


def test_the_workers_doors_are_off_unless_asked_for() -> None:
    for name in _services_running("run"):
        off = _run_config(name)
        assert (off.http_port, off.grpc_port) == (0, 0)
        on = _run_config(name, {"WORKER_DOORS": "1"})
        assert (on.http_port, on.grpc_port) == (8080, 50051) and on.host == "0.0.0.0"
        targets = {target for _ip, _host, target in _ports(SERVICES[name])}
        assert targets == {"8080", "50051"}


def test_the_sizing_note_quotes_the_benchmark() -> None:
    bench = (REPO / "docs" / "bench.md").read_text()
    row = re.search(r"^\| pipeline run, 1 process \|.*$", bench, re.M)
    assert row, "docs/bench.md has no 'pipeline run, 1 process' row"
    header = [line for line in bench[: row.start()].splitlines() if line.startswith("| contender")][
        -1
    ]
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(columns, (c.strip() for c in row.group(0).strip("|").split("|")), strict=True))
    cpu, rss = float(cells["CPU s / 100k events"]), int(cells["peak RSS MiB"])
    largest = re.search(r"largest (\d+) MiB", bench)
    assert largest
    note = " ".join(line.lstrip("# ") for line in COMPOSE_TEXT.splitlines()[:40])
    assert f"about {cpu:.1f} CPU seconds per 100,000 events" in note, note
    assert f"about {round(rss, -1):.0f} MiB of memory per worker process" in note
    assert f"peak {largest.group(1)} MiB" in note
    partitions = {int(call.partitions) for call in _kafka_topics_calls(TOPICS)}
    assert partitions == {4} and "partitions (4" in note


def test_the_tls_overlay_gives_serve_real_settings_from_files_it_mounts() -> None:
    overlay = yaml.safe_load((REPO / "docker-compose.tls.yml").read_text())
    assert set(overlay["services"]) == {SERVE, "prometheus"}, "the doors and their scrape"
    service = overlay["services"][SERVE]
    env = {
        **_environment(SERVICES[SERVE]),
        **{k: str(v) for k, v in service["environment"].items()},
    }
    args = _parse(SERVE)
    flags = {k: v for k, v in vars(args).items() if k in _settings_by_variable().values()}
    settings = load_settings(ServeConfig, flags, env=env)
    assert settings.tls_cert and settings.tls_key and settings.auth_token_file
    mounts = {PurePosixPath(target): (source, mode) for source, target, mode
              in (v.split(":") for v in service["volumes"])}  # fmt: skip
    for path in (settings.tls_cert, settings.tls_key, settings.auth_token_file):
        source, mode = mounts[PurePosixPath(path).parent]
        assert (source, mode) == ("./certs", "ro"), path
    assert "certs/" in (REPO / ".gitignore").read_text().split()
    assert "certs" in (REPO / ".dockerignore").read_text().split()


def test_the_tls_overlay_scrapes_serve_over_https_with_the_mounted_ca() -> None:
    overlay = yaml.safe_load((REPO / "docker-compose.tls.yml").read_text())
    mounts = {target: source for source, target, _mode in
              (v.split(":") for v in overlay["services"]["prometheus"]["volumes"])}  # fmt: skip
    base_mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"]}
    config_target = next(t for t, src in base_mounts.items() if src.endswith("prometheus.yml"))
    config = yaml.safe_load((REPO / mounts[config_target]).read_text())  # replaces the plain one
    plain = yaml.safe_load((REPO / base_mounts[config_target]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    serve_job = jobs["pipeline-serve"]
    assert serve_job["scheme"] == "https"
    assert mounts[serve_job["tls_config"]["ca_file"]] == "./certs/ca.crt"
    assert {k: v for k, v in serve_job.items() if k not in ("scheme", "tls_config")} == next(
        job for job in plain["scrape_configs"] if job["job_name"] == "pipeline-serve"
    )
    assert [j for j in config["scrape_configs"] if j["job_name"] != "pipeline-serve"] == [
        j for j in plain["scrape_configs"] if j["job_name"] != "pipeline-serve"
    ]
    if shutil.which("promtool"):
        with tempfile.TemporaryDirectory() as tmp:  # promtool checks that the CA file exists
            ca = Path(tmp) / "ca.crt"
            ca.write_text("")
            config["scrape_configs"] = [
                {**j, "tls_config": {"ca_file": str(ca)}} if "tls_config" in j else j
                for j in config["scrape_configs"]
            ]
            checked_path = Path(tmp) / "prometheus.yml"
            checked_path.write_text(yaml.safe_dump(config))
            checked = subprocess.run(["promtool", "check", "config", str(checked_path)],
                                     capture_output=True, text=True, timeout=60)  # fmt: skip
            assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the `avro` profile: a Schema Registry, an Avro worker and producer ----------------------


def test_the_avro_profile_runs_the_registry_the_local_one_is() -> None:
    from pipeline.dev.localregistry import APICURIO_VERSION

    registry = SERVICES[REGISTRY]
    assert _profiles(REGISTRY) == {AVRO}
    assert registry["image"] == f"apicurio/apicurio-registry:{APICURIO_VERSION}"
    (port,) = {target for _ip, _host, target in _ports(registry)}
    probe = " ".join(registry["healthcheck"]["test"])
    assert f"/dev/tcp/127.0.0.1/{port}" in probe and "/health/ready" in probe, probe


@pytest.mark.parametrize("name", ["worker-avro", "producer-avro"])
def test_the_avro_services_speak_avro_through_the_profiles_registry(name: str) -> None:
    args = _parse(name)
    (port,) = {target for _ip, _host, target in _ports(SERVICES[REGISTRY])}
    assert _profiles(name) == {AVRO}
    assert args.value_format == "avro"
    assert args.schema_registry_url == f"http://{REGISTRY}:{port}/apis/ccompat/v7"
    condition = SERVICES[name]["depends_on"][REGISTRY]["condition"]
    assert condition == "service_healthy", f"{name!r} would start before the registry answers"


def test_the_avro_worker_writes_avro_and_the_producer_sends_the_event_contract() -> None:
    from pipeline.dev.tools import feature_event_schema

    avro = _run_config("worker-avro")
    assert avro.output_format == "avro"
    assert avro.group_id != _run_config("worker").group_id, "one group, two subscriptions"
    schema = PurePosixPath(_parse("producer-avro").schema)
    mounts = {
        PurePosixPath(container): host
        for host, container, *_ in (v.split(":") for v in SERVICES["producer-avro"]["volumes"])
    }
    assert schema.parent in mounts, f"--schema {schema} is in no mounted directory: {mounts}"
    on_host = REPO / mounts[schema.parent] / schema.name
    assert json.loads(on_host.read_text()) == feature_event_schema()
