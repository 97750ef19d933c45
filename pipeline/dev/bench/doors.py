"""``python -m pipeline.dev.bench.doors``: the front doors side by side with per-request peers.

The same model (breast-cancer-mlp), the same 200 rows (``pipeline/dev/_data``, numbers as
written there) and the same machine for everyone: the seed's design (Flask calling ONNX
Runtime once per request, under gunicorn) and a FastAPI app doing the same (under uvicorn),
each with the settings that serve it best, against ``pipeline serve`` in one process (and
in two). A load generator written in Go (`pipeline.dev.bench.doorload`, built into
``.cache/`` at the start) calls each door with 1, 8 and 64 closed-loop callers, round after
round so noise spreads over every contender alike; then the HTTP and gRPC doors of
``pipeline serve`` get an open loop at half of their 64-caller maximum, for latency.
This module is the command; `pipeline.dev.bench.doorsuite` runs the benchmark and
`pipeline.dev.bench.doorreport` writes what it found.

The full run (the default) took about ten minutes (572 s) on two cores; ``--quick`` well under a
minute (its figures mean nothing: it checks the benchmark still runs). Results go to
``bench-results/`` (``doors-<timestamp>.json``, ``doors-latest.json``, ``doors-latest.md``
and the plot); ``--publish`` also writes ``docs/bench-doors.md`` and
``docs/bench-doors.png``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from pipeline.dev.bench import doorreport
from pipeline.dev.bench.doorload import build_loadgen
from pipeline.dev.bench.doorservers import REPO_ROOT
from pipeline.dev.bench.doorsuite import FULL, QUICK, Plan, run_suite
from pipeline.errors import ConfigError, PipelineError

__all__ = ["build_parser", "main", "run_doors"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m pipeline.dev.bench.doors``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.dev.bench.doors",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="well under a minute: 1 round, 0.4 s points")
    add(
        "--publish",
        action="store_true",
        help="also write docs/bench-doors.md and docs/bench-doors.png",
    )
    add("--results-dir", type=Path, default=Path("bench-results"), help="default: bench-results")
    add("--docs-dir", type=Path, default=None, help="where --publish writes (default: docs/)")
    add("--cache-dir", type=Path, default=None, help="where Go builds (default: .cache/)")
    add("--rounds", type=int, default=None, help="rounds (default: 3; quick 1)")
    add(
        "--duration-s",
        type=float,
        default=None,
        help="measured seconds per point (default: 5; quick 0.4)",
    )
    add(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="pipeline serve's --max-wait-ms (default: 5, its own default)",
    )
    add(
        "--serve-args",
        default="",
        metavar="FLAGS",
        help="further flags for pipeline serve, as one string: "
        "--serve-args='--max-concurrent-streams 1000'",
    )
    add(
        "--skip",
        default="",
        metavar="KEYS",
        help="comma-separated contenders to leave out: flask-sync, flask-gthread, fastapi, "
        "serve-1-due, serve-2",
    )
    return parser


def _plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        if args.rounds < 1:
            raise ConfigError(f"--rounds must be an integer >= 1, got {args.rounds}")
        plan = replace(plan, rounds=args.rounds)
    if args.duration_s is not None:
        if not args.duration_s > 0:
            raise ConfigError(f"--duration-s must be above 0, got {args.duration_s}")
        plan = replace(plan, duration_s=args.duration_s)
    if not 0 <= args.max_wait_ms <= 60_000:
        raise ConfigError(f"--max-wait-ms must be from 0 to 60000, got {args.max_wait_ms}")
    skip = {s for s in args.skip.split(",") if s}
    allowed = {"flask-sync", "flask-gthread", "fastapi", "serve-1-due", "serve-2"}
    if skip - allowed:
        raise ConfigError(
            f"--skip takes {', '.join(sorted(allowed))}; got {', '.join(sorted(skip - allowed))}"
        )
    return plan


def run_doors(args: argparse.Namespace) -> int:
    """Build the generator, run the suite, write the results; print the Markdown; return 0."""
    plan = _plan(args)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    out: Path = args.results_dir
    _progress("building the load generator (Go) into .cache/")
    binary = build_loadgen(args.cache_dir or REPO_ROOT / ".cache")
    _progress(f"built in {time.monotonic() - started:.1f} s")
    machine = doorreport.describe_machine()
    results = run_suite(
        plan,
        binary,
        out / "logs" / f"doors-{stamp}",
        max_wait_ms=args.max_wait_ms,
        serve_args=shlex.split(args.serve_args),
        skip=[s for s in args.skip.split(",") if s],
        progress=_progress,
    )
    results["meta"] = {
        "started_at": stamp,
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(time.monotonic() - started, 1),
        "command": _command(args),
        "machine": machine,
    }
    results["targets"] = doorreport.evaluate_targets(results)
    text = doorreport.write_all(results, out, stamp)
    print(text)
    if args.publish:
        docs: Path = args.docs_dir or REPO_ROOT / "docs"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / "bench-doors.md").write_text(text)
        if (out / "doors-latest.png").exists():
            shutil.copyfile(out / "doors-latest.png", docs / "bench-doors.png")
        _progress(f"published {docs / 'bench-doors.md'}")
    return 0


def _progress(line: str) -> None:
    print(f"bench-doors | {line}", file=sys.stderr, flush=True)


def _command(args: argparse.Namespace) -> str:
    parts = ["python", "-m", "pipeline.dev.bench.doors"]
    parts += ["--quick"] if args.quick else []
    for flag, value in (("--rounds", args.rounds), ("--duration-s", args.duration_s)):
        parts += [flag, f"{value:g}"] if value is not None else []
    parts += ["--max-wait-ms", f"{args.max_wait_ms:g}"] if args.max_wait_ms != 5.0 else []
    parts += [f"--serve-args={args.serve_args}"] if args.serve_args else []
    parts += ["--skip", args.skip] if args.skip else []
    parts += ["--publish"] if args.publish else []
    return shlex.join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m pipeline.dev.bench.doors``; return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return run_doors(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
