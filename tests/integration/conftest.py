"""A real Kafka broker for the integration tests, and factories for fresh topics and groups.

The broker is chosen once per session, in this order:
1. an existing cluster named by KAFKA_BOOTSTRAP_SERVERS;
2. a testcontainers Kafka container, if a Docker engine answers;
3. the project's own local broker (`pipeline kafka start`), on a free port in a temp dir.
No test of the Kafka path runs against a mock or an in-process fake.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from pipeline.dev.localkafka import LocalKafka
from pipeline.dev.localregistry import LocalRegistry, missing_tools

from .kafkaio import WorkerProcess, free_port


def _docker_answers() -> bool:
    """True if a Docker engine answers `GET /_ping` on its socket within 3 s."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://") or not Path(host[len("unix://") :]).exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect(host[len("unix://") :])
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
        except OSError:
            return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real broker for this test session."""
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield existing
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka"))
    info, _ = broker.start(port=free_port())
    try:
        yield info.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def registry(schema_registry_url: str) -> Iterator[SchemaRegistryClient]:
    """A client of the session's Schema Registry."""
    with SchemaRegistryClient({"url": schema_registry_url}) as client:
        yield client


def framer(serializer: Callable[..., bytes | None], topic: str) -> Callable[[Any], bytes]:
    """Frame values for `topic` with a Schema Registry serializer of confluent-kafka's
    (AvroSerializer, JSONSerializer): the producers users run."""
    ctx = SerializationContext(topic, MessageField.VALUE)

    def frame(value: Any) -> bytes:
        framed = serializer(value, ctx)
        assert framed is not None
        return framed

    return frame


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Schema Registry (its Confluent-compatible API) for this test session.

    SCHEMA_REGISTRY_URL names an existing one; otherwise the project's own local registry
    (`pipeline schema-registry start`) runs on a free port in a temp dir, started by the
    first test that asks for it. Skipped where Java 17+ (or Maven, before the server is
    fetched) is missing.
    """
    existing = os.environ.get("SCHEMA_REGISTRY_URL")
    if existing:
        yield existing
        return
    missing = missing_tools()
    if missing is not None:
        pytest.skip(f"no Schema Registry for this test: {missing}")
    registry = LocalRegistry(tmp_path_factory.mktemp("registry"))
    info, _ = registry.start(port=free_port())
    try:
        yield info.url
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def make_topic(kafka_admin: AdminClient) -> Iterator[Callable[..., str]]:
    """Factory: create a fresh topic with N partitions; deleted after the test."""
    created: list[str] = []

    def make(prefix: str = "t", *, partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = kafka_admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30)
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        with contextlib.suppress(Exception):
            for future in kafka_admin.delete_topics(created, operation_timeout=30).values():
                future.result(timeout=30)


@pytest.fixture
def make_group() -> Callable[[], str]:
    """Factory: a fresh consumer group id."""
    return lambda: f"g-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


@dataclass
class Pipeline:
    """Topics and a group for one test's worker(s)."""

    bootstrap: str
    input: str
    output: str
    dlq: str
    group: str
    models: Path
    log_dir: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    def args(self, *extra: str) -> list[str]:
        return [
            "--bootstrap-servers", self.bootstrap, "--input-topic", self.input,
            "--output-topic", self.output, "--dlq-topic", self.dlq, "--group-id", self.group,
            "--models", str(self.models), "--stats-interval-s", "1", *extra,
        ]  # fmt: skip

    def start_worker(self, *extra: str, env: dict[str, str] | None = None) -> WorkerProcess:
        worker = WorkerProcess(
            self.args(*extra), self.log_dir / f"worker-{len(self.workers)}.log", env=env
        )
        self.workers.append(worker)
        return worker


@pytest.fixture
def make_pipeline(
    kafka_bootstrap: str,
    make_topic: Callable[..., str],
    make_group: Callable[[], str],
    repo_root: Path,
    tmp_path: Path,
) -> Iterator[Callable[..., Pipeline]]:
    """Factory: fresh input/output/DLQ topics and group; stops its workers after the test."""
    made: list[Pipeline] = []

    def make(*, partitions: int = 4, models: Path | None = None) -> Pipeline:
        pipeline = Pipeline(
            bootstrap=kafka_bootstrap,
            input=make_topic("in", partitions=partitions),
            output=make_topic("out", partitions=partitions),
            dlq=make_topic("dlq", partitions=1),
            group=make_group(),
            models=models or repo_root / "models",
            log_dir=tmp_path,
        )
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        for worker in pipeline.workers:
            worker.__exit__()  # kills a worker left running and closes its log either way
