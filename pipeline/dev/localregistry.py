"""The local Schema Registry: Apicurio Registry's prebuilt server, run from this machine's Java.

`pipeline schema-registry start` obtains Apicurio Registry's server once (the archive
``io.apicurio:apicurio-registry-app:3.0.9:tar.gz:all`` from Maven Central, through ``mvn``,
unpacked into a cache outside git), checks the Java it needs (17+), starts it in the
background bound to 127.0.0.1 with in-memory storage, and waits until it reports ready.
Its Confluent-compatible API, which ``confluent_kafka.schema_registry`` speaks, is at
``http://127.0.0.1:<port>/apis/ccompat/v7``. The schemas live only as long as the process.

Why the fetch is what it is: resolving the app's dependencies one by one fails (one lives
outside Maven Central), and so does every goal of maven-dependency-plugin 3.x on the
archive alone, because 3.x reads the archive's POM, whose parent ``apicurio-registry:3.0.9``
Maven Central does not serve. Plugin 2.8 copies the archive without reading that parent;
its unpack, though, cuts a name in the archive longer than 100 characters (a pax header),
so Python's `tarfile` unpacks the copied archive instead.

The data directory holds::

    <data-dir>/registry.json   pid, port and URL of the running registry
    <data-dir>/registry.log    the registry's own log
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.dev.localserver import find_java, free_port, port_free
from pipeline.errors import RegistryError

__all__ = [
    "APICURIO_VERSION",
    "DEFAULT_DATA_DIR",
    "DEFAULT_PORT",
    "LocalRegistry",
    "RegistryInfo",
    "fetch_registry",
    "missing_tools",
]

APICURIO_VERSION = "3.0.9"
DEFAULT_PORT = 8081
DEFAULT_DATA_DIR = (
    Path(os.environ.get("PIPELINE_HOME", Path.home() / ".local/share/pipeline")) / "registry"
)
_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
_ARCHIVE = f"apicurio-registry-app-{APICURIO_VERSION}-all.tar.gz"
_RUNNER = f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
_COPY_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:2.8:copy"
_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kafka-onnx-pipeline"
_HOST = "127.0.0.1"
_READY_PATH = "/health/ready"
_MIN_JAVA = 17  # Apicurio 3.0.x; 3.3.x would need 21
_HEAP = ("-Xms64m", "-Xmx512m")
# A development registry answers a few schema lookups: the quick compiler alone and one GC
# thread start it in ~4.3 s instead of ~6 s here, and spend far less CPU doing so, which is
# what counts on a machine busy with brokers and tests.
_JIT = ("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC")
_START_TIMEOUT_S = 180.0  # a loaded 2-core machine has needed more than 90 s
_STOP_TIMEOUT_S = 20.0
_LOG_TAIL_LINES = 20


@dataclass(frozen=True, slots=True)
class RegistryInfo:
    """What `start` records about a running registry."""

    pid: int
    port: int
    url: str  # the Confluent-compatible API, for --schema-registry-url

    @property
    def health_url(self) -> str:
        """Its readiness endpoint."""
        return f"http://{_HOST}:{self.port}{_READY_PATH}"


def fetch_registry(cache_dir: Path = _CACHE_DIR, *, maven_repo: Path | None = None) -> Path:
    """Return the registry's runner jar, fetching and unpacking the archive on first use.

    Args:
        cache_dir: Where the unpacked server is kept.
        maven_repo: A Maven local repository to use instead of ``~/.m2`` (tests pass an
            empty one to check the fetch from Maven Central alone).

    Raises:
        RegistryError: Maven is missing, or cannot fetch the archive.
    """
    home = cache_dir / f"apicurio-registry-{APICURIO_VERSION}"
    if (home / _RUNNER).is_file():
        return home / _RUNNER
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RegistryError(
            "Maven (`mvn`) is needed once to fetch Apicurio Registry from Maven Central, but "
            "it is not on PATH; install it (e.g. `apt-get install maven`)"
        )
    staging = home.with_name(f"{home.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)  # mvn runs here: a pom.xml in the caller's directory is not ours
    cmd = [mvn, "-B", "-q", _COPY_GOAL, f"-Dartifact={_ARTIFACT}", f"-DoutputDirectory={staging}"]
    if maven_repo is not None:
        cmd.append(f"-Dmaven.repo.local={maven_repo}")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=staging)
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
        raise RegistryError(
            f"Maven could not fetch {_ARTIFACT} (exit {done.returncode}); check that Maven "
            f"Central is reachable.\n{tail}"
        )
    with tarfile.open(staging / _ARCHIVE) as archive:
        archive.extractall(staging, filter="data")
    (staging / _ARCHIVE).unlink()
    home.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # another process may have won the race: keep its copy
        staging.rename(home)
    shutil.rmtree(staging, ignore_errors=True)
    return home / _RUNNER


def missing_tools(cache_dir: Path = _CACHE_DIR) -> str | None:
    """Say what this machine lacks to run the local registry (Java 17+, or Maven while
    the server is not fetched yet); None if nothing."""
    try:
        find_java(_MIN_JAVA, f"Apicurio Registry {APICURIO_VERSION}", RegistryError)
    except RegistryError as exc:
        return str(exc)
    fetched = (cache_dir / f"apicurio-registry-{APICURIO_VERSION}" / _RUNNER).is_file()
    if not fetched and shutil.which("mvn") is None:
        return "Maven (`mvn`) is needed once to fetch Apicurio Registry, and is not on PATH"
    return None


class LocalRegistry:
    """Start, stop and ask about one local Apicurio Registry kept in `data_dir`.

    Args:
        data_dir: Where its pid file and log go.
    """

    def __init__(self, data_dir: Path | str = DEFAULT_DATA_DIR) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self._state = self.data_dir / "registry.json"
        self.log_file = self.data_dir / "registry.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def running(self) -> RegistryInfo | None:
        """The recorded registry if its process is alive, else None."""
        try:
            info = RegistryInfo(**json.loads(self._state.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        return info if _pid_alive(info.pid) else None

    def start(
        self, *, port: int = DEFAULT_PORT, timeout_s: float = _START_TIMEOUT_S
    ) -> tuple[RegistryInfo, bool]:
        """Start the registry unless it already runs; return it and whether it was started.

        Raises:
            RegistryError: Java or Maven is missing, the port is taken, or the registry
                did not become ready within `timeout_s` (it is stopped then).
        """
        current = self.running()
        if current is not None:
            return current, False
        java = find_java(_MIN_JAVA, f"Apicurio Registry {APICURIO_VERSION}", RegistryError)
        runner = fetch_registry()
        port = port or free_port()
        if not port_free(port):
            raise RegistryError(
                f"port {_HOST}:{port} is already in use by another process; stop it or pass "
                "another --port"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    java,
                    *_HEAP,
                    *_JIT,
                    f"-Dquarkus.http.port={port}",
                    f"-Dquarkus.http.host={_HOST}",
                    "-jar",
                    str(runner),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.data_dir,
            )
        info = RegistryInfo(self._proc.pid, port, f"http://{_HOST}:{port}/apis/ccompat/v7")
        self._state.write_text(json.dumps(asdict(info)))
        self._wait_ready(self._proc, info, timeout_s)
        return info, True

    def stop(self) -> RegistryInfo | None:
        """Stop the registry started from this data dir; return it, or None if none ran."""
        info = self.running()
        if info is not None:
            _terminate(info.pid, self._proc)
        self._proc = None
        self._state.unlink(missing_ok=True)
        return info

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], info: RegistryInfo, timeout_s: float
    ) -> None:
        """Wait until the registry reports ready; on failure stop it and raise."""
        deadline = time.monotonic() + timeout_s
        while not _ready(info.port):
            if proc.poll() is not None:
                what = f"exited with code {proc.returncode} while starting"
            elif time.monotonic() > deadline:
                what = f"was not ready at {info.health_url} within {timeout_s:.0f} s"
            else:
                time.sleep(0.2)
                continue
            self.stop()
            raise RegistryError(
                f"the Schema Registry {what} and was stopped; see {self.log_file}:\n"
                f"{_tail(self.log_file)}"
            )


def _ready(port: int) -> bool:
    """Whether the registry on `port` answers its readiness check with 200."""
    connection = http.client.HTTPConnection(_HOST, port, timeout=2)
    try:
        connection.request("GET", _READY_PATH)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _pid_alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _RUNNER.encode() in cmdline


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, SIGKILL after a while if still alive; reap it if it is our child."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while _pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid, proc)
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while _pid_alive(pid):
        _reap(pid, proc)
        time.sleep(0.05)
    if proc is not None:  # gone from /proc's view, maybe not yet exited: collect its status
        proc.wait()
    _reap(pid, None)


def _reap(pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.poll()
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
