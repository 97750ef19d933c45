"""The README's Java and Go producers, built from examples/producers/ and run against the
real broker while `pipeline run` works: every event they send is predicted, as JSON text
and, with the real Schema Registry, as framed Avro values (`--value-format avro`).

Java: Maven resolves kafka-clients 4.1.1 and its runtime jars (examples/producers/java/
pom.xml) into .cache/producers/java/lib, javac compiles the one file. Go: go builds
examples/producers/go (franz-go) into .cache/producers/go. Both are cached after the first
run; cold, on the 2-core reference machine (shared, load about 8), Maven took 50 s and
javac 7 s (an empty Maven repository: the dependency plugin and the jars), Go 122 s (empty
module and build caches: downloading and compiling franz-go); warm, each test takes 3 to
6 s. A missing toolchain skips its test, saying which.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from .conftest import Pipeline
from .kafkaio import read_all

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "producers"
CACHE = ROOT / ".cache" / "producers"
MLP = "breast-cancer-mlp"
COUNT = 40


def _run(args: list[str], cwd: Path, timeout_s: float = 900) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def _missing(*tools: str) -> str | None:
    absent = [t for t in tools if shutil.which(t) is None]
    return ", ".join(absent) if absent else None


@pytest.fixture(scope="module")
def java_producer() -> list[str]:
    """The command that runs FeatureProducer, built once."""
    if absent := _missing("java", "javac", "mvn"):
        pytest.skip(f"{absent} not on PATH: this test builds the README's Java producer "
                    "(Java 17+ and Maven; the project's machines have both)")  # fmt: skip
    lib, classes = CACHE / "java" / "lib", CACHE / "java" / "classes"
    if not (lib / "avro-1.12.2.jar").exists():
        _run(["mvn", "-q", "-f", str(EXAMPLES / "java" / "pom.xml"),
              "dependency:copy-dependencies", f"-DoutputDirectory={lib}"], ROOT)  # fmt: skip
    _run(["javac", "-d", str(classes), "-cp", f"{lib}/*",
          str(EXAMPLES / "java" / "FeatureProducer.java")], ROOT)  # fmt: skip
    return ["java", "-cp", f"{classes}{os.pathsep}{lib}/*", "FeatureProducer"]


@pytest.fixture(scope="module")
def go_producer() -> list[str]:
    """The command that runs the Go producer, built once."""
    if absent := _missing("go"):
        pytest.skip(f"{absent} not on PATH: this test builds the README's Go producer "
                    "(the project's machines have Go 1.26)")  # fmt: skip
    binary = CACHE / "go" / "featureproducer"
    _run(["go", "build", "-o", str(binary), "."], EXAMPLES / "go")
    return [str(binary)]


def _predicted_by_the_worker(
    make_pipeline: Callable[..., Pipeline],
    producer: list[str],
    language: str,
    registry_url: str | None = None,
) -> None:
    p = make_pipeline(partitions=2)
    avro = () if registry_url is None else (registry_url, str(ROOT / "schemas/feature-event.avsc"))
    reads = () if registry_url is None else ("--value-format", "avro",
                                             "--schema-registry-url", registry_url)  # fmt: skip
    worker = p.start_worker("--default-model", MLP, *reads)
    worker.wait_for_log("assigned")
    run_id = f"{language}-{uuid.uuid4().hex[:8]}"

    said = _run([*producer, p.bootstrap, p.input, MLP, str(COUNT), run_id, *avro], ROOT, 120)

    assert f"sent {COUNT} events to {p.input}" in said
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=COUNT, timeout_s=120)
    assert worker.stop()[0] == 0
    predictions = [r for r in out if r.topic == p.output]
    assert len(out) == len(predictions) == COUNT, [r.headers for r in out if r.topic == p.dlq]
    docs = [orjson.loads(r.value or b"") for r in predictions]
    assert sorted(d["id"] for d in docs) == sorted(f"{run_id}-{i}" for i in range(COUNT))
    assert {d["model"] for d in docs} == {MLP} and all("label" in d for d in docs)
    assert {r.key for r in predictions} == {f"entity-{i}".encode() for i in range(10)}


def test_the_java_producers_events_are_predicted(
    make_pipeline: Callable[..., Pipeline], java_producer: list[str]
) -> None:
    _predicted_by_the_worker(make_pipeline, java_producer, "java")


def test_the_go_producers_events_are_predicted(
    make_pipeline: Callable[..., Pipeline], go_producer: list[str]
) -> None:
    _predicted_by_the_worker(make_pipeline, go_producer, "go")


def test_the_java_producers_avro_events_are_predicted(
    make_pipeline: Callable[..., Pipeline], java_producer: list[str], schema_registry_url: str
) -> None:
    _predicted_by_the_worker(make_pipeline, java_producer, "java-avro", schema_registry_url)


def test_the_go_producers_avro_events_are_predicted(
    make_pipeline: Callable[..., Pipeline], go_producer: list[str], schema_registry_url: str
) -> None:
    _predicted_by_the_worker(make_pipeline, go_producer, "go-avro", schema_registry_url)
