"""`pipeline --version`: this package's version and those of the libraries it runs on.

The versions a bug report needs: the Kafka client and the librdkafka it bundles (whose
behaviour the delivery guarantees rest on), ONNX Runtime, numpy and Python. They are
looked up only when the flag is given, so other commands pay nothing for it.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import pipeline

__all__ = ["VersionAction", "version_line"]

_LIBRARIES = ("confluent-kafka", "onnxruntime", "numpy")


def version_line() -> str:
    """``pipeline 0.1.0 (confluent-kafka 2.16.1, librdkafka 2.16.0, ..., Python 3.11.7)``."""
    parts = [f"{name} {_installed(name)}" for name in _LIBRARIES]
    parts.insert(1, f"librdkafka {_librdkafka()}")
    parts.append(f"Python {platform.python_version()}")
    return f"pipeline {pipeline.__version__} ({', '.join(parts)})"


def _installed(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _librdkafka() -> str:
    try:
        import confluent_kafka
    except ImportError:
        return "not installed"
    text: str = confluent_kafka.libversion()[0]
    return text


class VersionAction(argparse.Action):
    """``--version``: print `version_line` and exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the versions of pipeline and its libraries, and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        sys.stdout.write(version_line() + "\n")
        parser.exit()
