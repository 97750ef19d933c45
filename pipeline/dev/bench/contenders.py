"""The contenders: how to start each one on a run's topics, and whether it can run here.

A `Contender` turns a run's topics, event count and model into one command per process.
The worker runs as ``pipeline run`` with its own defaults; a peer or the relay runs as
``python -m pipeline.dev.bench.peers.<name>`` with its client settings as JSON
(`pipeline.dev.bench.settings` says which and why).
Faust runs in this interpreter when faust-streaming is installed, both as a plain
``take()`` agent and as this project's `pipeline.faust.predict_agent`. Quix Streams pins
confluent-kafka below the worker's version, so it runs from a virtualenv of its own
(``.cache/bench-quix``, made by ``make bench``) with this checkout on ``PYTHONPATH``.
``--baseline REF`` adds the worker as it was at a git revision of this checkout, run from a
worktree of it (``.cache/bench-baseline/``), so a change's cost is measured against what
came before in the same run, on the same broker and the same events.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.dev.bench.settings import (
    PEER_SETTINGS,
    RELAY_SETTINGS,
    WORKER_SETTINGS,
    as_json,
    describe,
)
from pipeline.dev.localserver import free_port

__all__ = [
    "BASELINES",
    "EOS_COMMIT_INTERVAL_MS",
    "REPO_ROOT",
    "Contender",
    "RunTopics",
    "baseline_contender",
    "faust_contender",
    "faust_engine_contender",
    "naive_contender",
    "quix_contender",
    "relay_contender",
    "worker_contender",
]

REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL = "breast-cancer-mlp"
QUIX_VENV_PYTHON = REPO_ROOT / ".cache" / "bench-quix" / "bin" / "python"
_QUIX_APP = "pipeline.dev.bench.peers.quix_app"


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
        settings: Its Kafka client settings (a peer's ``--client-settings``; for the
            worker, what it sets by itself, for the report).
        settings_label: Which settings these are, for the table.
        dead_letters: A peer that writes dead letters: it gets the run's ``--dlq`` topic.
        root: The checkout it runs from (its working directory, and the worker's
            ``--models``): this one, or a worktree of an earlier revision.
        models: The worker's ``--models``, where not the root's ``models/``.
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
    settings: Mapping[str, Any] = field(default_factory=lambda: PEER_SETTINGS)
    settings_label: str = "librdkafka defaults, acks=all, idempotence"
    dead_letters: bool = False
    root: Path = REPO_ROOT
    models: Path | None = None

    def commands(self, topics: RunTopics, count: int, model: str = MODEL) -> list[list[str]]:
        """One command per process for a run on `topics` that must produce `count` outputs
        of `model`."""
        if self.kind == "worker":
            worker = _worker_args(topics, self.models or self.root / "models")
            return [[self.python, "-m", self.module, *worker, *self.extra_args]]
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
            as_json(self.settings),
            "--model-dir",
            str(REPO_ROOT / "models" / model / "1"),
            *(("--dlq", topics.dlq) if self.dead_letters else ()),
            *self.extra_args,
        ]
        if self.processes == 1:
            return [[*base, "--count", str(count)]]
        return [base for _ in range(self.processes)]  # the runner stops them at `count`


def _worker_args(topics: RunTopics, models: Path) -> list[str]:
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
        str(models),
        "--no-create-topics",
        "--stats-interval-s",
        "5",
        "--offset-reset",
        "earliest",
    ]


EOS_COMMIT_INTERVAL_MS = 100
"""The exactly-once row's transaction interval: its outputs become visible only when a
transaction commits, so a 1 s interval would also make the measured window coarse."""


def worker_contender(
    processes: int,
    max_wait_ms: float = 5.0,
    *,
    guarantee: str = "at-least-once",
    latency_target_ms: float | None = None,
    metrics: bool = False,
    extra_args: tuple[str, ...] = (),
) -> Contender:
    """``pipeline run --workers N`` with its own defaults (batches of up to 256).

    Args:
        processes: ``--workers``.
        max_wait_ms: ``--max-wait-ms``.
        guarantee: ``--guarantee``; exactly-once commits every `EOS_COMMIT_INTERVAL_MS`.
        latency_target_ms: ``--latency-target-ms``, instead of the fixed wait.
        metrics: Serve ``/metrics`` on a free port (``--metrics-port``), to show its cost.
        extra_args: Further flags.
    """
    exactly_once = guarantee == "exactly-once"
    args = ["--workers", str(processes), "--max-wait-ms", f"{max_wait_ms:g}"]
    key, label = (
        f"worker-{processes}",
        f"pipeline run, {processes} process" + ("es" if processes > 1 else ""),
    )
    if exactly_once:
        args += ["--guarantee", guarantee, "--commit-interval-ms", str(EOS_COMMIT_INTERVAL_MS)]
        key += "-eos"
        label += f", exactly-once (commit every {EOS_COMMIT_INTERVAL_MS} ms)"
    if latency_target_ms:
        args += ["--latency-target-ms", f"{latency_target_ms:g}"]
        key += f"-target{latency_target_ms:g}"
        label += f", --latency-target-ms {latency_target_ms:g}"
    if metrics:
        args += ["--metrics-port", str(free_port())]
        key += "-metrics"
        label += ", serving /metrics"
    return Contender(
        key=key,
        label=label,
        kind="worker",
        processes=processes,
        module="pipeline",
        extra_args=(*args, *extra_args),
        settings=WORKER_SETTINGS,
        settings_label="its own defaults",
    )


SHADOW_STORE = REPO_ROOT / ".cache" / "bench-shadow-models"


def shadow_contender(store: Path = SHADOW_STORE) -> Contender:
    """``pipeline run`` (1 process, its defaults) with a shadow on every row: the MLP serves
    (version 1, pinned) and a copy of it shadows (version 2), so the row shows what a
    candidate as costly as the served model adds. The store is made once in `store`."""
    source = REPO_ROOT / "models" / MODEL / "1"
    for version in ("1", "2"):
        if not (store / MODEL / version / "model.onnx").exists():
            shutil.copytree(source, store / MODEL / version, dirs_exist_ok=True)
    (store / MODEL / "PINNED").write_text("1\n")
    return replace(
        worker_contender(1, extra_args=("--shadow", f"{MODEL}=2")),
        key="worker-1-shadow",
        label="pipeline run, 1 process, --shadow on every row (a second MLP)",
        models=store,
    )


BASELINES = REPO_ROOT / ".cache" / "bench-baseline"


def baseline_contender(ref: str, worktrees: Path = BASELINES) -> Contender:
    """``pipeline run`` (1 process, its defaults) as it was at git revision `ref` of this
    checkout: a detached worktree of it in `worktrees` (made once per commit), run with
    this interpreter and its installed dependencies, on that revision's own ``models/``.
    Not run, with the reason, where git cannot make the worktree."""
    try:
        commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
        tree = worktrees / commit[:12]
        if not (tree / "pipeline" / "__init__.py").exists():
            _git("worktree", "add", "--detach", "--force", str(tree), commit)
    except (OSError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", None) or str(exc)
        return replace(
            worker_contender(1),
            key="worker-1-baseline",
            label=f"pipeline run at {ref}, 1 process",
            not_run=f"no worktree of {ref!r}: {why.strip().splitlines()[-1]}",
        )
    return replace(
        worker_contender(1),
        key="worker-1-baseline",
        label=f"pipeline run at {ref} ({commit[:9]}), 1 process",
        root=tree,
    )


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def relay_contender(processes: int, variant: str = "defaults") -> Contender:
    """The consume -> produce ceiling with `processes` processes in one group.

    Args:
        processes: Processes in the group.
        variant: ``defaults`` (librdkafka's) or ``tuned`` (see `RELAY_SETTINGS`).
    """
    settings = RELAY_SETTINGS[variant]
    return Contender(
        key=f"relay-{processes}" + ("" if variant == "defaults" else f"-{variant}"),
        label=f"relay ceiling, {processes} process{'es' if processes > 1 else ''}, {variant}",
        kind="ceiling",
        processes=processes,
        module="pipeline.dev.bench.peers.relay",
        settings=settings,
        settings_label=(
            "librdkafka defaults, acks=all, idempotence"
            if variant == "defaults"
            else describe(settings)
        ),
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
    """A Quix Streams application, one message at a time, in its own virtualenv.

    The peer imports this checkout (its codec and model store), so its interpreter needs
    the project's dependencies beside quixstreams; one that lacks any is not run, with
    the import error as the reason, rather than failing every run.
    """
    candidates = [python] if python else [QUIX_VENV_PYTHON, Path(sys.executable)]
    where = QUIX_VENV_PYTHON.parent.parent
    env = {"PYTHONPATH": str(REPO_ROOT)}
    found: Path | None = None
    why: str | None = f"quixstreams is not installed (make bench puts it in {where})"
    for candidate in candidates:
        if _import_error(candidate, "quixstreams") is not None:
            continue
        problem = _import_error(candidate, _QUIX_APP, env)
        if problem is None:
            found, why = candidate, None
            break
        why = (
            f"{candidate} has quixstreams but cannot import the peer ({problem}); make bench "
            f"installs the project's dependencies beside it (or delete {where} and run it again)"
        )
    return Contender(
        key="quix",
        label="Quix Streams app, per message",
        kind="peer",
        module=_QUIX_APP,
        python=str(found or sys.executable),
        env=env,
        not_run=why,
    )


def _import_error(python: Path, module: str, env: dict[str, str] | None = None) -> str | None:
    """Why `python` cannot import `module` (the error's last line), or None if it can."""
    if not python.exists():
        return f"{python} does not exist"
    done = subprocess.run(
        [str(python), "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    if done.returncode == 0:
        return None
    lines = done.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit code {done.returncode}"
