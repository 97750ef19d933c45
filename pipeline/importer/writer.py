"""Publishing a version into the model store atomically, so hot reload never sees half of it.

The whole version directory is built under a hidden name (a leading '.', which the
store ignores) inside the model's directory, every file and the directory are fsynced,
and only then is it renamed to ``<version>``: one atomic rename on the same file system.
A worker listing versions sees either no new version or a complete one. An existing
version is never overwritten.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from pipeline.engine.names import PLAIN_NAME_RULE, is_plain_name
from pipeline.errors import ConfigError

__all__ = ["check_new_version", "next_version", "write_version"]

_NUMERIC = re.compile(r"[0-9]+")


def next_version(model_dir: Path) -> str:
    """The next integer after the newest numeric version in `model_dir` ("1" if none).

    Every numeric directory counts, even one without a model file, so the version
    chosen is never a directory that already exists.
    """
    try:
        names = [d.name for d in model_dir.iterdir() if d.is_dir()]
    except FileNotFoundError:
        return "1"
    numbers = [int(n) for n in names if _NUMERIC.fullmatch(n)]
    return str(max(numbers, default=0) + 1)


def check_new_version(root: Path, name: str, version: str) -> Path:
    """Return ``root/name/version`` after checking it may be created.

    Raises:
        ConfigError: `root` is not a directory, `name` or `version` is not a plain
            name, or the version already exists.
    """
    if not root.is_dir():
        raise ConfigError(
            f"model store {root} must be an existing directory; create it (mkdir -p {root}) "
            f"or pass --models DIR"
        )
    for what, value in (("model name", name), ("version", version)):
        if not is_plain_name(value):
            raise ConfigError(f"{what} must be {PLAIN_NAME_RULE}, got {value!r}")
    final = root / name / version
    if final.exists() or final.is_symlink():
        raise ConfigError(
            f"{final} already exists; versions are never overwritten: pick another "
            f"--version or leave it out for the next number ({next_version(root / name)})"
        )
    return final


def write_version(root: Path, name: str, version: str, files: Mapping[str, bytes]) -> Path:
    """Write `files` as version `version` of model `name` in the store at `root`, atomically.

    Args:
        root: The model store's root directory; it must exist.
        name: The model's plain name; its directory is created if needed.
        version: The new version's plain name; it must not exist yet.
        files: File name -> content, written in this order.

    Returns:
        The version directory.

    Raises:
        ConfigError: as for `check_new_version`, also when the version appears while
            this one is being written; nothing is left behind.
        OSError: writing failed (disk full, permissions); nothing is left behind.
    """
    final = check_new_version(root, name, version)
    final.parent.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.importing-", dir=final.parent))
    try:
        for file_name, data in files.items():
            _write_synced(staging / file_name, data)
        staging.chmod(0o755)  # mkdtemp makes it 0700; versions are read by other users
        _fsync_dir(staging)
        _publish(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(final.parent)
    return final


def _publish(staging: Path, final: Path) -> None:
    """Rename the finished staging directory to the version's name, never over a version.

    A version holds a model file, so its directory is not empty, and rename(2) refuses to
    replace a non-empty directory: two imports racing for one version cannot overwrite
    each other. (An *empty* directory created in between would be replaced; it held no
    version.)
    """
    if final.exists() or final.is_symlink():
        raise _appeared(final)
    try:
        os.rename(staging, final)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise _appeared(final) from exc
        raise ConfigError(
            f"cannot rename {staging} to {final}: {exc}; nothing was written"
        ) from exc


def _appeared(final: Path) -> ConfigError:
    """The error for a version that another writer created first."""
    return ConfigError(
        f"{final} appeared while this import was writing it (another import?); nothing "
        f"was written, run the import again for the next version"
    )


def _write_synced(path: Path, data: bytes) -> None:
    """Write `data` to a new file at `path` and fsync it."""
    with path.open("xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_dir(directory: Path) -> None:
    """fsync a directory so the names in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
