"""What the model store holds, and whether each version loads the way the worker loads it.

`list_models` and `show_model` only read directories, manifests and pins. `validate` loads
every version through `pipeline.engine.models.ModelCache`, exactly as a worker would:
safe paths, manifest, SHA-256 checksum (when the manifest has one), session and warm-up;
and fails a model whose ``PINNED`` file names a version it cannot serve.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipeline.engine.models import PIN_FILE, ModelCache, ModelStore
from pipeline.errors import ModelError

__all__ = ["VersionCheck", "VersionInfo", "list_models", "show_model", "validate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionInfo:
    """One version as its manifest describes it (no loading).

    Attributes:
        name: The model's name.
        version: The version's name.
        latest: True for the newest version.
        manifest: The validated manifest (empty if none), or None if it is invalid.
        error: Why the manifest is invalid, if it is.
        pinned: True for the version the model's ``PINNED`` file names: events and
            requests without a version get it instead of the newest.
    """

    name: str
    version: str
    latest: bool
    manifest: dict[str, object] | None
    error: str | None
    pinned: bool = False

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class VersionCheck:
    """Whether one version loads, warms up and matches its checksum.

    Attributes:
        name: The model's name.
        version: The version's name.
        ok: True if it loaded and warmed up.
        checksum: ``"ok"`` (the file matches the manifest's sha256), ``"mismatch"``,
            ``"none"`` (the manifest has no sha256) or ``"unknown"`` (no readable
            manifest or model file).
        n_features: Columns one row has, if it loaded.
        load_ms: How long loading and warming up took.
        error: Why it failed, if it did.
    """

    name: str
    version: str
    ok: bool
    checksum: str
    n_features: int | None
    load_ms: float
    error: str | None

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict of the fields."""
        return asdict(self)


def list_models(root: Path) -> list[VersionInfo]:
    """Every version of every model in the store at `root`, oldest version first.

    Raises:
        ConfigError: `root` is not an existing directory.
    """
    store = ModelStore(root)
    return [info for name in store.names() for info in show_model(root, name)]


def show_model(root: Path, name: str) -> list[VersionInfo]:
    """Every version of model `name`, with its manifest.

    Raises:
        ConfigError: `root` is not an existing directory.
        ModelNotFoundError: there is no such model.
    """
    store = ModelStore(root)
    versions = store.versions(name)
    try:
        pin = store.pinned(name)
    except ModelError:  # `validate` says what is wrong with the pin
        pin = None
    return [
        replace(_info(store, name, v, latest=v == versions[-1]), pinned=v == pin) for v in versions
    ]


def validate(root: Path, name: str | None = None) -> list[VersionCheck]:
    """Load every version (of `name`, or of every model) as the worker would.

    Raises:
        ConfigError: `root` is not an existing directory.
        ModelNotFoundError: `name` is given and there is no such model.
    """
    store = ModelStore(root)
    names = [name] if name is not None else store.names()
    cache = ModelCache(store, max_loaded=1)
    checks = [_check(cache, n, v) for n in names for v in store.versions(n)]
    return checks + [check for n in names if (check := _check_pin(store, n)) is not None]


def _check_pin(store: ModelStore, name: str) -> VersionCheck | None:
    """A failed check for a ``PINNED`` file that names no usable version (None if fine)."""
    try:
        store.pinned(name)
    except ModelError as exc:
        return VersionCheck(name=name, version=PIN_FILE, ok=False, checksum="unknown",
                            n_features=None, load_ms=0.0, error=str(exc))  # fmt: skip
    return None


def _info(store: ModelStore, name: str, version: str, *, latest: bool) -> VersionInfo:
    """Read one version's manifest, keeping an invalid one's error instead of raising."""
    try:
        manifest = dict(store.manifest(name, version))
    except ModelError as exc:
        return VersionInfo(name=name, version=version, latest=latest, manifest=None, error=str(exc))
    return VersionInfo(name=name, version=version, latest=latest, manifest=manifest, error=None)


def _check(cache: ModelCache, name: str, version: str) -> VersionCheck:
    """Load one version through the cache and report how it went."""
    started = time.monotonic()
    n_features: int | None = None
    error: str | None = None
    try:
        n_features = cache.get(name, version).spec.n_features
    except ModelError as exc:
        error = str(exc)
    return VersionCheck(
        name=name,
        version=version,
        ok=error is None,
        checksum=_checksum(cache.store, name, version),
        n_features=n_features,
        load_ms=round((time.monotonic() - started) * 1000, 1),
        error=error,
    )


def _checksum(store: ModelStore, name: str, version: str) -> str:
    """Compare the model file with its manifest's sha256 on its own, whatever else fails."""
    try:
        expected = store.manifest(name, version).get("sha256")
        data = store.path(name, version).read_bytes()
    except (ModelError, OSError):
        return "unknown"
    if expected is None:
        return "none"
    return "ok" if hashlib.sha256(data).hexdigest() == expected else "mismatch"
