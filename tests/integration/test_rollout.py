"""Rolling a model out and back without a restart: the store's PINNED file decides which
version serves events that name none, and a change applies within the reload interval;
a shadow version answers the served rows and nobody else, and a canary version answers
its share of keys (the files SHADOW and CANARY apply without a restart too)."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.engine.compare import compare
from pipeline.engine.inference import run_batch
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.engine.rollout import Canary
from tests.modelfactory import failing_model, slow_model

from .conftest import Pipeline
from .kafkaio import free_port, good_events, read_all, send
from .test_metrics import scrape_until, total

MLP = "breast-cancer-mlp"


def _versions_served(p: Pipeline, run: str, before: int, n: int = 20) -> set[str]:
    """Send `n` events naming no version; the versions that predicted them."""
    send(p.bootstrap, p.input, good_events(n, run=run))
    out = read_all(p.bootstrap, [p.output], expect=before + n, timeout_s=60, settle_s=0.5)
    return {r.json["version"] for r in out if r.json["id"].startswith(f"{run}-")}


def test_a_pin_rolls_back_and_forward_while_the_worker_runs(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "models"
    shutil.copytree(repo_root / "models", store)
    shutil.copytree(store / MLP / "1", store / MLP / "2")  # the "new" version
    (store / MLP / "2" / "model.json").unlink()  # no checksum: version 2 is its own file
    (store / MLP / "PINNED").write_text("1\n")
    p = make_pipeline(partitions=1, models=store)
    worker = p.start_worker("--default-model", MLP)
    assert _versions_served(p, "pinned", 0) == {"1"}, "the pin beats the newest"
    (store / MLP / "PINNED").write_text("2\n")  # roll out
    time.sleep(2.5)
    assert _versions_served(p, "rolled-out", 20) == {"2"}
    (store / MLP / "PINNED").write_text("1\n")  # roll back, no restart
    time.sleep(2.5)
    assert _versions_served(p, "rolled-back", 40) == {"1"}
    assert worker.proc.poll() is None
    assert worker.stop()[0] == 0


def test_a_manifests_serving_settings_size_that_versions_batches(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path
) -> None:
    # A backlog that the flags' defaults (256 rows) would run in batches of ~250: the
    # version's own max_batch_size of 7 makes every batch 7 rows or fewer.
    store = tmp_path / "models"
    shutil.copytree(repo_root / "models" / MLP, store / MLP)
    manifest = store / MLP / "1" / "model.json"
    manifest.write_text(
        json.dumps({**json.loads(manifest.read_text()), "serving": {"max_batch_size": 7}})
    )
    p = make_pipeline(partitions=1, models=store)
    events = good_events(700, run="backlog")
    send(p.bootstrap, p.input, events)
    worker = p.start_worker("--default-model", MLP, "--max-batch-size", "256")
    worker.wait_for_log("total in 700 out 700", timeout_s=90)
    assert worker.stop()[0] == 0
    means = [float(m) for m in re.findall(r"in [1-9]\d*/s .*?mean batch ([\d.]+)", worker.log)]
    assert means and max(means) <= 7.0, worker.log[-3000:]
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=700, timeout_s=60)
    # every event one prediction: none missing, none twice, no dead letter
    assert sorted(r.json["id"] for r in out) == sorted(json.loads(v)["id"] for _, v in events)
    assert {r.topic for r in out} == {p.output}


def _store_with_candidates(repo_root: Path, tmp_path: Path) -> Path:
    """The MLP at version 1 (pinned), the logistic regression as its version 2 (a real
    candidate), at version 3 a model that fails on every row, at 4 a slow one."""
    store = tmp_path / "models"
    shutil.copytree(repo_root / "models" / MLP / "1", store / MLP / "1")
    shutil.copytree(repo_root / "models" / "breast-cancer-logreg" / "1", store / MLP / "2")
    failing_model(store / MLP / "3")
    slow_model(store / MLP / "4")
    (store / MLP / "PINNED").write_text("1\n")
    return store


def _agreements(store: Path, events: list[tuple[bytes, bytes]]) -> tuple[int, list[float]]:
    """What both models say of the events' rows, computed here: agreements, differences."""
    cache = ModelCache(ModelStore(store))
    served, candidate = cache.get(MLP, "1"), cache.get(MLP, "2")
    rows = {"features": np.array([orjson.loads(v)["features"] for _, v in events], np.float32)}
    both = compare(served.spec, run_batch(served, rows).outputs,
                   candidate.spec, run_batch(candidate, rows).outputs)  # fmt: skip
    assert both.agreed is not None
    return both.agreed, both.differences.tolist()


def _committed(p: Pipeline) -> int:
    consumer = Consumer({"bootstrap.servers": p.bootstrap, "group.id": p.group})
    try:
        parts = consumer.list_topics(p.input, timeout=10).topics[p.input].partitions
        offsets = consumer.committed([TopicPartition(p.input, i) for i in parts], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def test_a_shadow_answers_nobody_and_its_metrics_are_what_both_models_say(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path
) -> None:
    store = _store_with_candidates(repo_root, tmp_path)
    p = make_pipeline(partitions=2, models=store)
    events = good_events(2000, run="shadowed")
    send(p.bootstrap, p.input, events)
    port = free_port()
    shadows = f"{p.output}-shadow"
    worker = p.start_worker("--default-model", MLP, "--shadow", f"{MLP}=2",
                            "--shadow-topic", shadows, "--metrics-port", str(port))  # fmt: skip
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events), settle_s=2)
    assert {r.topic for r in out} == {p.output}
    assert sorted(r.json["id"] for r in out) == sorted(orjson.loads(v)["id"] for _, v in events)
    assert {r.json["version"] for r in out} == {"1"}  # no shadow row leaks
    # the shadow topic: one answer of version 2 per served prediction, joined by its id
    shadowed = read_all(p.bootstrap, [shadows], expect=len(events), settle_s=1)
    served_ids = {r.json["prediction_id"]: r for r in out}
    assert sorted(r.json["served_prediction_id"] for r in shadowed) == sorted(served_ids)
    assert {r.json["version"] for r in shadowed} == {"2"}
    for r in shadowed[:50]:
        assert r.json["id"] == served_ids[r.json["served_prediction_id"]].json["id"]
        assert r.key == served_ids[r.json["served_prediction_id"]].key
    labels = {"model": MLP, "version": "1", "shadow": "2"}
    samples = scrape_until(port, lambda s: total(s, "pipeline_shadow_rows_total", **labels)
                           + total(s, "pipeline_shadow_rows_skipped_total") >= len(events))  # fmt: skip
    agreed, differences = _agreements(store, events)
    assert total(samples, "pipeline_shadow_rows_skipped_total") == 0, "the shadow fell behind"
    assert total(samples, "pipeline_shadow_rows_total", **labels) == len(events)
    assert total(samples, "pipeline_shadow_agreements_total", **labels) == agreed
    assert 0 < agreed < len(events)  # the candidate differs from the served model on some
    assert total(samples, "pipeline_shadow_score_difference_sum", **labels) == pytest.approx(
        sum(differences), rel=1e-4
    )
    assert worker.stop()[0] == 0
    assert _committed(p) == len(events)

    # A shadow that fails on every row, set by the store's file: the served path is as
    # before, nothing lost, offsets committed.
    (store / MLP / "SHADOW").write_text("3\n")
    more = good_events(500, run="failing")
    send(p.bootstrap, p.input, more)
    worker = p.start_worker("--default-model", MLP, "--metrics-port", str(port))
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events) + len(more), settle_s=2)
    assert {r.topic for r in out} == {p.output}
    ids = [r.json["id"] for r in out]
    assert len(ids) == len(set(ids)) == len(events) + len(more)
    failed = {"model": MLP, "version": "1", "shadow": "3"}
    samples = scrape_until(port, lambda s: total(s, "pipeline_shadow_errors_total", **failed)
                           >= len(more))  # fmt: skip
    assert total(samples, "pipeline_shadow_errors_total", **failed) == len(more)
    assert total(samples, "pipeline_shadow_rows_total") == 0
    assert worker.stop()[0] == 0
    assert _committed(p) == len(events) + len(more)
    assert "shadow version 3 failed" in worker.log

    # A shadow 15 times slower per batch than the served MLP: the served path is as before.
    (store / MLP / "SHADOW").write_text("4\n")
    slow = good_events(3000, run="slow")
    send(p.bootstrap, p.input, slow)
    total_in = len(events) + len(more) + len(slow)
    worker = p.start_worker("--default-model", MLP, "--metrics-port", str(port))
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=total_in, settle_s=2)
    ids = [r.json["id"] for r in out if r.topic == p.output]
    assert len(ids) == len(set(ids)) == total_in
    slowed = {"model": MLP, "version": "1", "shadow": "4"}
    samples = scrape_until(port, lambda s: total(s, "pipeline_shadow_errors_total", **slowed)
                           + total(s, "pipeline_shadow_rows_skipped_total", **slowed)
                           >= len(slow))  # fmt: skip
    # no labels in its manifest: every row it answered is NotComparable, or was skipped
    assert total(samples, "pipeline_shadow_errors_total", **slowed) + total(
        samples, "pipeline_shadow_rows_skipped_total", **slowed) == len(slow)  # fmt: skip
    assert worker.stop()[0] == 0
    assert _committed(p) == total_in


def test_a_canary_takes_its_keys_and_the_canary_file_applies_without_a_restart(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path
) -> None:
    store = _store_with_candidates(repo_root, tmp_path)
    p = make_pipeline(partitions=2, models=store)
    events = good_events(1000, run="split")  # keys entity-0 .. entity-49
    send(p.bootstrap, p.input, events)
    worker = p.start_worker("--default-model", MLP, "--canary", f"{MLP}=2:30")
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    assert {r.topic for r in out} == {p.output} and len(out) == len(events)
    canary = Canary("2", 30)
    for record in out:  # each key always its version, the one the split gives it
        assert record.json["version"] == ("2" if canary.takes(record.key or b"") else "1")
    assert {r.json["version"] for r in out} == {"1", "2"}
    assert worker.stop()[0] == 0

    (store / MLP / "CANARY").write_text("2:100\n")
    worker = p.start_worker("--default-model", MLP)
    assert _versions_served(p, "all-canary", len(events)) == {"2"}
    (store / MLP / "CANARY").write_text("2:0\n")
    time.sleep(2.5)
    assert _versions_served(p, "no-canary", len(events) + 20) == {"1"}
    assert worker.stop()[0] == 0
    assert "canary version 2 now answers 100% of keys" in worker.log
