"""The README's shell blocks, each with what it says about running here, taken apart into
the commands a reader would type.

Every ```sh, ```bash and ```console block is preceded by one of two markers:

- ``<!-- runs here: SCENARIO -->``: the README walk (tests/integration/test_readme_walk.py)
  runs it as written, in README order. Blocks of one scenario share what they start in the
  background (a reader keeps `pipeline serve` running while trying the curl blocks below it);
  it is stopped when the scenario ends.
- ``<!-- runs elsewhere: REASON -->``: it cannot run here as written (Docker, a SASL
  cluster, placeholders such as ``[...]``), and REASON says why, or which test covers it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_BLOCK = re.compile(
    r"(?:<!-- (runs here|runs elsewhere): ([^>]*?) -->\n)?```(sh|bash|console)\n(.*?)\n```", re.S
)
_OPTIONAL = re.compile(r"\s\[--[^\]]*\]")  # `[--port 9092]`: an optional argument, left out


@dataclass
class Command:
    """One command as typed, with the lines the README shows after it (its output)."""

    text: str
    output: list[str] = field(default_factory=list)

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    @property
    def background(self) -> bool:
        """Started with `&`, or a server a reader leaves running in another shell."""
        words = self.words
        return words[-1] == "&" or _subcommand(words) in ("run", "serve")

    @property
    def follows(self) -> bool:
        """A `pipeline consume` that follows the topic until Ctrl-C."""
        words = self.words
        return _subcommand(words) == "consume" and not {"--exit", "--count"} & set(words)

    @property
    def reads(self) -> bool:
        """Only reads (so it may be tried again until what it shows is there)."""
        words = self.words
        return words[0] == "curl" or _subcommand(words) in ("consume", "topics", "groups")

    @property
    def shown_lines(self) -> int:
        """How many lines of output the README shows after it (at least one if any)."""
        bare = [line for line in self.output if not line.startswith("#")]
        return len(bare) or (1 if self.output else 0)


@dataclass
class Block:
    line: int  # where its fence opens in README.md
    marker: str | None  # "runs here", "runs elsewhere" or None
    note: str  # the scenario, or the reason it runs elsewhere
    text: str

    @property
    def commands(self) -> list[Command]:
        """The block's commands: continuations and multi-line quotes joined, comment lines
        and shown output kept as each command's output, `[--optional args]` left out."""
        prompted = any(line.startswith("$ ") for line in self.text.splitlines())
        commands: list[Command] = []
        pending = ""
        for line in self.text.splitlines():
            if pending:
                pending += "\n" + line
            elif (prompted and not line.startswith("$ ")) or line.lstrip().startswith("#"):
                if commands:
                    commands[-1].output.append(line.lstrip())
                continue
            else:
                pending = line.removeprefix("$ ")
            if _complete(pending):
                commands.append(Command(_OPTIONAL.sub("", pending.replace("\\\n", " "))))
                pending = ""
        assert not pending, f"README.md:{self.line}: a command never ends: {pending!r}"
        return commands


def _complete(text: str) -> bool:
    """Whether `text` is a whole command: no quote left open, no trailing backslash."""
    if text.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:
        return False
    return True


def _subcommand(words: list[str]) -> str | None:
    """`run` for `.venv/bin/pipeline run ...` (after any VAR=value), else None."""
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    if len(words) > 1 and words[0].rsplit("/", 1)[-1] == "pipeline":
        return words[1]
    return None


def blocks(text: str | None = None) -> list[Block]:
    """Every shell block of the README, in order."""
    text = README.read_text() if text is None else text
    return [
        Block(
            text.count("\n", 0, m.start(3)) + 1, m.group(1), (m.group(2) or "").strip(), m.group(4)
        )
        for m in _BLOCK.finditer(text)
    ]
