"""The model store and the model cache: find ONNX models on disk, load each once, keep a few.

The store (`ModelStore`) is a directory tree::

    <root>/<name>/<version>/model.onnx    the model (required)
    <root>/<name>/<version>/model.json    its manifest (optional)

The manifest (`pipeline.engine.manifest`) names the features, labels and probability output,
and may carry the sha256 of model.onnx, checked on every load.

Names and versions come from events, so the store only accepts plain names
(`pipeline.engine.names.is_plain_name`) and refuses any file whose real path, symlinks
followed, leaves the store root.

The cache (`ModelCache`) answers `pipeline.engine.spec.ModelCatalog` and hands out
`LoadedModel` objects holding warmed-up onnxruntime sessions. It loads each model once
even when many threads ask at the same time, keeps at most ``max_loaded`` sessions
(least recently used evicted first), and re-lists a model's versions at most every
``reload_interval_s`` so a new version becomes the default without a restart.

Publishing a new version while workers run: a version exists as soon as its
``model.onnx`` does, and the newest such version becomes the default. So write
``model.json`` first, then write the model under a temporary name in the same
directory (e.g. ``.model.onnx.tmp``) and rename it to ``model.onnx`` (an atomic
rename). A model file that is still being written is not skipped: loading it fails with
`ModelLoadError` (its events are dead-lettered) until it is complete; there is no
silent fall-back to an older version. A failed load is retried after
``reload_interval_s``. A version, once loaded, is never re-read: publish a changed model
as a new version rather than overwriting an old one.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import onnxruntime as ort

from pipeline.engine.manifest import (
    MANIFEST_FILE,
    Manifest,
    Serving,
    read_manifest,
    verify_sha256,
)
from pipeline.engine.names import PLAIN_NAME_RULE, is_plain_name
from pipeline.engine.onnxfile import refuse_external_data
from pipeline.engine.signature import (
    SignatureError,
    TensorSpec,
    read_signature,
    zero_feed,
)
from pipeline.engine.spec import ModelSpec, is_vector_input
from pipeline.errors import ConfigError, ModelLoadError, ModelNotFoundError
from pipeline.metrics import NULL_SENSOR, Sensor

__all__ = [
    "MANIFEST_FILE",  # re-exported from pipeline.engine.manifest
    "MODEL_FILE",
    "PIN_FILE",
    "LoadedModel",
    "Manifest",  # re-exported from pipeline.engine.manifest
    "ModelCache",
    "ModelStore",
    "SessionFactory",
]

log = logging.getLogger("pipeline.engine")

MODEL_FILE = "model.onnx"
PIN_FILE = "PINNED"
T = TypeVar("T")

SessionFactory = Callable[[bytes, ort.SessionOptions], ort.InferenceSession]
"""Builds a session from model bytes and options; injectable for tests."""

_DIGITS = re.compile(r"(\d+)")
_LISTING_LIMIT = 10
_MAX_UNKNOWN = 4096  # unknown model names remembered at once
# Output types served: tensors, and a sequence of maps (one map per row: skl2onnx's ZipMap).
_MAP_OUTPUT = re.compile(r"seq\(map\((int64|string),tensor\((float|double)\)\)\)")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedModel:
    """One model version, loaded and warmed up, ready for `session.run`.

    Holding a reference keeps the session usable even after the cache evicts it or a
    newer version becomes the default, so a batch in flight always finishes.

    Attributes:
        spec: What events and predictions need to know about the model, with its inputs.
        session: The onnxruntime session.
        output_names: Names of all outputs, in the model's order.
        path: The model file that was loaded (symlinks resolved).
        map_outputs: The outputs that are a sequence of maps, one ``{key: value}`` per row
            (skl2onnx's ZipMap) rather than a tensor.
        outputs: Every output as a tensor (a map output as ``FP32 [?]``), for metadata.
        serving: The manifest's serving settings (batch size, wait, threads), which
            replace the flags of the same names for this version.
    """

    spec: ModelSpec
    session: ort.InferenceSession
    output_names: tuple[str, ...]
    path: Path
    map_outputs: tuple[str, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    serving: Serving = field(default_factory=Serving)

    @property
    def input_name(self) -> str:
        """The name of the model's first input (a vector model's only one)."""
        return self.spec.inputs[0].name


class ModelStore:
    """Read-only view of a model directory tree; see the module docstring for layout.

    Args:
        root: The store's root directory. It must exist.

    Raises:
        ConfigError: `root` is not an existing directory.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        if not self._root.is_dir():
            shown = f"{root} ({self._root.absolute()})" if not self._root.is_absolute() else root
            raise ConfigError(
                f"model store root must be an existing directory, got {shown}; pass --models "
                "DIR (a directory of <name>/<version>/model.onnx). To try the example models, "
                "`pipeline models examples DIR` copies them into DIR"
            )
        self._real_root = self._root.resolve()

    @property
    def root(self) -> Path:
        """The store's root directory, as given."""
        return self._root

    def names(self) -> list[str]:
        """Return the names of all models that have at least one version, sorted.

        Raises:
            ModelLoadError: a directory of the store cannot be read.
        """
        return sorted(d.name for d in _plain_subdirs(self._root) if _version_names(d))

    def versions(self, name: str) -> list[str]:
        """Return the versions of model `name`, oldest first, newest last.

        A version is a plain-named directory holding a ``model.onnx``. Versions are
        ordered naturally: runs of digits compare as numbers and the rest as text, so
        ``2 < 9 < 10``, ``1.9 < 1.10`` and ``v2 < v10``; purely numeric versions sort
        before versions that start with a letter.

        Raises:
            ModelNotFoundError: `name` is not plain, or no such model has any version.
            ModelLoadError: the model's directory cannot be read.
        """
        _check_plain("model name", name)
        found = _version_names(self._root / name)
        if not found:
            # Names come from events: the message never lists the store or shows its path.
            raise ModelNotFoundError(
                f"no model named {name!r} in the store (a model is a directory holding "
                f"<version>/{MODEL_FILE})"
            )
        return sorted(found, key=_version_key)

    def latest(self, name: str) -> str:
        """Return the newest version of model `name` (the last of `versions`).

        Raises:
            ModelNotFoundError: `name` is not plain, or no such model has any version.
        """
        return self.versions(name)[-1]

    def pinned(self, name: str) -> str | None:
        """Return the version the store pins model `name` to, or None.

        A pin is a file ``<name>/PINNED`` holding one version: events and requests that name
        no version get it instead of the newest, so a broken new version can be rolled back
        by writing the old one there, without a restart (it applies within the cache's
        reload interval).

        Raises:
            ModelLoadError: the file cannot be read, or names a version that is not a plain
                name or that the store does not have.
        """
        version = self.setting(name, PIN_FILE)
        if version is not None:
            self.require_version(name, version, f"{name}/{PIN_FILE}")
        return version

    def setting(self, name: str, file_name: str) -> str | None:
        """Return the stripped text of the file ``<name>/<file_name>`` (a one-line setting
        such as ``PINNED``, ``SHADOW`` or ``CANARY``), or None if there is no such file.

        Raises:
            ModelLoadError: the file exists but cannot be read.
        """
        _check_plain("model name", name)
        file = self._root / name / file_name
        if not _guarded(file, file.is_file):
            return None
        try:
            return file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeError) as exc:
            raise ModelLoadError(f"cannot read {name}/{file_name}: {exc}") from exc

    def require_version(self, name: str, version: str, where: str) -> None:
        """Refuse a pin (`where` says whose) naming a version the store does not have."""
        if not is_plain_name(version) or version not in self.versions(name):
            raise ModelLoadError(
                f"model {name!r} is pinned to version {version!r} ({where}), which the store "
                f"does not have; its versions: {_listing(self.versions(name))}"
            )

    def path(self, name: str, version: str) -> Path:
        """Return the real path of the model file of `name` at `version`.

        Raises:
            ModelNotFoundError: `name` or `version` is not plain, or there is no such
                model file.
            ModelLoadError: the file's real path (symlinks followed) is outside the
                store root, or the file cannot be examined.
        """
        _check_plain("model name", name)
        _check_plain("model version", version)
        file = self._root / name / version / MODEL_FILE
        if not _guarded(file, file.is_file):
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} (no {name}/{version}/{MODEL_FILE}"
                f" in the store); its versions: {_listing(self.versions(name))}"
            )
        return self._inside(file)

    def manifest(self, name: str, version: str) -> Manifest:
        """Return the validated manifest of `name` at `version`; empty if it has none.

        Raises:
            ModelNotFoundError: as for `path`.
            ModelLoadError: the manifest is unreadable, not JSON, has an unknown key or
                a field of the wrong type (the message names the file and the field),
                or its real path is outside the store root.
        """
        self.path(name, version)
        file = self._root / name / version / MANIFEST_FILE
        if not _guarded(file, lambda: file.exists() or file.is_symlink()):
            return {}
        real = self._inside(file)
        try:
            return read_manifest(real)
        except ModelLoadError as exc:  # say where the file is in the store, not on the host
            raise ModelLoadError(str(exc).replace(str(real), self.shown(file))) from exc

    def shown(self, file: Path) -> str:
        """`file` as messages show it: relative to the store root, never absolute."""
        try:
            return str(Path(file).relative_to(self._root))
        except ValueError:
            try:
                return str(Path(file).relative_to(self._real_root))
            except ValueError:
                return Path(file).name

    def _inside(self, file: Path) -> Path:
        """Return the real path of `file`, refusing one that leaves the store root."""
        real = _guarded(file, file.resolve)
        if not real.is_relative_to(self._real_root):
            raise ModelLoadError(
                f"{self.shown(file)} is a symlink to a file outside the model store; "
                "symlinks in the store must point inside it"
            )
        return real


class ModelCache:
    """Loads models from a `ModelStore` on demand and keeps the most recently used.

    Implements `pipeline.engine.spec.ModelCatalog`. All methods are thread-safe.

    Args:
        store: Where the models are.
        max_loaded: Most sessions kept at once; the least recently used goes first.
        intra_op_threads: onnxruntime threads within one operator (0: onnxruntime
            chooses).
        inter_op_threads: onnxruntime threads across operators (0: onnxruntime
            chooses).
        reload_interval_s: How long the newest version of a model is trusted before
            the store is listed again; also how long a failed load is remembered
            before it is tried again.
        clock: Monotonic time source in seconds; injectable for tests.
        session_factory: Builds a session from model bytes and options; the default
            uses onnxruntime's CPU execution provider.
        sensor: Receives model loads, load failures and evictions.
        pins: Model name -> the version to serve when none is asked for (``--pin``); wins
            over the store's own pins (`ModelStore.pinned`).

    Raises:
        ConfigError: a setting is out of range.
    """

    def __init__(
        self,
        store: ModelStore,
        *,
        max_loaded: int = 8,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        reload_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        session_factory: SessionFactory | None = None,
        sensor: Sensor = NULL_SENSOR,
        pins: Mapping[str, str] | None = None,
    ) -> None:
        _check_count("max_loaded", max_loaded, 1)
        _check_count("intra_op_threads", intra_op_threads, 0)
        _check_count("inter_op_threads", inter_op_threads, 0)
        if not (isinstance(reload_interval_s, int | float) and reload_interval_s >= 0):
            raise ConfigError(f"reload_interval_s must be a number >= 0, got {reload_interval_s!r}")
        self._store = store
        self._max_loaded = max_loaded
        self._threads = (intra_op_threads, inter_op_threads)
        self._reload_interval_s = float(reload_interval_s)
        self._clock = clock
        self._session_factory = session_factory or _cpu_session
        self._sensor = sensor
        self._pins = dict(pins or {})
        self._lock = threading.Lock()
        self._loaded: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, str], Future[LoadedModel]] = {}
        self._failed: dict[tuple[str, str], tuple[ModelLoadError, float]] = {}
        self._newest: dict[str, tuple[str, float]] = {}
        self._served: dict[str, tuple[str, str]] = {}  # name -> (version, why), to log changes
        self._unknown: OrderedDict[str, tuple[ModelNotFoundError, float]] = OrderedDict()

    @property
    def store(self) -> ModelStore:
        """The store models are loaded from."""
        return self._store

    def resolve(self, name: str, version: str | None) -> ModelSpec:
        """Return the spec of `name` at `version` (newest if None), loading it if needed.

        Cheap for a loaded model: one short lock for the lookup, plus one for the
        newest version when `version` is None.

        Raises:
            ModelNotFoundError: no such model or version in the store.
            ModelLoadError: the model exists but cannot be loaded.
        """
        return self.get(name, self._newest_version(name) if version is None else version).spec

    def get(self, name: str, version: str) -> LoadedModel:
        """Return model `name` at `version`, loading it once however many threads ask.

        Raises:
            ModelNotFoundError: no such model or version in the store.
            ModelLoadError: the model exists but cannot be loaded. Every thread that
                waited for the same load gets the same error; the next call after
                ``reload_interval_s`` tries again.
        """
        key = (name, version)
        # The hit path takes the lock too, but only for a dict lookup and an O(1)
        # move_to_end: the LRU order changes on every hit, and mutating an OrderedDict
        # from several threads is only safe under a lock (and not at all on free-threaded
        # builds). An uncontended acquire costs tens of nanoseconds, far below one
        # inference. Loading itself never happens under the lock.
        with self._lock:
            model = self._loaded.get(key)
            if model is not None:
                self._loaded.move_to_end(key)
                return model
            future, owner = self._claim(key)
        if not owner:
            return future.result()
        return self._load_for_waiters(key, future)

    def loaded(self) -> list[tuple[str, str]]:
        """Return the ``(name, version)`` pairs held, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def _newest_version(self, name: str) -> str:
        """Return the newest version of `name`, listing the store at most once a period.

        A name the store does not have is remembered as unknown for the same period (at
        most `_MAX_UNKNOWN` names), so events naming many bogus models cannot make every
        event list the store.
        """
        now = self._clock()
        with self._lock:
            cached = self._newest.get(name)
            unknown = self._unknown.get(name)
        if cached is not None and now - cached[1] < self._reload_interval_s:
            return cached[0]
        if unknown is not None and now - unknown[1] < self._reload_interval_s:
            raise unknown[0].with_traceback(None)
        try:
            version, why = self._current(name)
        except ModelNotFoundError as exc:
            with self._lock:
                self._unknown[name] = (exc, now)
                self._unknown.move_to_end(name)
                while len(self._unknown) > _MAX_UNKNOWN:
                    self._unknown.popitem(last=False)
            raise
        with self._lock:
            before = self._served.get(name)
            self._served[name] = (version, why)
            self._newest[name] = (version, now)
            self._unknown.pop(name, None)
        if before is not None and before != (version, why):  # once per change, not per event
            log.info("model %r: events that name no version now get version %s (%s; was %s, %s)",
                     name, version, why, *before)  # fmt: skip
        return version

    def _current(self, name: str) -> tuple[str, str]:
        """The version served to those who name none, and why: a ``--pin``, the store's
        pin, or the newest."""
        pin = self._pins.get(name)
        if pin is not None:
            self._store.require_version(name, pin, "--pin")
            return pin, "pinned by --pin"
        pinned = self._store.pinned(name)
        if pinned is not None:
            return pinned, f"pinned by {name}/{PIN_FILE}"
        return self._store.latest(name), "the newest"

    def _claim(self, key: tuple[str, str]) -> tuple[Future[LoadedModel], bool]:
        """Return the pending load of `key` and whether the caller must run it.

        Called with the lock held. Re-raises a load failure younger than the reload
        interval instead of starting another load of a file known to be broken.
        """
        pending = self._loading.get(key)
        if pending is not None:
            return pending, False
        failed = self._failed.get(key)
        if failed is not None:
            if self._clock() - failed[1] < self._reload_interval_s:
                raise failed[0].with_traceback(None)
            del self._failed[key]
        future: Future[LoadedModel] = Future()
        self._loading[key] = future
        return future, True

    def _load_for_waiters(self, key: tuple[str, str], future: Future[LoadedModel]) -> LoadedModel:
        """Load `key`, record the outcome, and hand it to every thread waiting on `future`."""
        started = time.monotonic()
        try:
            model = self._load(*key)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
                if isinstance(exc, ModelLoadError):
                    self._failed[key] = (exc, self._clock())
            if isinstance(exc, ModelLoadError):
                self._sensor.model_load_failed(*key)
            future.set_exception(exc)
            raise
        evicted = []
        with self._lock:
            del self._loading[key]
            self._loaded[key] = model
            while len(self._loaded) > self._max_loaded:
                evicted.append(self._loaded.popitem(last=False)[0])
        self._sensor.model_loaded(*key, time.monotonic() - started)
        for old in evicted:
            self._sensor.model_evicted(*old)
        future.set_result(model)
        return model

    def _load(self, name: str, version: str) -> LoadedModel:
        """Read, verify, open and warm up one model version."""
        path = self._store.path(name, version)
        manifest = self._store.manifest(name, version)
        shown = f"{name}/{version}/{MODEL_FILE}"
        data = _read_bytes(path, shown)
        verify_sha256(Path(shown), data, manifest.get("sha256"))
        refuse_external_data(shown, data)
        session = self._open_session(shown, data, manifest.get("serving", {}))
        model = _describe(name, version, path, shown, session, manifest)
        _warm_up(model, shown)
        return model

    def _open_session(self, path: str, data: bytes, serving: Serving) -> ort.InferenceSession:
        """Build a session for the bytes of `path` with this cache's options, or the
        manifest's thread count."""
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self._threads
        if "intra_op_threads" in serving:
            options.intra_op_num_threads = serving["intra_op_threads"]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            return self._session_factory(data, options)
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises its own Exception subclasses
            raise ModelLoadError(f"{path}: onnxruntime cannot load the model: {exc}") from exc


def _cpu_session(data: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    """Build a session on onnxruntime's CPU execution provider (the default factory)."""
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def _describe(
    name: str,
    version: str,
    path: Path,
    shown: str,
    session: ort.InferenceSession,
    manifest: Manifest,
) -> LoadedModel:
    """Check the session against its manifest and build the `LoadedModel`."""
    map_outputs = _map_outputs(shown, session)
    try:
        signature = read_signature(shown, session.get_inputs(), session.get_outputs(), map_outputs)
    except SignatureError as exc:
        raise ModelLoadError(str(exc)) from None
    _check_recorded(shown, "inputs", signature.inputs, manifest.get("inputs"))
    features = manifest.get("features")
    labels = manifest.get("labels")
    probability_output = manifest.get("probability_output")
    if probability_output is not None:
        _check_probability_output(shown, session, probability_output, labels)
    spec = ModelSpec(
        name=name,
        version=version,
        n_features=_n_features(shown, signature.inputs, features),
        feature_names=tuple(features) if features is not None else None,
        labels=tuple(labels) if labels is not None else None,
        probability_output=probability_output,
        inputs=signature.inputs,
        defaults=_defaults(shown, signature.inputs, features, manifest.get("defaults", {})),
    )
    return LoadedModel(
        spec=spec,
        session=session,
        output_names=tuple(str(o.name) for o in session.get_outputs()),
        path=path,
        map_outputs=map_outputs,
        outputs=signature.outputs,
        serving=manifest.get("serving", Serving()),
    )


def _defaults(
    path: str,
    inputs: tuple[TensorSpec, ...],
    features: list[str] | None,
    defaults: dict[str, str | int | float | bool],
) -> tuple[tuple[str, str | int | float | bool], ...]:
    """The manifest's ``defaults`` as pairs, each name one the model's rows take (a
    feature column of a vector model, else an input of one value a row) with a value of its
    kind; anything else refused, naming the file, the name and what was expected."""
    kinds: dict[str, str] = {}
    if features is not None and is_vector_input(inputs):
        kinds = dict.fromkeys(features, inputs[0].datatype)
    kinds.update({t.name: t.datatype for t in inputs if t.scalar})
    for name, value in defaults.items():
        datatype = kinds.get(name)
        if datatype is None:
            raise ModelLoadError(
                f"{path}: {MANIFEST_FILE} field 'defaults' names {name!r}, which is not an "
                f"input of one value a row (or a feature column) of this model; it takes "
                f"{sorted(kinds)}"
            )
        wanted = {"BYTES": "a string", "BOOL": "true or false"}.get(datatype, "a number")
        fits = (
            isinstance(value, str) if datatype == "BYTES"
            else isinstance(value, bool) if datatype == "BOOL"
            else isinstance(value, int | float) and not isinstance(value, bool)
        )  # fmt: skip
        if not fits:
            raise ModelLoadError(
                f"{path}: {MANIFEST_FILE} field 'defaults' gives {name!r} {value!r}, but "
                f"input {name!r} is {datatype}: give it {wanted}"
            )
    return tuple(defaults.items())


def _check_recorded(
    path: str, field: str, graph: tuple[TensorSpec, ...], recorded: list[TensorSpec] | None
) -> None:
    """Refuse a manifest whose recorded signature differs from the graph's."""
    if recorded is None or list(graph) == recorded:
        return
    said = ", ".join(f"{t.name} {t.describe()}" for t in recorded)
    found = ", ".join(f"{t.name} {t.describe()}" for t in graph)
    raise ModelLoadError(
        f"{path}: {MANIFEST_FILE} field {field!r} records {said}, but the model's graph has "
        f"{found}; the manifest belongs to another model (re-import it, or remove the field)"
    )


def _map_outputs(path: str, session: ort.InferenceSession) -> tuple[str, ...]:
    """Return the outputs that are a sequence of per-row maps; refuse any other non-tensor."""
    maps = []
    for output in session.get_outputs():
        kind = str(output.type)
        if _MAP_OUTPUT.fullmatch(kind):
            maps.append(str(output.name))
        elif not kind.startswith("tensor("):
            raise ModelLoadError(
                f"{path}: output {output.name!r} is {kind}; only tensors and sequences of "
                "maps (one map per row, as skl2onnx's ZipMap gives) can become predictions. "
                "Convert the model with tensor outputs (for skl2onnx: options={'zipmap': False})"
            )
    return tuple(maps)


def _n_features(path: str, inputs: tuple[TensorSpec, ...], features: list[str] | None) -> int:
    """A vector model's feature count, reconciled with the manifest's feature list; 0 for
    any other model (whose rows are sent as input name -> value)."""
    if not is_vector_input(inputs):
        if features is not None:
            raise ModelLoadError(
                f"{path}: {MANIFEST_FILE} lists 'features' (names of a float matrix's "
                f"columns), but the model takes {_inputs_text(inputs)}; remove 'features' "
                "(events name the inputs themselves)"
            )
        return 0
    width = inputs[0].shape[0]
    if features is None:
        return width or 0  # a symbolic width: rows of any length, sent by input name
    if width is not None and width != len(features):
        raise ModelLoadError(
            f"{path}: the model's input takes {width} features but its {MANIFEST_FILE} "
            f"lists {len(features)}; make them agree"
        )
    return len(features)


def _check_probability_output(
    path: str, session: ort.InferenceSession, output: str, labels: list[str] | None
) -> None:
    """Check that the manifest's probability output exists and fits its labels."""
    found = {str(o.name): list(o.shape) for o in session.get_outputs()}
    if output not in found:
        raise ModelLoadError(
            f"{path}: {MANIFEST_FILE} field 'probability_output' is {output!r}, but the "
            f"model's outputs are {sorted(found)}"
        )
    shape = found[output]
    columns = shape[1] if len(shape) == 2 else None
    if labels is not None and isinstance(columns, int) and columns != len(labels):
        raise ModelLoadError(
            f"{path}: output {output!r} has {columns} columns but {MANIFEST_FILE} field "
            f"'labels' lists {len(labels)} labels; make them agree"
        )


def _warm_up(model: LoadedModel, shown: str) -> None:
    """Run one zero row through the session so the first real batch is not slow."""
    try:
        model.session.run(list(model.output_names), zero_feed(model.spec.inputs))
    except Exception as exc:  # onnxruntime raises its own Exception subclasses
        raise ModelLoadError(
            f"{shown}: warm-up inference on one row of zeros (empty strings for string "
            f"inputs) failed: {exc}"
        ) from exc


def _inputs_text(inputs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{t.name} {t.describe()}" for t in inputs)


def _read_bytes(path: Path, shown: str) -> bytes:
    """Read a model file, turning I/O errors into `ModelLoadError`."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {shown}: {exc.strerror}") from exc


def _guarded(path: Path, examine: Callable[[], T]) -> T:
    """Run a file-system check on `path`, turning what a broken store raises into
    `ModelLoadError`: a directory without read permission (a deploy as another user), a
    symlink loop (Python raises RuntimeError for it), any other OSError."""
    try:
        return examine()
    except (OSError, RuntimeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ModelLoadError(
            f"the model store cannot read {path.name!r} under {path.parent.name!r}: {reason}; "
            "check its permissions and symlinks"
        ) from exc


def _check_plain(what: str, value: str) -> None:
    """Refuse a name or version that could spell more than one path component."""
    if not is_plain_name(value):
        raise ModelNotFoundError(f"{what} must be {PLAIN_NAME_RULE}, got {value!r}")


def _check_count(name: str, value: int, minimum: int) -> None:
    """Refuse a setting that is not an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _plain_subdirs(directory: Path) -> list[Path]:
    """Return the plain-named subdirectories of `directory`; none if it is missing.

    Raises:
        ModelLoadError: the directory exists but cannot be read.
    """
    try:
        entries = list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise ModelLoadError(
            f"the model store cannot list {directory.name!r}: {exc.strerror}; check its permissions"
        ) from exc
    return [e for e in entries if is_plain_name(e.name) and _guarded(e, e.is_dir)]


def _version_names(model_dir: Path) -> list[str]:
    """Return the names of the version directories under `model_dir` (unsorted)."""
    return [d.name for d in _plain_subdirs(model_dir) if _guarded(d, (d / MODEL_FILE).is_file)]


def _version_key(version: str) -> tuple[tuple[str | int, ...], str]:
    """Natural sort key: digit runs compare as numbers; ties broken by the raw text."""
    parts = _DIGITS.split(version)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), version


def _listing(items: Sequence[str]) -> str:
    """Join names for an error message, shortening a long list."""
    if not items:
        return "none"
    shown = ", ".join(items[:_LISTING_LIMIT])
    more = len(items) - _LISTING_LIMIT
    return f"{shown} and {more} more" if more > 0 else shown
