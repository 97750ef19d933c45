"""T7: hostile model names and a hostile model store.

Names that spell paths (``../``, absolute paths), symlinks that lead out of the store, a
truncated model file and a checksum mismatch: each event that asks for one is refused
with a dead letter (stage ``route``) whose message names the problem, and the worker
keeps predicting for its good models before, between and after them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import orjson

from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import good_events, send

from .harness import MLP, answered_then_stopped, report

GOOD_MODELS = ("breast-cancer-mlp", "breast-cancer-logreg", "breast-cancer-gbt")
ROWS = good_events(1)[0][1]  # one real row, reused by the hostile events
FEATURES = orjson.loads(ROWS)["features"]


def _hostile_store(repo_root: Path, tmp_path: Path) -> Path:
    """A copy of models/ plus the hostile entries; the outside target is a valid model."""
    store = tmp_path / "models"
    shutil.copytree(repo_root / "models", store)
    outside = tmp_path / "outside"
    shutil.copytree(repo_root / "models" / MLP, outside / MLP)
    good = store / MLP / "1"

    (store / "version-link" / "1").parent.mkdir()
    (store / "version-link" / "1").symlink_to(outside / MLP / "1", target_is_directory=True)
    (store / "model-link").symlink_to(outside / MLP, target_is_directory=True)
    (store / "file-link" / "1").mkdir(parents=True)
    (store / "file-link" / "1" / "model.onnx").symlink_to(outside / MLP / "1" / "model.onnx")

    truncated = store / "truncated" / "1"
    truncated.mkdir(parents=True)
    data = (good / "model.onnx").read_bytes()
    (truncated / "model.onnx").write_bytes(data[: len(data) // 2])  # no manifest: no checksum

    looped = store / "manifest-loop" / "1"
    looped.mkdir(parents=True)
    shutil.copyfile(good / "model.onnx", looped / "model.onnx")
    (looped / "model.json").symlink_to(looped / "model.json")  # ELOOP on every read

    mismatch = store / "bad-checksum" / "1"
    shutil.copytree(good, mismatch)
    manifest = orjson.loads((mismatch / "model.json").read_bytes())
    manifest["sha256"] = "0" * 64
    (mismatch / "model.json").write_bytes(orjson.dumps(manifest))
    return store


# name: (event fields, error type, words the message must contain)
HOSTILE: dict[str, tuple[dict[str, str], str, tuple[str, ...]]] = {
    "dot-dot": ({"model": f"../{MLP}"}, "InvalidModelName", ("plain name", f"../{MLP}")),
    "dot-dot-deep": ({"model": "../../../etc/passwd"}, "InvalidModelName", ("plain name",)),
    "absolute": ({"model": "/etc/passwd"}, "InvalidModelName", ("plain name", "/etc/passwd")),
    "dot-dot-version": ({"model": MLP, "version": "../1"}, "InvalidModelName", ("version",)),
    "version-link": (
        {"model": "version-link", "version": "1"},
        "ModelLoadFailed",
        ("outside the model store",),
    ),
    "model-link": ({"model": "model-link"}, "ModelLoadFailed", ("outside the model store",)),
    "file-link": ({"model": "file-link"}, "ModelLoadFailed", ("outside the model store",)),
    "truncated": ({"model": "truncated"}, "ModelLoadFailed", ("onnxruntime cannot load",)),
    "bad-checksum": ({"model": "bad-checksum"}, "ModelLoadFailed", ("SHA-256", "0" * 64)),
    "manifest-loop": ({"model": "manifest-loop"}, "ModelLoadFailed", ("model.json",)),
}


def _hostile_events(round_: int) -> list[tuple[bytes, bytes]]:
    return [
        (f"hostile-{name}-{round_}".encode(),
         orjson.dumps({"id": f"hostile-{name}-{round_}", "features": FEATURES, **fields}))
        for name, (fields, _, _) in HOSTILE.items()
    ]  # fmt: skip


def test_hostile_models_are_refused_and_good_models_keep_serving(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path
) -> None:
    p = make_pipeline(partitions=2, models=_hostile_store(repo_root, tmp_path))
    events: list[tuple[bytes, bytes]] = []
    for round_ in range(3):  # good, hostile, good, hostile, ...: the worker must not stall
        for model in GOOD_MODELS:
            events += good_events(200, model=model, run=f"{model}-{round_}")
        events += _hostile_events(round_)
    for model in GOOD_MODELS:
        events += good_events(200, model=model, run=f"{model}-after")
    send(p.bootstrap, p.input, events)
    worker = p.start_worker()
    ids = [orjson.loads(v)["id"] for _, v in events]
    topics = [p.output, p.dlq]
    predictions, dead = answered_then_stopped(p.bootstrap, topics, worker, ids, timeout_s=120)
    hostile_ids = {i for i in ids if i.startswith("hostile-")}
    assert {r.json["id"] for r in predictions} == set(ids) - hostile_ids
    assert {r.json["id"].rsplit("-", 1)[0]: r.json["model"] for r in predictions} == {
        f"{m}-{run}": m for m in GOOD_MODELS for run in ("0", "1", "2", "after")
    }
    by_id = {orjson.loads(r.value or b"")["id"]: r for r in dead}
    assert set(by_id) == hostile_ids
    for name, (_, error_type, words) in HOSTILE.items():
        for round_ in range(3):
            h = by_id[f"hostile-{name}-{round_}"].headers
            message = (h["pipeline.error.message"] or b"").decode()
            assert h["pipeline.error.stage"] == b"route", (name, h)
            assert (h["pipeline.error.type"] or b"").decode() == error_type, (name, message)
            for word in words:
                assert word in message, (name, word, message)
        print(f"T7 {name}: {error_type}: {message}")
    assert "Traceback" not in worker.log
    report(
        "T7", events=len(ids), hostile=len(hostile_ids), kinds=len(HOSTILE),
        refused=len(dead), predicted=len(predictions), lost=0, duplicates=0,
    )  # fmt: skip
