"""What the benchmark ran on: CPU, memory, load, and the versions that shape the figures."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import psutil

__all__ = ["describe_machine"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _kafka_version() -> str:
    pom = (resources.files("pipeline.dev") / "_kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    return match.group(1) if match else "unknown"


def _version_in(python: str, package: str) -> str | None:
    code = f"from importlib.metadata import version; print(version({package!r}))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None if done.returncode == 0 else None


def describe_machine(*, own_broker: bool, quix_python: str | None) -> dict[str, Any]:
    """CPU model and count, memory, load average, Python and library versions, the broker."""
    from confluent_kafka import libversion

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "onnxruntime": _version("onnxruntime"),
            "numpy": _version("numpy"),
            "orjson": _version("orjson"),
            "confluent-kafka": _version("confluent-kafka"),
            "librdkafka": libversion()[0],
            "faust-streaming": _version("faust-streaming"),
            "aiokafka": _version("aiokafka"),
            "quixstreams": _version_in(quix_python, "quixstreams") if quix_python else None,
            "confluent-kafka (Quix venv)": _version_in(quix_python, "confluent-kafka")
            if quix_python
            else None,
        },
        "broker": f"Apache Kafka {_kafka_version()}, one KRaft node on 127.0.0.1"
        if own_broker
        else "the broker given with --bootstrap-servers",
    }
