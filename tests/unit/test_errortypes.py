"""The registry of `pipeline.error.type` values is the set the code actually raises.

The source of the codec, the engine and the Kafka adapter is read (not run): every
``(stage, "Type")`` pair of string literals, in a call or a tuple, is a type raised there,
and so is the first argument of inference's ``_RunFailed`` (the infer stage).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

from pipeline.errortypes import ERROR_TYPES, PATTERNS, STAGES

PACKAGE = Path(__file__).resolve().parents[2] / "pipeline"


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "string" assignments."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    found[target.id] = node.value.value
    return found


def _string(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _pairs(path: Path) -> set[tuple[str, str]]:
    tree = ast.parse(path.read_text())
    constants = _constants(tree)
    pairs = set()
    for node in ast.walk(tree):
        items: list[ast.expr] = []
        if isinstance(node, ast.Call):
            items = list(node.args)
            name = node.func.id if isinstance(node.func, ast.Name) else None
            first = _string(items[0], constants) if items else None
            if name == "_RunFailed" and first is not None:
                pairs.add(("infer", first))
        elif isinstance(node, ast.Tuple):
            items = list(node.elts)
        for stage, kind in itertools.pairwise(items):
            s, k = _string(stage, constants), _string(kind, constants)
            if s in STAGES and k is not None and k[:1].isupper() and k.isalnum():
                pairs.add((s, k))
    return pairs


def _raised() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "errortypes.py" and "_proto" not in path.parts:
            found |= _pairs(path)
    return found


def test_every_type_the_code_raises_is_registered_and_every_registered_one_is_raised() -> None:
    registered = {(e.stage, e.name) for e in ERROR_TYPES}

    raised = _raised()

    assert raised - registered == set(), "add these to pipeline/errortypes.py with a meaning"
    assert registered - raised == set(), "pipeline/errortypes.py lists types nothing raises"


def test_the_extraction_finds_each_kind_of_raise_site() -> None:
    raised = _raised()
    assert ("decode", "InvalidJson") in raised  # codec: _Rejected("decode", "InvalidJson", ...)
    assert ("route", "ModelLoadFailed") in raised  # engine: _report_all(s, None, "route", ...)
    assert ("infer", "OutputMismatch") in raised  # outputs: ("infer", "OutputMismatch", ...)
    assert ("infer", "OutputShape") in raised  # inference: _RunFailed(OUTPUT_SHAPE_ERROR, ...)


def test_every_stage_has_a_type_and_names_are_unique() -> None:
    names = [e.name for e in ERROR_TYPES]
    assert len(names) == len(set(names))
    assert {e.stage for e in (*ERROR_TYPES, *PATTERNS)} == set(STAGES)
    assert all(e.meaning for e in (*ERROR_TYPES, *PATTERNS))


def test_the_kafka_stages_are_the_dead_letter_schemas() -> None:
    import json

    from pipeline.kafka.deadletter import STAGES as DEAD_LETTER_STAGES

    schema = json.loads((PACKAGE.parent / "schemas" / "dead-letter.schema.json").read_text())
    enum = schema["properties"]["pipeline.error.stage"]["enum"]
    assert list(DEAD_LETTER_STAGES) == enum == [s for s in STAGES if s != "deadline"]
