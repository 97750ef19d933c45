"""The benchmark's report and contender commands, from made-up figures (no broker)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from pipeline.dev.bench.contenders import RunTopics, relay_contender, worker_contender
from pipeline.dev.bench.report import evaluate_targets, markdown, write_plot
from pipeline.dev.bench.runner import CLIENT_SETTINGS


def _row(key: str, throughput: float | None, rss: float = 100.0) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": key,
        "label": key,
        "kind": "peer",
        "processes": 1,
        "not_run": None if throughput else "not installed",
        "runs": [],
    }
    if throughput:
        row.update(
            events=1000,
            throughput=throughput,
            cpu_s_per_100k=1.0,
            peak_rss_mb=rss,
            runs=[{"peak_rss_mb": rss}],
        )
    return row


def _results(worker_rss: float = 120.0) -> dict[str, Any]:
    point = {
        "max_wait_ms": 5.0,
        "load": 0.5,
        "rate": 500.0,
        "events": 100,
        "p50_ms": 9.0,
        "p99_ms": 19.0,
        "p999_ms": 30.0,
        "worker_p50_ms": 6.0,
        "worker_p99_ms": 12.0,
        "worker_peak_rss_mb": 90.0,
    }
    return {
        "plan": {"name": "quick", "events": 1000, "runs": 1},
        "ceilings": {
            "codec": {"events": 100, "events_per_s": 200_000.0},
            "inference": {"batch_size": 256, "rows_per_s": 3_000_000.0},
        },
        "contenders": [
            _row("relay-1", 3000),
            _row("naive", 200),
            _row("faust", None),
            _row("worker-1", 1000, worker_rss),
        ],
        "latency": {"max_throughput": 1000.0, "points": [point]},
        "meta": {
            "finished_at": "now",
            "command": "python -m pipeline.dev.bench --quick",
            "machine": {
                "cores": 2,
                "cpu": "cpu",
                "memory_gib": 1,
                "python": "3.11",
                "broker": "b",
                "load_average_at_start": [0.1, 0.2, 0.3],
            },
        },
    }


def test_targets_say_met_missed_or_not_measured() -> None:
    verdicts = {t["target"]: t["met"] for t in evaluate_targets(_results())}
    assert verdicts == {
        "worker (1 process) >= 5x the naive peer": True,
        "worker (1 process) >= 3x the Faust agent": None,
        "worker (1 process) >= 50% of the relay ceiling": False,
        "p99 at 50% load <= 20 ms (--max-wait-ms 5)": True,
        "peak RSS of a worker process <= 400 MB in every run": True,
    }
    rss = [t for t in evaluate_targets(_results(worker_rss=450)) if "RSS" in t["target"]]
    assert rss[0]["met"] is False


def test_markdown_shows_every_row_and_the_reason_a_peer_did_not_run() -> None:
    results = _results()
    results["targets"] = evaluate_targets(results)
    text = markdown(results)
    for label in ("relay-1", "naive", "worker-1", "not installed", "| 5 | 50% | 500 |"):
        assert label in text
    assert "Reproduce with `python -m pipeline.dev.bench --quick`" in text


def test_markdown_states_what_exactly_once_costs() -> None:
    results = _results()
    results["contenders"].append(_row("worker-1-eos", 800))
    results["targets"] = evaluate_targets(results)
    assert "Exactly-once costs the worker 20% of its throughput here (800 vs 1,000" in (
        markdown(results)
    )


def test_plot_is_written_or_says_why_not(tmp_path: Path) -> None:
    why_not = write_plot(_results(), tmp_path / "p.png")
    if importlib.util.find_spec("matplotlib") is None:
        assert why_not is not None and "matplotlib" in why_not
    else:
        assert why_not is None and (tmp_path / "p.png").stat().st_size > 0


def test_every_contender_gets_the_shared_client_settings() -> None:
    topics = RunTopics(bootstrap="b:1", input="in", output="out", dlq="dlq", group="g")
    (worker,) = worker_contender(2, max_wait_ms=1).commands(topics, 10)
    assert "enable.idempotence=true" in worker and "linger.ms=2" in worker
    assert worker[worker.index("--workers") + 1] == "2"
    assert worker[worker.index("--commit-interval-ms") + 1] == str(
        CLIENT_SETTINGS["commit_interval_ms"]
    )
    relays = relay_contender(2).commands(topics, 10)
    assert len(relays) == 2 and all("--count" not in cmd for cmd in relays)
    assert "--count" in relay_contender(1).commands(topics, 10)[0]
