"""The `pipeline` command as a user runs it (a subprocess): version, help, exit codes for
usage and configuration errors, --print-config. No broker: nothing here connects."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from pipeline import exitcodes
from pipeline.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "127.0.0.1:1"  # nothing listens there; --print-config must not try


def pipeline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={**clean, **(env or {})},
    )  # fmt: skip


def test_version_names_the_package_and_its_kafka_library() -> None:
    done = pipeline("--version")

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert done.returncode == 0
    assert done.stdout.startswith(f"pipeline {version} (confluent-kafka ")
    assert "librdkafka 2." in done.stdout and "onnxruntime " in done.stdout


def _subparsers(
    parser: argparse.ArgumentParser, path: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += [(f"{path} {name}".strip(), child), *_subparsers(child, f"{path} {name}")]
    return found


def test_every_subcommand_has_a_description() -> None:
    commands = _subparsers(build_parser())

    assert len(commands) >= 15
    assert [name for name, parser in commands if not parser.description] == []


def test_a_usage_error_exits_2() -> None:
    done = pipeline("run", "--no-such-flag")

    assert done.returncode == exitcodes.USAGE == 2
    assert "unrecognized arguments: --no-such-flag" in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["run", "--max-batch-size", "0"], {}, "max_batch_size must be an integer >= 1, got 0"),
        (["serve", "--http-port", "70000"], {}, "http_port must be a port"),
        (["run"], {"PIPELINE_MAX_BATCH_SIZ": "512"}, "did you mean PIPELINE_MAX_BATCH_SIZE?"),
        (["run", "-X", "plugin.library.paths=x.so"], {}, "plugin.library.paths"),
        (["consume", "--timeout", "3"], {}, "--timeout applies with --exit"),
        (
            ["run", "--guarantee", "exactly-once", "--commit-interval-ms", "30000"],
            {},
            "raise -X transaction.timeout.ms to 60000",
        ),
        (
            ["run", "--group-type", "share", "-X", "session.timeout.ms=6000"],
            {},
            "['session.timeout.ms'] do not apply to --group-type share",
        ),
    ],
    ids=[
        "flag-value",
        "serve-flag",
        "unknown-variable",
        "unsafe-property",
        "consume-timeout",
        "commit-interval-past-transaction-timeout",
        "share-group-session-timeout",
    ],
)
def test_a_configuration_error_exits_3_before_connecting(
    args: list[str], env: dict[str, str], says: str
) -> None:
    done = pipeline(*args, env={"KAFKA_BOOTSTRAP_SERVERS": CLOSED, **env})

    assert done.returncode == exitcodes.CONFIG == 3, done.stderr
    assert says in done.stderr
    assert done.stderr.startswith("error: ")


def test_run_prints_its_effective_redacted_configuration_without_connecting(tmp_path: Path) -> None:
    config = tmp_path / "pipeline.toml"
    config.write_text('group_id = "from-file"\n[kafka]\n"sasl.password" = "s3cret"\n')

    done = pipeline(
        "run", "--bootstrap-servers", CLOSED, "--config", str(config), "--print-config",
        "-X", "sasl.username=alice", env={"PIPELINE_MAX_BATCH_SIZE": "64"},
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["bootstrap_servers"] == CLOSED and shown["group_id"] == "from-file"
    assert shown["max_batch_size"] == 64
    assert shown["kafka"] == {"sasl.password": "***", "sasl.username": "alice"}
    assert "s3cret" not in done.stdout + done.stderr


def test_serve_prints_its_configuration() -> None:
    done = pipeline("serve", "--print-config", "--log-format", "json", "--http-port", "9")

    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert (shown["http_port"], shown["grpc_port"], shown["log_format"]) == (9, 50051, "json")


def test_the_log_level_is_case_insensitive_in_the_environment() -> None:
    done = pipeline("serve", "--print-config", env={"PIPELINE_LOG_LEVEL": "WARNING"})

    assert json.loads(done.stdout)["log_level"] == "warning"


def test_the_exit_codes_are_distinct() -> None:
    codes = [c.code for c in exitcodes.EXIT_CODES]
    assert len(codes) == len(set(codes))
    no_restart = {c.code for c in exitcodes.EXIT_CODES if not c.restart}
    assert no_restart - {exitcodes.OK, exitcodes.INTERRUPTED} == {exitcodes.USAGE, exitcodes.CONFIG}


@pytest.mark.parametrize(
    "command",
    [["models", "list"], ["models", "show", "breast-cancer-mlp"], ["models", "list", "--json"]],
    ids=["list", "show", "list-json"],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(command: list[str]) -> None:
    """`pipeline models list | head -1`: the reader closes the pipe before the output is
    written; the command ends with 0 and no traceback, as Unix tools do."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *command, "--models", str(ROOT / "models")],
        stdout=write,
        stderr=subprocess.PIPE,
        check=False,
        cwd=ROOT,
    )
    os.close(write)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr
