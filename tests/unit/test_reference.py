"""One source for flags, environment names, file keys, defaults and the README's tables.

The README's tables are generated (`pipeline.dev.reference`); these tests fail when one
is stale, when a flag's help states a default its settings class does not have, or when a
setting has no flag, so the three names of a setting cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from pipeline.config import (
    RESERVED_VARIABLES,
    ServeConfig,
    WorkerConfig,
    load_config,
    setting_variables,
)
from pipeline.dev import reference
from pipeline.flags import NOT_SETTINGS

README = reference.README.read_text()


@pytest.mark.parametrize("name", sorted(reference.TABLES))
def test_the_readme_table_is_what_the_code_says(name: str) -> None:
    block = re.search(rf"<!-- generated: {name} -->\n(.*?)<!-- end: {name} -->", README, re.S)
    assert block, f"README.md has no generated {name} table"
    assert block.group(1) == reference.render(name), (
        f"the README's {name} table is stale: python -m pipeline.dev.reference --write"
    )


def test_the_check_command_agrees() -> None:
    assert reference.main([]) == 0


def _setting_actions(command: str) -> list[object]:
    parser = reference.subparser(command)
    return [a for a in parser._actions if a.option_strings and a.dest not in NOT_SETTINGS]


@pytest.mark.parametrize(("command", "cls"), [("run", WorkerConfig), ("serve", ServeConfig)])
def test_every_flag_is_a_setting_and_every_setting_has_a_flag(command: str, cls: type) -> None:
    dests = {a.dest for a in _setting_actions(command)}  # type: ignore[attr-defined]
    fields = {f.name for f in dataclasses.fields(cls)} - {"kafka"}
    assert dests == fields


@pytest.mark.parametrize(("command", "cls"), [("run", WorkerConfig), ("serve", ServeConfig)])
def test_a_default_the_help_states_is_the_settings_default(command: str, cls: type) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for action in _setting_actions(command):
        _, said = reference.help_default(action.help or "")  # type: ignore[attr-defined]
        value = defaults[action.dest]  # type: ignore[attr-defined]
        if said is None or value in (None, "", ()) or " " in said.split(",")[0]:
            continue  # no default said, none set, or prose ("3 on a cluster of 3+ brokers")
        shown = reference._shown(value)
        said = said.split(",")[0]  # "0, off"
        assert said == shown, f"{action.option_strings}: help says {said}, the default is {shown}"  # type: ignore[attr-defined]


def test_every_variable_of_a_setting_is_read() -> None:
    for field in dataclasses.fields(WorkerConfig):
        if field.name in ("kafka", "bootstrap_servers", "input_topics"):
            continue
        (variable,) = setting_variables(field.name)
        assert variable == f"PIPELINE_{field.name.upper()}"


def test_no_create_topics_is_create_topics_false_in_the_environment() -> None:
    assert load_config({}, env={"PIPELINE_CREATE_TOPICS": "false"}).create_topics is False
    row = next(r for r in reference.flag_rows(reference.subparser("run"), "worker", (WorkerConfig,))
               if r[0] == "`--no-create-topics`")  # fmt: skip
    assert row[1] == "`PIPELINE_CREATE_TOPICS=false`"


def test_bootstrap_servers_and_unsafe_properties_are_documented() -> None:
    for variable in (
        "PIPELINE_BOOTSTRAP_SERVERS",
        "KAFKA_BOOTSTRAP_SERVERS",
        "PIPELINE_ALLOW_UNSAFE_KAFKA_PROPERTIES",
    ):
        assert f"`{variable}" in README, variable
    assert (
        load_config(
            {}, env={"PIPELINE_BOOTSTRAP_SERVERS": "a:1", "KAFKA_BOOTSTRAP_SERVERS": "b:2"}
        ).bootstrap_servers
        == "a:1"
    )


def test_the_unsafe_properties_help_names_all_of_them() -> None:
    from pipeline.config import UNSAFE_PROPERTIES

    for command in ("run", "produce", "consume"):
        parser = reference.subparser(command)
        (action,) = [a for a in parser._actions if a.dest == "allow_unsafe_kafka_properties"]
        for name in UNSAFE_PROPERTIES:
            assert name in (action.help or ""), (command, name)


def test_the_reserved_variables_are_the_ones_the_repository_reads() -> None:
    root = reference.README.parent
    sources = [*root.glob("pipeline/**/*.py"), *root.glob("tests/**/*.py"), root / "Makefile"]
    used = {
        v for path in sources for v in re.findall(r"\bPIPELINE_[A-Z_]*[A-Z]\b", path.read_text())
    }
    settings = {v for f in dataclasses.fields(WorkerConfig) for v in setting_variables(f.name)}
    settings |= {v for f in dataclasses.fields(ServeConfig) for v in setting_variables(f.name)}
    # Tests name a few variables to show they are refused or are env: references.
    examples = {v for v in used if v.startswith(("PIPELINE_TEST_", "PIPELINE_MAX_BATCH_SIZ"))}
    assert used - settings - examples - {"PIPELINE_HEADERS", "PIPELINE_KAFKA"} <= set(
        RESERVED_VARIABLES
    )
