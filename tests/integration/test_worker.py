"""The stream worker against the real broker: every event ends as exactly one prediction or
one dead-letter record, with its key, and predictions equal ONNX Runtime's own."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest

from pipeline import exitcodes
from pipeline.dev.tools import _sample_rows

from .conftest import Pipeline
from .kafkaio import (
    FAST_FAILOVER,
    Accounting,
    WorkerProcess,
    good_events,
    read_all,
    send,
    wait_for_outputs,
)
from .rawproduce import produce_with_raw_header

MLP = "breast-cancer-mlp"


def _session(models: Path, name: str, version: str = "1") -> ort.InferenceSession:
    return ort.InferenceSession(str(models / name / version / "model.onnx"),
                                providers=["CPUExecutionProvider"])  # fmt: skip


@pytest.mark.parametrize(
    "batching", [(), ("--latency-target-ms", "40")], ids=["max-wait", "latency-target"]
)
def test_predictions_equal_onnxruntime_and_keep_keys(
    make_pipeline: Callable[..., Pipeline], batching: tuple[str, ...]
) -> None:
    p = make_pipeline()
    events = good_events(3000)
    send(p.bootstrap, p.input, events)
    worker = p.start_worker("--default-model", MLP, *batching)

    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    code, took = worker.stop()
    assert code == 0

    acc = Accounting.of(
        [r for r in out if r.topic == p.output], [r for r in out if r.topic == p.dlq]
    )
    ids = [orjson.loads(v)["id"] for _, v in events]
    assert acc.lost(ids) == []
    assert acc.duplicates() == 0
    assert not acc.dead
    sent = {orjson.loads(v)["id"]: (k, orjson.loads(v)["features"]) for k, v in events}
    features = np.array([sent[r.json["id"]][1] for r in out], dtype=np.float32)
    label, proba = _session(p.models, MLP).run(None, {"features": features})
    for i, record in enumerate(out):
        prediction = record.json
        assert record.key == sent[prediction["id"]][0]
        assert prediction["model"] == MLP and prediction["version"] == "1"
        assert prediction["outputs"]["label"] == int(label[i])
        assert prediction["outputs"]["probabilities"] == pytest.approx(proba[i].tolist(), abs=1e-6)
        assert prediction["label"] == ("malignant", "benign")[int(label[i])]
        assert prediction["score"] == pytest.approx(float(proba[i].max()), abs=1e-6)
        assert isinstance(prediction["ts"], int) and prediction["predicted_at"] >= prediction["ts"]


BAD_VALUES: dict[str, bytes | None] = {
    "non-utf8": b'{"id": "\xff\xfe", "features": [1]}',
    "empty": b"",
    "null-value": None,
    "truncated-json": b'{"id": "x", "features": [1, 2',
    "not-an-object": b"[1, 2, 3]",
    "missing-id": b'{"features": [1.0]}',
    "non-string-id": b'{"id": 7, "features": [1.0]}',
    "missing-features": b'{"id": "no-features"}',
    "wrong-count": b'{"id": "short", "features": [1.0, 2.0]}',
    "unknown-named-feature": b'{"id": "named", "features": {"bogus": 1.0}}',
    "string-feature": b'{"id": "str", "features": ["a"' + b", 1.0" * 29 + b"]}",
    "null-feature": b'{"id": "nul", "features": [null' + b", 1.0" * 29 + b"]}",
    "infinite": b'{"id": "inf", "features": [1e400' + b", 1.0" * 29 + b"]}",
    "float32-overflow": b'{"id": "big", "features": [1e39' + b", 1.0" * 29 + b"]}",
    "too-large": b'{"id": "huge", "features": [' + b"1.0, " * 40000 + b"1.0]}",
    "too-deep": b'{"id": "deep", "features": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    "unknown-model": b'{"id": "um", "model": "no-such-model", "features": [1.0]}',
    "unknown-version": b'{"id": "uv", "model": "breast-cancer-mlp", "version": "99", "features": [1.0]}',
    "path-trick-model": b'{"id": "pt", "model": "../../etc/passwd", "features": [1.0]}',
}


def good_and_bad_events() -> tuple[
    list[tuple[bytes, bytes]], list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]
]:
    """Good events, and them with one of each `BAD_VALUES` between each two (keyed
    ``bad-<kind>``, with a ``trace`` header naming the kind): the bad one of kind number
    i is at offset 2 i + 1 of a one-partition topic."""
    goods = good_events(len(BAD_VALUES) + 1)
    events: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    for i, (kind, value) in enumerate(BAD_VALUES.items()):
        events.append((goods[i][0], goods[i][1], []))
        events.append((f"bad-{kind}".encode(), value, [("trace", kind.encode())]))
    events.append((goods[-1][0], goods[-1][1], []))
    return goods, events


def test_each_bad_input_lands_in_the_dlq_with_its_original_bytes(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=1)
    goods, events = good_and_bad_events()
    send(p.bootstrap, p.input, events)
    worker = p.start_worker("--default-model", MLP)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    assert worker.stop()[0] == 0

    predictions = [r for r in out if r.topic == p.output]
    dead = {r.key.decode(): r for r in out if r.topic == p.dlq and r.key}
    assert sorted(r.json["id"] for r in predictions) == sorted(
        orjson.loads(v)["id"] for _, v in goods
    )
    assert len(out) == len(events)
    decode = {
        "non-utf8",
        "empty",
        "null-value",
        "truncated-json",
        "not-an-object",
        "too-large",
        "too-deep",
        "infinite",  # orjson refuses 1e400 while parsing
    }
    route = {"unknown-model", "unknown-version", "path-trick-model"}
    want = {
        k: "decode" if k in decode else "route" if k in route else "validate" for k in BAD_VALUES
    }
    got = {k: dead[f"bad-{k}"].headers["pipeline.error.stage"].decode() for k in BAD_VALUES}
    assert got == want
    for kind, value in BAD_VALUES.items():
        record = dead[f"bad-{kind}"]
        assert record.value == value, kind  # the original bytes, unchanged
        h = record.headers
        assert h["trace"] == kind.encode(), "original headers are kept"
        assert h["pipeline.error.type"] and h["pipeline.error.message"], kind
        print(
            f"{kind}: {h['pipeline.error.type'].decode()}: {h['pipeline.error.message'].decode()}"
        )
        assert h["pipeline.source.topic"] == p.input.encode()
        assert int(h["pipeline.source.offset"]) == 2 * list(BAD_VALUES).index(kind) + 1
        assert h["pipeline.source.partition"] == b"0"
        assert int(h["pipeline.failed_at"]) > 0


def test_events_naming_models_and_versions_each_get_theirs(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "models"
    shutil.copytree(repo_root / "models", store)
    # Version 2 of the MLP is the logistic regression's graph: easy to tell apart.
    (store / MLP / "2").mkdir()
    shutil.copy(
        repo_root / "models/breast-cancer-logreg/1/model.onnx", store / MLP / "2/model.onnx"
    )
    p = make_pipeline(models=store)
    wanted = {
        "mlp-v1": (dict(model=MLP, version="1"), (MLP, "1")),
        "mlp-newest": (dict(model=MLP), (MLP, "2")),
        "default": (dict(model=None), (MLP, "2")),
        "logreg": (dict(model="breast-cancer-logreg"), ("breast-cancer-logreg", "1")),
        "gbt": (dict(model="breast-cancer-gbt", version="1"), ("breast-cancer-gbt", "1")),
    }
    events = []
    for run, (fields, _) in wanted.items():
        fields = dict(fields)
        model = fields.pop("model")
        events += good_events(40, model=model, run=run, **fields)
    send(p.bootstrap, p.input, events)
    worker = p.start_worker("--default-model", MLP)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    assert worker.stop()[0] == 0
    assert len(out) == len(events) and all(r.topic == p.output for r in out)
    rows = np.array(_sample_rows()[:40], dtype=np.float32)
    for run, (_, (model, version)) in wanted.items():
        mine = sorted((r.json for r in out if r.json["id"].startswith(f"{run}-")),
                      key=lambda j: int(j["id"].split("-")[-1]))  # fmt: skip
        assert {(j["model"], j["version"]) for j in mine} == {(model, version)}, run
        _, proba = _session(store, model, version).run(None, {"features": rows})
        got = np.array([j["outputs"]["probabilities"] for j in mine])
        np.testing.assert_allclose(got, proba, atol=1e-6)


def test_header_names_that_are_not_utf8_do_not_stop_the_worker(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=1)
    good = good_events(2, run="raw")
    produce_with_raw_header(p.bootstrap, p.input, b"k0", good[0][1], b"trace\xff", b"x")
    produce_with_raw_header(p.bootstrap, p.input, b"k1", b"{not json", b"trace\xfe", b"y")
    send(p.bootstrap, p.input, good[1:])
    worker = p.start_worker("--default-model", MLP)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=3)
    assert worker.proc.poll() is None, f"the worker died:\n{worker.log[-3000:]}"
    assert worker.stop()[0] == 0

    predictions = sorted(r.json["id"] for r in out if r.topic == p.output)
    assert predictions == ["raw-0", "raw-1"]
    (dead,) = [r for r in out if r.topic == p.dlq]
    assert dead.value == b"{not json" and dead.key == b"k1"
    assert dead.headers["pipeline.error.type"] == b"InvalidJson"
    assert dead.headers["pipeline.headers.omitted"] == b"1"


def _produce_stream(p: Pipeline, n: int) -> list[str]:
    events = good_events(n)
    send(p.bootstrap, p.input, events)
    return [orjson.loads(v)["id"] for _, v in events]


class _BackgroundProducer(threading.Thread):
    """Sends up to `n` events in chunks at about `rate` events/s, until told to `finish`:
    the stream outlasts a worker's start however slow the machine is."""

    def __init__(self, p: Pipeline, n: int, rate: float = 5_000, chunk: int = 500) -> None:
        super().__init__(daemon=True)
        self.events = good_events(n)
        self.sent = 0
        self._p, self._rate, self._chunk = p, rate, chunk
        self._finishing = threading.Event()
        self.start()

    def run(self) -> None:
        started = time.monotonic()
        for i in range(0, len(self.events), self._chunk):
            if self._finishing.is_set():
                return
            self.sent += send(self._p.bootstrap, self._p.input, self.events[i : i + self._chunk])
            delay = started + (i + self._chunk) / self._rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def finish(self, after_s: float = 1.0) -> list[str]:
        """Stop sending `after_s` from now; the ids of every event sent."""
        time.sleep(after_s)
        self._finishing.set()
        self.join()
        return [orjson.loads(v)["id"] for _, v in self.events[: self.sent]]


def test_sigterm_mid_stream_commits_and_restart_adds_no_duplicate(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline()
    stream = _BackgroundProducer(p, 200_000)
    first = p.start_worker("--default-model", MLP)
    wait_for_outputs(p.bootstrap, p.output, 1000)  # predictions are flowing
    code, took = first.stop(signal.SIGTERM)
    assert stream.is_alive(), "the stream should still have been flowing at SIGTERM"
    assert code == 0, first.log[-2000:]
    assert took < 10.0
    ids = stream.finish()
    second = p.start_worker("--default-model", MLP)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(ids), timeout_s=120)
    assert second.stop()[0] == 0
    acc = Accounting.of(out, [])
    assert acc.lost(ids) == []
    assert acc.duplicates() == 0
    print(f"SIGTERM mid-stream: exit 0 in {took:.2f} s; after restart 0 duplicates, 0 lost")


def test_sigkill_mid_stream_loses_nothing(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline()
    stream = _BackgroundProducer(p, 200_000)
    # the killed member's partitions come back after its session timeout: 6 s, not 45
    first = p.start_worker("--default-model", MLP, "--commit-interval-ms", "200", *FAST_FAILOVER)
    wait_for_outputs(p.bootstrap, p.output, 1000)  # predictions are flowing
    first.stop(signal.SIGKILL)
    assert stream.is_alive(), "the stream should still have been flowing at SIGKILL"
    ids = stream.finish()
    second = p.start_worker("--default-model", MLP)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(ids), timeout_s=120)
    assert second.stop()[0] == 0
    acc = Accounting.of(out, [])
    assert acc.lost(ids) == []
    print(f"SIGKILL mid-stream: 0 lost, {acc.duplicates()} duplicates (allowed at-least-once)")


def test_two_workers_share_partitions_and_one_leaves(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline(partitions=4)
    ids = _produce_stream(p, 40_000)
    a = p.start_worker("--default-model", MLP)
    a.wait_for_log("assigned")
    b = p.start_worker("--default-model", MLP)
    b.wait_for_log("assigned")
    wait_for_outputs(p.bootstrap, p.output, 1000)
    before_leave = len(a.log)
    code, _ = b.stop(signal.SIGTERM)
    assert code == 0
    ids += _produce_stream(p, 10_000)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(ids), timeout_s=120)
    assert a.stop()[0] == 0
    acc = Accounting.of(out, [])
    assert acc.lost(ids) == []
    assert acc.duplicates() == 0, "a clean leave commits what it finished: no event is redone"
    assert f"INFO pipeline.worker: assigned {p.input}[" in a.log[before_leave:], "a took over"
    print("two workers, one left cleanly: 0 lost, 0 duplicates")


_ORPHAN_LIMIT_S = 15.0  # a child's clean stop: drain, commit, leave the group


def _two_workers(p: Pipeline) -> WorkerProcess:
    """`pipeline run --workers 2`, once both children hold partitions."""
    parent = p.start_worker("--default-model", MLP, "--workers", "2")
    parent.wait_for_log("worker-0 INFO pipeline.worker: assigned")
    parent.wait_for_log("worker-1 INFO pipeline.worker: assigned")
    return parent


def test_workers_flag_runs_processes_in_one_group(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline(partitions=4)
    ids = _produce_stream(p, 20_000)
    parent = _two_workers(p)
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(ids), timeout_s=120)
    code, took = parent.stop(signal.SIGTERM)
    assert code == 0 and took < 10.0
    acc = Accounting.of(out, [])
    assert acc.lost(ids) == [] and acc.duplicates() == 0


def test_fast_producer_memory_stays_bounded_and_worker_catches_up(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    psutil = pytest.importorskip("psutil")
    p = make_pipeline(partitions=4)
    worker = p.start_worker("--default-model", MLP, "--max-in-flight", "2000")
    worker.wait_for_log("assigned")
    producer = subprocess.Popen([
        sys.executable, "-m", "pipeline", "produce", "--bootstrap-servers", p.bootstrap,
        "--topic", p.input, "--synthetic", MLP, "--count", "150000",
    ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    peak = 0
    proc = psutil.Process(worker.proc.pid)
    while producer.poll() is None:
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.05)
    assert producer.returncode == 0
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=150_000, timeout_s=180)
    peak = max(peak, proc.memory_info().rss)
    assert worker.stop()[0] == 0
    assert len({r.json["id"] for r in out}) == 150_000
    assert peak < 400 * 2**20, f"worker RSS peaked at {peak / 2**20:.0f} MiB"
    print(f"150k events produced flat out: worker peak RSS {peak / 2**20:.0f} MiB")


def test_unreachable_broker_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--bootstrap-servers", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == exitcodes.BROKER_UNREACHABLE == 4
    assert "could not reach Kafka at 127.0.0.1:1" in done.stderr
    assert time.monotonic() - started < 30


def test_a_dying_child_is_reported_and_the_parent_stops_the_rest(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    psutil = pytest.importorskip("psutil")
    p = make_pipeline(partitions=4)
    parent = _two_workers(p)
    children = psutil.Process(parent.proc.pid).children()
    workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 2
    workers[0].send_signal(signal.SIGKILL)
    code = parent.wait(30)
    assert code == 1
    assert f"(pid {workers[0].pid}) died with exit code -9; stopping the others" in parent.log
    assert not workers[1].is_running() or workers[1].status() == psutil.STATUS_ZOMBIE


def test_children_end_when_their_parent_is_killed(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    psutil = pytest.importorskip("psutil")
    p = make_pipeline(partitions=4)
    parent = _two_workers(p)
    children = psutil.Process(parent.proc.pid).children(recursive=True)
    assert len(children) >= 2, children
    parent.proc.kill()  # kill -9: the parent cannot stop them
    parent.__exit__(None, None, None)  # waits for it and closes its log file
    killed = time.monotonic()
    _, alive = psutil.wait_procs(children, timeout=_ORPHAN_LIMIT_S)
    took = time.monotonic() - killed
    for orphan in alive:  # never left behind, even when the test fails
        orphan.kill()
    assert not alive, f"still running {_ORPHAN_LIMIT_S:.0f} s after the parent died: {alive}"
    print(f"--workers 2: {len(children)} processes ended {took:.1f} s after kill -9 of the parent")


def test_missing_topics_without_creation_is_a_clear_error(kafka_bootstrap: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--bootstrap-servers", kafka_bootstrap,
         "--input-topic", "no-such-topic-7d1c", "--output-topic", "no-such-out-7d1c",
         "--no-create-topics"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == exitcodes.KAFKA_FATAL == 6
    assert "do not exist" in done.stderr and "no-such-topic-7d1c" in done.stderr
    assert "--no-create-topics" in done.stderr
