"""`pipeline completion bash|zsh`, exercised in a real bash."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pipeline.cli import build_parser
from pipeline.completion import bash_script, shapes, zsh_script

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
SCRIPT = bash_script(build_parser())


def complete(*words: str) -> list[str]:
    """What Tab offers after `words` (the last one is the word being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"{SCRIPT}\nCOMP_WORDS=(pipeline {quoted}); COMP_CWORD={len(words)}; "
        '_pipeline; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    return sorted(line for line in done.stdout.splitlines() if line)


def test_subcommands() -> None:
    assert complete("") == sorted(
        [
            "bench",
            "completion",
            "consume",
            "groups",
            "kafka",
            "models",
            "replay",
            "produce",
            "run",
            "schema-registry",
            "serve",
            "topics",
        ]
    )
    assert complete("kafka", "st") == ["start", "status", "stop"]
    assert complete("schema-registry", "st") == ["start", "status", "stop"]


def test_flags_of_the_subcommand_typed() -> None:
    assert complete("run", "--guar") == ["--guarantee"]
    assert "--print-config" in complete("serve", "--")
    assert "--exit" in complete("consume", "--")


def test_choices_after_a_flag_and_a_value_is_not_a_subcommand() -> None:
    assert complete("run", "--guarantee", "") == ["at-least-once", "exactly-once"]
    assert complete("run", "--group-id", "kafka", "--log-format", "") == ["json", "text"]
    assert complete("completion", "") == ["bash", "zsh"]


def test_paths_complete_as_files(tmp_path: object) -> None:
    program = f"{SCRIPT}\ncd /; COMP_WORDS=(pipeline run --models us); COMP_CWORD=3; _pipeline; echo ${{COMPREPLY[@]}}"
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True)
    assert "usr" in done.stdout.split()


def test_every_subcommand_and_flag_is_in_the_script() -> None:
    for shape in shapes(build_parser()):
        for option in shape.options:
            assert option in SCRIPT


def test_the_command_prints_both_scripts() -> None:
    from pipeline.cli import main

    assert main(["completion", "bash"]) == 0
    assert zsh_script(build_parser()).endswith(SCRIPT)
    done = subprocess.run(["bash", "-n"], input=SCRIPT, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
