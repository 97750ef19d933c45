"""`pipeline kafka start|status|stop` drives a real broker and leaves nothing behind."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from pipeline.dev.localkafka import LocalKafka, _pid_alive

from .kafkaio import free_port


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "kafka", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_start_status_second_start_stop(tmp_path: Path) -> None:
    port = free_port()
    data = str(tmp_path / "kafka")
    started = _cli("start", "--port", str(port), "--data-dir", data)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == f"127.0.0.1:{port}"
    try:
        brokers = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert list(brokers.brokers) == [1]
        again = _cli("start", "--port", str(port), "--data-dir", data)
        assert again.returncode == 0
        assert "already running" in again.stdout
        status = _cli("status", "--data-dir", data)
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout
        assert (tmp_path / "kafka" / "broker.log").stat().st_size > 0
        pid = LocalKafka(data_dir=tmp_path / "kafka").running()
        assert pid is not None
    finally:
        stopped = _cli("stop", "--data-dir", data)
    assert stopped.returncode == 0
    assert not _pid_alive(pid.pid)
    assert _cli("status", "--data-dir", data).returncode == 1


def test_port_taken_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli("start", "--port", str(port), "--data-dir", str(tmp_path / "k"))
    assert done.returncode != 0
    assert done.stderr.startswith(f"error: port 127.0.0.1:{port} is already in use")
    assert "--port" in done.stderr


@pytest.mark.parametrize("missing", ["java"])
def test_missing_java_says_what_to_do(tmp_path: Path, missing: str) -> None:
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "kafka",
            "start",
            "--data-dir",
            str(tmp_path / "k"),
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "Java 17+" in done.stderr and "JAVA_HOME" in done.stderr
