"""A real `pipeline serve` process per test module (or per test, for special settings).

`serve(*flags)` starts ``python -m pipeline serve`` on free ports bound to 127.0.0.1, waits
until `/readyz` says ready, and stops it (SIGTERM) after the test. Its log is kept in the
test's tmp dir and printed when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.integration.kafkaio import free_port

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
MLP = "breast-cancer-mlp"
STATS_LINE = "mean batch "  # in every stats line (pipeline.metrics.statsline.StatsSnapshot.line)


@dataclass
class Server:
    """A running `pipeline serve`."""

    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    log_file: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 15.0) -> tuple[int, float]:
        """SIGTERM; return (exit code, seconds it took)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"serve did not stop within {timeout_s} s:\n{self.log[-3000:]}"
            ) from None
        finally:
            self.log_file.close()
        return code, time.monotonic() - started

    def await_log(self, ready: Callable[[str], object], timeout_s: float = 30.0) -> str:
        """Poll the log until `ready(log)` is true; return the log (or, after `timeout_s`,
        the log as it is, for the caller's assertion to show)."""
        deadline = time.monotonic() + timeout_s
        while not ready(log := self.log) and time.monotonic() < deadline:
            time.sleep(0.05)
        return log

    def next_stats_line(self, timeout_s: float = 30.0) -> str:
        """Wait for a stats line written after now (the server writes one every
        ``--stats-interval-s``, 1 s here, busy or idle); return the log."""
        seen = self.log.count(STATS_LINE)
        return self.await_log(lambda log: log.count(STATS_LINE) > seen, timeout_s)

    def kill(self) -> None:
        """Make sure it is gone (a test that failed may leave it running)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


def start_server(log_path: Path, *flags: str, wait_ready: bool = True) -> Server:
    http_port, grpc_port = free_port(), free_port()
    args = [
        sys.executable, "-m", "pipeline", "serve", "--models", str(MODELS),
        "--default-model", MLP, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--stats-interval-s", "1", *flags,
    ]  # fmt: skip
    log = log_path.open("ab")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ)
    server = Server(proc, http_port, grpc_port, log_path, log)
    if wait_ready:
        wait_until_ready(server, by_log="--tls-cert" in flags or "--auth-token-file" in flags)
    return server


def wait_until_ready(server: Server, timeout_s: float = 60.0, *, by_log: bool = False) -> None:
    """Until /readyz answers 200 (or, for a door a plain client cannot use, until the log
    says the HTTP door listens: it opens only once the models are warm)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise AssertionError(f"serve exited {server.proc.returncode}:\n{server.log[-3000:]}")
        if by_log:
            if "HTTP door listening" in server.log:
                return
        else:
            try:
                if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"serve was not ready within {timeout_s} s:\n{server.log[-3000:]}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory: start `pipeline serve` with extra flags; stopped after the test."""
    started: list[Server] = []

    def make(*flags: str, wait_ready: bool = True) -> Server:
        server = start_server(tmp_path / f"serve-{len(started)}.log", *flags,
                              wait_ready=wait_ready)  # fmt: skip
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `pipeline serve` with the example models shared by a module's tests."""
    running = start_server(tmp_path_factory.mktemp("serve") / "serve.log")
    yield running
    running.stop()
