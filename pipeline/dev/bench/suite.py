"""The whole benchmark: ceilings, peers and the worker side by side, then worker latency.

`Plan` says how big the run is (`FULL` and `QUICK` are the two shipped sizes);
`run_suite` does it on one broker and returns every figure as one JSON-ready dict:

1. ceilings without Kafka: the codec (`micro.bench_codec`) and ONNX Runtime at the
   worker's batch size (`micro.bench_inference`);
2. the input topic is filled once; then, round by round (so noise spreads over every
   contender alike), each contender reads it from the start in a fresh group and writes
   to a fresh output topic (`runner.run_contender`);
3. the worker (1 process) is run under an open-loop producer at fractions of its median
   throughput, once per ``--max-wait-ms`` (`latency.measure_latency`).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.dev.bench import micro
from pipeline.dev.bench.contenders import (
    MODEL,
    REPO_ROOT,
    Contender,
    RunTopics,
    faust_contender,
    faust_engine_contender,
    naive_contender,
    quix_contender,
    relay_contender,
    worker_contender,
)
from pipeline.dev.bench.latency import LatencyPoint, Phase, measure_latency
from pipeline.dev.bench.runner import BenchError, BenchTopics, Launch, preload, run_contender

__all__ = ["FULL", "QUICK", "Plan", "run_suite"]

log = logging.getLogger("pipeline.bench")

_BATCH_SIZE = 256  # the worker's default --max-batch-size


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much to run.

    Attributes:
        name: ``full`` or ``quick``.
        events: Events pre-loaded and processed per run.
        runs: Runs per contender (the median is reported).
        naive_events: Events per run for the naive peer (None: `events`).
        worker_processes: Processes of the multi-process worker and relay rows.
        loads: Fractions of the worker's measured maximum for the latency points.
        max_waits_ms: ``--max-wait-ms`` values for the latency points.
        latency_s: Seconds measured per latency point (after `warmup_s`).
        warmup_s: Seconds of each latency point left out.
        micro_seconds: Seconds timed per ONNX Runtime point.
        codec_events: Events per codec repetition.
    """

    name: str
    events: int
    runs: int
    naive_events: int | None
    worker_processes: int
    loads: tuple[float, ...]
    max_waits_ms: tuple[float, ...]
    latency_s: float
    warmup_s: float
    micro_seconds: float
    codec_events: int


FULL = Plan(
    name="full",
    events=300_000,
    runs=3,
    naive_events=None,
    worker_processes=2,
    loads=(0.1, 0.5, 0.8),
    max_waits_ms=(1, 5, 20),
    latency_s=15,
    warmup_s=5,
    micro_seconds=1.0,
    codec_events=20_000,
)
QUICK = Plan(
    name="quick",
    events=20_000,
    runs=1,
    naive_events=2_000,
    worker_processes=2,
    loads=(0.5,),
    max_waits_ms=(1, 5, 20),
    latency_s=5,
    warmup_s=2,
    micro_seconds=0.2,
    codec_events=4_000,
)


def contenders(plan: Plan, *, quix_python: Path | None, skip: Sequence[str]) -> list[Contender]:
    """Every row of the throughput table, in table order; skipped ones carry a reason."""
    rows = [
        relay_contender(1),
        relay_contender(plan.worker_processes),
        naive_contender(),
        faust_contender(),
        faust_engine_contender(),
        quix_contender(quix_python),
        worker_contender(1),
        worker_contender(1, guarantee="exactly-once"),
        worker_contender(plan.worker_processes),
    ]
    return [
        replace(c, not_run="skipped with --skip") if c.key in skip and not c.not_run else c
        for c in rows
    ]


def run_suite(
    plan: Plan,
    bootstrap: str,
    *,
    logs_dir: Path,
    quix_python: Path | None = None,
    skip: Sequence[str] = (),
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark on `bootstrap`; return every figure (see `pipeline.dev.bench.report`)."""
    results: dict[str, Any] = {"plan": asdict(plan)}
    progress("ceilings without Kafka: codec and ONNX Runtime")
    results["ceilings"] = _ceilings(plan)
    topics = BenchTopics(bootstrap)
    try:
        rows = contenders(plan, quix_python=quix_python, skip=skip)
        results["contenders"] = _throughput(plan, topics, rows, logs_dir, progress)
        worker = next(r for r in results["contenders"] if r["key"] == "worker-1")
        results["latency"] = _latency(plan, topics, worker, logs_dir, progress)
    finally:
        topics.delete_all()
    return results


def _ceilings(plan: Plan) -> dict[str, Any]:
    codec = micro.bench_codec(n_events=plan.codec_events, repeats=3 if plan.runs < 3 else 5)
    models = micro.bench_inference(REPO_ROOT / "models", (_BATCH_SIZE,), plan.micro_seconds)
    rows_per_s = models[MODEL]["rows_per_s"][_BATCH_SIZE] if MODEL in models else None
    return {
        "codec": {**codec, "events_per_s": 1e6 / codec["total_us"]},
        "inference": {"model": MODEL, "batch_size": _BATCH_SIZE, "rows_per_s": rows_per_s},
    }


def _throughput(
    plan: Plan,
    topics: BenchTopics,
    rows: list[Contender],
    logs_dir: Path,
    progress: Callable[[str], None],
) -> list[dict[str, Any]]:
    source = topics.create("input")
    progress(f"pre-loading {plan.events:,} events into {source}")
    seconds = preload(topics.bootstrap, source, plan.events, MODEL)
    progress(f"pre-loaded in {seconds:.1f} s")
    runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in rows}
    for n in range(plan.runs):
        for c in rows:
            if c.not_run:
                continue
            count = plan.naive_events if c.key == "naive" and plan.naive_events else plan.events
            runs[c.key].append(_one_run(c, topics, source, count, logs_dir / f"{c.key}-{n}.log"))
            progress(f"run {n + 1}/{plan.runs} {c.label}: {_describe(runs[c.key][-1])}")
    return [_summary(c, runs[c.key]) for c in rows]


def _one_run(
    c: Contender, topics: BenchTopics, source: str, count: int, log_path: Path
) -> dict[str, Any]:
    run = RunTopics(
        bootstrap=topics.bootstrap,
        input=source,
        output=topics.create(c.key),
        dlq=topics.create(f"{c.key}-dlq"),
        group=topics.group(c.key),
    )
    launch = Launch(c.commands(run, count), c.env, log_path)
    try:
        figures = run_contender(
            launch,
            topics.counter([run.output, run.dlq]),
            count=count,
            timeout_s=120 + count / 500,
        )
    except BenchError as exc:
        return {"events_target": count, "error": str(exc), "log": str(log_path)}
    return {"events_target": count, **asdict(figures), "log": str(log_path)}


def _describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"failed: {run['error'].splitlines()[0]}"
    return (
        f"{run['throughput']:,.0f} events/s, {run['cpu_s_per_100k']:.2f} CPU s/100k, "
        f"peak RSS {run['peak_rss_mb']:.0f} MiB"
    )


def _summary(c: Contender, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": c.key,
        "label": c.label,
        "kind": c.kind,
        "processes": c.processes,
        "runs": runs,
        "not_run": c.not_run,
    }
    good = [r for r in runs if "error" not in r]
    if c.not_run is None and not good:
        row["not_run"] = "failed: " + (runs[0]["error"].splitlines()[0] if runs else "no run")
    if good:
        row.update(
            events=good[0]["events_target"],
            throughput=statistics.median(r["throughput"] for r in good),
            cpu_s_per_100k=statistics.median(r["cpu_s_per_100k"] for r in good),
            peak_rss_mb=max(r["peak_rss_mb"] for r in good),
            failed_runs=len(runs) - len(good),
        )
    return row


def _latency(
    plan: Plan,
    topics: BenchTopics,
    worker: dict[str, Any],
    logs_dir: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    maximum = worker.get("throughput")
    if not maximum:
        return {"not_run": "the worker has no measured throughput", "points": []}
    phases = [Phase(load, load * maximum) for load in plan.loads]
    points: list[LatencyPoint] = []
    for max_wait_ms in plan.max_waits_ms:
        progress(
            f"latency, --max-wait-ms {max_wait_ms:g}: loads {list(plan.loads)} "
            f"of {maximum:,.0f} events/s, {plan.latency_s:g} s each"
        )
        try:
            got = measure_latency(
                topics,
                worker_contender(1, max_wait_ms),
                phases,
                max_wait_ms=max_wait_ms,
                seconds=plan.latency_s,
                warmup_s=plan.warmup_s,
                log_path=logs_dir / f"latency-{max_wait_ms:g}ms.log",
            )
        except BenchError as exc:
            progress(f"  failed: {exc}")
            continue
        for p in got:
            progress(f"  {p['load']:.0%}: p50 {p['p50_ms']} p99 {p['p99_ms']} ms")
        points.extend(got)
    return {"max_throughput": maximum, "points": points}
