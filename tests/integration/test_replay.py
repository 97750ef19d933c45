"""`pipeline replay` against the real broker: a served range replayed through a candidate
version; the report's counts, agreement, confusion table and largest differences equal a
direct computation on both models, the candidate's predictions are written, and the live
group's committed offsets are unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest

from pipeline.engine.compare import compare
from pipeline.engine.inference import run_batch
from pipeline.engine.models import ModelCache, ModelStore

from .conftest import Pipeline
from .kafkaio import good_events, read_all, send
from .test_rollout import _committed

MLP = "breast-cancer-mlp"


def _replay(p: Pipeline, store: Path, *extra: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "replay", "--bootstrap-servers", p.bootstrap,
         "--input-topic", p.input, "--model", f"{MLP}@2", "--models", str(store), "--json",
         *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout)
    return report


def test_a_replay_reports_what_both_versions_say_and_leaves_the_live_group_alone(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "models"
    shutil.copytree(repo_root / "models" / MLP / "1", store / MLP / "1")
    shutil.copytree(repo_root / "models" / "breast-cancer-logreg" / "1", store / MLP / "2")
    (store / MLP / "PINNED").write_text("1\n")
    p = make_pipeline(partitions=2, models=store)
    events = good_events(1000, run="served")
    bad = [(b"bad-1", b"not json"), (b"bad-2", b"{}"), (b"bad-3", b"[1]")]
    send(p.bootstrap, p.input, [*events, *bad])
    worker = p.start_worker("--default-model", MLP)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events) + len(bad))
    assert worker.stop()[0] == 0
    assert sum(r.topic == p.dlq for r in out) == len(bad)
    committed = _committed(p)
    assert committed == len(events) + len(bad)

    replayed = f"{p.output}-replayed"
    report = _replay(p, store, "--against", p.output, "--against-dlq", p.dlq,
                     "--output-topic", replayed)  # fmt: skip

    # what both models say of the same rows, computed here
    cache = ModelCache(ModelStore(store))
    served, candidate = cache.get(MLP, "1"), cache.get(MLP, "2")
    rows = {"features": np.array([orjson.loads(v)["features"] for _, v in events], np.float32)}
    both = compare(served.spec, run_batch(served, rows).outputs,
                   candidate.spec, run_batch(candidate, rows).outputs)  # fmt: skip
    assert both.served_labels is not None and both.candidate_labels is not None
    assert report["events"] == len(events) + len(bad)
    assert report["predicted"] == report["compared"] == len(events)
    assert sum(report["rejected"].values()) == len(bad)  # type: ignore[attr-defined]
    # the served path dead-lettered the bad events for the reasons the candidate gives
    assert report["served_dead_letters"] == report["rejected"]
    assert report["served_versions"] == {"1": len(events)}
    assert report["agreed"] == both.agreed and 0 < both.agreed < len(events)  # type: ignore[operator]
    confusion = Counter(zip(both.served_labels, both.candidate_labels, strict=True))
    assert {(c["served"], c["candidate"]): c["rows"] for c in report["confusion"]} == confusion  # type: ignore[attr-defined,index]
    largest = sorted(both.differences.tolist(), reverse=True)[:5]
    assert [e["difference"] for e in report["largest"]] == pytest.approx(largest, rel=1e-5)  # type: ignore[attr-defined,index]
    assert report["score_difference"]["max"] == pytest.approx(largest[0], rel=1e-5)  # type: ignore[index]

    written = read_all(p.bootstrap, [replayed], expect=len(events))
    assert {r.json["version"] for r in written} == {"2"}
    assert sorted(r.json["id"] for r in written) == sorted(orjson.loads(v)["id"] for _, v in events)
    assert _committed(p) == committed  # the live group's offsets, untouched

    # a range: the first 100 offsets of each partition
    part = _replay(p, store, "--against", p.output, "--to-offset", "100")
    assert part["events"] == 200 and part["compared"] == 200 - sum(  # type: ignore[operator]
        part["rejected"].values())  # type: ignore[attr-defined]  # fmt: skip
