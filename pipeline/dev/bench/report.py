"""The benchmark's outputs: targets, a Markdown report, the JSON file, and the latency plot.

`evaluate_targets` checks the issue's targets against the figures; `markdown` renders
the throughput table, the latency table and the target lines; `write_json` and
`write_plot` (matplotlib, Agg backend: no display needed) write the files. Every figure
in the Markdown comes from the same dict that goes to the JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.dev.bench.contenders import EOS_COMMIT_INTERVAL_MS

__all__ = ["evaluate_targets", "markdown", "write_json", "write_plot"]

RSS_LIMIT_MB = 400.0
LATENCY_SLACK_MS = 15.0


def _row(results: dict[str, Any], key: str) -> dict[str, Any]:
    return next((r for r in results.get("contenders", []) if r["key"] == key), {})


def _ratio_target(results: dict[str, Any], other: str, factor: float, text: str) -> dict[str, Any]:
    mine = _row(results, "worker-1").get("throughput")
    theirs = _row(results, other).get("throughput")
    if not mine or not theirs:
        why = _row(results, other).get("not_run") or "no figure"
        return {"target": text, "met": None, "value": why}
    ratio = mine / theirs
    return {
        "target": text,
        "met": ratio >= factor,
        "value": f"{ratio:.2f}x ({mine:,.0f} vs {theirs:,.0f} events/s)",
    }


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target: its text, whether it was met (None: not measured), the figure."""
    targets = [
        _ratio_target(results, "naive", 5, "worker (1 process) >= 5x the naive peer"),
        _ratio_target(results, "faust", 3, "worker (1 process) >= 3x the Faust agent"),
        _ratio_target(results, "relay-1", 0.5, "worker (1 process) >= 50% of the relay ceiling"),
    ]
    for point in results.get("latency", {}).get("points", []):
        if point["load"] != 0.5:
            continue
        wait = point["max_wait_ms"]
        limit, p99 = wait + LATENCY_SLACK_MS, point["p99_ms"]
        targets.append(
            {
                "target": f"p99 at 50% load <= {limit:g} ms (--max-wait-ms {wait:g})",
                "met": None if p99 is None else p99 <= limit,
                "value": "no events" if p99 is None else f"{p99:.1f} ms",
            }
        )
    rss = [
        r["peak_rss_mb"]
        for key in ("worker-1", "worker-2")
        for r in _row(results, key).get("runs", [])
        if "peak_rss_mb" in r
    ]
    rss += [p["worker_peak_rss_mb"] for p in results.get("latency", {}).get("points", [])]
    targets.append(
        {
            "target": f"peak RSS of a worker process <= {RSS_LIMIT_MB:g} MB in every run",
            "met": (max(rss) <= RSS_LIMIT_MB) if rss else None,
            "value": f"largest {max(rss):.0f} MiB over {len(rss)} runs" if rss else "not measured",
        }
    )
    return targets


def _quick_warning(results: dict[str, Any]) -> list[str]:
    if results["plan"]["name"] != "quick":
        return []
    return [
        "**Quick run**: a smoke test of the benchmark itself. Its windows last a fraction of "
        "a second, so its figures are not fit to quote; run the full benchmark for those.",
        "",
    ]


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _throughput_table(results: dict[str, Any]) -> list[str]:
    plan = results["plan"]
    worker = _row(results, "worker-1").get("throughput")
    codec, inference = results["ceilings"]["codec"], results["ceilings"]["inference"]
    lines = [
        f"Throughput: {plan['events']:,} events pre-loaded into a 4-partition topic, "
        f"median of {plan['runs']} run{'s' if plan['runs'] > 1 else ''}; CPU seconds of the "
        "contender's processes per 100k events; peak RSS of its largest process.",
        "",
        "| contender | processes | events/run | events/s | worker (1 process) = | "
        "CPU s / 100k events | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| ceiling: decode + encode only, no Kafka | 1 | {codec['events']:,} | "
        f"{codec['events_per_s']:,.0f} | {_times(worker, codec['events_per_s'])} | - | - |",
        f"| ceiling: ONNX Runtime, MLP at batch {inference['batch_size']}, no Kafka | 1 | - | "
        f"{_num(inference['rows_per_s'])} rows/s | {_times(worker, inference['rows_per_s'])} "
        "| - | - |",
    ]
    for row in results["contenders"]:
        if row.get("throughput") is None:
            lines.append(
                f"| {row['label']} | {row['processes']} | - | "
                f"{row['not_run'] or 'not run'} | - | - | - |"
            )
            continue
        lines.append(
            f"| {row['label']} | {row['processes']} | {row['events']:,} | "
            f"{row['throughput']:,.0f} | {_times(worker, row['throughput'])} | "
            f"{row['cpu_s_per_100k']:.2f} | {row['peak_rss_mb']:.0f} |"
        )
    eos = _row(results, "worker-1-eos").get("throughput")
    if worker and eos:
        lines += [
            "",
            f"Exactly-once costs the worker {1 - eos / worker:.0%} of its throughput here "
            f"({eos:,.0f} vs {worker:,.0f} events/s; one transaction every "
            f"{EOS_COMMIT_INTERVAL_MS} ms, each finishing every batch in flight first).",
        ]
    return lines


def _times(worker: float | None, other: float | None) -> str:
    return "-" if not worker or not other else f"{worker / other:.2f}x"


def _latency_table(results: dict[str, Any]) -> list[str]:
    latency = results.get("latency", {})
    points = latency.get("points", [])
    if not points:
        return [f"Latency: not measured ({latency.get('not_run', 'no points')})."]
    lines = [
        "Latency of `pipeline run` (1 process) under an open-loop producer, at fractions of "
        f"its median throughput ({latency['max_throughput']:,.0f} events/s): end to end is "
        "the output consumer's receive time minus the event's `ts` (its due time at the "
        "producer); worker is the prediction's `predicted_at` minus `ts`.",
        "",
        "| --max-wait-ms | load | events/s | end-to-end p50 ms | p99 ms | p99.9 ms | "
        "worker p50 ms | worker p99 ms | worker CPU cores | machine CPU busy | events measured |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        lines.append(
            f"| {p['max_wait_ms']:g} | {p['load']:.0%} | {p['rate']:,.0f} | "
            f"{_num(p['p50_ms'], 1)} | {_num(p['p99_ms'], 1)} | {_num(p['p999_ms'], 1)} | "
            f"{_num(p['worker_p50_ms'], 1)} | {_num(p['worker_p99_ms'], 1)} | "
            f"{_num(p.get('worker_cpu_cores'), 2)} | {p.get('machine_cpu_busy', 0):.0%} | "
            f"{p['events']:,} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The report: machine, throughput table, latency table, targets, how to reproduce."""
    meta = results["meta"]
    machine = meta["machine"]
    lines = [
        f"Benchmark ({results['plan']['name']} run, {meta['finished_at']}) on "
        f"{machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, {machine['broker']}; load average at start "
        f"{', '.join(str(x) for x in machine['load_average_at_start'])}. "
        f"Reproduce with `{meta['command']}`.",
        "",
        *_quick_warning(results),
        *_throughput_table(results),
        "",
        *_latency_table(results),
        "",
        "Targets:",
        "",
    ]
    for t in results["targets"]:
        verdict = {True: "met", False: "missed", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: **{verdict}** ({t['value']})")
    return "\n".join(lines) + "\n"


def write_json(results: dict[str, Any], paths: Sequence[Path]) -> None:
    """Write `results` as indented JSON to every path."""
    text = json.dumps(results, indent=2, default=str) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def write_plot(results: dict[str, Any], path: Path) -> str | None:
    """Plot end-to-end latency percentiles against load; return why not, or None if written."""
    points = results.get("latency", {}).get("points", [])
    if not points:
        return "no latency points"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    styles = {"p50_ms": ("p50", "-"), "p99_ms": ("p99", "--"), "p999_ms": ("p99.9", ":")}
    for n, wait in enumerate(sorted({p["max_wait_ms"] for p in points})):
        mine = sorted((p for p in points if p["max_wait_ms"] == wait), key=lambda p: p["load"])
        for field, (name, style) in styles.items():
            xs = [p["load"] * 100 for p in mine if p[field] is not None]
            ys = [p[field] for p in mine if p[field] is not None]
            ax.plot(
                xs, ys, style, marker="o", color=f"C{n}", label=f"--max-wait-ms {wait:g}, {name}"
            )
    ax.set_yscale("log")
    ax.set_xlabel(
        f"load, % of the worker's median throughput "
        f"({results['latency']['max_throughput']:,.0f} events/s)"
    )
    ax.set_ylabel("event-to-prediction latency, ms (end to end)")
    ax.set_title("pipeline run, 1 process: latency under an open-loop producer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None
