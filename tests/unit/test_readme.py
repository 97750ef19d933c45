"""The README tells the truth: its contract examples validate against schemas/, the flags
it documents for `pipeline run` are the ones the parser accepts, and its producer snippets
are the code the tests run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from pipeline.cli import build_parser

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
