"""Trying a new model version on real traffic: which version shadows a model, and which
takes a canary share of its keys.

A *shadow* version runs on the same rows, in the same batches, as the version served to
events and requests that name no version; its outputs are compared with the served ones
(`pipeline.engine.shadow`) and never answer anyone. A *canary* version answers a share of
those events instead of the served version, chosen by a stable hash of each event's key,
so one key always gets the same version while the split stands.

Both come from flags (``--shadow NAME=VERSION``, ``--canary NAME=VERSION:PERCENT``) or from
files in the model store, read like ``PINNED`` so they change without a restart::

    <root>/<name>/SHADOW    one line: VERSION
    <root>/<name>/CANARY    one line: VERSION:PERCENT   (e.g. 2:10 sends 10% of keys to 2)

A flag wins over the file for its model. A file that cannot be read or names a version the
store does not have is logged (once per change) and ignored: the model is then served as
without it, never left unanswered.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.engine.names import is_plain_name
from pipeline.errors import ConfigError, ModelError

if TYPE_CHECKING:  # the store loads onnxruntime; flags are parsed without it
    from pipeline.engine.models import ModelStore

__all__ = [
    "CANARY_FILE",
    "SHADOW_FILE",
    "Canary",
    "Rollouts",
    "key_bucket",
    "parse_canaries",
    "parse_shadows",
]

log = logging.getLogger("pipeline.engine")

SHADOW_FILE = "SHADOW"
CANARY_FILE = "CANARY"
BUCKETS = 10_000  # a key's share is resolved to 0.01 %


def key_bucket(key: bytes) -> int:
    """The key's bucket, 0 to 9,999: the same on every process, host and run.

    BLAKE2b rather than Kafka's murmur2, so the split does not follow the partitioner
    (with murmur2 and a partition count dividing 10,000, a canary share would be whole
    partitions).
    """
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True, slots=True)
class Canary:
    """A candidate version that answers `percent` of a model's keys.

    Attributes:
        version: The candidate version.
        percent: Share of keys, 0 to 100 (two decimals at most count).
    """

    version: str
    percent: float

    def takes(self, key: bytes) -> bool:
        """Whether the event with this key goes to the candidate."""
        return key_bucket(key) < self.percent * (BUCKETS // 100)

    def __str__(self) -> str:
        return f"{self.version}:{self.percent:g}"


def parse_shadows(entries: Sequence[str]) -> dict[str, str]:
    """``--shadow NAME=VERSION`` entries as model name -> shadow version.

    Raises:
        ConfigError: an entry is not ``NAME=VERSION`` of plain names.
    """
    shadows: dict[str, str] = {}
    for entry in entries:
        name, sep, version = (part.strip() for part in entry.partition("="))
        if not sep or not is_plain_name(name) or not is_plain_name(version):
            raise ConfigError(
                f"--shadow takes NAME=VERSION (plain names), got {entry!r}; for example "
                "--shadow fraud=2"
            )
        shadows[name] = version
    return shadows


def parse_canaries(entries: Sequence[str]) -> dict[str, Canary]:
    """``--canary NAME=VERSION:PERCENT`` entries as model name -> `Canary`.

    Raises:
        ConfigError: an entry is malformed or its percent is not a number from 0 to 100.
    """
    canaries: dict[str, Canary] = {}
    for entry in entries:
        name, sep, rest = (part.strip() for part in entry.partition("="))
        canary = _canary(rest) if sep and is_plain_name(name) else None
        if canary is None:
            raise ConfigError(
                f"--canary takes NAME=VERSION:PERCENT (plain names, a percent from 0 to 100), "
                f"got {entry!r}; for example --canary fraud=2:10"
            )
        canaries[name] = canary
    return canaries


def _canary(text: str) -> Canary | None:
    """``VERSION:PERCENT`` as a `Canary`, or None if it is not one."""
    version, sep, percent = (part.strip() for part in text.rpartition(":"))
    try:
        share = float(percent)
    except ValueError:
        return None
    if not sep or not is_plain_name(version) or not 0 <= share <= 100:
        return None
    return Canary(version, share)


class Rollouts:
    """The shadow and canary versions of each model, from flags and the store's files.

    Files are read at most once per `reload_interval_s` per model; a change is logged once.
    Thread-safe.

    Args:
        store: The model store whose ``SHADOW`` and ``CANARY`` files are read; None reads
            none (flags only).
        shadows: ``--shadow``: model name -> version.
        canaries: ``--canary``: model name -> `Canary`.
        shadow_fraction: Share of a model's rows that its shadow runs on, 0 to 1.
        reload_interval_s: How long a file's reading is trusted.
        clock: Monotonic seconds; injectable for tests.

    Raises:
        ConfigError: `shadow_fraction` is out of range, or a model has both a shadow and a
            canary flag naming the same version.
    """

    def __init__(
        self,
        store: ModelStore | None,
        *,
        shadows: Mapping[str, str] | None = None,
        canaries: Mapping[str, Canary] | None = None,
        shadow_fraction: float = 1.0,
        reload_interval_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (isinstance(shadow_fraction, int | float) and 0 < shadow_fraction <= 1):
            raise ConfigError(
                f"shadow_fraction must be a number above 0 and at most 1, got {shadow_fraction!r}"
            )
        self._store = store
        self._flags: dict[str, dict[str, object]] = {
            SHADOW_FILE: dict(shadows or {}),
            CANARY_FILE: dict(canaries or {}),
        }
        self.shadow_fraction = float(shadow_fraction)
        self._reload_interval_s = reload_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._read: dict[tuple[str, str], tuple[object, float]] = {}  # (file, model) -> value
        self._shown: dict[tuple[str, str], str] = {}  # what was last logged, per file, model

    @property
    def active(self) -> bool:
        """Whether any rollout can be in force: a flag, or a store to read files from."""
        return self._store is not None or any(self._flags.values())

    def check(self) -> None:
        """Refuse flags naming versions the store does not have (at start, not per event).

        Raises:
            ConfigError: a ``--shadow`` or ``--canary`` version is not in the store.
        """
        if self._store is None:
            return
        for file_name, flags in self._flags.items():
            flag = "--shadow" if file_name == SHADOW_FILE else "--canary"
            for name, value in flags.items():
                version = value.version if isinstance(value, Canary) else str(value)
                try:
                    versions = self._store.versions(name)
                except ModelError as exc:
                    raise ConfigError(f"{flag} {name}={value}: {exc}") from exc
                if version not in versions:
                    raise ConfigError(
                        f"{flag} {name}={value}: model {name!r} has no version {version!r}; "
                        f"its versions: {', '.join(versions)}"
                    )

    def shadow_of(self, name: str) -> str | None:
        """The version that shadows model `name`, or None."""
        value = self._lookup(SHADOW_FILE, name)
        return value if isinstance(value, str) else None

    def canary_of(self, name: str) -> Canary | None:
        """The canary split of model `name`, or None."""
        value = self._lookup(CANARY_FILE, name)
        return value if isinstance(value, Canary) else None

    def _lookup(self, file_name: str, name: str) -> object:
        flag = self._flags[file_name].get(name)
        if flag is not None or self._store is None:
            return flag
        key = (file_name, name)
        now = self._clock()
        with self._lock:
            cached = self._read.get(key)
        if cached is not None and now - cached[1] < self._reload_interval_s:
            return cached[0]
        value = self._read_file(file_name, name)
        with self._lock:
            self._read[key] = (value, now)
        return value

    def _read_file(self, file_name: str, name: str) -> object:
        """The file's setting, checked against the store; None (and a log line once per
        change) if it is absent, unreadable or names a version the store lacks."""
        assert self._store is not None
        where = f"{name}/{file_name}"
        try:
            text = self._store.setting(name, file_name)
            if text is None:
                return self._changed(file_name, name, None, "")
            shadow = text if is_plain_name(text) else None
            value: object = shadow if file_name == SHADOW_FILE else _canary(text)
            if value is None:
                expected = "VERSION" if file_name == SHADOW_FILE else "VERSION:PERCENT"
                raise ModelError(f"{where} must hold {expected}, got {text!r}")
            version = value.version if isinstance(value, Canary) else str(value)
            self._store.require_version(name, version, where)
        except ModelError as exc:
            return self._changed(file_name, name, None, f"{where} is ignored: {exc}")
        return self._changed(file_name, name, value, "")

    def _changed(self, file_name: str, name: str, value: object, problem: str) -> object:
        """Log a reading that differs from the last one logged for this file; return it."""
        shown = problem or ("" if value is None else str(value))
        key = (file_name, name)
        with self._lock:
            before = self._shown.get(key)
            self._shown[key] = shown
        if before == shown or (before is None and not shown):
            return value
        if problem:
            log.error("model %r: %s", name, problem)
        elif value is None:
            log.info("model %r: %s removed; no %s", name, file_name,
                     "shadow" if file_name == SHADOW_FILE else "canary")  # fmt: skip
        elif isinstance(value, Canary):
            log.info("model %r: canary version %s now answers %g%% of keys (%s/%s)",
                     name, value.version, value.percent, name, file_name)  # fmt: skip
        else:
            log.info("model %r: version %s now shadows the served version (%s/%s)",
                     name, value, name, file_name)  # fmt: skip
        return value
