"""The README's reference tables, generated from the code: ``python -m pipeline.dev.reference``.

Each table sits in the README between ``<!-- generated: NAME -->`` and
``<!-- end: NAME -->``; ``--write`` rewrites them, ``--check`` (and a unit test) fails when
one differs from what the code says. The tables and their sources:

- ``run-worker``, ``engine``, ``doors``, ``settings``: the flags of `pipeline run` and
  `pipeline serve` (their parsers), their environment variables
  (`pipeline.config.setting_variables`), file keys and defaults (the settings classes);
- ``variables``: the other ``PIPELINE_*`` variables (`pipeline.config.RESERVED_VARIABLES`);
- ``exit-codes``: `pipeline.exitcodes.EXIT_CODES`;
- ``error-types``: `pipeline.errortypes.ERROR_TYPES` and `PATTERNS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from pipeline.config import (
    CONFIG_VARIABLE,
    RESERVED_VARIABLES,
    ServeConfig,
    WorkerConfig,
    setting_variables,
)
from pipeline.errortypes import ERROR_TYPES, PATTERNS
from pipeline.exitcodes import EXIT_CODES

__all__ = ["README", "TABLES", "flag_rows", "help_default", "render", "rewrite", "subparser"]

README: Final = Path(__file__).resolve().parents[2] / "README.md"
_DEFAULT: Final = re.compile(r"\s*\(default:? ([^()]*)\)|;\s*default:? ([^()]*?)(?=\)|$)")


def subparser(command: str) -> argparse.ArgumentParser:
    """The parser of ``pipeline <command>``."""
    from pipeline.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]  # type: ignore[no-any-return]
    raise KeyError(command)


def help_default(text: str) -> tuple[str, str | None]:
    """Split a flag's help into the text without its ``(default: X)`` and X (None if none)."""
    found = _DEFAULT.search(text)
    if found is None:
        return text, None
    return _DEFAULT.sub("", text, count=1), found.group(1) or found.group(2)


def _group(parser: argparse.ArgumentParser, title: str) -> list[argparse.Action]:
    for group in parser._action_groups:
        if group.title == title:
            return list(group._group_actions)
    raise KeyError(f"{parser.prog} has no argument group {title!r}")


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _setting_default(cls: type[Any], name: str) -> str | None:
    """A settings class's default for `name`, as shown; None if it has no plain one."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            value = f.default
            empty = value in (None, "") or value is dataclasses.MISSING
            return None if empty else _shown(value)
    return None


def flag_rows(
    parser: argparse.ArgumentParser, title: str, classes: Sequence[type[Any]]
) -> list[tuple[str, ...]]:
    """One row per flag of group `title`: flag, environment, file key, default, what.

    With two settings classes (`pipeline serve`'s and `pipeline run`'s) a default that
    differs between them shows as ``serve / run``.
    """
    rows: list[tuple[str, ...]] = []
    for action in _group(parser, title):
        what, said = help_default(action.help or "")
        flag = ", ".join(f"`{o}`" for o in action.option_strings)
        env, key, default = _where(action, classes, said)
        rows.append((flag, env, key, default, what.replace("<", "&lt;").replace(">", "&gt;")))
    return rows


def _where(
    action: argparse.Action, classes: Sequence[type[Any]], said: str | None
) -> tuple[str, str, str]:
    """The environment, file key and default cells of one flag."""
    if action.dest == "config":
        return f"`{CONFIG_VARIABLE}`", "", "none"
    if action.dest == "X":
        return "", "`[kafka]` table", "none"
    if action.dest == "print_config":
        return "", "", ""
    # --no-create-topics and --open-health set their setting to a fixed value
    fixed = _shown(action.const) if isinstance(action, argparse._StoreConstAction) else None
    variables = setting_variables(action.dest)
    env = ", ".join(f"`{v}={fixed}`" if fixed else f"`{v}`" for v in variables)
    key = f"`{action.dest} = {fixed}`" if fixed else f"`{action.dest}`"
    if said is not None and " " in said.split(",")[0]:
        return env, key, said  # prose: a 0 that means "chosen for you", say, explained
    defaults = [_code(_setting_default(cls, action.dest) or said) for cls in classes]
    default = defaults[0] if len(set(defaults)) == 1 else " / ".join(defaults)
    return env, key, default


def _code(default: str | None) -> str:
    """A default as code, unless it is prose (the output topic + .dlq) or there is none."""
    if default is None:
        return "none"
    return default if " " in default else f"`{default}`"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_FLAGS: Final = ("flag", "environment", "file key", "default", "what")


def _flags_table(command: str, title: str, classes: Sequence[type[Any]]) -> Callable[[], str]:
    return lambda: _table(_FLAGS, flag_rows(subparser(command), title, classes))


def _doors() -> str:
    header = ("flag", "environment", "file key", "default (serve / run)", "what")
    return _table(header, flag_rows(subparser("serve"), "doors", (ServeConfig, WorkerConfig)))


def _variables() -> str:
    rows = [(f"`{name}`", what) for name, what in RESERVED_VARIABLES.items()]
    return _table(("variable", "what reads it"), rows)


def _exit_codes() -> str:
    rows = [(str(c.code), c.name, c.meaning, "yes" if c.restart else "no") for c in EXIT_CODES]
    return _table(("code", "name", "when", "a restart may help"), rows)


def _error_types() -> str:
    rows = [(f"`{e.name}`", f"`{e.stage}`", e.meaning) for e in ERROR_TYPES]
    rows += [(e.name, f"`{e.stage}`", e.meaning) for e in PATTERNS]
    return _table(("`pipeline.error.type`", "`pipeline.error.stage`", "meaning"), rows)


TABLES: Final[dict[str, Callable[[], str]]] = {
    "run-worker": _flags_table("run", "worker", (WorkerConfig,)),
    "engine": _flags_table("run", "engine", (WorkerConfig,)),
    "doors": _doors,
    "settings": _flags_table("run", "settings and output", (WorkerConfig,)),
    "variables": _variables,
    "exit-codes": _exit_codes,
    "error-types": _error_types,
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- generated: {re.escape(name)} -->\n)(.*?)(<!-- end: {re.escape(name)} -->)", re.S
    )


def render(name: str) -> str:
    """The table `name` as the code says it is."""
    return TABLES[name]() + "\n"


def rewrite(text: str) -> str:
    """`text` (the README) with every generated table replaced by its rendering.

    Raises:
        KeyError: the README lacks the markers of a table.
    """
    for name in TABLES:
        found = _block(name).search(text)
        if found is None:
            raise KeyError(f"README.md has no <!-- generated: {name} --> block")
        text = text[: found.start(2)] + render(name) + text[found.end(2) :]
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``--write`` rewrites README.md; ``--check`` (the default) exits 1 if it is stale."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.dev.reference", description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the README's tables")
    args = parser.parse_args(argv)
    text = README.read_text()
    updated = rewrite(text)
    if args.write:
        README.write_text(updated)
        return 0
    if updated != text:
        print("README.md's generated tables are stale: python -m pipeline.dev.reference --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
