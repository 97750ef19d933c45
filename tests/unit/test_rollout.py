"""Shadow and canary versions: parsing, the key split, the store's files, the codec's split
and the engine's shadow runs on the example models (the broker tests are in
tests/integration/test_rollout_worker.py)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.dev.tools import _sample_rows
from pipeline.engine.codec import EventDecoder, class_probabilities
from pipeline.engine.compare import compare
from pipeline.engine.engine import Engine, Outcome
from pipeline.engine.inference import run_batch
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.engine.rollout import (
    Canary,
    Rollouts,
    key_bucket,
    parse_canaries,
    parse_shadows,
)
from pipeline.errors import ConfigError
from pipeline.metrics import Sensor

EXAMPLES = Path(__file__).resolve().parents[2] / "models"


def _store(tmp_path: Path) -> ModelStore:
    """breast-cancer: version 1 the MLP, 2 the logistic regression, 3 the wide MLP (other
    inputs), so a shadow or canary has a real candidate and a wrong one."""
    for version, source in (("1", "breast-cancer-mlp"), ("2", "breast-cancer-logreg"),
                            ("3", "wide-mlp")):  # fmt: skip
        shutil.copytree(EXAMPLES / source / "1", tmp_path / "breast-cancer" / version)
    return ModelStore(tmp_path)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- parsing and the split ----------------------------------------------------------------------


def test_flags_parse_and_refuse_with_an_example() -> None:
    assert parse_shadows(["fraud=2", " iris = v3 "]) == {"fraud": "2", "iris": "v3"}
    assert parse_canaries(["fraud=2:10", "iris=v3:0.5"]) == {
        "fraud": Canary("2", 10.0),
        "iris": Canary("v3", 0.5),
    }
    for bad in ("fraud", "fraud=", "../x=2", "fraud=2/3"):
        with pytest.raises(ConfigError, match="--shadow fraud=2"):
            parse_shadows([bad])
    for bad in ("fraud=2", "fraud=2:", "fraud=2:101", "fraud=2:-1", "fraud=:5", "x=2:ten"):
        with pytest.raises(ConfigError, match="--canary fraud=2:10"):
            parse_canaries([bad])


def test_the_key_split_is_stable_and_within_sampling_error_of_its_percent() -> None:
    assert key_bucket(b"card-42") == key_bucket(b"card-42")  # no per-process salt
    assert key_bucket(b"card-42") == 5048  # the same on every host and release
    canary = Canary("2", 10.0)
    keys = [f"card-{i}".encode() for i in range(10_000)]
    taken = [canary.takes(k) for k in keys]
    # 10,000 draws at p = 0.1: sd = 30, so 900..1,100 is over 3 sd either way
    assert 900 <= sum(taken) <= 1100
    assert taken == [canary.takes(k) for k in keys]  # one key, one version
    assert not any(Canary("2", 0).takes(k) for k in keys)
    assert all(Canary("2", 100).takes(k) for k in keys)


def test_store_files_apply_without_a_restart_and_a_broken_one_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, clock = _store(tmp_path), Clock()
    rollouts = Rollouts(store, reload_interval_s=2.0, clock=clock)
    assert rollouts.shadow_of("breast-cancer") is None
    assert rollouts.canary_of("breast-cancer") is None
    (tmp_path / "breast-cancer" / "SHADOW").write_text("2\n")
    (tmp_path / "breast-cancer" / "CANARY").write_text("2:25\n")
    assert rollouts.shadow_of("breast-cancer") is None  # read 0 s ago: trusted still
    clock.now = 2.5
    with caplog.at_level(logging.INFO, "pipeline.engine"):
        assert rollouts.shadow_of("breast-cancer") == "2"
        assert rollouts.canary_of("breast-cancer") == Canary("2", 25.0)
        clock.now = 5.0
        assert rollouts.shadow_of("breast-cancer") == "2"  # read again, unchanged: no line
    assert [r.getMessage() for r in caplog.records] == [
        "model 'breast-cancer': version 2 now shadows the served version (breast-cancer/SHADOW)",
        "model 'breast-cancer': canary version 2 now answers 25% of keys (breast-cancer/CANARY)",
    ]
    caplog.clear()
    (tmp_path / "breast-cancer" / "CANARY").write_text("9:25\n")
    (tmp_path / "breast-cancer" / "SHADOW").write_text("two words\n")
    clock.now = 8.0
    with caplog.at_level(logging.INFO, "pipeline.engine"):
        assert rollouts.canary_of("breast-cancer") is None
        assert rollouts.shadow_of("breast-cancer") is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "breast-cancer/CANARY is ignored" in errors[0] and "'9'" in errors[0]
    assert "breast-cancer/SHADOW must hold VERSION, got 'two words'" in errors[1]


def test_flags_win_over_files_and_must_name_versions_the_store_has(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (tmp_path / "breast-cancer" / "SHADOW").write_text("3")
    rollouts = Rollouts(store, shadows={"breast-cancer": "2"})
    rollouts.check()
    assert rollouts.shadow_of("breast-cancer") == "2"
    with pytest.raises(ConfigError, match=r"--canary breast-cancer=7:5: .* no version '7'"):
        Rollouts(store, canaries={"breast-cancer": Canary("7", 5)}).check()
    with pytest.raises(ConfigError, match="--shadow nope=1: no model named 'nope'"):
        Rollouts(store, shadows={"nope": "1"}).check()
    with pytest.raises(ConfigError, match="shadow_fraction must be a number above 0"):
        Rollouts(store, shadow_fraction=0)


# -- the codec's split ------------------------------------------------------------------------


def test_events_naming_no_version_split_by_key_and_by_id_without_one(tmp_path: Path) -> None:
    store = _store(tmp_path)
    (tmp_path / "breast-cancer" / "PINNED").write_text("1")
    rollouts = Rollouts(store, canaries={"breast-cancer": Canary("2", 30)})
    decoder = EventDecoder(catalog=ModelCache(store), rollouts=rollouts)
    row = _sample_rows()[0]

    def event(i: int, version: str | None = None) -> bytes:
        doc = {"id": f"e{i}", "model": "breast-cancer", "features": row}
        return (str(doc).replace("'", '"') if version is None else str(
            {**doc, "version": version}).replace("'", '"')).encode()  # fmt: skip

    n = 3000
    keys = [f"card-{i % 1000}".encode() for i in range(n)]
    decoded = decoder.decode([event(i) for i in range(n)], [0] * n, keys)
    assert not decoded.rejects
    by_version = {spec[1]: block for spec, block in decoded.blocks.items()}
    canary_rows = len(by_version["2"].indices)
    assert 0.25 * n <= canary_rows <= 0.35 * n
    expected = [Canary("2", 30).takes(k) for k in keys]
    assert sorted(by_version["2"].indices) == [i for i in range(n) if expected[i]]
    # an event that names its version gets it, whatever its key
    taken = keys[expected.index(True)]
    left = keys[expected.index(False)]
    named = decoder.decode([event(0, "1"), event(1, "2")], [0, 0], [taken, left])
    assert not named.rejects
    assert {spec[1]: b.indices for spec, b in named.blocks.items()} == {"1": [0], "2": [1]}
    # without keys, the event id decides, the same way each time
    by_id = decoder.decode([event(i) for i in range(200)], [0] * 200)
    again = decoder.decode([event(i) for i in range(200)], [0] * 200)
    assert {k: b.indices for k, b in by_id.blocks.items()} == {
        k: b.indices for k, b in again.blocks.items()
    }


# -- the engine's shadow ----------------------------------------------------------------------


class Recorder(Sensor):
    def __init__(self) -> None:
        self.shadowed_rows = 0
        self.agreed = 0
        self.differences: list[float] = []
        self.errors: dict[str, int] = {}
        self.skipped = 0

    def shadowed(self, model: str, version: str, shadow: str, rows: int,
                 agreed: int | None, differences: np.ndarray) -> None:  # fmt: skip
        assert (model, version, shadow) == ("breast-cancer", "1", "2")
        self.shadowed_rows += rows
        self.agreed += agreed or 0
        self.differences += differences.tolist()

    def shadow_failed(self, model: str, version: str, shadow: str, error_type: str,
                      rows: int) -> None:  # fmt: skip
        self.errors[error_type] = self.errors.get(error_type, 0) + rows

    def shadow_skipped(self, model: str, version: str, shadow: str, rows: int) -> None:
        self.skipped += rows


def _run(engine: Engine[Any], rows: np.ndarray) -> list[Outcome[int]]:
    outcomes: list[Outcome[int]] = []
    for start in range(0, len(rows), 100):
        part = rows[start : start + 100]
        engine.submit("breast-cancer", "1", {"features": part}, start, outcomes.append)
        engine.flush()
    assert engine.shadows is not None
    assert engine.shadows.wait_idle(10)
    return outcomes


def test_a_shadow_answers_the_served_rows_and_its_agreement_is_what_both_models_say(
    tmp_path: Path,
) -> None:
    store, sensor = _store(tmp_path), Recorder()
    cache = ModelCache(store)
    engine: Engine[int] = Engine(
        cache, sensor=sensor, rollouts=Rollouts(store, shadows={"breast-cancer": "2"})
    )
    rows = np.asarray(_sample_rows(), dtype=np.float32)
    outcomes = _run(engine, rows)
    served, shadow = cache.get("breast-cancer", "1"), cache.get("breast-cancer", "2")
    assert all(o.model is served and not o.errors for o in outcomes)  # served as before
    direct = compare(served.spec, run_batch(served, {"features": rows}).outputs,
                     shadow.spec, run_batch(shadow, {"features": rows}).outputs)  # fmt: skip
    assert sensor.shadowed_rows == len(rows) and not sensor.errors
    assert sensor.agreed == direct.agreed
    assert 0 < direct.agreed < len(rows)  # the two models do differ on some rows
    assert sorted(sensor.differences) == pytest.approx(sorted(direct.differences.tolist()))
    p = class_probabilities(served.spec, run_batch(served, {"features": rows}).outputs, len(rows))
    assert p is not None and direct.served_labels is not None
    assert direct.served_labels[0] == served.spec.labels[int(np.argmax(p[0]))]  # type: ignore[index]


def test_a_shadow_that_cannot_take_the_rows_changes_nothing_served(tmp_path: Path) -> None:
    store, sensor = _store(tmp_path), Recorder()
    cache = ModelCache(store)
    rows = np.asarray(_sample_rows(), dtype=np.float32)
    plain: Engine[int] = Engine(cache)
    shadowed: Engine[int] = Engine(
        cache, sensor=sensor, rollouts=Rollouts(store, shadows={"breast-cancer": "3"})
    )
    expected = _run_plain(plain, rows)
    outcomes = _run(shadowed, rows)
    assert [o.outputs["probabilities"].tolist() for o in outcomes] == expected
    assert sensor.errors == {"InputsDiffer": len(rows)} and sensor.shadowed_rows == 0


def test_a_shadow_fraction_runs_about_that_share(tmp_path: Path) -> None:
    store, sensor = _store(tmp_path), Recorder()
    engine: Engine[int] = Engine(
        ModelCache(store), sensor=sensor,
        rollouts=Rollouts(store, shadows={"breast-cancer": "2"}, shadow_fraction=0.25),
    )  # fmt: skip
    rows = np.asarray(_sample_rows() * 8, dtype=np.float32)
    _run(engine, rows)
    assert 0.18 * len(rows) <= sensor.shadowed_rows + sensor.skipped <= 0.32 * len(rows)


def _run_plain(engine: Engine[int], rows: np.ndarray) -> list[Any]:
    outcomes: list[Outcome[int]] = []
    for start in range(0, len(rows), 100):
        engine.submit("breast-cancer", "1", {"features": rows[start : start + 100]}, start,
                      outcomes.append)  # fmt: skip
        engine.flush()
    return [o.outputs["probabilities"].tolist() for o in outcomes]
