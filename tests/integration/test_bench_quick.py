"""`python -m pipeline.dev.bench --quick` against the session broker, so the benchmark cannot rot.

It checks the shape of what the benchmark reports, never its figures: every row has a
positive throughput (or, for the optional Faust and Quix peers, a reason it did not
run; a required row the bench could not time fails with the bench's reason, such as
"not measured"), every event size has its rows (the Avro one wherever a Schema Registry can run), and the worker has latency percentiles and stage
histograms for every way of batching and every phase.

Its last two parts, share groups and the three-node cluster, run as tests of their own
(the same functions the bench calls), so the suite's workers share the bench's minutes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.dev.bench.events import DATASETS
from pipeline.dev.bench.report import _cluster_table, _share_table
from pipeline.dev.bench.runner import BenchTopics
from pipeline.dev.bench.sharebench import run_share
from pipeline.dev.bench.suite import QUICK, on_a_cluster
from pipeline.dev.localregistry import missing_tools

REQUIRED = ("relay-1", "relay-1-tuned", "relay-2", "relay-2-tuned", "naive", "worker-1",
            "worker-1-eos", "worker-1-metrics", "worker-1-shadow", "worker-2")  # fmt: skip
OPTIONAL = ("faust", "faust-engine", "quix")


def test_quick_benchmark_reports_every_row(
    kafka_bootstrap: str, repo_root: Path, tmp_path: Path
) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.dev.bench", "--quick", "--skip", "share,cluster",
             "--bootstrap-servers", kafka_bootstrap, "--results-dir", str(tmp_path)],
            cwd=repo_root, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:  # say where it was, not only that it was late
        said = exc.stderr or b""
        tail = said.decode(errors="replace") if isinstance(said, bytes) else said
        pytest.fail(f"the quick benchmark ran over 900 s; the last it said:\n{tail[-4000:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())

    rows = {row["key"]: row for row in results["contenders"]}
    assert set(rows) == {*REQUIRED, *OPTIONAL}
    for key in REQUIRED:
        _assert_measured(rows[key])
        assert rows[key]["cpu_s_per_100k"] > 0 and rows[key]["peak_rss_mb"] > 0, rows[key]
    for key in OPTIONAL:
        assert rows[key].get("throughput", 0) > 0 or rows[key]["not_run"], rows[key]
    assert results["ceilings"]["codec"]["events_per_s"] > 0
    assert results["ceilings"]["inference"]["rows_per_s"] > 0

    for size in results["sizes"]:
        assert size["events"]["mean_bytes"] > 100, size["events"]  # a card payment: ~130
        for row in size["rows"]:
            _assert_measured(row)
            assert row["mb_per_s"] > 0, row
    (avro,) = [s for s in results["sizes"] if s["events"]["key"] == "avro"]
    if missing_tools() is None:  # Java and the registry's archive (or Maven): it must run
        assert [r["key"] for r in avro["rows"]] == ["relay-1", "relay-1-tuned", "worker-1"]
        assert "--value-format avro" in avro["rows"][2]["label"]
    else:
        assert avro["not_run"] == missing_tools()

    points = results["latency"]["points"]
    assert {p["batching"] for p in points} == {
        "--max-wait-ms 1", "--max-wait-ms 5", "--max-wait-ms 20", "--latency-target-ms 20"
    }  # fmt: skip
    assert len({p["phase"] for p in points}) == 3  # a load, a fixed rate, back from idle
    for point in points:
        assert point["events"] > 0, point
        assert 0 < point["p50_ms"] <= point["p99_ms"] <= point["p999_ms"], point
        stages = point["stages"]
        assert stages["inference"]["count"] > 0 and stages["produce_ack"]["count"] > 0, point
        assert stages["event_to_prediction"]["count"] > 0, point
    (tail,) = [p for p in points if p["latency_target_ms"] and p["phase"] == "2,000 events/s"]
    assert [w["events"] > 0 for w in tail["windows"]] == [True, True], tail  # QUICK's 2 windows

    assert "share" not in results and "cluster" not in results  # --skip share,cluster

    assert {t["target"] for t in results["targets"]}, "targets are evaluated"
    table = (tmp_path / "latest.md").read_text()
    assert "pipeline run, 1 process" in table and table in done.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "latest.png").stat().st_size > 0


def test_quick_share_groups_report_every_row(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = BenchTopics(kafka_bootstrap)
    try:
        share = run_share(QUICK.share_workers, QUICK.share_events, QUICK.runs, topics,
                          tmp_path, print)  # fmt: skip
    finally:
        topics.delete_all()

    rows = {row["key"]: row for row in share["rows"]}
    assert set(rows) == {"consumer-1", "share-1", "consumer-4", "share-4"}
    for row in rows.values():
        _assert_measured(row)
        assert 1 <= row["busy_workers"] <= row["workers"], row
    assert rows["consumer-4"]["busy_workers"] <= share["partitions"]
    table = "\n".join(_share_table({"share": share}))  # as the report renders it
    assert table.startswith("Share groups against consumer groups"), table


def test_quick_three_node_cluster_reports_every_row(tmp_path: Path) -> None:
    on_cluster = on_a_cluster(QUICK, DATASETS["full"], tmp_path, print)

    assert "not_run" not in on_cluster, on_cluster
    rows = {row["key"]: row for row in on_cluster["rows"]}
    assert set(rows) == {"relay-1", "relay-1-tuned", "worker-1"}
    for row in rows.values():
        _assert_measured(row)
    table = "\n".join(_cluster_table({"cluster": on_cluster}))  # as the report renders it
    assert table.startswith("A local cluster of 3 nodes"), table
    assert all(f"| {row['label']} |" in table for row in rows.values()), table


def _assert_measured(row: dict[str, object]) -> None:
    """A row the bench timed has a positive throughput; one it could not time carries the
    reason (e.g. "failed: not measured: ..."), and that is a failure of the bench."""
    throughput = row.get("throughput")
    assert throughput is not None, f"{row['key']} has no figure: {row.get('not_run')}"
    assert isinstance(throughput, float | int) and throughput > 0, row
