"""Rolling a model out and back without a restart: the store's PINNED file decides which
version serves events that name none, and a change applies within the reload interval."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Pipeline
from .kafkaio import good_events, read_all, send

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
