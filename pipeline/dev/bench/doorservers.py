"""The servers of the front-door benchmark: how each contender runs, started and watched.

A `Server` is one row group of the table: ``pipeline serve`` (one process, or two that the
load generator's callers take in turn) or a per-request peer from
`pipeline.dev.bench.doorpeers` under the server its users would pick, with the settings
that served it best. `running` starts its processes on free ports of 127.0.0.1, waits until
each answers its health check, samples their CPU time and memory (`procstats`) while they
run, and stops them with SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.dev.bench.doorload import DoorBenchError
from pipeline.dev.bench.procstats import ProcessTreeSampler
from pipeline.dev.localserver import free_port

__all__ = [
    "DOORS",
    "MODEL",
    "REPO_ROOT",
    "Instance",
    "Running",
    "Server",
    "Setup",
    "running",
    "servers",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL = "breast-cancer-mlp"
DOORS = {  # door key -> (what the table calls it, the generator's -proto and -api)
    "http": ("HTTP POST /predict", "http", "predict"),
    "grpc": ("gRPC /Predictor/Predict", "grpc", "predict"),
    "http-oip": ("HTTP OIP v2 infer (JSON)", "http", "oip"),
    "grpc-oip": ("gRPC OIP v2 ModelInfer (raw FP32)", "grpc", "oip"),
}
_READY_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """What every contender of a run shares.

    Attributes:
        cores: CPU cores this process may use: the peers run one worker per core.
        max_wait_ms: ``pipeline serve --max-wait-ms``.
        stats_interval_s: ``pipeline serve --stats-interval-s`` (its mean batch is read from
            the stats lines, so at least one must fall inside each measured window).
        serve_args: Further flags for ``pipeline serve``.
    """

    cores: int
    max_wait_ms: float
    stats_interval_s: float
    serve_args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Instance:
    """One server process (with any workers it forks) and where it answers."""

    command: list[str]
    http_url: str
    grpc_target: str | None
    ready_path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    """One contender: what it is, how it runs, which doors it has.

    Attributes:
        key: Stable name in the JSON (``serve-1``, ``fastapi``).
        label: What the table calls it.
        settings: How it runs, in a few words for the table.
        notes: How it runs and why, in full.
        kind: ``door`` (pipeline serve) or ``peer``.
        doors: The door keys (`DOORS`) it is measured on.
        instances: How many separately started processes the load is spread over.
        not_run: Why it does not run here, or None.
        args: Flags of its own for ``pipeline serve`` (after the shared ones).
    """

    key: str
    label: str
    settings: str
    notes: str
    kind: str
    doors: tuple[str, ...]
    instances: int = 1
    not_run: str | None = None
    args: tuple[str, ...] = ()

    def launch(self, setup: Setup) -> list[Instance]:
        """The processes to start, on fresh ports."""
        if self.kind == "door":
            return [_serve_instance(setup, self.args) for _ in range(self.instances)]
        cores = setup.cores
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        python = [sys.executable, "-m"]
        if self.key == "fastapi":
            command = [
                *python,
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(cores),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
                "--factory",
                "pipeline.dev.bench.doorpeers.fastapi_app:create_app",
            ]
        else:
            threads = ["-k", "gthread", "--threads", "4"] if self.key == "flask-gthread" else []
            command = [
                *python,
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(cores),
                *threads,
                "--log-level",
                "warning",
                "pipeline.dev.bench.doorpeers.seed_flask:create_app()",
            ]
        return [Instance(command, url, None, "/healthz")]


def _serve_instance(setup: Setup, args: tuple[str, ...]) -> Instance:
    http, grpc = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "serve",
        "--models",
        str(REPO_ROOT / "models"),
        "--default-model",
        MODEL,
        "--http-port",
        str(http),
        "--grpc-port",
        str(grpc),
        "--max-wait-ms",
        f"{setup.max_wait_ms:g}",
        "--stats-interval-s",
        f"{setup.stats_interval_s:g}",
        *setup.serve_args,
        *args,
    ]
    return Instance(command, f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc}", "/readyz")


def servers(setup: Setup) -> list[Server]:
    """Every contender, in table order (the peers first, then the door)."""
    return [*_peers(setup), *_doors(setup)]


def _peers(setup: Setup) -> list[Server]:
    missing = [m for m in ("flask", "gunicorn", "fastapi") if not _importable(m)]
    why = f"not installed: {', '.join(missing)} (pip install -e '.[bench]')" if missing else None
    n = setup.cores
    flask = "seed: Flask + ONNX Runtime per request"
    return [
        Server(key="flask-sync", label=flask, kind="peer", doors=("http",), not_run=why,
               settings=f"gunicorn, {n} sync workers",
               notes=f"gunicorn's default worker class, one process per core ({n}): the app "
               "is CPU-bound, so more processes would only contend for the cores. A sync "
               "worker closes the connection after each answer, so every request also "
               "pays a TCP connect."),
        Server(key="flask-gthread", label=flask, kind="peer", doors=("http",), not_run=why,
               settings=f"gunicorn, {n} gthread workers x 4 threads",
               notes="the same app on gunicorn's threaded workers, which keep connections "
               "alive; 4 threads per process are plenty, as the GIL runs one at a time and "
               "threads only overlap the network waits."),
        Server(key="fastapi", label="FastAPI + ONNX Runtime per request", kind="peer",
               doors=("http",), not_run=why, settings=f"uvicorn, {n} workers",
               notes=f"uvicorn --workers {n} with uvloop and httptools (its fastest) and no "
               "access log; an async endpoint, because the model call takes microseconds "
               "and a plain `def` endpoint would hop to the thread pool for each request; "
               "the body validated by pydantic, as FastAPI does."),
    ]  # fmt: skip


def _doors(setup: Setup) -> list[Server]:
    flags = f"--max-wait-ms {setup.max_wait_ms:g}"
    due = "--dispatch when-due"
    flags += f" {shlex.join(setup.serve_args)}" if setup.serve_args else ""
    return [
        Server(key="serve-1", label="pipeline serve, 1 process", kind="door", doors=tuple(DOORS),
               settings=f"1 process, {flags}",
               notes=f"as shipped ({flags}): one process, both doors on one event "
               "loop (HTTP on uvicorn with uvloop and httptools, gRPC on grpc.aio); the "
               "engine batches the rows of concurrent requests (up to 256) on one ONNX "
               "Runtime thread, running what waits whenever it is free and as many rows "
               "wait as half the requests lately in flight (--dispatch when-idle, the "
               "default)."),
        Server(key="serve-1-due", label="pipeline serve, 1 process, --dispatch when-due",
               kind="door", doors=("http", "grpc"),
               settings=f"1 process, {flags} {due}", args=tuple(due.split()),
               notes="the same, with the dispatch before `when-idle` became the default: a "
               "batch runs once it is full or its oldest row has waited --max-wait-ms, so a "
               "lone caller waits that long."),
        Server(key="serve-2", label="pipeline serve, 2 processes", kind="door",
               doors=("http", "grpc"), instances=2, settings=f"2 processes, {flags}",
               notes="two such processes on ports of their own; the load generator's "
               "callers alternate between them (client-side balancing, as a gRPC "
               "round-robin balancer or a Kubernetes service would do; nothing in front). "
               "They cannot share one port: uvicorn does not set SO_REUSEPORT."),
    ]  # fmt: skip


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True, slots=True)
class Running:
    """Started instances: where they answer, their CPU time and their logs.

    Attributes:
        instances: What was started.
        procs: Their processes.
        sampler: Samples the processes and everything they fork.
        logs: One log file per instance.
    """

    instances: list[Instance]
    procs: list[subprocess.Popen[bytes]]
    sampler: ProcessTreeSampler
    logs: list[Path]

    def targets(self, proto: str) -> tuple[str, ...]:
        """Where the load generator sends `proto` (``http`` or ``grpc``) requests."""
        if proto == "http":
            return tuple(i.http_url for i in self.instances)
        return tuple(i.grpc_target for i in self.instances if i.grpc_target)

    def log_sizes(self) -> list[int]:
        """How far each log has been written, to read what comes after."""
        return [p.stat().st_size if p.exists() else 0 for p in self.logs]

    def log_between(self, start: list[int], end: list[int]) -> str:
        """What the logs gained from sizes `start` to sizes `end` (of `log_sizes`)."""
        parts = []
        for path, begin, stop in zip(self.logs, start, end, strict=True):
            with path.open("rb") as f:
                f.seek(begin)
                parts.append(f.read(stop - begin).decode(errors="replace"))
        return "".join(parts)

    def check_alive(self) -> None:
        """Raise if a process has exited.

        Raises:
            DoorBenchError: One of the server's processes is gone (its log says why).
        """
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise DoorBenchError(
                    f"the server exited {proc.returncode}; see {log}:\n{_tail(log)}"
                )


@contextlib.contextmanager
def running(server: Server, logs_dir: Path, setup: Setup) -> Iterator[Running]:
    """Start `server`'s processes, wait until they are ready, yield them, stop them.

    Raises:
        DoorBenchError: A process exited or did not become ready in time.
    """
    instances = server.launch(setup)
    logs_dir.mkdir(parents=True, exist_ok=True)
    logs = [logs_dir / f"{server.key}-{n}.log" for n in range(len(instances))]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for instance, log in zip(instances, logs, strict=True):
            with log.open("ab") as out:
                procs.append(
                    subprocess.Popen(
                        instance.command,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=REPO_ROOT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
        with ProcessTreeSampler([p.pid for p in procs]) as sampler:
            up = Running(instances, procs, sampler, logs)
            for instance in instances:
                _wait_ready(up, instance.http_url + instance.ready_path)
            yield up
    finally:
        _stop(procs)


def _wait_ready(up: Running, url: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline:
        up.check_alive()
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 (our own URL)
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise DoorBenchError(
        f"{url} did not answer 200 within {_READY_TIMEOUT_S:g} s; see the logs "
        f"in {up.logs[0].parent}"
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
