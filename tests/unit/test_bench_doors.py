"""The door benchmark's pure parts: the mean batch read from `pipeline serve`'s stats lines,
and the peers, which answer as the seed did (no servers, no load generator)."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipeline.dev.bench import doorload
from pipeline.dev.bench.doorpeers.model import OneRowModel
from pipeline.dev.bench.doorservers import Running
from pipeline.dev.bench.doorsuite import _Marks, _too_thin, mean_batch
from pipeline.dev.tools import _sample_rows
from pipeline.metrics.statsline import StatsSnapshot


def _line(requests: int, batches: int) -> str:
    """The stats line of one 1 s interval with `requests` one-row requests in `batches`."""
    snapshot = StatsSnapshot(
        seconds=1.0, events_in=0, predictions=0, dead_letters=0, batches=batches,
        batch_rows=requests, latency_p50_ms=None, latency_p99_ms=None, partitions=0,
        requests=requests, answered=requests, kind="doors",
    )  # fmt: skip
    return f"2026-11-29 21:00:00,000 INFO pipeline.serve: {snapshot.line()}\n"


def test_mean_batch_is_all_rows_over_all_batches_of_the_stats_lines() -> None:
    log = _line(1000, 100) + "an unrelated line\n" + _line(3000, 50)
    assert mean_batch(log) == pytest.approx(4000 / 150)


def test_mean_batch_skips_idle_intervals_and_is_none_without_lines() -> None:
    assert mean_batch(_line(0, 0) + _line(500, 250)) == pytest.approx(2.0)
    assert mean_batch("no stats line here\n") is None


def test_a_window_without_a_stats_line_takes_its_mean_batch_from_the_next(
    tmp_path: Path,
) -> None:
    log = tmp_path / "serve-0.log"
    log.write_text("started\n")
    up = Running(instances=[], procs=[], sampler=_NoCpu(), logs=[log])  # type: ignore[arg-type]
    marks = _Marks(up)
    marks("measuring")
    marks("measured")  # the window closed before the starved server logged a line
    late = threading.Timer(0.3, lambda: log.write_text("started\n" + _line(800, 100)))
    late.start()
    try:
        figures = marks.figures({"requests": 800, "cpu_s": 0.1}, 1.0, batching=True)
    finally:
        late.cancel()
    assert figures["mean_batch"] == pytest.approx(8.0)


def test_a_window_without_answers_or_measurable_cpu_is_too_thin() -> None:
    # CI once reported 0.0 CPU s per 1,000 requests: 10 requests in a 0.4 s window on a
    # starved machine, less CPU than one clock tick
    assert _too_thin({"requests": 0, "server_cpu_s": 0.5})
    assert _too_thin({"requests": 10, "server_cpu_s": 0.0})
    assert _too_thin({"requests": 10, "server_cpu_s": 0.01})
    assert not _too_thin({"requests": 400, "server_cpu_s": 0.12})


class _NoCpu:
    def cpu_seconds(self) -> float:
        return 0.0


def test_the_peers_model_answers_as_the_seed_did() -> None:
    row = _sample_rows()[0]
    answer = OneRowModel().answer(row)
    probabilities = _probabilities(row)
    assert answer == {
        "prediction": float(np.argmax(probabilities)),
        "confidence": pytest.approx(float(probabilities.max())),
    }
    with pytest.raises(ValueError, match="30 numbers"):
        OneRowModel().answer([1.0, 2.0])


def _probabilities(row: list[float]) -> np.ndarray:
    import onnxruntime as ort

    from tests.doors.conftest import MODELS

    session = ort.InferenceSession(str(MODELS / "breast-cancer-mlp" / "1" / "model.onnx"))
    _, probabilities = session.run(None, {"features": np.asarray([row], dtype=np.float32)})
    return np.asarray(probabilities[0])


@pytest.mark.skipif(
    importlib.util.find_spec("flask") is None or importlib.util.find_spec("fastapi") is None,
    reason="flask and fastapi are the bench extra's (pip install -e '.[bench]')",
)
def test_both_peer_apps_answer_post_predict_like_the_seed() -> None:
    from pipeline.dev.bench.doorpeers import fastapi_app, seed_flask

    row = _sample_rows()[0]
    flask_answer = seed_flask.create_app().test_client().post("/predict", json={"data": row})
    assert flask_answer.status_code == 200

    async def ask_fastapi() -> httpx.Response:
        transport = httpx.ASGITransport(app=fastapi_app.create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://peer") as client:
            return await client.post("/predict", json={"data": row})

    fastapi_answer = asyncio.run(ask_fastapi())
    assert fastapi_answer.status_code == 200
    assert flask_answer.get_json() == fastapi_answer.json()
    assert set(fastapi_answer.json()) == {"prediction", "confidence"}


def test_the_load_generator_builds_into_a_relative_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `go install` refuses a relative GOBIN ("GOBIN must be an absolute path"), so
    # `--cache-dir .cache/x` failed; every step must see absolute paths
    steps: list[tuple[list[str], Path, dict[str, str]]] = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(doorload, "go_version", lambda: "go1.26.8")
    monkeypatch.setattr(doorload, "_step", lambda args, cwd, env: steps.append((args, cwd, env)))

    binary = doorload.build_loadgen(Path("relative-cache"))

    assert binary == tmp_path / "relative-cache" / "doors-loadgen" / "loadgen"
    assert Path(steps[0][2]["GOBIN"]) == tmp_path / "relative-cache" / "go" / "bin"
    for args, cwd, _env in steps:
        assert cwd.is_absolute(), args
        assert all(Path(a.split("=", 1)[-1]).is_absolute() for a in args if "_out=" in a), args
