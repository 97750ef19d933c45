"""The README tells the truth: its contract examples validate against schemas/, the flags
it documents for `pipeline run` are the ones the parser accepts, every `pipeline` and
`make` command in its shell blocks is one the tools accept, and its producer snippets are
the code the tests run."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from pipeline.cli import build_parser
from tests.readmeblocks import blocks

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
EXAMPLES = re.findall(r"<!-- schema: ([a-z-]+) -->\n```json\n(.*?)\n```", README, re.S)


def test_the_readme_has_an_example_of_each_record() -> None:
    assert {name for name, _ in EXAMPLES} == {"feature-event", "prediction", "dead-letter"}


@pytest.mark.parametrize(("schema", "example"), EXAMPLES)
def test_readme_examples_validate_against_the_schemas(schema: str, example: str) -> None:
    validator = Draft202012Validator(
        json.loads((ROOT / f"schemas/{schema}.schema.json").read_text())
    )
    errors = [e.message for e in validator.iter_errors(json.loads(example))]
    assert errors == []


def test_every_run_flag_in_the_readme_table_is_accepted() -> None:
    tables = re.findall(
        r"<!-- generated: (?:run-worker|engine|doors|settings) -->\n(.*?)<!--", README, re.S
    )
    cells = re.findall(r"^\| ([^|]+) \|", "".join(tables), re.M)
    flags = {f for cell in cells for f in re.findall(r"`(--[a-z-]+|-X)", cell)}
    run = next(
        a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "run"
    )[1]  # type: ignore[union-attr]
    accepted = {o for action in run._actions for o in action.option_strings}
    assert flags and flags <= accepted, flags - accepted
    assert accepted - {"-h", "--help"} <= flags, (
        f"undocumented: {accepted - flags - {'-h', '--help'}}"
    )


SNIPPETS = re.findall(r"<!-- snippet: (\S+) (\S+) -->\n```\w+\n(.*?)\n```", README, re.S)


def test_the_readme_has_the_java_and_go_producer_snippets() -> None:
    assert {path for path, _, _ in SNIPPETS} == {
        "examples/producers/java/FeatureProducer.java",
        "examples/producers/go/main.go",
    }


@pytest.mark.parametrize(("path", "name", "snippet"), SNIPPETS, ids=lambda x: str(x)[:40])
def test_a_readme_snippet_is_the_code_the_tests_run(path: str, name: str, snippet: str) -> None:
    source = (ROOT / path).read_text()
    marked = re.search(
        rf"\n([ \t]*)// --8<-- \[start:{name}\]\n(.*?)\n[ \t]*// --8<-- \[end:{name}\]",
        source,
        re.S,
    )
    assert marked, f"{path} has no {name} snippet markers"
    indent = marked.group(1)
    lines = [line.removeprefix(indent) for line in marked.group(2).splitlines()]
    assert "\n".join(lines).strip("\n") == snippet


def _readme_commands() -> list[tuple[str, list[str]]]:
    """Each `pipeline` and `make` command of the README's shell blocks: (the line, its
    arguments), with continuations joined, comments, prompts and pipes taken apart, and the
    brackets of optional arguments (`[--port 9092]`) dropped."""
    commands: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```(?:sh|bash|console)\n(.*?)\n```", README, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.removeprefix("$ ").strip()
            if "<(" in line:  # source <(pipeline completion bash)
                line = line.replace("source <(", "").rstrip(")").split(")")[0]
            for part in _pipeline_parts(line):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:
                    continue
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)  # VAR=value before the command
                if words and (words[0] in ("make", "pipeline") or words[0].endswith("/pipeline")):
                    commands.append((line, [w.strip("[]") for w in words if w.strip("[]")]))
    return commands


def _pipeline_parts(line: str) -> list[str]:
    """`line` split at the pipes and `&&` outside quotes."""
    parts, current, quote = [], "", ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (not current or current[-1].isspace()):
            break  # a comment
        elif char == "|" or (char == "&" and line[i : i + 2] == "&&"):
            parts.append(current)
            current = ""
            continue
        elif char == "&":
            continue
        current += char
    return [*parts, current]


COMMANDS = _readme_commands()
TARGETS = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_the_readme_has_its_commands() -> None:
    programs = {args[0].rsplit("/", 1)[-1] for _, args in COMMANDS}
    assert programs == {"make", "pipeline"}
    assert len(COMMANDS) >= 40


@pytest.mark.parametrize(("line", "args"), COMMANDS, ids=lambda x: str(x)[:60])
def test_every_command_in_the_readme_is_one_the_tools_accept(line: str, args: list[str]) -> None:
    if args[0] == "make":
        assert set(args[1:]) <= TARGETS, f"{line}: no such make target"
        return
    try:
        build_parser().parse_args(args[1:])
    except SystemExit as exit:  # --version and --help print and exit 0
        assert exit.code == 0, f"the README's `{line}` is refused by the parser"


def test_every_shell_block_says_whether_it_runs_here() -> None:
    """The walk (tests/integration/test_readme_walk.py) runs the blocks marked `runs here`;
    every other block says why it cannot, so a new block is never left out unnoticed."""
    unmarked = [b.line for b in blocks() if b.marker is None or not b.note]
    assert not unmarked, (
        f"README.md lines {unmarked}: put `<!-- runs here: SCENARIO -->` or `<!-- runs "
        "elsewhere: REASON -->` on the line before the block (tests/readmeblocks.py)"
    )
