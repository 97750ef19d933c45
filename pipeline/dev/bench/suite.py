"""The whole benchmark: ceilings, peers and the worker side by side, then worker latency.

`Plan` says how big the run is (`FULL` and `QUICK` are the two shipped sizes);
`run_suite` does it on one broker and returns every figure as one JSON-ready dict:

1. ceilings without Kafka: the codec (`micro.bench_codec`) and ONNX Runtime at the
   worker's batch size (`micro.bench_inference`);
2. throughput on the main events (30 full-precision features, about 670 bytes): the
   input topic is filled once; then, round by round (so noise spreads over every
   contender alike), each contender reads it from the start in a fresh group and writes
   to a fresh output topic (`runner.run_once`);
3. the same for the other event sizes (5-decimal rows, 200 features), with the relay
   ceilings and the worker only;
4. the worker (1 process) under an open-loop producer at fractions of its median
   throughput, once per way of batching (``--max-wait-ms`` 1, 5, 20 and
   ``--latency-target-ms``), plus a fixed 2,000 events/s (with a latency target: five
   10 s windows, each held to the tail target) and a return from idle
   (`latency.measure_latency`), with the worker's stage histograms per point;
5. share groups against consumer groups, 1 to 8 workers on a 2-partition topic
   (`sharebench.run_share`);
6. the relay and the worker again on a local three-node cluster, replication 3
   (`on_a_cluster`).

``--skip share`` and ``--skip cluster`` leave out the last two parts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.dev.bench import micro
from pipeline.dev.bench.contenders import (
    MODEL,
    REPO_ROOT,
    Contender,
    baseline_contender,
    faust_contender,
    faust_engine_contender,
    naive_contender,
    quix_contender,
    relay_contender,
    shadow_contender,
    worker_contender,
)
from pipeline.dev.bench.events import AVRO_EVENT_SCHEMA, DATASETS, Dataset
from pipeline.dev.bench.latency import Batching, LatencyPoint, Phase, measure_latency
from pipeline.dev.bench.runner import (
    BenchError,
    BenchTopics,
    cluster,
    preload,
    run_once,
)
from pipeline.dev.bench.sharebench import run_share
from pipeline.dev.localregistry import LocalRegistry, missing_tools
from pipeline.errors import PipelineError, RegistryError
from pipeline.schemaregistry import avro_encoder

__all__ = ["FULL", "QUICK", "Plan", "on_a_cluster", "run_suite"]

log = logging.getLogger("pipeline.bench")

_BATCH_SIZE = 256  # the worker's default --max-batch-size
_PEERS = ("naive", "faust", "faust-engine", "quix")  # the slow peers (`Plan.peer_events`)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much to run.

    Attributes:
        name: ``full`` or ``quick``.
        events: Events pre-loaded and processed per run (main events).
        runs: Runs per contender (the median is reported).
        peer_events: Events per run for the slow peers (the naive loop, Faust and Quix
            Streams, each under 30,000 events/s here; None: `events`).
        worker_processes: Processes of the multi-process worker and relay rows.
        size_events: Events per run for the other event sets, by set.
        loads: Fractions of the worker's measured maximum for the latency points.
        max_waits_ms: ``--max-wait-ms`` values for the latency points.
        latency_targets_ms: ``--latency-target-ms`` values for the latency points.
        fixed_rate: A latency point at this rate for every way of batching (events/s).
        tail_windows: With a ``--latency-target-ms``, the fixed-rate point is measured
            for this many windows of `tail_window_s` (after `warmup_s`), each with its
            own p99 and p99.9: the tail target holds in every one.
        tail_window_s: Seconds per window of that point.
        idle_s: Before the return-from-idle point, the worker idles this long.
        latency_s: Seconds measured per latency point (after `warmup_s`).
        warmup_s: Seconds of each latency point left out.
        micro_seconds: Seconds timed per ONNX Runtime point.
        codec_events: Events per codec repetition.
        share_workers: Worker counts of the share-group rows (none: no such rows).
        share_events: Events per share-group run.
        cluster_events: Events per run on a three-node cluster (0: not run).
    """

    name: str
    events: int
    runs: int
    peer_events: int | None
    worker_processes: int
    size_events: dict[str, int]
    loads: tuple[float, ...]
    max_waits_ms: tuple[float, ...]
    latency_targets_ms: tuple[float, ...]
    fixed_rate: float
    tail_windows: int
    tail_window_s: float
    idle_s: float
    latency_s: float
    warmup_s: float
    micro_seconds: float
    codec_events: int
    share_workers: tuple[int, ...]
    share_events: int
    cluster_events: int


FULL = Plan(
    name="full",
    events=300_000,
    runs=3,
    peer_events=None,
    worker_processes=2,
    size_events={"rounded": 300_000, "wide": 60_000, "typed": 300_000, "avro": 300_000},
    loads=(0.1, 0.3, 0.5, 0.7, 0.9),
    max_waits_ms=(1, 5, 20),
    latency_targets_ms=(20,),
    fixed_rate=2000,
    tail_windows=5,
    tail_window_s=10,
    idle_s=30,
    latency_s=15,
    warmup_s=5,
    micro_seconds=1.0,
    codec_events=20_000,
    share_workers=(1, 2, 4, 8),
    share_events=100_000,
    cluster_events=300_000,
)
QUICK = Plan(
    name="quick",
    events=20_000,
    runs=1,
    peer_events=2_000,
    worker_processes=2,
    size_events={"rounded": 10_000, "wide": 2_000, "typed": 4_000, "avro": 4_000},
    loads=(0.5,),
    max_waits_ms=(1, 5, 20),
    latency_targets_ms=(20,),
    fixed_rate=2000,
    tail_windows=2,
    tail_window_s=1.5,
    idle_s=2,
    latency_s=3,
    warmup_s=1,
    micro_seconds=0.2,
    codec_events=4_000,
    share_workers=(1, 4),
    share_events=4_000,
    cluster_events=5_000,
)


def contenders(
    plan: Plan, *, quix_python: Path | None, skip: Sequence[str], baseline: str | None = None
) -> list[Contender]:
    """Every row of the main throughput table, in table order; skipped ones carry a reason.
    `baseline`, a git revision, adds the worker as it was there beside today's."""
    n = plan.worker_processes
    rows = [
        relay_contender(1),
        relay_contender(1, "tuned"),
        relay_contender(n),
        relay_contender(n, "tuned"),
        naive_contender(),
        faust_contender(),
        faust_engine_contender(),
        quix_contender(quix_python),
        worker_contender(1),
        *([baseline_contender(baseline)] if baseline else []),
        worker_contender(1, guarantee="exactly-once"),
        worker_contender(1, metrics=True),
        shadow_contender(),
        worker_contender(n),
    ]
    return [
        replace(c, not_run="skipped with --skip") if c.key in skip and not c.not_run else c
        for c in rows
    ]


def size_contenders(skip: Sequence[str], registry_url: str | None = None) -> list[Contender]:
    """The rows run on every other event set: the relay ceilings and the worker (reading
    framed Avro values from the registry at `registry_url`, if given)."""
    worker = worker_contender(1)
    if registry_url:
        worker = replace(
            worker,
            label=f"{worker.label}, --value-format avro",
            extra_args=(*worker.extra_args, "--value-format", "avro",
                        "--schema-registry-url", registry_url),
        )  # fmt: skip
    rows = [relay_contender(1), relay_contender(1, "tuned"), worker]
    return [c for c in rows if c.key not in skip]


def _size(
    events: Dataset,
    count: int,
    plan: Plan,
    topics: BenchTopics,
    skip: Sequence[str],
    logs_dir: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The size table's rows for one set of events; an Avro set runs against a Schema
    Registry of its own (not measured, with the reason, where none can start)."""
    described = _describe_events(events)
    if not events.avro:
        rows = _throughput(count, plan, topics, size_contenders(skip), events, logs_dir, progress)
        return {"events": described, "rows": rows}
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(_registry(logs_dir / "registry", progress))
        except PipelineError as exc:
            progress(f"  no Avro row: {exc}")
            return {"events": described, "rows": [], "not_run": str(exc).splitlines()[0]}
        schema = logs_dir / "event.avsc"
        schema.write_text(json.dumps(AVRO_EVENT_SCHEMA))
        encode = avro_encoder(url, {}, schema, "bench-avro-events")
        rows = _throughput(count, plan, topics, size_contenders(skip, url), events, logs_dir,
                           progress, encode=encode)  # fmt: skip
    return {"events": described, "rows": rows}


@contextlib.contextmanager
def _registry(data_dir: Path, progress: Callable[[str], None]) -> Iterator[str]:
    """A local Schema Registry for the Avro row; yields its Confluent-compatible URL."""
    missing = missing_tools()
    if missing is not None:
        raise RegistryError(missing)
    progress("starting a Schema Registry for the Avro row")
    registry = LocalRegistry(data_dir)
    info, _ = registry.start(port=0)  # a free port
    try:
        yield info.url
    finally:
        registry.stop()


def run_suite(
    plan: Plan,
    bootstrap: str,
    *,
    logs_dir: Path,
    quix_python: Path | None = None,
    skip: Sequence[str] = (),
    baseline: str | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark on `bootstrap`; return every figure (see `pipeline.dev.bench.report`)."""
    results: dict[str, Any] = {"plan": asdict(plan)}
    progress("ceilings without Kafka: codec and ONNX Runtime")
    results["ceilings"] = _ceilings(plan)
    topics = BenchTopics(bootstrap)
    main = DATASETS["full"]
    try:
        rows = contenders(plan, quix_python=quix_python, skip=skip, baseline=baseline)
        results["events"] = _describe_events(main)
        results["contenders"] = _throughput(
            plan.events, plan, topics, rows, main, logs_dir, progress
        )
        results["sizes"] = [
            _size(DATASETS[key], count, plan, topics, skip, logs_dir, progress)
            for key, count in plan.size_events.items()
        ]
        worker = next(r for r in results["contenders"] if r["key"] == "worker-1")
        results["latency"] = _latency(plan, topics, worker, main, logs_dir, progress)
        if plan.share_workers and "share" not in skip:
            results["share"] = run_share(
                plan.share_workers, plan.share_events, plan.runs, topics, logs_dir, progress
            )
    finally:
        topics.delete_all()
    if plan.cluster_events and "cluster" not in skip:
        results["cluster"] = on_a_cluster(plan, main, logs_dir / "cluster", progress)
    return results


def on_a_cluster(
    plan: Plan, events: Dataset, logs_dir: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """The relay and the worker on a local three-node cluster, topics replicated 3 times
    with ``min.insync.replicas`` 2 (every producer here writes with ``acks=all``)."""
    progress("starting a three-node cluster (replication 3, min.insync.replicas 2)")
    try:
        with cluster(3) as bootstrap:
            topics = BenchTopics(bootstrap, replication=3)
            try:
                rows = [relay_contender(1), relay_contender(1, "tuned"), worker_contender(1)]
                measured = _throughput(
                    plan.cluster_events, plan, topics, rows, events, logs_dir, progress
                )
            finally:
                topics.delete_all()
    except PipelineError as exc:  # the cluster would not start: say so, keep the rest
        progress(f"  no cluster: {exc}")
        return {"not_run": str(exc).splitlines()[0]}
    return {
        "nodes": 3,
        "replication": 3,
        "min_insync_replicas": 2,
        "events": _describe_events(events),
        "rows": measured,
    }


def _describe_events(events: Dataset) -> dict[str, Any]:
    return {
        "key": events.key,
        "label": events.label,
        "model": events.model,
        "mean_bytes": events.mean_bytes(),
    }


def _ceilings(plan: Plan) -> dict[str, Any]:
    codec = micro.bench_codec(n_events=plan.codec_events, repeats=3 if plan.runs < 3 else 5)
    models = micro.bench_inference(REPO_ROOT / "models", (_BATCH_SIZE,), plan.micro_seconds)
    rows_per_s = models[MODEL]["rows_per_s"][_BATCH_SIZE] if MODEL in models else None
    return {
        "codec": {**codec, "events_per_s": 1e6 / codec["total_us"]},
        "inference": {"model": MODEL, "batch_size": _BATCH_SIZE, "rows_per_s": rows_per_s},
    }


def _throughput(
    count: int,
    plan: Plan,
    topics: BenchTopics,
    rows: list[Contender],
    events: Dataset,
    logs_dir: Path,
    progress: Callable[[str], None],
    encode: Callable[[bytes], bytes] | None = None,
) -> list[dict[str, Any]]:
    source = topics.create(f"input-{events.key}")
    progress(f"pre-loading {count:,} events ({events.label}) into {source}")
    seconds = preload(topics.bootstrap, source, count, events, encode)
    progress(f"pre-loaded in {seconds:.1f} s")
    runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in rows}
    for n in range(plan.runs):
        for c in rows:
            if c.not_run:
                continue
            target = plan.peer_events if c.key in _PEERS and plan.peer_events else count
            log_path = logs_dir / f"{events.key}-{c.key}-{n}.log"
            runs[c.key].append(
                run_once(
                    c, topics, source, target, events.model, log_path, slowest_events_per_s=500
                )
            )
            progress(f"run {n + 1}/{plan.runs} {c.label} ({events.key}): "
                     f"{_describe(runs[c.key][-1])}")  # fmt: skip
    return [_summary(c, runs[c.key], events) for c in rows]


def _describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"failed: {run['error'].splitlines()[0]}"
    return (
        f"{run['throughput']:,.0f} events/s, {run['cpu_s_per_100k']:.2f} CPU s/100k, "
        f"peak RSS {run['peak_rss_mb']:.0f} MiB"
    )


def _summary(c: Contender, runs: list[dict[str, Any]], events: Dataset) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": c.key,
        "label": c.label,
        "kind": c.kind,
        "processes": c.processes,
        "settings": c.settings_label,
        "events_set": events.key,
        "runs": runs,
        "not_run": c.not_run,
    }
    good = [r for r in runs if "error" not in r]
    if c.not_run is None and not good:
        row["not_run"] = "failed: " + (runs[0]["error"].splitlines()[0] if runs else "no run")
    if good:
        throughput = statistics.median(r["throughput"] for r in good)
        row.update(
            events=good[0]["events_target"],
            throughput=throughput,
            mb_per_s=throughput * events.mean_bytes() / 1e6,
            cpu_s_per_100k=statistics.median(r["cpu_s_per_100k"] for r in good),
            peak_rss_mb=max(r["peak_rss_mb"] for r in good),
            failed_runs=len(runs) - len(good),
        )
    return row


def _latency(
    plan: Plan,
    topics: BenchTopics,
    worker: dict[str, Any],
    events: Dataset,
    logs_dir: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    maximum = worker.get("throughput")
    if not maximum:
        return {"not_run": "the worker has no measured throughput", "points": []}
    seconds, warmup = plan.latency_s, plan.warmup_s
    phases = [Phase(f"{load:.0%}", load * maximum, load, seconds, warmup) for load in plan.loads]
    fixed = Phase(f"{plan.fixed_rate:,.0f} events/s", plan.fixed_rate, None, seconds, warmup)
    # back from idle: no warm-up left out, the first seconds are the point
    idle = Phase(f"{plan.fixed_rate:,.0f} events/s after {plan.idle_s:g} s idle",
                 plan.fixed_rate, None, seconds, 0.0, idle_before_s=plan.idle_s)  # fmt: skip
    ways = [Batching(max_wait_ms=w) for w in plan.max_waits_ms]
    ways += [Batching(latency_target_ms=t) for t in plan.latency_targets_ms]
    points: list[LatencyPoint] = []
    tail = replace(fixed, seconds=plan.tail_windows * plan.tail_window_s,
                   windows=plan.tail_windows)  # fmt: skip
    for batching in ways:
        first = tail if batching.latency_target_ms else fixed
        progress(
            f"latency, {batching.label}: {first.label} for {first.seconds:g} s, then loads "
            f"{list(plan.loads)} of {maximum:,.0f} events/s and {idle.label}, {seconds:g} s each"
        )
        name = batching.label.removeprefix("--").replace(" ", "-")
        try:
            got = measure_latency(
                topics,
                batching,
                [first, *phases, idle],
                events=events,
                log_path=logs_dir / f"latency-{name}.log",
            )
        except BenchError as exc:
            progress(f"  failed: {exc}")
            continue
        for p in got:
            progress(f"  {p['phase']}: p50 {p['p50_ms']} p99 {p['p99_ms']} ms")
        points.extend(got)
    return {"max_throughput": maximum, "points": points}
