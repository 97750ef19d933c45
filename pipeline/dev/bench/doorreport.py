"""The front-door benchmark's outputs: the machine, the targets, the Markdown, JSON and plot.

`evaluate_targets` checks issue #9's targets against the figures: at 64 callers, each main
door of ``pipeline serve`` (1 process) answers at least 3x the requests of the per-request
peers, and its p99 under an open loop at half its maximum is at most ``max_wait_ms`` +
10 ms. `markdown` renders one table row per contender and door; `write_all` writes the JSON,
the Markdown and the plot (matplotlib, Agg backend). Every figure in the Markdown comes from
the dict that goes to the JSON.
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.dev.bench.doorload import go_version
from pipeline.dev.bench.machine import describe_machine as describe_bench_machine
from pipeline.dev.bench.report import write_json

__all__ = ["describe_machine", "evaluate_targets", "markdown", "write_all", "write_plot"]

RATIO_TARGET = 3.0
LATENCY_SLACK_MS = 10.0
LONE_CALLER_P50_MS = 1.0  # issue 25: a lone caller is answered at once with default flags
_PACKAGES = (
    "onnxruntime",
    "numpy",
    "orjson",
    "uvicorn",
    "uvloop",
    "httptools",
    "grpcio",
    "protobuf",
    "flask",
    "werkzeug",
    "gunicorn",
    "fastapi",
    "starlette",
    "pydantic",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict[str, Any]:
    """CPU, cores, memory, load average, Python, Go and the versions that shape the figures."""
    bench = describe_bench_machine(own_broker=False, quix_python=None)
    keep = ("cpu", "cores", "memory_gib", "load_average_at_start", "os", "python")
    return {
        **{k: bench[k] for k in keep},
        "go": go_version(),
        "versions": {p: _version(p) for p in _PACKAGES},
    }


def _point(results: dict[str, Any], key: str, door: str, callers: str) -> dict[str, Any]:
    for row in results["rows"]:
        if row["key"] == key and row["door"] == door:
            return dict(row["points"].get(callers, {}))
    return {}


def _ratio_target(results: dict[str, Any], door: str, top: str) -> dict[str, Any]:
    text = (
        f"`pipeline serve` (1 process) {door.upper()} door >= {RATIO_TARGET:g}x the "
        f"per-request peers' requests/s at {top} callers"
    )
    mine = _point(results, "serve-1", door, top).get("requests_per_s")
    peers = [
        (r["key"], r["points"][top]["requests_per_s"])
        for r in results["rows"]
        if r["kind"] == "peer" and top in r["points"]
    ]
    if not mine or not peers:
        return {"target": text, "met": None, "value": "not measured (a row did not run)"}
    best_key, best = max(peers, key=lambda p: p[1])
    each = ", ".join(f"{mine / rps:.2f}x {key}" for key, rps in peers)
    return {
        "target": text,
        "met": mine >= RATIO_TARGET * best,
        "value": f"{mine / best:.2f}x the best peer, {best_key} ({mine:,.0f} vs {best:,.0f} "
        f"req/s); {each}",
    }


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per target: its text, whether it was met (None: not measured), the figure."""
    top = str(max(results["plan"]["concurrencies"]))
    targets = [_ratio_target(results, door, top) for door in ("http", "grpc")]
    latency = results["latency"]
    limit = results["max_wait_ms"] + LATENCY_SLACK_MS
    for point in latency["points"]:
        text = (
            f"{point['door'].upper()} door: p99 <= {limit:g} ms (--max-wait-ms "
            f"{results['max_wait_ms']:g} + {LATENCY_SLACK_MS:g}) in an open loop at "
            f"{point['load']:.0%} of its {top}-caller maximum"
        )
        p99 = point.get("p99_ms")
        value = (
            (
                f"p99 {p99:.1f} ms, p50 {point['p50_ms']:.1f} ms at {point['rate']:,.0f} "
                f"req/s, {point['errors']} errors"
            )
            if p99 is not None
            else (point.get("error", "no request answered"))
        )
        targets.append(
            {"target": text, "met": None if p99 is None else p99 <= limit, "value": value}
        )
    targets += [_lone_caller_target(results, door) for door in ("http", "grpc")]
    if not latency["points"]:
        targets.append(
            {
                "target": f"p99 <= {limit:g} ms at half the door's maximum",
                "met": None,
                "value": latency.get("not_run", "not run"),
            }
        )
    return targets


def _lone_caller_target(results: dict[str, Any], door: str) -> dict[str, Any]:
    text = (
        f"`pipeline serve` (1 process, its default dispatch) {door.upper()} door: a lone "
        f"caller's p50 <= {LONE_CALLER_P50_MS:g} ms"
    )
    point = _point(results, "serve-1", door, "1")
    p50 = point.get("p50_ms")
    if p50 is None:
        return {"target": text, "met": None, "value": "not measured (the point did not run)"}
    due = _point(results, "serve-1-due", door, "1").get("p50_ms")
    than = "" if due is None else f" (with --dispatch when-due: {due:.2f} ms)"
    return {"target": text, "met": p50 <= LONE_CALLER_P50_MS, "value": f"p50 {p50:.2f} ms{than}"}


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _cells(row: dict[str, Any], callers: tuple[int, ...]) -> list[str]:
    cells = []
    for n in callers:
        p = row["points"].get(str(n))
        if p is None:
            cells += ["failed" if str(n) in row["failed"] else "-", "-"]
            continue
        errors = f" ({p['errors']} errors)" if p["errors"] else ""
        cells += [
            _num(p["requests_per_s"]) + errors,
            f"{_num(p['p50_ms'], 1)} / {_num(p['p99_ms'], 1)}",
        ]
    top = row["points"].get(str(callers[-1]), {})
    rss = (
        f"{_num(row.get('peak_rss_mb'))} / {_num(row.get('peak_rss_sum_mb'))}"
        if row.get("peak_rss_mb")
        else "-"
    )
    return [*cells, _num(top.get("mean_batch"), 1), _num(top.get("cpu_s_per_1k"), 3), rss]


def _closed_table(results: dict[str, Any]) -> list[str]:
    plan = results["plan"]
    callers = tuple(plan["concurrencies"])
    top = callers[-1]
    loadgen = [p["loadgen_cpu_cores"] for r in results["rows"] for p in r["points"].values()]
    head = " | ".join(f"req/s x{n} | p50 / p99 ms x{n}" for n in callers)
    lines = [
        f"Closed loop: N callers, each sending its next request (one row) as soon as the "
        f"previous one is answered; {plan['duration_s']:g} s measured after "
        f"{plan['warmup_s']:g} s of warm-up per point, median of {plan['rounds']} "
        f"round{'s' if plan['rounds'] > 1 else ''} (every contender once per round). CPU "
        f"seconds of the server's processes per 1,000 requests and its mean batch at {top} "
        "callers; peak RSS of its largest process / of all its processes, over the round. "
        "The load generator (Go: net/http with keep-alive, grpc-go on one connection per "
        "server process) shares the machine: it used at most "
        f"{max(loadgen, default=0):.2f} CPU cores.",
        "",
        f"| contender | door | how it runs | {head} | mean batch x{top} | "
        f"CPU s / 1k requests x{top} | peak RSS MiB |",
        "| --- | --- | --- | " + " | ".join(["---:"] * (2 * len(callers) + 3)) + " |",
    ]
    for row in results["rows"]:
        name = f"**{row['label']}**" if row["kind"] == "door" else row["label"]
        if not row["points"]:
            blank = " | ".join(["-"] * (2 * len(callers) + 3))
            lines.append(
                f"| {name} | {row['door_label']} | {row['settings']} | "
                f"not run: {row['not_run']} | {blank[4:]} |"
            )
            continue
        lines.append(
            f"| {name} | {row['door_label']} | {row['settings']} | "
            + " | ".join(_cells(row, callers))
            + " |"
        )
    return lines


def _notes(results: dict[str, Any]) -> list[str]:
    seen: dict[str, str] = {}
    for row in results["rows"]:
        seen.setdefault(f"{row['label']} ({row['settings']})", row["notes"])
    return ["How each contender runs, and why:", ""] + [
        f"- {name}: {notes}" for name, notes in seen.items()
    ]


def _open_table(results: dict[str, Any]) -> list[str]:
    latency = results["latency"]
    if not latency["points"]:
        return [f"Open loop: not run ({latency.get('not_run', 'no points')})."]
    lines = [
        f"Open loop, `pipeline serve` (1 process, --max-wait-ms {results['max_wait_ms']:g}): "
        "requests sent at a fixed rate whatever the server does, each one's latency from "
        "its due time (so falling behind shows as latency, not as a lower rate); "
        f"{results['plan']['latency_s']:g} s measured. The generator's worst lag is how late "
        "it sent a request: time the machine did not give it, counted in the latency.",
        "",
        "| door | rate req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | mean batch | "
        "server CPU cores | generator's worst lag ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in latency["points"]:
        if "error" in p:
            lines.append(
                f"| {p['door']} | {_num(p['rate'])} | failed: "
                f"{p['error'].splitlines()[0]} | | | | | | | |"
            )
            continue
        lines.append(
            f"| {p['door']} | {p['rate']:,.0f} | {_num(p['p50_ms'], 1)} | "
            f"{_num(p['p99_ms'], 1)} | {_num(p['p999_ms'], 1)} | {_num(p['max_ms'], 1)} | "
            f"{p['errors']} | {_num(p['mean_batch'], 1)} | {_num(p['server_cpu_cores'], 2)} | "
            f"{_num(p.get('max_lag_ms'), 1)} |"
        )
    return lines


BUSY_CORES = 0.2
"""Other processes using more CPU than this during a window make the run not fit to quote."""


def _others(results: dict[str, Any]) -> list[str]:
    """A line on the CPU other processes took during the windows; a warning if too much."""
    points = [p for r in results["rows"] for runs in r["runs"].values() for p in runs]
    points += results["latency"]["points"]
    others = sorted(p["others_cpu_cores"] for p in points if "others_cpu_cores" in p)
    if not others:
        return []
    line = (f"Other processes (neither the server nor the load generator) used "
            f"{others[len(others) // 2]:.2f} CPU cores in the median window, "
            f"{others[-1]:.2f} at most.")  # fmt: skip
    if others[-1] > BUSY_CORES:
        line += (" **The machine was not idle: these figures are not fit to quote; run again "
                 "on an idle machine.**")  # fmt: skip
    return [line, ""]


def markdown(results: dict[str, Any]) -> str:
    """The report: machine, closed-loop table, open-loop table, targets, how to reproduce."""
    meta, machine = results["meta"], results["meta"]["machine"]
    quick = results["plan"]["name"] == "quick"
    lines = [
        f"Front-door benchmark ({results['plan']['name']} run, {meta['finished_at']}, "
        f"{meta['seconds']:g} s) on {machine['cores']} cores ({machine['cpu']}), "
        f"{machine['memory_gib']} GiB, Python {machine['python']}, {machine['go']}; load "
        f"average at start {', '.join(str(x) for x in machine['load_average_at_start'])}. "
        f"Model breast-cancer-mlp, the 200 bundled rows. Reproduce with `{meta['command']}`.",
        "",
    ]
    if quick:
        lines += [
            "**Quick run**: a smoke test of the benchmark itself; its windows last a "
            "fraction of a second, so its figures are not fit to quote.",
            "",
        ]
    lines += [*_others(results), *_closed_table(results), "", *_notes(results), ""]
    lines += [*_open_table(results), "", "Targets:", ""]
    for t in results["targets"]:
        verdict = {True: "met", False: "missed", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: **{verdict}** ({t['value']})")
    return "\n".join(lines) + "\n"


def write_plot(results: dict[str, Any], path: Path) -> str | None:
    """Plot requests/s against callers, a line per row; return why not, or None if written."""
    rows = [r for r in results["rows"] if r["points"]]
    if not rows:
        return "no row has figures"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]')"
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for n, row in enumerate(rows):
        callers = sorted(int(c) for c in row["points"])
        rps = [row["points"][str(c)]["requests_per_s"] for c in callers]
        style = "-" if row["kind"] == "door" else "--"
        label = f"{row['key']}: {row['door_label']}"
        ax.plot(callers, rps, style, marker="o", color=f"C{n % 10}", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(
        results["plan"]["concurrencies"], [str(c) for c in results["plan"]["concurrencies"]]
    )
    ax.set_xlabel("concurrent callers (closed loop)")
    ax.set_ylabel("requests/s (median of rounds)")
    ax.set_title("pipeline serve's doors and per-request peers, one row per request")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None


def write_all(results: dict[str, Any], out: Path, stamp: str) -> str:
    """Write the plot, the JSON (which names the files) and the Markdown into `out`; return
    the Markdown."""
    files: dict[str, str] = {"json": str(out / f"doors-{stamp}.json")}
    png = out / f"doors-{stamp}.png"
    why_not = write_plot(results, png)
    if why_not is None:
        shutil.copyfile(png, out / "doors-latest.png")
        files["plot"] = str(png)
    else:
        files["plot_not_written"] = why_not
    results["files"] = files
    write_json(results, [out / f"doors-{stamp}.json", out / "doors-latest.json"])
    text = markdown(results)
    (out / "doors-latest.md").write_text(text)
    return text
