"""`pipeline schema-registry start|status|stop` runs a real Apicurio Registry that
confluent-kafka's Schema Registry client can use, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from pipeline.dev.localregistry import LocalRegistry, fetch_registry, missing_tools

from .kafkaio import free_port

_SCHEMA = '{"type": "record", "name": "Ping", "fields": [{"name": "id", "type": "string"}]}'


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "schema-registry", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
    )


@pytest.fixture
def tools() -> None:
    missing = missing_tools()
    if missing is not None:
        pytest.skip(missing)


@pytest.mark.usefixtures("tools")
def test_start_status_register_stop(tmp_path: Path) -> None:
    port = free_port()
    data = str(tmp_path / "registry")
    started = _cli("start", "--port", str(port), "--data-dir", data)
    url = f"http://127.0.0.1:{port}/apis/ccompat/v7"
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().startswith(f"started: Schema Registry at {url} (pid ")
    try:
        again = _cli("start", "--port", str(port), "--data-dir", data)
        assert again.returncode == 0 and again.stdout.startswith("already running")
        status = _cli("status", "--data-dir", data)
        assert status.returncode == 0 and url in status.stdout
        with SchemaRegistryClient({"url": url}) as client:
            schema_id = client.register_schema("ping-value", Schema(_SCHEMA, "AVRO"))
            found = client.get_schema(schema_id).schema_str
        assert found.replace(" ", "") == _SCHEMA.replace(" ", "")
        assert (tmp_path / "registry" / "registry.log").stat().st_size > 0
    finally:
        stopped = _cli("stop", "--data-dir", data)
    assert stopped.returncode == 0 and stopped.stdout.startswith(f"stopped Schema Registry {url}")
    assert LocalRegistry(tmp_path / "registry").running() is None
    status = _cli("status", "--data-dir", data)
    assert status.returncode == 1 and status.stdout.startswith("not running")


def test_missing_java_says_what_to_install(tmp_path: Path) -> None:
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    done = _cli("start", "--port", str(free_port()), "--data-dir", str(tmp_path / "r"), env=env)
    assert done.returncode == 1
    assert "Java 17+ is needed to run Apicurio Registry 3.0.9" in done.stderr
    assert "apt-get install openjdk-17-jre-headless" in done.stderr


@pytest.mark.skipif(not Path.home().joinpath(".m2").exists(), reason="no Maven set-up here")
@pytest.mark.usefixtures("tools")
def test_the_fetch_works_from_an_empty_maven_repository(tmp_path: Path) -> None:
    """As on a fresh CI machine: nothing in the local repository, Maven Central alone (the
    parent POM apicurio-registry:3.0.9 is not served there, and the fetch must not need it)."""
    runner = fetch_registry(tmp_path / "cache", maven_repo=tmp_path / "m2")
    assert runner.name == "apicurio-registry-app-3.0.9-runner.jar" and runner.is_file()
    libs = {p.name for p in (runner.parent / "lib").iterdir()}
    # 105 characters: Maven's own unpack cuts this name at 100; tarfile keeps it whole.
    long_name = (
        "org.eclipse.microprofile.reactive-streams-operators."
        "microprofile-reactive-streams-operators-api-3.0.1.jar"
    )
    assert long_name in libs
    assert not (
        tmp_path / "m2" / "io/apicurio/apicurio-registry/3.0.9/apicurio-registry-3.0.9.pom"
    ).exists()
