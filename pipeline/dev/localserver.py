"""What the local servers share: the Java they run on, and the ports they bind.

The local Kafka broker (`pipeline.dev.localkafka`) and the local Schema Registry
(`pipeline.dev.localregistry`) both run on this machine's Java, found through JAVA_HOME or
PATH; each says which version it needs and what to install when the one found is missing
or too old. Both bind 127.0.0.1 only.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
from pathlib import Path

from pipeline.errors import PipelineError

__all__ = ["HOST", "find_java", "free_port", "free_ports", "port_free"]

HOST = "127.0.0.1"


def find_java(minimum: int, purpose: str, error: type[PipelineError]) -> str:
    """Return the java executable (JAVA_HOME first), after checking it is `minimum` or newer.

    Args:
        minimum: The oldest Java major version `purpose` runs on.
        purpose: What needs it, for the messages, e.g. ``"the local Kafka broker"``.
        error: The error class to raise.

    Raises:
        PipelineError: (of class `error`) no java is found, or it is too old.
    """
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise error(
            f"Java {minimum}+ is needed to run {purpose}, but no `java` was found; install a "
            f"JDK (e.g. `apt-get install openjdk-{minimum}-jre-headless`) or set JAVA_HOME"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < minimum:
        raise error(
            f"{purpose} needs Java {minimum}+, but {java} is Java "
            f"{major or 'of unknown version'}; install a newer JDK (e.g. `apt-get install "
            f"openjdk-{minimum}-jre-headless`) or point JAVA_HOME at one"
        )
    return java


def port_free(port: int) -> bool:
    """Whether `port` on 127.0.0.1 can be bound now (one left in TIME_WAIT counts as free,
    as the servers bind with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that is free right now, below the kernel's ephemeral range where
    the system has one (see `free_ports`)."""
    return free_ports(1)


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports on 127.0.0.1 that are free right now.

    Chosen at random below the kernel's ephemeral range (``ip_local_port_range``), where
    neither outgoing connections nor ``bind(port 0)`` take ports: a port picked from that
    range, as ``bind(0)`` picks, can be taken by some client's connection before the server
    it was picked for binds it (seen in CI: a Kafka node and a metrics endpoint of the
    bench, each "Address already in use" while other tests ran). Where the range leaves no
    room below it, the kernel picks.
    """
    low = _ephemeral_low()
    start = _UNREACHED_LOW
    if low - start >= 1000 + count:
        rng = random.SystemRandom()
        for _ in range(200):
            first = rng.randrange(start, low - count)
            if all(port_free(first + i) for i in range(count)):
                return first
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            first = int(sock.getsockname()[1])
        if first + count <= 65536 and all(port_free(first + i) for i in range(1, count)):
            return first


_UNREACHED_LOW = 10000  # below here: the well-known services' neighbourhood, left alone


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux), else 32768."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
