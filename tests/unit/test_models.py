"""Tests of the model store and cache, against copies of the real example models."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from pipeline.engine import models
from pipeline.engine.engine import Engine
from pipeline.engine.models import LoadedModel, ModelCache, ModelStore
from pipeline.engine.signature import TensorSpec
from pipeline.errors import ConfigError, ModelLoadError, ModelNotFoundError
from tests.modelfactory import two_input_model

EXAMPLES = Path(__file__).resolve().parents[2] / "models"
LOGREG = EXAMPLES / "breast-cancer-logreg" / "1"
MLP = EXAMPLES / "breast-cancer-mlp" / "1"
WAIT_S = 10.0


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingFactory:
    """Session factory that counts loads, can hold them at a gate, and can fail them."""

    def __init__(self, *, gate: threading.Event | None = None) -> None:
        self.calls = 0
        self.options: list[ort.SessionOptions] = []
        self.fail_with: Exception | None = None
        self._gate = gate
        self._lock = threading.Lock()

    def __call__(self, data: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
        with self._lock:
            self.calls += 1
            self.options.append(options)
        if self._gate is not None and not self._gate.wait(WAIT_S):
            raise TimeoutError("test gate was never opened")
        if self.fail_with is not None:
            raise self.fail_with
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    store_root = tmp_path / "store"
    store_root.mkdir()
    return store_root


@pytest.fixture
def add_version(root: Path) -> Callable[..., Path]:
    """Copy an example model into the tmp store as `name`/`version`; return its dir."""

    def add(
        name: str = "m", version: str = "1", source: Path = LOGREG, manifest: bool = True
    ) -> Path:
        directory = root / name / version
        directory.mkdir(parents=True)
        if manifest:
            shutil.copyfile(source / "model.json", directory / "model.json")
        shutil.copyfile(source / "model.onnx", directory / "model.onnx")
        return directory

    return add


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_cache(root: Path, clock: FakeClock) -> Callable[..., ModelCache]:
    def make(**kwargs: Any) -> ModelCache:
        kwargs.setdefault("clock", clock)
        return ModelCache(ModelStore(root), **kwargs)

    return make


def run(model: LoadedModel) -> list[Any]:
    """Run one all-ones row through a loaded model."""
    row = np.ones((1, model.spec.n_features), dtype=np.float32)
    return list(model.session.run(list(model.output_names), {model.input_name: row}))


def write_manifest(directory: Path, content: object) -> None:
    (directory / "model.json").write_text(json.dumps(content), encoding="utf-8")


def in_threads(n: int, target: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """Call `target` from `n` threads at once; return results and errors."""
    results: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def body() -> None:
        barrier.wait(WAIT_S)
        try:
            results.append(target())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    return results, errors


# --- store: layout, names, versions ---------------------------------------------------


def test_store_root_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing directory"):
        ModelStore(tmp_path / "missing")


def test_only_directories_with_a_model_file_count(
    root: Path, add_version: Callable[..., Path]
) -> None:
    add_version("m", "1")
    (root / "m" / "2").mkdir()  # no model.onnx yet
    (root / "m" / "notes.txt").write_text("not a version")
    add_version("m", ".hidden")
    (root / "empty-model").mkdir()
    add_version(".hidden-model", "1")
    store = ModelStore(root)
    assert store.names() == ["m"]
    assert store.versions("m") == ["1"]


def test_versions_sort_naturally_newest_last(root: Path) -> None:
    shuffled = ["10", "v10", "1.9", "2", "abc", "1", "v2", "9", "1.10"]
    for version in shuffled:
        (root / "m" / version).mkdir(parents=True)
        (root / "m" / version / "model.onnx").write_bytes(b"placeholder")
    store = ModelStore(root)
    expected = ["1", "1.9", "1.10", "2", "9", "10", "abc", "v2", "v10"]
    assert store.versions("m") == expected
    assert store.latest("m") == "v10"


def test_unknown_model_and_version_are_not_found(
    root: Path, add_version: Callable[..., Path]
) -> None:
    add_version("m", "1")
    store = ModelStore(root)
    with pytest.raises(ModelNotFoundError, match=r"no model named 'nope' in the store"):
        store.latest("nope")
    with pytest.raises(ModelNotFoundError, match=r"no version '7'.*its versions: 1"):
        store.path("m", "7")


# --- store: path safety ---------------------------------------------------------------

UNSAFE = ["../x", "..", ".", "/abs", "a/b", "", "a\\b", "x" * 129, ".hidden"]


@pytest.mark.parametrize("bad", UNSAFE)
def test_path_refuses_names_that_are_not_plain(
    root: Path, add_version: Callable[..., Path], bad: str
) -> None:
    add_version("m", "1")
    store = ModelStore(root)
    with pytest.raises(ModelNotFoundError, match=r"model name must be 1 to 128 characters"):
        store.path(bad, "1")
    with pytest.raises(ModelNotFoundError, match=r"model version must be 1 to 128 characters"):
        store.path("m", bad)


def test_path_refuses_a_symlinked_model_file_outside_the_store(
    tmp_path: Path, root: Path, make_cache: Callable[..., ModelCache]
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(LOGREG / "model.onnx", outside / "model.onnx")
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "1" / "model.onnx").symlink_to(outside / "model.onnx")
    with pytest.raises(ModelLoadError, match="outside the model store") as info:
        ModelStore(root).path("m", "1")
    assert str(info.value).startswith("m/1/model.onnx is a symlink")
    assert str(outside) not in str(info.value), "the host's paths stay out of dead letters"
    with pytest.raises(ModelLoadError, match="outside the model store"):
        make_cache().get("m", "1")


def test_path_refuses_a_symlinked_version_directory_outside_the_store(
    tmp_path: Path, root: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(LOGREG / "model.onnx", outside / "model.onnx")
    (root / "m").mkdir()
    (root / "m" / "1").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelLoadError, match="outside the model store"):
        ModelStore(root).path("m", "1")


def test_manifest_symlinked_outside_the_store_is_refused(
    tmp_path: Path, root: Path, add_version: Callable[..., Path]
) -> None:
    directory = add_version("m", "1", manifest=False)
    (tmp_path / "model.json").write_text("{}")
    (directory / "model.json").symlink_to(tmp_path / "model.json")
    with pytest.raises(
        ModelLoadError, match=r"m/1/model\.json is a symlink to a file outside the model store"
    ):
        ModelStore(root).manifest("m", "1")


def test_symlinks_inside_the_store_are_followed(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    add_version("m", "1")
    (root / "m" / "2").symlink_to(root / "m" / "1", target_is_directory=True)
    assert ModelStore(root).path("m", "2") == (root / "m" / "1" / "model.onnx").resolve()
    assert make_cache().resolve("m", None).version == "2"


# --- loading: broken files --------------------------------------------------------------


def test_truncated_model_names_the_file_and_onnxruntime_error(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    directory = add_version("m", "1", source=MLP, manifest=False)
    data = (MLP / "model.onnx").read_bytes()
    (directory / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load the model") as info:
        make_cache().get("m", "1")
    assert str(info.value).startswith("m/1/model.onnx: "), "named as the store shows it"
    assert info.value.__cause__ is not None


def test_checksum_mismatch_names_both_hashes(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    directory = add_version("m", "1", source=LOGREG)
    shutil.copyfile(MLP / "model.onnx", directory / "model.onnx")  # logreg's manifest
    expected = json.loads((LOGREG / "model.json").read_text())["sha256"]
    actual = json.loads((MLP / "model.json").read_text())["sha256"]
    with pytest.raises(ModelLoadError, match="regenerate the manifest") as info:
        make_cache().get("m", "1")
    message = str(info.value)
    assert expected in message
    assert actual in message
    assert message.startswith("m/1/model.onnx: ")


BAD_MANIFESTS: list[tuple[object, str]] = [
    ({"features": "mean_radius"}, "'features'"),
    ({"features": ["a", 2]}, "'features'.*a number at index 1"),
    ({"features": []}, "'features'.*an empty array"),
    ({"features": ["a", "a"]}, "'features'.*duplicates"),
    ({"labels": [""]}, "'labels'"),
    ({"labels": {"0": "malignant"}}, "'labels'.*an object"),
    ({"probability_output": 3}, "'probability_output'.*a number"),
    ({"description": ["x"]}, "'description'.*an array"),
    ({"sha256": "abc"}, "'sha256'.*64 hex digits"),
    ({"sha256": True}, "'sha256'.*a boolean"),
    ({"feature": ["a"]}, r"unknown manifest field\(s\) \['feature'\]"),
    (["features"], "must be a JSON object, got an array"),
    ({"serving": 8}, r"'serving' must be a JSON object with any of \['intra_op_threads', "),
    ({"serving": {"batch": 8}}, r"unknown serving setting\(s\) \['batch'\]"),
    ({"serving": {"max_batch_size": 0}}, "'max_batch_size' must be an integer >= 1, got a number"),
    ({"serving": {"max_batch_size": 2.5}}, "'max_batch_size' must be an integer >= 1"),
    ({"serving": {"intra_op_threads": -1}}, "'intra_op_threads' must be an integer >= 0"),
    ({"serving": {"max_wait_ms": "5"}}, "'max_wait_ms' must be a number of milliseconds"),
    ({"serving": {"max_wait_ms": True}}, "'max_wait_ms' must be a number of milliseconds"),
    ({"defaults": ["x"]}, "'defaults' must be a JSON object of input names to values"),
    ({"defaults": {"mean_radius": None}}, "one string, number or boolean, got 'mean_radius': null"),
    ({"defaults": {"mean_radius": [1.0]}}, "one string, number or boolean"),
]


@pytest.mark.parametrize(("content", "pattern"), BAD_MANIFESTS)
def test_manifest_with_bad_types_names_file_and_field(
    root: Path, add_version: Callable[..., Path], content: object, pattern: str
) -> None:
    directory = add_version("m", "1", manifest=False)
    write_manifest(directory, content)
    with pytest.raises(ModelLoadError, match=pattern) as info:
        ModelStore(root).manifest("m", "1")
    assert str(info.value).startswith("m/1/model.json: ")


def test_manifest_that_is_not_json_is_refused(root: Path, add_version: Callable[..., Path]) -> None:
    directory = add_version("m", "1", manifest=False)
    (directory / "model.json").write_text("{features: [}")
    with pytest.raises(ModelLoadError, match="not valid UTF-8 JSON"):
        ModelStore(root).manifest("m", "1")


def test_manifest_null_fields_count_as_absent(root: Path, add_version: Callable[..., Path]) -> None:
    directory = add_version("m", "1", manifest=False)
    write_manifest(directory, {"labels": None, "description": "d"})
    assert ModelStore(root).manifest("m", "1") == {"description": "d"}


def test_manifest_feature_count_must_match_the_graph(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    directory = add_version("m", "1", manifest=False)
    write_manifest(directory, {"features": [f"f{i}" for i in range(29)]})
    with pytest.raises(ModelLoadError, match=r"takes 30 features but its model\.json lists 29"):
        make_cache().get("m", "1")


def test_manifest_probability_output_must_exist(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    directory = add_version("m", "1", manifest=False)
    write_manifest(directory, {"probability_output": "probs"})
    with pytest.raises(ModelLoadError, match=r"'probs', but the model's outputs are"):
        make_cache().get("m", "1")


def test_manifest_labels_must_match_probability_columns(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    directory = add_version("m", "1", manifest=False)
    write_manifest(directory, {"probability_output": "probabilities", "labels": ["a", "b", "c"]})
    with pytest.raises(ModelLoadError, match=r"has 2 columns but .* lists 3 labels"):
        make_cache().get("m", "1")


def test_without_manifest_the_graph_gives_the_feature_count(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    add_version("m", "1", manifest=False)
    spec = make_cache().resolve("m", "1")
    assert (spec.n_features, spec.feature_names, spec.labels) == (30, None, None)


def _symbolic_width_model() -> bytes:
    """An Identity model whose input is [batch, F] with a symbolic F."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "F"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "F"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def test_symbolic_width_takes_rows_of_any_length_unless_the_manifest_names_features(
    root: Path, make_cache: Callable[..., ModelCache]
) -> None:
    directory = root / "m" / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(_symbolic_width_model())
    typed = make_cache().resolve("m", "1")
    assert (typed.vector, typed.inputs) == (False, (TensorSpec("x", "FP32", (None,)),))
    write_manifest(directory, {"features": ["a", "b", "c"]})
    spec = make_cache().resolve("m", "1")
    assert (spec.n_features, spec.feature_index) == (3, {"a": 0, "b": 1, "c": 2})


# --- loading: sessions ------------------------------------------------------------------


def test_session_options_and_one_warm_up_run(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    add_version("m", "1")
    runs: list[dict[str, np.ndarray]] = []

    class RecordingSession:
        def __init__(self, data: bytes, options: ort.SessionOptions) -> None:
            self.options = options
            self._inner = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> Any:
            runs.append(feeds)
            return self._inner.run(outputs, feeds)

    cache = make_cache(intra_op_threads=2, inter_op_threads=3, session_factory=RecordingSession)
    model = cache.get("m", "1")
    options = model.session.options
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 3)
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert len(runs) == 1
    (row,) = runs[0].values()
    assert row.dtype == np.float32
    assert row.shape == (1, 30)
    assert not row.any()


def test_a_manifests_serving_settings_set_its_threads_and_its_batches(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    directory = add_version("m", "1")
    manifest = json.loads((directory / "model.json").read_text())
    serving = {"max_batch_size": 3, "max_wait_ms": 0, "intra_op_threads": 1}
    write_manifest(directory, {**manifest, "serving": serving})
    add_version("plain", "1")

    class OptionsSession(ort.InferenceSession):  # type: ignore[misc]
        def __init__(self, data: bytes, options: ort.SessionOptions) -> None:
            super().__init__(data, sess_options=options, providers=["CPUExecutionProvider"])
            self.options = options

    cache = make_cache(intra_op_threads=2, session_factory=OptionsSession)
    assert cache.get("m", "1").session.options.intra_op_num_threads == 1
    assert cache.get("plain", "1").session.options.intra_op_num_threads == 2
    assert cache.get("m", "1").serving == {"max_batch_size": 3, "max_wait_ms": 0.0,
                                           "intra_op_threads": 1}  # fmt: skip

    engine: Engine[str] = Engine(cache, max_batch_size=256, max_wait_ms=60_000)
    sizes: dict[str, list[int]] = {"m": [], "plain": []}
    for name in sizes:
        rows = np.ones((8, 30), dtype=np.float32)
        engine.submit(name, "1", {"features": rows}, name,
                      lambda o: sizes[o.ticket].append(len(o.rows)))  # fmt: skip
    engine.run_due()  # m's rows are due at once (its wait is 0), in batches of 3
    assert sizes == {"m": [3, 3, 2], "plain": []}  # plain's wait a minute for 256 rows


def test_failed_warm_up_is_a_load_error(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    add_version("m", "1")

    class BrokenSession:
        def __init__(self, data: bytes, options: ort.SessionOptions) -> None:
            self._inner = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> Any:
            raise RuntimeError("kernel exploded")

    with pytest.raises(ModelLoadError, match=r"warm-up inference .* kernel exploded"):
        make_cache(session_factory=BrokenSession).get("m", "1")


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_loaded", 0),
        ("max_loaded", True),
        ("intra_op_threads", -1),
        ("inter_op_threads", 1.5),
        ("reload_interval_s", -1.0),
        ("reload_interval_s", float("nan")),
    ],
)
def test_cache_settings_are_checked(
    make_cache: Callable[..., ModelCache], setting: str, value: object
) -> None:
    with pytest.raises(ConfigError, match=setting):
        make_cache(**{setting: value})


# --- cache: single flight, failures, LRU ------------------------------------------------


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a loader blocked


@pytest.fixture
def seven_waiting(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once 7 callers wait on an in-flight load (the 8th is the one loading)."""
    event = threading.Event()
    lock = threading.Lock()
    waiting = [0]

    class CountingFuture(Future[Any]):
        def result(self, timeout: float | None = None) -> Any:
            with lock:
                waiting[0] += 1
                if waiting[0] == 7:
                    event.set()
            return super().result(timeout)

    monkeypatch.setattr(models, "Future", CountingFuture)
    return event


def open_when(ready: threading.Event, gate: threading.Event) -> threading.Thread:
    """Start a thread that opens `gate` once `ready` is set."""

    def open_gate() -> None:
        if ready.wait(WAIT_S):
            gate.set()

    opener = threading.Thread(target=open_gate)
    opener.start()
    return opener


def test_concurrent_callers_share_one_load(
    add_version: Callable[..., Path],
    make_cache: Callable[..., ModelCache],
    gate: threading.Event,
    seven_waiting: threading.Event,
) -> None:
    add_version("m", "1")
    factory = CountingFactory(gate=gate)
    cache = make_cache(session_factory=factory)
    opener = open_when(seven_waiting, gate)  # the load finishes only once 7 wait on it
    results, errors = in_threads(8, lambda: cache.get("m", "1"))
    opener.join(WAIT_S)
    assert errors == []
    assert factory.calls == 1
    assert len(results) == 8
    assert all(r is results[0] for r in results)


def test_failed_load_reaches_every_waiter_and_is_retried_later(
    add_version: Callable[..., Path],
    make_cache: Callable[..., ModelCache],
    clock: FakeClock,
    gate: threading.Event,
    seven_waiting: threading.Event,
) -> None:
    add_version("m", "1")
    factory = CountingFactory(gate=gate)
    factory.fail_with = RuntimeError("out of memory, pretend")
    cache = make_cache(session_factory=factory, reload_interval_s=2.0)
    opener = open_when(seven_waiting, gate)
    results, errors = in_threads(8, lambda: cache.get("m", "1"))
    opener.join(WAIT_S)
    assert results == []
    assert len(errors) == 8
    assert all(e is errors[0] for e in errors)
    assert isinstance(errors[0], ModelLoadError)
    assert "out of memory, pretend" in str(errors[0])
    assert factory.calls == 1

    with pytest.raises(ModelLoadError):  # remembered for reload_interval_s: no new load
        cache.get("m", "1")
    assert factory.calls == 1

    factory.fail_with = None
    clock.advance(2.0)
    assert cache.get("m", "1").spec.name == "m"
    assert factory.calls == 2


def test_not_found_is_not_remembered(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    cache = make_cache()
    with pytest.raises(ModelNotFoundError):
        cache.get("m", "1")
    add_version("m", "1")
    assert cache.get("m", "1").spec.version == "1"


def test_least_recently_used_is_evicted_first(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    for name in ("a", "b", "c"):
        add_version(name, "1")
    factory = CountingFactory()
    cache = make_cache(max_loaded=2, session_factory=factory)
    cache.get("a", "1")
    held_b = cache.get("b", "1")
    cache.get("a", "1")  # a is now more recent than b
    cache.get("c", "1")
    assert cache.loaded() == [("a", "1"), ("c", "1")]
    assert factory.calls == 3
    run(held_b)  # evicted, but a batch holding it can still run it

    cache.get("b", "1")
    assert cache.loaded() == [("c", "1"), ("b", "1")]
    assert factory.calls == 4


# --- cache: hot reload ------------------------------------------------------------------


def test_new_version_becomes_default_after_the_reload_interval(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache], clock: FakeClock
) -> None:
    add_version("m", "1")
    cache = make_cache(reload_interval_s=2.0)
    assert cache.resolve("m", None).version == "1"
    held = cache.get("m", "1")

    add_version("m", "2", source=MLP)
    clock.advance(1.0)
    assert cache.resolve("m", None).version == "1"  # listing is still fresh
    clock.advance(1.5)
    assert cache.resolve("m", None).version == "2"

    label, probabilities = run(held)
    assert label.shape == (1,)
    assert probabilities.shape == (1, 2)
    assert cache.resolve("m", "1").version == "1"


def test_broken_newest_version_fails_at_resolve(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    add_version("m", "1")
    (root / "m" / "2").mkdir()
    (root / "m" / "2" / "model.onnx").write_bytes(b"\x08\x07half-written")
    with pytest.raises(ModelLoadError, match=r"m/2/model\.onnx"):
        make_cache().resolve("m", None)


# --- models the store refuses or serves with care (outside review, issue 11) -----------


def test_a_model_with_external_data_is_refused_even_with_its_file_beside_it(
    root: Path, make_cache: Callable[..., ModelCache]
) -> None:
    from tests.modelfactory import external_data_model

    directory = external_data_model(root / "ext" / "1")
    assert (directory / "weights.bin").exists()
    with pytest.raises(ModelLoadError, match=r"external.*weights\.bin.*save_as_external_data"):
        make_cache().get("ext", "1")


def test_map_outputs_load_and_are_described(
    root: Path, make_cache: Callable[..., ModelCache]
) -> None:
    from tests.modelfactory import zipmap_classifier

    zipmap_classifier(root / "zm" / "1")
    model = make_cache().get("zm", "1")
    assert model.output_names == ("output_label", "output_probability")
    assert model.map_outputs == ("output_probability",)


def test_a_sequence_of_tensors_output_is_refused_with_a_reason(
    root: Path, make_cache: Callable[..., ModelCache]
) -> None:
    from tests.modelfactory import sequence_output_model

    sequence_output_model(root / "seq" / "1")
    with pytest.raises(ModelLoadError, match=r"output 'seq' is seq\(tensor\(float\)\).*tensors"):
        make_cache().get("seq", "1")


def test_a_manifest_in_a_symlink_loop_is_a_load_error(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    directory = add_version("m", "1", manifest=False)
    (directory / "model.json").symlink_to(directory / "model.json")
    with pytest.raises(ModelLoadError, match=r"model\.json"):
        make_cache().get("m", "1")


def test_an_unreadable_version_directory_is_a_load_error(
    root: Path,
    add_version: Callable[..., Path],
    make_cache: Callable[..., ModelCache],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_version("m", "1")
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Any:
        if self == root / "m":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(ModelLoadError, match=r"Permission denied"):
        make_cache().resolve("m", None)


def test_an_unknown_model_is_remembered_for_the_reload_interval(
    root: Path,
    add_version: Callable[..., Path],
    make_cache: Callable[..., ModelCache],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listings: list[str] = []
    real_latest = ModelStore.latest

    def latest(self: ModelStore, name: str) -> str:
        listings.append(name)
        return real_latest(self, name)

    monkeypatch.setattr(ModelStore, "latest", latest)
    cache = make_cache(reload_interval_s=2.0)
    for _ in range(3):
        with pytest.raises(ModelNotFoundError):
            cache.resolve("bogus", None)
    assert listings == ["bogus"]
    add_version("bogus", "1")
    clock.advance(2.0)
    assert cache.resolve("bogus", None).version == "1"


def test_unknown_model_errors_do_not_list_the_store(
    root: Path, add_version: Callable[..., Path]
) -> None:
    add_version("secret-model", "1")
    with pytest.raises(ModelNotFoundError) as caught:
        ModelStore(root).latest("nope")
    assert "secret-model" not in str(caught.value) and str(root) not in str(caught.value)


# --- pins: which version serves those who name none --------------------------------------


def test_a_store_pin_serves_its_version_and_a_change_applies_after_the_interval(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache],
    clock: FakeClock,
) -> None:  # fmt: skip
    add_version("m", "1")
    add_version("m", "2")
    (root / "m" / "PINNED").write_text("1\n")
    cache = make_cache(reload_interval_s=2.0)
    assert cache.resolve("m", None).version == "1"
    (root / "m" / "PINNED").write_text("2\n")
    assert cache.resolve("m", None).version == "1", "cached until the reload interval"
    clock.advance(2.0)
    assert cache.resolve("m", None).version == "2"
    (root / "m" / "PINNED").unlink()
    add_version("m", "3")
    clock.advance(2.0)
    assert cache.resolve("m", None).version == "3", "no pin: the newest"


def test_a_new_version_a_pin_set_and_a_pin_removed_are_each_logged_once(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache],
    clock: FakeClock, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Issue 26 item 8: the worker said nothing when the version it serves changed."""
    add_version("m", "1")
    cache = make_cache(reload_interval_s=2.0)
    cache.resolve("m", None)
    with caplog.at_level(logging.INFO, logger="pipeline.engine"):
        for step in ("new version", "pin set", "pin removed"):
            if step == "new version":
                add_version("m", "2")
            elif step == "pin set":
                (root / "m" / "PINNED").write_text("1\n")
            else:
                (root / "m" / "PINNED").unlink()
            for _ in range(3):  # listed again three times: logged once
                clock.advance(2.0)
                cache.resolve("m", None)
    changes = [r.getMessage() for r in caplog.records if "now get version" in r.getMessage()]
    assert changes == [
        "model 'm': events that name no version now get version 2 (the newest; was 1, the newest)",
        "model 'm': events that name no version now get version 1 (pinned by m/PINNED; was 2, "
        "the newest)",
        "model 'm': events that name no version now get version 2 (the newest; was 1, pinned "
        "by m/PINNED)",
    ]


def test_a_flag_pin_wins_over_the_store_and_explicit_versions_still_work(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    for v in ("1", "2", "3"):
        add_version("m", v)
    (root / "m" / "PINNED").write_text("2")
    cache = make_cache(pins={"m": "1"})
    assert cache.resolve("m", None).version == "1"
    assert cache.resolve("m", "3").version == "3"


def test_a_pin_to_a_missing_version_is_a_load_error_not_a_silent_newest(
    root: Path, add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    add_version("m", "1")
    (root / "m" / "PINNED").write_text("7")
    with pytest.raises(
        ModelLoadError, match=r"pinned to version '7' \(m/PINNED\).*its versions: 1"
    ):
        make_cache().resolve("m", None)
    with pytest.raises(ModelLoadError, match=r"pinned to version '9' \(--pin\)"):
        make_cache(pins={"m": "9"}).resolve("m", None)


def test_a_missing_store_names_its_absolute_path_and_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as refused:
        ModelStore(Path("models"))
    message = str(refused.value)
    assert f"got models ({tmp_path / 'models'})" in message
    assert "pass --models DIR" in message


def test_list_show_and_validate_tell_the_pin(tmp_path: Path) -> None:
    """`models list` and `show` mark the pinned version; `validate` fails a pin that names
    a version the store does not have."""
    store = tmp_path / "store"
    for version in ("1", "2"):
        two_input_model(store / "rec" / version)
    (store / "rec" / "PINNED").write_text("1\n")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", "models", *args, "--models", str(store)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    listed = {(i["version"], i["pinned"]) for i in json.loads(run("list", "--json").stdout)}
    assert listed == {("1", True), ("2", False)}
    assert "rec version 1 (pinned" in run("show", "rec").stdout
    assert run("validate", "rec").returncode == 0
    (store / "rec" / "PINNED").write_text("7\n")
    pinned_wrong = run("validate", "rec")
    assert pinned_wrong.returncode == 1
    assert "rec version PINNED" in pinned_wrong.stderr and "'7'" in pinned_wrong.stderr


@pytest.mark.parametrize(
    ("defaults", "says"),
    [
        ({"no such column": 1.0}, "names 'no such column', which is not an input of one value"),
        ({"mean_radius": "big"}, "but input 'mean_radius' is FP32: give it a number"),
        ({"mean_radius": True}, "give it a number"),
    ],
)
def test_a_manifests_defaults_must_name_the_models_columns_with_values_of_their_kind(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache],
    defaults: dict[str, object], says: str,
) -> None:  # fmt: skip
    directory = add_version("m", "1")
    manifest = json.loads((directory / "model.json").read_text())
    write_manifest(directory, {**manifest, "defaults": defaults})
    with pytest.raises(ModelLoadError, match=re.escape(says)):
        make_cache().get("m", "1")


def test_a_manifests_defaults_reach_the_models_spec(
    add_version: Callable[..., Path], make_cache: Callable[..., ModelCache]
) -> None:
    directory = add_version("m", "1")
    manifest = json.loads((directory / "model.json").read_text())
    write_manifest(directory, {**manifest, "defaults": {"mean_radius": 14, "mean_texture": 19.5}})
    assert make_cache().get("m", "1").spec.defaults == (("mean_radius", 14), ("mean_texture", 19.5))
