"""`pipeline.faust.predict_agent` in a real Faust worker against the real broker.

Predictions equal ONNX Runtime's; every event ends as one prediction or one dead letter;
dead letters are the worker's, header for header; a record too large to dead-letter whole
loses its value, not its dead letter; a Faust worker killed with SIGKILL while batches are
in flight loses nothing after a restart (its duplicates are counted and bounded by what
was uncommitted at the kill).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import pytest
from confluent_kafka.admin import AdminClient

from tests.reliability.harness import EventStream, read_committed, split, uncommitted
from tests.reliability.test_refused_records import (
    _oversized_event,
    _send_large,
    check_the_oversized_letter,
)

from .conftest import Pipeline
from .kafkaio import (
    Accounting,
    Record,
    WorkerProcess,
    good_events,
    read_all,
    send,
    wait_for_outputs,
)
from .test_worker import BAD_VALUES, good_and_bad_events

pytest.importorskip("faust", reason="the [faust] extra is not installed")

MLP = "breast-cancer-mlp"
LOGREG = "breast-cancer-logreg"


class FaustProcess(WorkerProcess):
    """A Faust worker running `predict_agent` (tests/integration/faustapp.py)."""

    command = ("-m", "tests.integration.faustapp")


@dataclass
class FaustRun:
    """One test's topics and group, and the Faust workers started on them."""

    pipeline: Pipeline
    datadir: Path
    started: list[FaustProcess] = field(default_factory=list)

    def start(self) -> FaustProcess:
        p = self.pipeline
        args = [
            "--bootstrap", p.bootstrap, "--input", p.input, "--output", p.output,
            "--dlq", p.dlq, "--group", p.group, "--models", str(p.models),
            "--datadir", str(self.datadir), "--default-model", MLP,
        ]  # fmt: skip
        worker = FaustProcess(args, p.log_dir / f"faust-{len(self.started)}.log")
        self.started.append(worker)
        return worker


@pytest.fixture
def make_faust(
    make_pipeline: Callable[..., Pipeline], kafka_admin: AdminClient, tmp_path: Path
) -> Iterator[Callable[..., FaustRun]]:
    """Factory: fresh topics and group for Faust workers; after the test, kills them and
    deletes the topic Faust makes for its group (``<group>-__assignor-__leader``)."""
    runs: list[FaustRun] = []

    def make(*, partitions: int = 4) -> FaustRun:
        run = FaustRun(make_pipeline(partitions=partitions), tmp_path / f"faust-{len(runs)}")
        runs.append(run)
        return run

    yield make
    for run in runs:
        for worker in run.started:
            worker.__exit__(None, None, None)
    own = [t for t in kafka_admin.list_topics(timeout=30).topics
           if any(t.startswith(f"{run.pipeline.group}-") for run in runs)]  # fmt: skip
    if own:
        with contextlib.suppress(Exception):
            for future in kafka_admin.delete_topics(own, operation_timeout=30).values():
                future.result(timeout=30)


def _onnx(models: Path, name: str, rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(
        str(models / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    label, proba = session.run(None, {"features": np.array(rows, dtype=np.float32)})
    return label, proba


def test_predictions_equal_onnxruntime_keep_keys_and_are_committed(
    make_faust: Callable[..., FaustRun],
) -> None:
    run = make_faust()
    p = run.pipeline
    events = good_events(400, model=None, run="mlp") + good_events(100, model=LOGREG, run="lr")
    send(p.bootstrap, p.input, events)
    worker = run.start()
    out = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    assert worker.stop()[0] == 0, worker.log[-3000:]

    acc = Accounting.of(
        [r for r in out if r.topic == p.output], [r for r in out if r.topic == p.dlq]
    )
    ids = [orjson.loads(v)["id"] for _, v in events]
    assert acc.lost(ids) == [] and acc.duplicates() == 0 and not acc.dead
    sent = {orjson.loads(v)["id"]: (k, orjson.loads(v)["features"]) for k, v in events}
    for model, run_id in ((MLP, "mlp-"), (LOGREG, "lr-")):
        mine = [r for r in out if r.json["id"].startswith(run_id)]
        label, proba = _onnx(p.models, model, [sent[r.json["id"]][1] for r in mine])
        for i, record in enumerate(mine):
            prediction = record.json
            assert record.key == sent[prediction["id"]][0]
            assert (prediction["model"], prediction["version"]) == (model, "1")
            assert prediction["outputs"]["label"] == int(label[i])
            assert prediction["outputs"]["probabilities"] == pytest.approx(
                proba[i].tolist(), abs=1e-6
            )
            assert prediction["score"] == pytest.approx(float(proba[i].max()), abs=1e-6)
    # Acknowledged after delivery, committed by Faust: a clean stop leaves nothing to redo.
    assert uncommitted(p.bootstrap, p.group, p.input) == 0


def _dead_letters(records: list[Record], topic: str) -> dict[str, Record]:
    return {r.key.decode(): r for r in records if r.topic == topic and r.key}


def test_bad_inputs_become_the_workers_dead_letters_header_for_header(
    make_faust: Callable[..., FaustRun], make_topic: Callable[..., str]
) -> None:
    run = make_faust(partitions=1)
    p = run.pipeline
    goods, events = good_and_bad_events()
    send(p.bootstrap, p.input, events)
    faust_worker = run.start()
    # The Kafka worker reads the same input in a group of its own, for comparison.
    q = replace(p, output=make_topic("wout"), dlq=make_topic("wdlq"), group=p.group + "-w")
    with q.start_worker("--default-model", MLP) as worker:
        theirs = read_all(q.bootstrap, [q.output, q.dlq], expect=len(events))
        assert worker.stop()[0] == 0
    ours = read_all(p.bootstrap, [p.output, p.dlq], expect=len(events))
    assert faust_worker.stop()[0] == 0, faust_worker.log[-3000:]

    assert len(ours) == len(events)
    predicted = sorted(r.json["id"] for r in ours if r.topic == p.output)
    assert predicted == sorted(orjson.loads(v)["id"] for _, v in goods)
    mine, worker_letters = _dead_letters(ours, p.dlq), _dead_letters(theirs, q.dlq)
    assert sorted(mine) == sorted(worker_letters) == sorted(f"bad-{k}" for k in BAD_VALUES)
    for key, letter in mine.items():
        expected = worker_letters[key]
        assert letter.value == expected.value == BAD_VALUES[key[4:]], key
        assert list(letter.headers) == list(expected.headers), key
        for name, value in letter.headers.items():
            if name != "pipeline.failed_at":
                assert value == expected.headers[name], (key, name)
        print(f"{key}: {letter.headers['pipeline.error.type'].decode()}")  # type: ignore[union-attr]


def test_a_record_too_large_to_dead_letter_whole_loses_its_value_not_its_letter(
    make_faust: Callable[..., FaustRun],
) -> None:
    run = make_faust(partitions=1)
    p = run.pipeline
    _send_large(p.bootstrap, p.input, b"big-key", _oversized_event())
    events = good_events(20)
    send(p.bootstrap, p.input, events)
    worker = run.start()
    ids = [f"{p.input}:0:0", *(orjson.loads(v)["id"] for _, v in events)]
    out = read_committed(p.bootstrap, [p.output, p.dlq], want=ids, timeout_s=90)
    assert worker.stop()[0] == 0, worker.log[-3000:]

    check_the_oversized_letter(out, ids)


def test_a_faust_worker_killed_mid_batch_loses_nothing_after_a_restart(
    make_faust: Callable[..., FaustRun],
) -> None:
    run = make_faust()
    p = run.pipeline
    stream = EventStream(p.bootstrap, p.input, good_events(4000), rate=400)
    first = run.start()
    wait_for_outputs(p.bootstrap, p.output, 300, timeout_s=90)
    code, _ = first.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL, first.log[-3000:]
    exposed = uncommitted(p.bootstrap, p.group, p.input)  # read or not, past the commits

    second = run.start()
    ids = stream.finish()
    out = read_committed(p.bootstrap, [p.output, p.dlq], want=ids, timeout_s=180)
    assert second.stop()[0] == 0, second.log[-3000:]

    predictions, dead = split(out)
    acc = Accounting.of(predictions, dead)
    lost, duplicates = acc.lost(ids), acc.duplicates()
    print(
        f"faust kill: {len(ids)} events, {len(lost)} lost, {duplicates} duplicates, "
        f"{exposed} input records uncommitted at the kill"
    )
    assert lost == [], f"{len(lost)} events lost, e.g. {lost[:5]}"
    assert not dead, f"{len(dead)} good events were dead-lettered"
    assert exposed > 0, "the kill came with nothing uncommitted: not mid-batch"
    assert duplicates <= exposed
