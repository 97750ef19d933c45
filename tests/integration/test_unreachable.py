"""An unreachable broker: `pipeline run`, `produce` and `consume` each say so in one line
and exit 4 (broker-unreachable) within the README's 15 s; with ``--log-format json`` every
line on stderr is JSON, librdkafka's own included."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

NOWHERE = "127.0.0.1:1"  # nothing listens on port 1
PROMISED_S = 15.0
MODELS = str(Path(__file__).resolve().parents[2] / "models")
# the 15 s promise is timed from a cold interpreter start, which a busy machine slows
pytestmark = pytest.mark.alone


def run_cli(*args: str, timeout_s: float = 30.0) -> tuple[int, list[str], float]:
    """Run `pipeline ARGS` for at most `timeout_s`; its exit code, stderr lines and time."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return done.returncode, done.stderr.splitlines(), time.monotonic() - started


@pytest.mark.parametrize(
    "command",
    [
        ("produce", "--topic", "features", "--synthetic", "breast-cancer-mlp", "--count", "3"),
        ("consume", "--topic", "predictions", "--exit"),
        ("groups", "describe", "pipeline"),
    ],
    ids=["produce", "consume", "groups"],
)
def test_a_client_command_says_so_in_one_line_and_exits_4(command: tuple[str, ...]) -> None:
    code, lines, took = run_cli(*command, "--bootstrap-servers", NOWHERE)
    assert code == 4, lines
    assert len(lines) == 1, lines
    assert f"could not reach Kafka at {NOWHERE}" in lines[0]
    assert took < PROMISED_S
    print(f"{command[0]}: exit {code} after {took:.1f} s, {lines[0]}")


def test_run_logs_only_json_lines_and_exits_4() -> None:
    code, lines, took = run_cli(
        "run", "--bootstrap-servers", NOWHERE, "--models", MODELS,
        "--default-model", "breast-cancer-mlp", "--log-format", "json",
    )  # fmt: skip
    docs = [orjson.loads(line) for line in lines]  # every line is JSON, or this raises
    assert code == 4, lines
    assert len(docs) < 20, lines
    said = [d for d in docs if f"could not reach Kafka at {NOWHERE}" in d["message"]]
    assert len(said) == 1 and said[0]["level"] == "error", lines
    assert took < PROMISED_S
    print(f"run: exit {code} after {took:.1f} s, {len(lines)} JSON lines")
