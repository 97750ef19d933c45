"""The front-door benchmark's run: every contender's points, round by round.

`Plan` says how big the run is (`FULL` and `QUICK` are the two shipped sizes);
`run_suite` returns every figure as one JSON-ready dict. Round after round (so noise
spreads over every contender alike), each contender is started (`doorservers.running`),
each of its doors is called by the Go load generator (`doorload`) with 1, 8 and 64
closed-loop callers, and it is stopped. At the edges of the generator's measured window
the server's CPU time, the whole machine's busy time and the server's log offsets are
sampled, so a point carries the server's CPU seconds per 1,000 requests, the CPU other
processes took meanwhile, and (for ``pipeline serve``) the mean batch of the stats lines
written in the window. In the last round of ``pipeline serve`` (1 process), its HTTP and
gRPC doors also get an open loop at half their median 64-caller maximum.
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import psutil

from pipeline.dev.bench.doorload import DoorBenchError, Load, run_load
from pipeline.dev.bench.doorservers import DOORS, MODEL, Running, Server, Setup, running, servers

__all__ = ["FULL", "QUICK", "Plan", "mean_batch", "run_suite"]

_ROWS = resources.files("pipeline.dev") / "_data" / "breast_cancer_rows.json"
# pipeline serve's stats line: "requests R/s predictions P/s mean batch B ..." (P rows a second)
_BATCH = re.compile(r"predictions (\d+)/s mean batch ([\d.]+)")
_LATE_LINE_S = 3.0  # how long a window with no stats line of its own waits for the next


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much to run.

    Attributes:
        name: ``full`` or ``quick``.
        rounds: Times every point is measured (the median is reported).
        concurrencies: Closed-loop callers per point.
        duration_s: Measured seconds per closed-loop point.
        warmup_s: Seconds of load before each point's window.
        latency_load: The open loop's rate, as a share of the door's 64-caller maximum.
        latency_s: Measured seconds of the open loop.
        latency_warmup_s: Seconds of open-loop load before its window.
    """

    name: str
    rounds: int
    concurrencies: tuple[int, ...] = (1, 8, 64)
    duration_s: float
    warmup_s: float
    latency_load: float = 0.5
    latency_s: float
    latency_warmup_s: float


_EMPTY_WINDOW_STRETCH = 5.0  # a point's window once more, this much longer, if too thin
_CPU_RESOLUTION_S = 2 / os.sysconf("SC_CLK_TCK")  # CPU times move in clock ticks
FULL = Plan(name="full", rounds=3, duration_s=5, warmup_s=1.5, latency_s=10, latency_warmup_s=2)
QUICK = Plan(
    name="quick", rounds=1, duration_s=0.4, warmup_s=0.2, latency_s=0.5, latency_warmup_s=0.2
)


@dataclass(frozen=True, slots=True)
class _Context:
    """What every point of a run shares."""

    plan: Plan
    binary: Path
    rows: Path
    logs_dir: Path
    setup: Setup
    progress: Callable[[str], None]


@dataclass(slots=True)
class _Figures:
    """What the rounds have measured so far.

    Attributes:
        runs: ``(contender, door, callers)`` -> one point per round.
        memory: Contender -> its peak RSS figures, one per round.
        latency: The open-loop points (measured in the last round of ``serve-1``).
    """

    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    memory: dict[str, list[dict[str, float]]] = field(default_factory=lambda: defaultdict(list))
    latency: dict[str, Any] = field(default_factory=dict)


def run_suite(
    plan: Plan,
    binary: Path,
    logs_dir: Path,
    *,
    max_wait_ms: float,
    serve_args: Sequence[str] = (),
    skip: Sequence[str] = (),
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every contender's points, round by round (the open loop in the last round of
    ``pipeline serve``, 1 process); return the figures."""
    setup = Setup(
        cores=len(os.sched_getaffinity(0)),
        max_wait_ms=max_wait_ms,
        stats_interval_s=min(1.0, plan.duration_s / 4),
        serve_args=tuple(serve_args),
    )
    contenders = [
        replace(s, not_run="skipped with --skip") if s.key in skip and not s.not_run else s
        for s in servers(setup)
    ]
    figures = _Figures()
    with resources.as_file(_ROWS) as rows:
        ctx = _Context(plan, binary, rows, logs_dir, setup, progress)
        for n in range(plan.rounds):
            for server in contenders:
                if not server.not_run:
                    _round(ctx, server, n, figures)
    table = [_row(server, door, figures, plan) for server in contenders for door in server.doors]
    return {
        "plan": asdict(plan),
        "cores": setup.cores,
        "max_wait_ms": max_wait_ms,
        "rows": table,
        "latency": figures.latency or {"not_run": "pipeline serve did not run", "points": []},
    }


def _round(ctx: _Context, server: Server, n: int, figures: _Figures) -> None:
    """One round of `server`: start it, measure every door at every concurrency (then, in
    the last round of ``serve-1``, the open loop), stop it."""
    logs = ctx.logs_dir / f"round-{n + 1}"
    try:
        with running(server, logs, ctx.setup) as up:
            for door in server.doors:
                for callers in ctx.plan.concurrencies:
                    point = _point(ctx, up, server.kind, door, callers=callers)
                    if "error" not in point and _too_thin(point):
                        # A window in which no call came back, or the server's CPU time
                        # did not move past the clock's resolution, says nothing of the
                        # door (a quick window is 0.4 s; a busy machine can take longer
                        # than that to answer the first of 64 callers): measure it once
                        # more, longer, and say so in the point.
                        point = _point(ctx, up, server.kind, door, callers=callers,
                                       stretch=_EMPTY_WINDOW_STRETCH)  # fmt: skip
                        point["window_stretched"] = _EMPTY_WINDOW_STRETCH
                    figures.runs[server.key, door, callers].append(point)
                    ctx.progress(
                        f"round {n + 1}/{ctx.plan.rounds} {server.key} {door} "
                        f"x{callers}: {_describe(point)}"
                    )
            if server.key == "serve-1" and n == ctx.plan.rounds - 1:
                figures.latency = _open_loop(ctx, up, figures)
            peak = up.sampler.figures()
        figures.memory[server.key].append(
            {"peak_rss_mb": peak.peak_rss_mb, "peak_rss_sum_mb": peak.peak_rss_sum_mb}
        )
    except DoorBenchError as exc:  # it did not start: every point of the round failed
        ctx.progress(f"round {n + 1}/{ctx.plan.rounds} {server.key}: {exc}")
        for door in server.doors:
            for callers in ctx.plan.concurrencies:
                figures.runs[server.key, door, callers].append({"error": str(exc)})


def _point(
    ctx: _Context,
    up: Running,
    kind: str,
    door: str,
    *,
    callers: int = 1,
    rate: float | None = None,
    stretch: float = 1.0,
) -> dict[str, Any]:
    """Run the generator once on `door` (its window and warm-up `stretch` times the
    plan's); its report plus the server's CPU and batch size."""
    _, proto, api = DOORS[door]
    open_loop = rate is not None
    load = Load(
        proto=proto,
        api=api,
        targets=up.targets(proto),
        rows=ctx.rows,
        model=MODEL,
        concurrency=callers,
        rate=rate,
        duration_s=(ctx.plan.latency_s if open_loop else ctx.plan.duration_s) * stretch,
        warmup_s=(ctx.plan.latency_warmup_s if open_loop else ctx.plan.warmup_s) * stretch,
    )
    marks = _Marks(up)
    try:
        report = run_load(ctx.binary, load, marks)
        up.check_alive()
    except DoorBenchError as exc:
        return {"error": str(exc)}
    if set(marks.seen) != {"measuring", "measured"}:
        return {"error": f"the load generator marked {sorted(marks.seen)} of its window"}
    return marks.figures(report, load.duration_s, batching=kind == "door")


@dataclass(slots=True)
class _Marks:
    """What was sampled when the generator's window opened and closed: the server's CPU
    time, the whole machine's busy CPU time, and how far the server's logs had got."""

    up: Running
    seen: dict[str, tuple[float, float, list[int]]] = field(default_factory=dict)

    def __call__(self, mark: str) -> None:
        self.seen[mark] = (self.up.sampler.cpu_seconds(), _busy_s(), self.up.log_sizes())

    def figures(self, report: dict[str, Any], seconds: float, *, batching: bool) -> dict[str, Any]:
        """The generator's report, plus the server's CPU, the others' and its mean batch."""
        (cpu_from, busy_from, logs_from) = self.seen["measuring"]
        (cpu_to, busy_to, logs_to) = self.seen["measured"]
        server, loadgen = cpu_to - cpu_from, report["cpu_s"]
        answered = report["requests"]
        batch = mean_batch(self.up.log_between(logs_from, logs_to)) if batching else None
        if batching and batch is None:
            batch = self._late_mean_batch(logs_from)
        return {
            **{k: v for k, v in report.items() if k not in ("targets", "proto", "api", "cpu_s")},
            "server_cpu_s": server,
            "cpu_s_per_1k": server / answered * 1000 if answered else None,
            "server_cpu_cores": server / seconds,
            "loadgen_cpu_cores": loadgen / seconds,
            "others_cpu_cores": max(0.0, busy_to - busy_from - server - loadgen) / seconds,
            "mean_batch": batch,
        }

    def _late_mean_batch(self, logs_from: list[int]) -> float | None:
        """The mean batch of the logs from the window's start through the first stats line
        written after it.

        On a starved machine a window can close before any stats line lands in it; the next
        line covers the window's last interval (lines after the load stopped count no
        predictions and are left out of the mean). Waits at most `_LATE_LINE_S`."""
        deadline = time.monotonic() + _LATE_LINE_S
        while True:
            batch = mean_batch(self.up.log_between(logs_from, self.up.log_sizes()))
            if batch is not None or time.monotonic() > deadline:
                return batch
            time.sleep(0.05)


def _too_thin(point: dict[str, Any]) -> bool:
    """Whether a window answered nothing, or its server's CPU time moved less than the
    clock's resolution (a CPU figure of 0 or 1 tick per request is not a measurement)."""
    return not point["requests"] or point["server_cpu_s"] < _CPU_RESOLUTION_S


def _busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, every process)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def mean_batch(log: str) -> float | None:
    """Rows per inference over the stats lines in `log` (one per interval of equal length):
    every line's rows divided by every line's batches."""
    rows = batches = 0.0
    for match in _BATCH.finditer(log):
        rate, mean = float(match.group(1)), float(match.group(2))
        if mean > 0 and rate > 0:
            rows += rate
            batches += rate / mean
    return rows / batches if batches else None


def _failure(point: dict[str, Any]) -> str | None:
    """Why a point has no figures, or None when it has."""
    if "error" in point:
        return str(point["error"])
    if not point["requests"]:
        return f"no request answered within the window; errors: {point['error_samples']}"
    return None


def _describe(point: dict[str, Any]) -> str:
    failure = _failure(point)
    if failure is not None:
        return "failed: " + failure.splitlines()[0]
    text = f"{point['requests_per_s']:,.0f} req/s, p50 {point['p50_ms']} p99 {point['p99_ms']} ms"
    if point.get("mean_batch"):
        text += f", mean batch {point['mean_batch']:.1f}"
    return text + (f", {point['errors']} errors {point['error_kinds']}" if point["errors"] else "")


def _median(points: list[dict[str, Any]], field: str) -> float | None:
    values = [p[field] for p in points if p.get(field) is not None]
    return statistics.median(values) if values else None


_MEDIANS = (
    "requests_per_s",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "cpu_s_per_1k",
    "server_cpu_cores",
    "loadgen_cpu_cores",
    "others_cpu_cores",
    "mean_batch",
)


def _row(server: Server, door: str, figures: _Figures, plan: Plan) -> dict[str, Any]:
    """One table row: medians over the rounds per concurrency, the largest peak RSS."""
    row: dict[str, Any] = {
        "key": server.key,
        "door": door,
        "label": server.label,
        "door_label": DOORS[door][0],
        "settings": server.settings,
        "notes": server.notes,
        "kind": server.kind,
        "instances": server.instances,
        "not_run": server.not_run,
        "points": {},
        "runs": {},
    }
    failed: dict[str, list[str]] = {}
    for callers in plan.concurrencies:
        got = figures.runs.get((server.key, door, callers), [])
        row["runs"][str(callers)] = got
        good = [p for p in got if _failure(p) is None]
        reasons = [r for r in map(_failure, got) if r is not None]
        if reasons:
            failed[str(callers)] = reasons
        if good:
            row["points"][str(callers)] = {
                **{f: _median(good, f) for f in _MEDIANS},
                "errors": sum(p["errors"] for p in good),
                "rounds": len(good),
            }
    row["failed"] = failed
    memory = figures.memory.get(server.key)
    if memory:
        row["peak_rss_mb"] = max(m["peak_rss_mb"] for m in memory)
        row["peak_rss_sum_mb"] = max(m["peak_rss_sum_mb"] for m in memory)
    if not row["points"] and not row["not_run"]:
        first = next(iter(failed.values()), ["no run"])[0]
        row["not_run"] = "failed: " + first.splitlines()[0]
    return row


def _open_loop(ctx: _Context, up: Running, figures: _Figures) -> dict[str, Any]:
    """The open loop at `plan.latency_load` of each main door's median 64-caller maximum."""
    top = max(ctx.plan.concurrencies)
    load = ctx.plan.latency_load
    points: list[dict[str, Any]] = []
    for door in ("http", "grpc"):
        good = [p for p in figures.runs["serve-1", door, top] if p.get("requests")]
        if not good:
            why = f"no {top}-caller maximum to take {load:.0%} of"
            points.append({"door": door, "load": load, "rate": None, "error": why})
            continue
        rate = load * (_median(good, "requests_per_s") or 0.0)
        point = _point(ctx, up, "door", door, rate=rate)
        ctx.progress(f"open loop serve-1 {door} at {rate:,.0f} req/s: {_describe(point)}")
        points.append({"door": door, "load": load, "rate": rate, **point})
    return {"key": "serve-1", "max_wait_ms": ctx.setup.max_wait_ms, "points": points}
