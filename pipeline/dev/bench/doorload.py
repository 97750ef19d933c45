"""The front-door benchmark's load generator: built from Go source at bench time, then run.

`build_loadgen` copies ``pipeline/dev/bench/loadgen`` (main.go and friends, go.mod with the
generators as ``tool`` lines, go.sum) into ``.cache/doors-loadgen/module``, installs
protoc-gen-go and protoc-gen-go-grpc at go.mod's versions into ``.cache/go/bin``, generates
the gRPC client from ``schemas/*.proto`` with grpcio-tools' protoc, and builds the binary.
A stamp of every input (sources, protos, ``go version``) skips all of it when nothing
changed, so a warm build costs nothing; a cold one downloads and compiles grpc-go (about a
minute on two cores).

`run_load` runs the binary once (a closed loop of N callers or an open loop at a fixed
rate, see `Load`), calls `on_mark` when the measured window opens and closes (the
generator says so on stderr), and returns its JSON report.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipeline.errors import PipelineError

__all__ = ["DoorBenchError", "Load", "build_loadgen", "go_version", "run_load"]

_SOURCE = Path(__file__).resolve().parent / "loadgen"
_ROOT = Path(__file__).resolve().parents[3]
_SCHEMAS = _ROOT / "schemas"
_IMPORT_PATH = "example.com/doorsloadgen"
_PROTOS = {"prediction.proto": "predictionpb", "inference.proto": "inferencepb"}
_BUILD_TIMEOUT_S = 900.0


class DoorBenchError(PipelineError):
    """The load generator could not be built or run, or a server did not start or died."""


def go_version() -> str | None:
    """``go version``'s answer, or None when Go is not on PATH."""
    if shutil.which("go") is None:
        return None
    done = subprocess.run(["go", "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def _stamp(go: str) -> str:
    digest = hashlib.sha256(go.encode())
    for path in sorted(_SOURCE.iterdir()) + [_SCHEMAS / p for p in _PROTOS]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build_loadgen(cache: Path) -> Path:
    """Build the load generator into `cache` (unless it is up to date); return the binary.

    Raises:
        DoorBenchError: Go is missing, or a step of the build failed (its output says why).
    """
    go = go_version()
    if go is None:
        raise DoorBenchError(
            "the Go toolchain (`go`) is not on PATH: the door benchmark builds its load "
            "generator from pipeline/dev/bench/loadgen; install Go 1.26 and run again"
        )
    # absolute: `go install` refuses a relative GOBIN, and the steps run in other folders
    cache = cache.absolute()
    work = cache / "doors-loadgen"
    binary, stamp_file, stamp = work / "loadgen", work / "stamp", _stamp(go)
    if binary.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return binary
    module, bin_dir = work / "module", cache / "go" / "bin"
    shutil.rmtree(module, ignore_errors=True)
    shutil.copytree(_SOURCE, module)
    env = {
        **os.environ,
        "GOBIN": str(bin_dir),
        "GOFLAGS": f"{os.environ.get('GOFLAGS', '')} -mod=mod".strip(),
    }
    _step(["go", "install", "tool"], module, env)  # the generators, at go.mod's versions
    mappings = ",".join(f"M{proto}={_IMPORT_PATH}/{pkg}" for proto, pkg in _PROTOS.items())
    options = f"module={_IMPORT_PATH},{mappings}"  # the protos have no go_package
    _step(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{_SCHEMAS}",
            f"--plugin=protoc-gen-go={bin_dir / 'protoc-gen-go'}",
            f"--plugin=protoc-gen-go-grpc={bin_dir / 'protoc-gen-go-grpc'}",
            f"--go_out={module}",
            f"--go_opt={options}",
            f"--go-grpc_out={module}",
            f"--go-grpc_opt={options}",
            *_PROTOS,
        ],
        module,
        env,
    )
    _step(["go", "build", "-o", str(binary), "."], module, env)
    stamp_file.write_text(stamp)
    return binary


def _step(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S
    )
    if done.returncode != 0:
        raise DoorBenchError(
            f"building the load generator: `{' '.join(args[:3])} ...` exited "
            f"{done.returncode} in {cwd}:\n{done.stderr[-2000:]}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """One run of the load generator.

    Attributes:
        proto: ``http`` or ``grpc``.
        api: ``predict`` (the seed's API) or ``oip`` (Open Inference Protocol v2).
        targets: HTTP base URLs or gRPC ``host:port``; callers take them in turn.
        rows: The JSON file of rows the requests carry.
        model: The model the OIP path names (``predict`` requests name none, as the seed's).
        concurrency: Closed loop: this many callers.
        rate: Open loop: requests per second (None: closed loop).
        duration_s: The measured window.
        warmup_s: Load before the window, not measured.
    """

    proto: str
    api: str
    targets: tuple[str, ...]
    rows: Path
    model: str
    concurrency: int = 1
    rate: float | None = None
    duration_s: float
    warmup_s: float

    def args(self) -> list[str]:
        """The generator's command-line flags for this run."""
        args = [
            "-proto",
            self.proto,
            "-api",
            self.api,
            "-targets",
            ",".join(self.targets),
            "-rows",
            str(self.rows),
            "-duration",
            f"{self.duration_s:g}s",
            "-warmup",
            f"{self.warmup_s:g}s",
        ]
        if self.api == "oip":  # the seed's requests name no model: the server's default
            args += ["-model", self.model]
        if self.rate is not None:
            return [*args, "-rate", f"{self.rate:.3f}"]
        return [*args, "-concurrency", str(self.concurrency)]


def run_load(binary: Path, load: Load, on_mark: Callable[[str], None]) -> dict[str, Any]:
    """Run `load`; call ``on_mark("measuring")`` and ``on_mark("measured")`` at the window's
    edges; return the generator's report.

    Raises:
        DoorBenchError: The generator exited non-zero or printed no report.
    """
    timeout_s = load.warmup_s + load.duration_s + 60
    with subprocess.Popen(
        [str(binary), *load.args()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        other: list[str] = []
        for line in proc.stderr:  # ends when the generator exits
            mark = line.strip()
            if mark in ("measuring", "measured"):
                on_mark(mark)
            else:
                other.append(line)
        out = proc.stdout.read()
        code = proc.wait(timeout_s)
    if code != 0 or not out.strip():
        raise DoorBenchError(
            f"the load generator exited {code} ({' '.join(load.args())}): "
            f"{''.join(other)[-2000:] or 'no message'}"
        )
    report: dict[str, Any] = orjson.loads(out)
    return report
