"""Share groups against consumer groups: more workers than partitions.

A consumer group gives each partition to one member, so on a 2-partition topic a third
worker sits idle; a share group (KIP-932) hands the records of a partition to every
member. The benchmark runs ``pipeline run --workers N`` with N = 1, 2, 4 and 8, as a
consumer group and as a share group, on the same pre-loaded 2-partition topic of main
events for the tree ensemble (``breast-cancer-gbt``, the slowest example model), round
by round like the other rows.

Besides events/s it counts the workers that got records: each worker serves
``/metrics`` (worker ``i`` on port ``P + i``), read just before the run is stopped. On a
2-core machine no group can use more than 2 cores, so the events/s of 4 and 8 workers
say what the extra processes cost, not what they would add on a bigger machine; the
count of busy workers is the shape that carries over.
"""

from __future__ import annotations

import contextlib
import statistics
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from pipeline.dev.bench.contenders import Contender, worker_contender
from pipeline.dev.bench.events import DATASETS
from pipeline.dev.bench.runner import BenchTopics, preload, run_once
from pipeline.dev.localserver import free_ports

__all__ = ["SHARE_MODEL", "run_share"]

SHARE_MODEL = "breast-cancer-gbt"
_PARTITIONS = 2


def share_contender(workers: int, group_type: str) -> tuple[Contender, int]:
    """``pipeline run --workers N --group-type T`` serving /metrics from a free port block."""
    port = free_ports(workers)
    base = worker_contender(
        workers,
        extra_args=("--group-type", group_type, "--metrics-port", str(port)),
    )
    label = f"{group_type} group, {workers} worker{'s' if workers > 1 else ''}"
    return replace(base, key=f"{group_type}-{workers}", label=label), port


def run_share(
    workers: tuple[int, ...],
    events: int,
    runs: int,
    topics: BenchTopics,
    logs_dir: Path,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Run every (group type, workers) row `runs` times; return the rows."""
    main = replace(DATASETS["full"], model=SHARE_MODEL)
    source = topics.create("share-input", partitions=_PARTITIONS)
    progress(f"share groups: pre-loading {events:,} events for {SHARE_MODEL} into {source}")
    preload(topics.bootstrap, source, events, main)
    rows = [share_contender(n, t) for n in workers for t in ("consumer", "share")]
    runs_of: dict[str, list[dict[str, Any]]] = {c.key: [] for c, _ in rows}
    for n in range(runs):
        for contender, port in rows:
            got = _one_run(contender, port, topics, source, events, SHARE_MODEL, logs_dir, n)
            runs_of[contender.key].append(got)
            progress(f"run {n + 1}/{runs} {contender.label}: {_describe(got)}")
    return {
        "model": SHARE_MODEL,
        "partitions": _PARTITIONS,
        "events": events,
        "rows": [_summary(c, runs_of[c.key]) for c, _ in rows],
    }


def _one_run(
    c: Contender,
    port: int,
    topics: BenchTopics,
    source: str,
    count: int,
    model: str,
    logs_dir: Path,
    n: int,
) -> dict[str, Any]:
    """`run_once`, and how many records each worker consumed, read before they stop."""
    busy: list[int] = []
    got = run_once(
        c,
        topics,
        source,
        count,
        model,
        logs_dir / f"share-{c.key}-{n}.log",
        slowest_events_per_s=200,
        before_stop=lambda: busy.extend(_consumed_per_worker(port, c.processes)),
    )
    if "error" in got:
        return got
    return {**got, "consumed_per_worker": busy, "busy_workers": sum(1 for x in busy if x > 0)}


def _consumed_per_worker(port: int, workers: int) -> list[int]:
    """``pipeline_records_consumed_total`` of each worker (-1 where it did not answer)."""
    counts = []
    for i in range(workers):
        total = -1
        with contextlib.suppress(OSError, ValueError):
            url = f"http://127.0.0.1:{port + i}/metrics"
            with urllib.request.urlopen(url, timeout=5) as answer:
                text = answer.read().decode()
            total = int(
                sum(
                    s.value
                    for f in text_string_to_metric_families(text)
                    if f.name == "pipeline_records_consumed"
                    for s in f.samples
                    if s.name == "pipeline_records_consumed_total"
                )
            )
        counts.append(total)
    return counts


def _describe(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"failed: {run['error'].splitlines()[0]}"
    return (
        f"{run['throughput']:,.0f} events/s, {run['busy_workers']} busy workers "
        f"{run['consumed_per_worker']}"
    )


def _summary(c: Contender, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"key": c.key, "label": c.label, "workers": c.processes, "runs": runs}
    good = [r for r in runs if "error" not in r]
    if not good:
        row["not_run"] = "failed: " + (runs[0]["error"].splitlines()[0] if runs else "no run")
        return row
    row.update(
        throughput=statistics.median(r["throughput"] for r in good),
        cpu_s_per_100k=statistics.median(r["cpu_s_per_100k"] for r in good),
        busy_workers=min(r["busy_workers"] for r in good),
        peak_rss_sum_mb=max(r["peak_rss_sum_mb"] for r in good),
        failed_runs=len(runs) - len(good),
    )
    return row
