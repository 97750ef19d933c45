"""The benchmark's report and contender commands, from made-up figures (no broker)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline.dev.bench.contenders import (
    REPO_ROOT,
    RunTopics,
    baseline_contender,
    relay_contender,
    worker_contender,
)
from pipeline.dev.bench.report import evaluate_targets, markdown, write_plot
from pipeline.dev.bench.settings import RELAY_SETTINGS
from pipeline.dev.bench.stages import quantile, stage_figures


def _kind(key: str) -> str:
    return (
        "ceiling" if key.startswith("relay") else "worker" if key.startswith("worker") else "peer"
    )


def _row(key: str, throughput: float | None, rss: float = 100.0) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": key,
        "label": key,
        "kind": _kind(key),
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


def _point(
    batching: str, phase: str, load: float | None, p99: float, **more: Any
) -> dict[str, Any]:
    return {
        "batching": batching,
        "max_wait_ms": 5.0,
        "latency_target_ms": None,
        "phase": phase,
        "load": load,
        "rate": 500.0,
        "events": 100,
        "p50_ms": 9.0,
        "p99_ms": p99,
        "p999_ms": 30.0,
        "max_ms": 40.0,
        "worker_p50_ms": 6.0,
        "worker_p99_ms": 12.0,
        "worker_peak_rss_mb": 90.0,
        "stages": {},
        **more,
    }


def _results(worker_rss: float = 120.0) -> dict[str, Any]:
    points = [
        _point("--max-wait-ms 5", "50%", 0.5, 19.0),
        _point("--latency-target-ms 20", "2,000 events/s", None, 25.0, latency_target_ms=20.0,
               rate=2000.0),
        _point("--max-wait-ms 5", "2,000 events/s after 30 s idle", None, 30.0, max_ms=3000.0),
    ]  # fmt: skip
    return {
        "plan": {"name": "quick", "events": 1000, "runs": 1},
        "ceilings": {
            "codec": {"events": 100, "events_per_s": 200_000.0},
            "inference": {"batch_size": 256, "rows_per_s": 3_000_000.0},
        },
        "contenders": [
            _row("relay-1", 3000),
            _row("relay-1-tuned", 1900),
            _row("naive", 200),
            _row("faust", None),
            _row("worker-1", 1000, worker_rss),
            _row("worker-1-metrics", 980),
        ],
        "latency": {"max_throughput": 1000.0, "points": points},
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
        "worker (1 process) >= 50% of the relay ceiling (its best settings)": False,
        "worker (1 process) >= 3x the naive peer": True,
        "worker (1 process) >= 3x the Faust agent": None,
        "p99 at 50% load <= 20 ms (--max-wait-ms 5)": True,
        "p99 at 2,000 events/s <= 20 ms (--latency-target-ms 20)": False,
        "after an idle spell, no event waits more than 1,000 ms (worst of 1 ways of batching: "
        "--max-wait-ms 5)": False,
        "serving /metrics costs <= 3% of throughput": True,
        "peak RSS of a worker process <= 400 MB in every run": True,
    }
    ceiling = next(t for t in evaluate_targets(_results()) if "relay" in t["target"])
    assert "vs 3,000 events/s, relay-1)" in ceiling["value"]  # the faster relay run
    rss = [t for t in evaluate_targets(_results(worker_rss=450)) if "RSS" in t["target"]]
    assert rss[0]["met"] is False


def test_the_tail_target_holds_in_every_window_or_is_missed() -> None:
    def window(p99: float | None, p999: float | None) -> dict[str, Any]:
        return {"events": 20_000, "p50_ms": 9.0, "p99_ms": p99, "p999_ms": p999, "max_ms": 60.0}

    results = _results()
    tail = results["latency"]["points"][1]
    tail.update(window_s=10.0, windows=[window(18.0, 40.0), window(19.5, 55.0), window(12.0, 30.0)])
    verdicts = {t["target"]: (t["met"], t["value"]) for t in evaluate_targets(results)}
    where = "in every one of 3 10 s windows (--latency-target-ms 20)"
    assert verdicts[f"p99 at 2,000 events/s <= 20 ms {where}"] == (True, "18.0 / 19.5 / 12.0 ms")
    assert verdicts[f"p99.9 at 2,000 events/s <= 50 ms {where}"] == (False, "40.0 / 55.0 / 30.0 ms")
    results["targets"] = evaluate_targets(results)
    assert "window by window (10 s each, after the warm-up): end-to-end p99 18.0 / 19.5" in (
        markdown(results)
    )
    tail["windows"][2] = window(None, None)  # a window nothing was measured in
    assert {t["met"] for t in evaluate_targets(results) if "windows" in t["target"]} == {None}


def test_markdown_shows_every_row_and_the_reason_a_peer_did_not_run() -> None:
    results = _results()
    results["targets"] = evaluate_targets(results)
    text = markdown(results)
    for label in ("relay-1", "naive", "worker-1", "not installed",
                  "| --max-wait-ms 5 | 50% | 500 |"):  # fmt: skip
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


def test_each_contender_runs_with_its_own_settings() -> None:
    topics = RunTopics(bootstrap="b:1", input="in", output="out", dlq="dlq", group="g")
    (worker,) = worker_contender(2, max_wait_ms=1).commands(topics, 10)
    assert "-X" not in worker  # the worker's own defaults, as users get them
    assert worker[worker.index("--offset-reset") + 1] == "earliest"
    assert worker[worker.index("--workers") + 1] == "2"
    (target,) = worker_contender(1, latency_target_ms=20).commands(topics, 10)
    assert target[target.index("--latency-target-ms") + 1] == "20"
    relays = relay_contender(2).commands(topics, 10)
    assert len(relays) == 2 and all("--count" not in cmd for cmd in relays)
    (tuned,) = relay_contender(1, "tuned").commands(topics, 10, "wide-mlp")
    assert "--count" in tuned
    assert json.loads(tuned[tuned.index("--client-settings") + 1]) == RELAY_SETTINGS["tuned"]
    assert tuned[tuned.index("--model-dir") + 1].endswith("models/wide-mlp/1")


def test_stage_quantiles_follow_prometheus_histogram_quantile() -> None:
    buckets = {0.001: 10.0, 0.005: 90.0, 0.01: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.001 + 0.004 * (50 - 10) / 80)
    assert quantile(buckets, 0.99) == pytest.approx(0.005 + 0.005 * (99 - 90) / 10)
    assert quantile({0.001: 0.0, float("inf"): 0.0}, 0.5) is None
    name = "pipeline_inference_seconds"
    before = {name: {0.001: 5.0, 0.005: 5.0, float("inf"): 5.0}}
    after = {name: {0.001: 5.0, 0.005: 105.0, float("inf"): 105.0}}
    figures = stage_figures(before, after)["inference"]
    assert figures["count"] == 100
    assert figures["buckets"] == {"1": 0, "5": 100, "+Inf": 100}
    assert figures["p50_ms"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("baseline", "met"), [(1040.0, True), (1060.0, False), (None, None)]
)  # fmt: skip
def test_the_worker_is_held_within_5_percent_of_a_baseline_revision(
    baseline: float | None, met: bool | None
) -> None:
    results = _results()  # worker-1 runs at 1,000 events/s
    results["contenders"].append(_row("worker-1-baseline", baseline))
    (target,) = [t for t in evaluate_targets(results) if "within 5%" in t["target"]]
    assert target["met"] is met
    if baseline:
        assert f"vs {baseline:,.0f} events/s" in target["value"]
    assert not [t for t in evaluate_targets(_results()) if "within 5%" in t["target"]]


def _rounds(key: str, *throughputs: float) -> dict[str, Any]:
    row = _row(key, sorted(throughputs)[len(throughputs) // 2])
    row["runs"] = [{"throughput": t, "peak_rss_mb": 100.0} for t in throughputs]
    return row


def test_the_metrics_cost_is_judged_round_by_round_not_on_medians_of_far_apart_runs() -> None:
    """The 2026-12-07 case: the third round ran on a slower machine for the /metrics row."""
    results = _results()
    results["contenders"] = [
        _rounds("worker-1", 1000.0, 1100.0, 1200.0),
        _rounds("worker-1-metrics", 1023.0, 1074.0, 916.0),  # -2.3%, +2.4%, +23.7% dearer
    ]
    (target,) = [t for t in evaluate_targets(results) if "/metrics" in t["target"]]

    assert target["met"] is True  # the medians alone say +7.0%: missed
    assert target["value"].startswith("+2.4% slower, median of the rounds' -2.3% / +2.4% / +23.7%")

    results["contenders"][1] = _rounds("worker-1-metrics", 950.0, 1050.0, 1150.0)  # 4-5% each
    (target,) = [t for t in evaluate_targets(results) if "/metrics" in t["target"]]
    assert target["met"] is False


def test_a_baseline_runs_from_a_worktree_of_its_revision_or_says_why_not(tmp_path: Path) -> None:
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout (an installed package has no revisions to compare)")
    topics = RunTopics(bootstrap="b", input="i", output="o", dlq="d", group="g")
    missing = baseline_contender("no-such-revision", tmp_path)
    assert missing.not_run is not None and "'no-such-revision'" in missing.not_run
    head = baseline_contender("HEAD", tmp_path)
    try:
        assert head.not_run is None and head.key == "worker-1-baseline"
        assert head.root.parent == tmp_path and (head.root / "pipeline" / "__init__.py").exists()
        (command,) = head.commands(topics, 10)
        assert command[command.index("--models") + 1] == str(head.root / "models")
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force",
                        str(head.root)], check=False, capture_output=True)  # fmt: skip
