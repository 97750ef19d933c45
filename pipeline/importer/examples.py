"""`pipeline models examples DIR`: the example models, for an installed tool without the
checkout. They ship inside the package (``pipeline/dev/_models``, the checkout's
``models/``), each version with its manifest and checksum."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.errors import ConfigError

__all__ = ["Copied", "copy_examples"]


@dataclass(frozen=True)
class Copied:
    """One example model version and what became of it in the destination."""

    name: str
    version: str
    path: Path
    copied: bool  # False: the destination already had this version, which was kept


def copy_examples(dest: Path) -> list[Copied]:
    """Copy every example model version into the store `dest` (made if missing); a version
    `dest` already has is kept as it is, never overwritten.

    Raises:
        ConfigError: `dest` is a file, or cannot be written.
    """
    source = resources.files("pipeline.dev") / "_models"
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest.resolve()} is a file; give a directory for the example models")
    done: list[Copied] = []
    with resources.as_file(source) as root:
        for version_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
            name, version = version_dir.parent.name, version_dir.name
            target = dest / name / version
            if target.exists():
                done.append(Copied(name, version, target, copied=False))
                continue
            partial = target.parent / f".{version}.copying-{os.getpid()}"
            try:  # whole or not at all: a version half copied would be kept next time
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(version_dir, partial)
                partial.rename(target)
            except OSError as exc:
                shutil.rmtree(partial, ignore_errors=True)
                raise ConfigError(
                    f"could not copy the example model {name} version {version} to {target} "
                    f"({exc.strerror or exc}); give a directory you can write to"
                ) from exc
            done.append(Copied(name, version, target, copied=True))
    return done
