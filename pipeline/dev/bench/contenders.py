"""The contenders: how to start each one on a run's topics, and whether it can run here.

A `Contender` turns a run's topics and event count into one command per process. The
worker runs as ``pipeline run`` with `CLIENT_SETTINGS` passed as ``-X`` properties; a
peer runs as ``python -m pipeline.dev.bench.peers.<name>`` with the same settings as JSON.
Faust runs in this interpreter when faust-streaming is installed, both as a plain
``take()`` agent and as this project's `pipeline.faust.predict_agent`. Quix Streams pins
confluent-kafka below the worker's version, so it runs from a virtualenv of its own
(``.cache/bench-quix``, made by ``make bench``) with this checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.dev.bench.runner import CLIENT_SETTINGS, client_settings_json

__all__ = [
    "EOS_COMMIT_INTERVAL_MS",
    "REPO_ROOT",
    "Contender",
    "RunTopics",
    "faust_contender",
    "faust_engine_contender",
    "naive_contender",
    "quix_contender",
    "relay_contender",
    "worker_contender",
    "worker_kafka_flags",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL = "breast-cancer-mlp"
QUIX_VENV_PYTHON = REPO_ROOT / ".cache" / "bench-quix" / "bin" / "python"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunTopics:
    """Where one run reads and writes."""

    bootstrap: str
    input: str
    output: str
    dlq: str
    group: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Contender:
    """One row of the benchmark.

    Attributes:
        key: Short stable name used in the JSON (``worker-1``, ``naive``).
        label: What the table shows.
        kind: ``ceiling``, ``peer`` or ``worker``.
        processes: Processes it runs in (all in one consumer group).
        module: The Python module started with ``-m``.
        python: The interpreter.
        extra_args: Further arguments for every process.
        env: Extra environment for its processes.
        not_run: Why it cannot run here, or None.
        dead_letters: A peer that writes dead letters: it gets the run's ``--dlq`` topic.
    """

    key: str
    label: str
    kind: str
    processes: int = 1
    module: str
    python: str = sys.executable
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    not_run: str | None = None
    dead_letters: bool = False

    def commands(self, topics: RunTopics, count: int) -> list[list[str]]:
        """One command per process for a run on `topics` that must produce `count` outputs."""
        if self.kind == "worker":
            return [[self.python, "-m", self.module, *_worker_args(topics), *self.extra_args]]
        base = [
            self.python,
            "-m",
            self.module,
            "--bootstrap",
            topics.bootstrap,
            "--input",
            topics.input,
            "--output",
            topics.output,
            "--group",
            topics.group,
            "--client-settings",
            client_settings_json(),
            *(("--dlq", topics.dlq) if self.dead_letters else ()),
            *self.extra_args,
        ]
        if self.processes == 1:
            return [[*base, "--count", str(count)]]
        return [base for _ in range(self.processes)]  # the runner stops them at `count`


def worker_kafka_flags() -> list[str]:
    """`CLIENT_SETTINGS` as ``pipeline run`` flags (``-X`` for each librdkafka property)."""
    flags: list[str] = []
    for role in ("producer", "consumer"):
        props: Mapping[str, Any] = CLIENT_SETTINGS[role]
        for key, value in props.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            flags += ["-X", f"{key}={text}"]
    return [*flags, "--commit-interval-ms", str(CLIENT_SETTINGS["commit_interval_ms"])]


def _worker_args(topics: RunTopics) -> list[str]:
    return [
        "run",
        "--bootstrap-servers",
        topics.bootstrap,
        "--input-topic",
        topics.input,
        "--output-topic",
        topics.output,
        "--dlq-topic",
        topics.dlq,
        "--group-id",
        topics.group,
        "--models",
        str(REPO_ROOT / "models"),
        "--no-create-topics",
        "--stats-interval-s",
        "5",
        *worker_kafka_flags(),
    ]


EOS_COMMIT_INTERVAL_MS = 100
"""The exactly-once row's transaction interval: its outputs become visible only when a
transaction commits, so a 1 s interval would also make the measured window coarse."""


def worker_contender(
    processes: int, max_wait_ms: float = 5.0, *, guarantee: str = "at-least-once"
) -> Contender:
    """``pipeline run --workers N`` with the default batch size (256)."""
    exactly_once = guarantee == "exactly-once"
    args = ["--workers", str(processes), "--max-wait-ms", f"{max_wait_ms:g}"]
    if exactly_once:
        # after the shared flags, so this --commit-interval-ms is the one argparse keeps
        args += ["--guarantee", guarantee, "--commit-interval-ms", str(EOS_COMMIT_INTERVAL_MS)]
    return Contender(
        key=f"worker-{processes}" + ("-eos" if exactly_once else ""),
        label=f"pipeline run, {processes} process{'es' if processes > 1 else ''}"
        + (f", exactly-once (commit every {EOS_COMMIT_INTERVAL_MS} ms)" if exactly_once else ""),
        kind="worker",
        processes=processes,
        module="pipeline",
        extra_args=tuple(args),
    )


def relay_contender(processes: int) -> Contender:
    """The consume -> produce ceiling with `processes` processes in one group."""
    return Contender(
        key=f"relay-{processes}",
        label=f"relay ceiling, {processes} process{'es' if processes > 1 else ''}",
        kind="ceiling",
        processes=processes,
        module="pipeline.dev.bench.peers.relay",
    )


def naive_contender() -> Contender:
    """One event at a time: poll one, predict one row, produce."""
    return Contender(
        key="naive",
        label="naive, one event at a time",
        kind="peer",
        module="pipeline.dev.bench.peers.naive",
    )


def faust_contender() -> Contender:
    """A faust-streaming agent batching with ``take_events(256, within=5 ms)``."""
    return Contender(
        key="faust",
        label="Faust agent, take(256, 5 ms)",
        kind="peer",
        module="pipeline.dev.bench.peers.faust_agent",
        not_run=_without_faust("bench"),
    )


def faust_engine_contender() -> Contender:
    """`pipeline.faust.predict_agent` in a Faust app: this project's engine behind Faust."""
    return Contender(
        key="faust-engine",
        label="Faust app with pipeline.faust.predict_agent (256, 5 ms)",
        kind="peer",
        module="pipeline.dev.bench.peers.faust_engine",
        not_run=_without_faust("faust"),
        dead_letters=True,
    )


def _without_faust(extra: str) -> str | None:
    """Why a Faust row cannot run here (and which extra installs it), or None."""
    if importlib.util.find_spec("faust") is None:
        return f"faust-streaming is not installed (pip install -e '.[{extra}]')"
    return None


def quix_contender(python: Path | None = None) -> Contender:
    """A Quix Streams application, one message at a time, in its own virtualenv."""
    candidates = [python] if python else [QUIX_VENV_PYTHON, Path(sys.executable)]
    found = next((p for p in candidates if p and _imports(p, "quixstreams")), None)
    where = QUIX_VENV_PYTHON.parent.parent
    return Contender(
        key="quix",
        label="Quix Streams app, per message",
        kind="peer",
        module="pipeline.dev.bench.peers.quix_app",
        python=str(found or sys.executable),
        env={"PYTHONPATH": str(REPO_ROOT)},
        not_run=None if found else f"quixstreams is not installed (make bench puts it in {where})",
    )


def _imports(python: Path, module: str) -> bool:
    if not python.exists():
        return False
    done = subprocess.run(
        [str(python), "-c", f"import {module}"], capture_output=True, check=False, timeout=60
    )
    return done.returncode == 0
