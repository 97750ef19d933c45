"""T5: overload. A producer runs at 5 times the worker's rate for a while.

The worker must keep its memory bounded (librdkafka's prefetch is bounded, and the worker
pauses busy partitions past --max-in-flight), stay in its group (no involuntary
rebalance: no revoke, no lost partitions, one assignment) and, once the overload is
over, drain the lag.

The worker is made slow by its model, not by its settings: events name ``slow``, whose
version 1 is a deep dense network costing about 2 ms a row. A backlog built at five
times the worker's rate takes four times as long as the overload to drain at that rate,
far beyond the time budget of `make test`; so, once the overload is over, version 2 (the
example MLP) is published into the store, hot reload makes it the version those events
get, and the same worker, in the same group session, drains the lag at full speed.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.integration.conftest import Pipeline
from tests.integration.kafkaio import good_events, send

from .harness import (
    MLP,
    SIZES,
    EventStream,
    TimedRecord,
    event_id,
    now_ms,
    read_committed,
    report,
    split,
    steady_rate,
    uncommitted,
)

psutil = pytest.importorskip("psutil")

_RSS_LIMIT = 400 * 2**20
# Aim well above the 3x the test asserts: the worker's rate swings with the machine's other
# jobs (beside a CPU hog, calibrated at 93/s, it then ran at 132/s, and 7x fell short; a CI
# run calibrated it at 107/s and it then handled 251/s).
_OVERLOAD_FACTOR = 10.0
_MAX_RATE = 40_000.0


def _slow_model(*, width: int = 1024, depth: int = 96, seed: int = 7) -> bytes:
    """A 30-feature, 2-class network whose cost per row is `depth` width x width products.

    One weight matrix is reused at every layer, so the file stays small (4 MiB).
    """
    rng = np.random.default_rng(seed)
    w_in = rng.standard_normal((30, width)) / np.sqrt(30)
    w_hidden = rng.standard_normal((width, width)) * np.sqrt(2 / width)
    w_out = rng.standard_normal((width, 2)) / np.sqrt(width)
    inits = [
        numpy_helper.from_array(w.astype(np.float32), name)
        for w, name in ((w_in, "w_in"), (w_hidden, "w_hidden"), (w_out, "w_out"))
    ]
    nodes = [helper.make_node("MatMul", ["features", "w_in"], ["h0"])]
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w_hidden"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("MatMul", [f"h{depth}", "w_out"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 30])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _publish(store: Path, name: str, version: str, source: Path) -> None:
    """Publish a model version the documented way: manifest first, model renamed last."""
    target = store / name / version
    target.mkdir(parents=True)
    shutil.copy(source / "model.json", target / "model.json")
    shutil.copy(source / "model.onnx", target / ".model.onnx.tmp")
    (target / ".model.onnx.tmp").rename(target / "model.onnx")


class _RssSampler(threading.Thread):
    """Samples a process's resident memory every 0.2 s until stopped; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._proc = psutil.Process(pid)
        self._done = threading.Event()
        self.peak = 0
        self.start()

    def run(self) -> None:
        while not self._done.wait(0.2):
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _rate_between(out: list[TimedRecord], start_ms: int, end_ms: int) -> float:
    return sum(start_ms <= r.timestamp_ms <= end_ms for r in out) / ((end_ms - start_ms) / 1000)


def test_overload_memory_bounded_no_rebalance_lag_drains(
    make_pipeline: Callable[..., Pipeline], repo_root: Path, tmp_path: Path
) -> None:
    store = tmp_path / "models"
    (store / "slow" / "1").mkdir(parents=True)
    (store / "slow" / "1" / "model.onnx").write_bytes(_slow_model())
    p = make_pipeline(partitions=4, models=store)
    worker = p.start_worker()  # default settings: default session timeout and max in flight
    worker.wait_for_log(f"assigned {p.input}[", timeout_s=90)
    rss = _RssSampler(worker.proc.pid)

    calibration = good_events(2000, model="slow", run="calibrate")
    send(p.bootstrap, p.input, calibration)
    ids = [event_id(v) for _, v in calibration]
    out = read_committed(p.bootstrap, [p.output, p.dlq], want=ids, timeout_s=120, settle_s=0.5)
    worker_rate = steady_rate([r.timestamp_ms for r in out], trim=0.2)
    rate = min(_OVERLOAD_FACTOR * worker_rate, _MAX_RATE)
    print(f"T5: the worker does {worker_rate:.0f} events/s; producing at {rate:.0f}/s")

    overload_from = now_ms()
    stream = EventStream(
        p.bootstrap, p.input, good_events(int(rate * SIZES.overload_s), model="slow"),
        rate=rate,
    )  # fmt: skip
    ids += stream.finish(timeout_s=SIZES.overload_s * 3 + 60)
    overload_to = now_ms()
    lag = uncommitted(p.bootstrap, p.group, p.input)
    assert worker.proc.poll() is None, f"the worker died under overload:\n{worker.log[-3000:]}"

    _publish(store, "slow", "2", repo_root / "models" / MLP / "1")
    out = read_committed(p.bootstrap, [p.output, p.dlq], want=ids, timeout_s=600)
    drained_ms = max(r.timestamp_ms for r in out)
    deadline = time.monotonic() + 60
    while (left := uncommitted(p.bootstrap, p.group, p.input)) and time.monotonic() < deadline:
        time.sleep(1)
    peak = rss.stop()
    log = worker.log  # before SIGTERM, whose clean revoke is no rebalance
    code, _ = worker.stop(signal.SIGTERM, timeout_s=30)
    assert code == 0, worker.log[-3000:]

    predictions, dead = split(out)
    seen = {r.json["id"] for r in predictions}
    produced = (len(ids) - len(calibration)) / ((overload_to - overload_from) / 1000)
    handled = _rate_between(out, overload_from, overload_to)
    pauses = log.count("paused ")  # librdkafka's bounded prefetch may make pausing moot
    assignments = log.count(f"assigned {p.input}[")
    rebalances = assignments - 1 + log.count(f"revoked {p.input}[") + log.count(f"lost {p.input}[")
    versions = sorted({r.json["version"] for r in predictions})
    report(
        "T5", events=len(ids), overload_s=(overload_to - overload_from) / 1000,
        input_eps=round(produced), worker_eps=round(handled),
        factor=produced / handled if handled else None,  # 0 handled: seen once in CI
        peak_rss_mib=round(peak / 2**20), pauses=pauses, lag_after_overload=lag,
        drain_s=(drained_ms - overload_to) / 1000, lag_left=left, rebalances=rebalances,
        lost=len(set(ids) - seen), versions=versions,
    )  # fmt: skip
    # Aimed at 10x the calibrated rate; under the backlog the worker's batches grow, and a
    # CI run measured it 2.3x faster than calibrated (1,071/s in, 251/s handled: 4.3x).
    # Three times what it handles is still a backlog growing by two thirds of the input.
    assert produced >= 3 * handled, (
        f"not an overload: input {produced:.0f}/s vs worker {handled:.0f}/s"
    )
    assert peak < _RSS_LIMIT, f"worker RSS peaked at {peak / 2**20:.0f} MiB"
    assert rebalances == 0, f"involuntary rebalance:\n{log[-3000:]}"
    assert not dead and seen == set(ids), f"{len(set(ids) - seen)} events not predicted"
    assert left == 0, f"{left} input records still uncommitted after the drain"
