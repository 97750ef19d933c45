"""The README walked as a new user walks it (issue 26): every shell block marked
``<!-- runs here: SCENARIO -->`` is run as written, in README order, from a fresh
``PIPELINE_HOME`` (so `pipeline kafka start` starts a broker of the walk's own, on the
README's port) in a directory that has the checkout's `.venv`, `models/` and `schemas/`.

How a command is run, so that the README needs no test-only words:
- a `pipeline run` or `pipeline serve`, or a command ending in `&`, runs in the
  background until its scenario ends, then gets SIGTERM and must exit 0 (the README's
  promise);
- a `pipeline consume` that follows the topic runs for a few seconds, then gets Ctrl-C
  (SIGINT) and must exit 0;
- a command that only reads (`curl`, `consume`, `topics`, `groups`) and is shown with
  output is tried again until it exits 0 and prints at least as many lines as the README
  shows (the worker started a line earlier needs a moment); curl fails on an HTTP error
  status, as a reader would see it;
- anything else runs once and must exit 0.

Nothing any of them prints may be a traceback or a raw librdkafka line (the issue's "done
when": no traceback, no raw library line, no exit code but the table's).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import pytest

from pipeline.dev.localserver import port_free
from tests.integration.kafkaio import wait_until_loaded
from tests.readmeblocks import ROOT, Block, Command, blocks

WALK = [b for b in blocks() if b.marker == "runs here"]
PORTS = (9092, 8080, 50051, 9464, 8081)  # the README's: broker, doors, metrics, registry
_READ_FOR_S = 90.0  # how long a reading command is tried again
_FOLLOW_S = 4.0  # how long a following consume runs before Ctrl-C
_STOP_S = 30.0  # the README's SIGTERM promise
_RAW_LIBRDKAFKA = re.compile(r"%\d\|\d+\.\d+\|")  # %3|1796586326.445|FAIL|rdkafka#...


@dataclass
class Walker:
    """Runs commands as a reader would, in `cwd`, and remembers what runs in the background."""

    cwd: Path
    env: dict[str, str]
    background: list[tuple[Command, subprocess.Popen[bytes], Path]] = field(default_factory=list)
    seen: list[tuple[str, str]] = field(default_factory=list)  # (where, what it printed)

    def run(self, block: Block, command: Command) -> None:
        where = f"README.md:{block.line} `{command.text.splitlines()[0]}`"
        if command.background:
            self._start(command)
        elif command.follows:
            log = self.cwd / f"follow-{len(self.background)}.log"
            with log.open("wb") as out:
                proc = self._popen(command.text, out)
                wait_until_loaded(proc.pid)  # a Ctrl-C before then interrupts its imports
                time.sleep(_FOLLOW_S)
                proc.send_signal(signal.SIGINT)
                code = proc.wait(_STOP_S)
            self.seen.append((where, log.read_text()))
            assert code == 0, f"{where}: exit {code} on Ctrl-C:\n{log.read_text()[-2000:]}"
        else:
            self._until_shown(where, command)

    def _until_shown(self, where: str, command: Command) -> None:
        deadline = time.monotonic() + (_READ_FOR_S if command.reads else 0)
        while True:
            done = subprocess.run(
                ["bash", "-c", command.text], cwd=self.cwd, env=self.env, capture_output=True,
                timeout=180,
            )  # fmt: skip
            shown = len(done.stdout.decode().splitlines())
            if done.returncode == 0 and (shown >= command.shown_lines or not command.reads):
                self.seen.append((where, done.stdout.decode() + done.stderr.decode()))
                return
            if time.monotonic() > deadline:
                break
            time.sleep(1.0)
        pytest.fail(
            f"{where}: exit {done.returncode}, {shown} lines where the README shows "
            f"{command.shown_lines}:\n{done.stdout.decode()[-1500:]}\n{done.stderr.decode()[-2500:]}"
            f"\nstill running: {self._logs()}"
        )

    def _start(self, command: Command) -> None:
        text = command.text.rstrip()
        text = text.removesuffix("&") if command.words[-1] == "&" else text
        log = self.cwd / f"background-{len(self.background)}.log"
        with log.open("wb") as out:
            self.background.append((command, self._popen(text, out), log))

    def _popen(self, text: str, out: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["bash", "-c", f"exec {text}" if "=" not in text.split()[0] else text],
            cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def stop_background(self) -> list[str]:
        """SIGTERM to each background command; what did not exit 0 within the promise."""
        failures = []
        for command, proc, log in self.background:
            # a reader stops it after seeing it start, not before it printed anything
            started = time.monotonic()
            while not log.stat().st_size and proc.poll() is None:
                if time.monotonic() - started > _STOP_S:
                    break
                time.sleep(0.2)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            termed = time.monotonic()
            try:
                code = proc.wait(_STOP_S)
            except subprocess.TimeoutExpired:
                quiet_s = time.time() - log.stat().st_mtime  # since its last line
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
                failures.append(
                    f"`{command.text}` did not stop within {_STOP_S:.0f} s of SIGTERM (sent "
                    f"{termed - started:.1f} s after the walk began waiting for its first "
                    f"line; it wrote nothing in its last {quiet_s:.1f} s):\n"
                    f"{log.read_text()[-2500:]}"
                )
                continue
            if code != 0:
                failures.append(f"`{command.text}` exited {code}:\n{log.read_text()[-2500:]}")
        self.seen.extend(
            (f"`{c.text.splitlines()[0]}`", log.read_text()) for c, _, log in self.background
        )
        self.background.clear()
        return failures

    def untidy(self) -> list[str]:
        """Lines a reader should never meet: tracebacks and raw librdkafka lines."""
        return [
            f"{where}: {line}"
            for where, text in self.seen
            for line in text.splitlines()
            if line.startswith("Traceback") or _RAW_LIBRDKAFKA.match(line)
        ]

    def _logs(self) -> str:
        return "\n".join(f"`{c.text}`:\n{log.read_text()[-1500:]}" for c, _, log in self.background)


@pytest.fixture
def walker(tmp_path: Path) -> Iterator[Walker]:
    taken = [p for p in PORTS if not port_free(p)]
    if taken:
        pytest.skip(f"ports {taken} are taken here; the README's commands use them as written")
    for name in (".venv", "models", "schemas", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "PIPELINE_"))}
    env["PIPELINE_HOME"] = str(tmp_path / "home")
    env["PATH"] = f"{tmp_path / '.venv/bin'}:{env['PATH']}"
    # curl exits 0 on an HTTP error; a reader sees the error, so the walk must fail on it
    (tmp_path / ".curlrc").write_text("--fail-with-body\n")
    env["CURL_HOME"] = str(tmp_path)
    walker = Walker(tmp_path, env)
    try:
        yield walker
    finally:
        walker.stop_background()
        for server in ("schema-registry", "kafka"):
            subprocess.run(
                [str(ROOT / ".venv/bin/pipeline"), server, "stop"], env=env,
                capture_output=True, timeout=120,
            )  # fmt: skip


def test_the_readme_has_blocks_that_run_here() -> None:
    scenarios = {b.note for b in WALK}
    assert {"running-it", "doors", "shadow", "canary", "enrichment", "local-broker"} <= scenarios


def test_every_runnable_readme_block_runs_as_written(walker: Walker) -> None:
    for scenario, scenario_blocks in groupby(WALK, key=lambda b: b.note):
        for block in scenario_blocks:
            for command in block.commands:
                walker.run(block, command)
        failures = walker.stop_background()
        assert not failures, f"scenario {scenario}: " + "\n".join(failures)
    assert not walker.untidy(), "\n".join(walker.untidy()[:20])
