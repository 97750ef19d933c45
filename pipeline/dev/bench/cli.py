"""``pipeline bench`` and ``python -m pipeline.dev.bench``: run the benchmark, write its results.

The full run (the default) took about 31 minutes (1,887 s) on a 2-core machine. ``--quick``
is what the integration tests run: on the same idle machine, 126 s with ``--skip
share,cluster`` (as the test suite runs it; its share-group and cluster parts are tests of
their own, about a minute each) on 2026-12-07, and about 10 minutes inside the test suite,
beside other tests. Results go to
``bench-results/`` (``bench-<timestamp>.json`` and ``.png``, plus ``latest.json``,
``latest.png`` and ``latest.md``); ``--publish`` also copies the table to
``docs/bench.md`` and the plot to ``docs/bench-latency.png``. This module imports
nothing heavy until the benchmark runs, so ``pipeline --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parser", "build_parser", "main", "run_bench"]

_SKIPPABLE = (
    "relay-1",
    "relay-1-tuned",
    "relay-2",
    "relay-2-tuned",
    "naive",
    "faust",
    "faust-engine",
    "quix",
    "worker-1-eos",
    "worker-1-metrics",
    "worker-1-shadow",
    "worker-2",
)
_PARTS = ("share", "cluster")  # whole parts of the run: share groups, the three-node cluster
_SKIP_TAKES = (*_SKIPPABLE, *_PARTS)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--quick", action="store_true", help="a few minutes: 20,000 events, 1 run, short points")
    add(
        "--bootstrap-servers",
        default=None,
        help="use this broker instead of starting a local one for the run",
    )
    add("--results-dir", type=Path, default=Path("bench-results"), help="default: bench-results")
    add(
        "--publish",
        action="store_true",
        help="also copy the table to docs/bench.md and the plot to docs/bench-latency.png",
    )
    add("--docs-dir", type=Path, default=None, help="where --publish writes (default: docs/)")
    add(
        "--events",
        type=int,
        default=None,
        help="events per run of the main rows and the Avro row (default: 300,000; quick "
        "20,000, and 4,000 for Avro; the naive, Faust and Quix peers 2,000)",
    )
    add("--runs", type=int, default=None, help="runs per contender (default: 3; quick 1)")
    add(
        "--skip",
        default="",
        metavar="KEYS",
        help=f"comma-separated contenders to leave out: {', '.join(_SKIPPABLE)}; or parts: "
        "share (share groups against consumer groups), cluster (the three-node cluster)",
    )
    add(
        "--baseline",
        default=None,
        metavar="REF",
        help="also run the worker (1 process) as it was at this git revision of the checkout "
        "(a worktree under .cache/bench-baseline/), beside today's in the same run",
    )
    add(
        "--quix-python",
        type=Path,
        default=None,
        help="interpreter with quixstreams installed (default: .cache/bench-quix/bin/python)",
    )


def add_bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand to the ``pipeline`` command's subparsers."""
    parser = sub.add_parser(
        "bench",
        help="benchmark the worker against its peers and ceilings on a real broker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    parser.set_defaults(handler=run_bench)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m pipeline.dev.bench``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dev.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(parser)
    return parser


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark as `args` say, write the results, print the Markdown; return 0.

    Raises:
        ConfigError: An unknown contender or part in ``--skip`` or a size below 1.
    """
    from pipeline.dev.bench import report, suite
    from pipeline.dev.bench.contenders import REPO_ROOT, quix_contender
    from pipeline.dev.bench.machine import describe_machine
    from pipeline.dev.bench.runner import broker
    from pipeline.dev.bench.settings import PEER_SETTINGS, RELAY_SETTINGS, WORKER_SETTINGS
    from pipeline.errors import ConfigError

    skip = [s for s in args.skip.split(",") if s]
    unknown = sorted(set(skip) - set(_SKIP_TAKES))
    if unknown:
        raise ConfigError(f"--skip takes {', '.join(_SKIP_TAKES)}; got {', '.join(unknown)}")
    plan = suite.QUICK if args.quick else suite.FULL
    overrides = {k: v for k, v in (("events", args.events), ("runs", args.runs)) if v is not None}
    if any(v < 1 for v in overrides.values()):
        raise ConfigError(f"--events and --runs must be integers >= 1, got {overrides}")
    plan = dataclasses.replace(plan, **overrides)
    if args.events is not None:  # the Avro row is the main events, framed: as many of them
        plan = dataclasses.replace(plan, size_events={**plan.size_events, "avro": args.events})
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out: Path = args.results_dir
    started = time.monotonic()
    quix = quix_contender(args.quix_python)
    machine = describe_machine(
        own_broker=not args.bootstrap_servers, quix_python=None if quix.not_run else quix.python
    )
    with broker(args.bootstrap_servers) as bootstrap:
        results = suite.run_suite(
            plan,
            bootstrap,
            logs_dir=out / "logs" / stamp,
            quix_python=args.quix_python,
            skip=skip,
            baseline=args.baseline,
            progress=_progress,
        )
    results["meta"] = {
        "started_at": stamp,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.monotonic() - started, 1),
        "command": _command(args),
        "machine": machine,
        "client_settings": {
            "worker": WORKER_SETTINGS,
            "peers": PEER_SETTINGS,
            "relay": RELAY_SETTINGS,
        },
    }
    results["targets"] = report.evaluate_targets(results)
    _write(results, out, stamp)
    text = report.markdown(results)
    (out / "latest.md").write_text(text)
    print(text)
    if args.publish:
        _publish(out, args.docs_dir or REPO_ROOT / "docs", text, results["files"].get("plot"))
    return 0


def _progress(line: str) -> None:
    print(f"bench | {line}", file=sys.stderr, flush=True)


def _command(args: argparse.Namespace) -> str:
    parts = ["python", "-m", "pipeline.dev.bench"]
    if args.quick:
        parts.append("--quick")
    for flag, value in (("--events", args.events), ("--runs", args.runs)):
        if value is not None:
            parts += [flag, str(value)]
    if args.skip:
        parts += ["--skip", args.skip]
    if args.baseline:
        parts += ["--baseline", args.baseline]
    if args.publish:
        parts.append("--publish")
    return shlex.join(parts)


def _write(results: dict[str, Any], out: Path, stamp: str) -> None:
    """Write the plot and the JSON (which names the files) into `out`."""
    from pipeline.dev.bench import report

    files: dict[str, Any] = {"json": str(out / f"bench-{stamp}.json")}
    png = out / f"bench-{stamp}.png"
    why_not = report.write_plot(results, png)
    if why_not is None:
        shutil.copyfile(png, out / "latest.png")
        files["plot"] = str(png)
    else:
        files["plot_not_written"] = why_not
    results["files"] = files
    report.write_json(results, [out / f"bench-{stamp}.json", out / "latest.json"])


def _publish(out: Path, docs: Path, text: str, plot: str | None) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "bench.md").write_text(text)
    if plot:
        shutil.copyfile(plot, docs / "bench-latency.png")
    _progress(
        f"published {docs / 'bench.md'}" + (f" and {docs / 'bench-latency.png'}" if plot else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m pipeline.dev.bench``; return its exit code."""
    from pipeline.errors import PipelineError

    args = build_parser().parse_args(argv)
    try:
        return run_bench(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
