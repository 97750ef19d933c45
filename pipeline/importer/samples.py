"""The rows parity is measured on: a file of the caller's, or rows made up from the signature.

``--sample FILE`` takes JSON lines or CSV. A JSON line is an array of numbers in input
order, an object of feature names, or a feature event (an object whose ``features`` is
either). A CSV file may start with a header of feature names; its columns are then put in
the model's input order. Without a file, 256 rows are drawn from a seeded standard
normal distribution, and for a model that takes 30 features (the example models'
breast-cancer rows) the 200 bundled real rows are added, so tree splits and decision
boundaries see realistic values too.

A model with named, typed inputs (`read_feed`) takes a sample file that names them (a
CSV header, or JSON objects of input name -> one row's value); it becomes one array per
input, ``[rows, *per-row shape]`` of the input's datatype, each value checked as the
Kafka codec checks an event's (`pipeline.engine.values`). A CSV cell can only hold a
value of per-row shape ``[1]``; other shapes need JSON lines. Without a file
(`default_feed`), 256 seeded rows are drawn per input: standard normal floats, integers
0 or 1 (valid ids for any embedding), random booleans, 8 for any size a shape leaves
open; string inputs need a sample.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engine.signature import Feed, TensorSpec
from pipeline.engine.values import ValueProblem, column_array, row_value
from pipeline.errors import ConfigError
from pipeline.importer.source import Rows

__all__ = ["RANDOM_ROWS", "SEED", "default_feed", "default_rows", "read_feed", "read_rows"]

RANDOM_ROWS = 256
SEED = 0
_BREAST_CANCER_FEATURES = 30
_OPEN_SIZE = 8
"""The size a generated row gets for a dimension its input leaves open."""


def default_rows(n_features: int) -> Rows:
    """Seeded standard-normal rows, plus the bundled breast-cancer rows for 30 features."""
    rows = np.random.default_rng(SEED).standard_normal((RANDOM_ROWS, n_features))
    if n_features == _BREAST_CANCER_FEATURES:
        text = (resources.files("pipeline.dev") / "_data" / "breast_cancer_rows.json").read_text()
        rows = np.vstack([rows, np.asarray(json.loads(text)["rows"], dtype=np.float64)])
    return rows.astype(np.float32)


def default_feed(inputs: Sequence[TensorSpec]) -> Feed:
    """Seeded rows of every input's datatype and per-row shape (see the module's text).

    Raises:
        ConfigError: an input takes strings, which cannot be made up.
    """
    rng = np.random.default_rng(SEED)
    feed: Feed = {}
    for spec in inputs:
        shape = (RANDOM_ROWS, *(_OPEN_SIZE if d is None else d for d in spec.shape))
        if spec.dtype.kind == "O":
            raise ConfigError(
                f"input {spec.name!r} takes strings ({spec.describe()}), which cannot be made "
                f"up; pass --sample FILE (JSON lines of objects of input name -> value)"
            )
        draw = rng.standard_normal(shape) if spec.dtype.kind == "f" else rng.integers(0, 2, shape)
        feed[spec.name] = draw.astype(spec.dtype)
    return feed


def read_rows(path: Path, *, n_features: int, feature_names: Sequence[str] | None) -> Rows:
    """Read sample rows from a JSON-lines or CSV file, in the model's input order.

    Raises:
        ConfigError: the file cannot be read, is empty, or a row has the wrong number
            of values, unknown names, or values that are not finite float32 numbers.
    """
    return _matrix(path, _read(path, feature_names), n_features)


def read_feed(path: Path, inputs: Sequence[TensorSpec]) -> Feed:
    """Read sample rows of named columns into one ``[rows, 1]`` array per input.

    Raises:
        ConfigError: the file cannot be read, is empty, does not name its columns, a
            column is missing or unknown, or a value does not fit its input's type.
    """
    names = [spec.name for spec in inputs]
    text = _text(path)
    if path.suffix.lower() == ".csv" and not _has_header(text, names):
        raise ConfigError(
            f"{path}: the model takes named columns {names[:5]}; the sample CSV must start "
            f"with a header naming them"
        )
    rows = _read(path, names)
    return {spec.name: _column(path, spec, [row[i] for row in rows]) for i, spec in
            enumerate(inputs)}  # fmt: skip


def _text(path: Path) -> str:
    """The sample file's text."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read sample file {path}: {exc}") from exc


def _read(path: Path, names: Sequence[str] | None) -> list[list[object]]:
    """The sample's rows, values in input order when `names` is given."""
    text = _text(path)
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path, text, names)
    else:
        rows = _json_rows(path, text, names)
    if not rows:
        raise ConfigError(f"sample file {path} has no rows; expected one row per line")
    return rows


def _has_header(text: str, names: Sequence[str]) -> bool:
    """True if the CSV's first line names only the model's columns."""
    first = next((r for r in csv.reader(text.splitlines()) if r), [])
    return bool(first) and set(first) <= set(names)


def _column(path: Path, spec: TensorSpec, values: list[object]) -> np.ndarray[Any, Any]:
    """One input's sample values as a ``[rows, *per-row shape]`` array of its type."""
    if spec.datatype == "BYTES" and spec.scalar:
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise ConfigError(
                    f"{path}: sample row {i} column {spec.name!r} must be a string (the "
                    f"model's input is {spec.describe()}), got {value!r}"
                )
        return np.asarray(values, dtype=object).reshape(-1, *spec.shape)
    if spec.datatype == "FP32" and spec.scalar and not any(isinstance(v, list) for v in values):
        return _matrix(path, [[v] for v in values], 1).reshape(-1, *spec.shape)
    return _typed_column(path, spec, [_cell(v) for v in values])


def _typed_column(path: Path, spec: TensorSpec, values: list[object]) -> np.ndarray[Any, Any]:
    """Values checked as the codec checks an event's; rows of one shape, as one batch."""
    rows, shapes = [], set()
    try:
        for i, value in enumerate(values):
            leaves, shape = row_value(spec, value, f"sample row {i} {spec.name!r}")
            rows.append(leaves)
            shapes.add(shape)
    except ValueProblem as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc
    if len(shapes) > 1:
        raise ConfigError(
            f"{path}: the rows give input {spec.name!r} ({spec.describe()}) shapes "
            f"{sorted(shapes)[:5]}; parity runs the sample as one batch, so give every row "
            f"one shape"
        )
    array, problems = column_array(spec, rows, shapes.pop(), f"sample {spec.name!r}")
    if problems:
        row, problem = min(problems.items())
        raise ConfigError(f"{path}: sample row {row}: {problem.message}")
    return array


def _cell(value: object) -> object:
    """A CSV cell (a string) as the JSON value it spells, if it spells one; else as is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _json_rows(path: Path, text: str, names: Sequence[str] | None) -> list[list[object]]:
    """Parse JSON lines: arrays, objects of names, or events with ``features``."""
    rows: list[list[object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path} line {number}: not JSON ({exc})") from exc
        if isinstance(value, dict) and "features" in value:
            value = value["features"]
        if isinstance(value, dict):
            value = _by_name(path, number, value, names)
        if not isinstance(value, list):
            raise ConfigError(
                f"{path} line {number}: expected an array of numbers, an object of feature "
                f"names or a feature event, got {type(value).__name__}"
            )
        rows.append(value)
    return rows


def _csv_rows(path: Path, text: str, names: Sequence[str] | None) -> list[list[object]]:
    """Parse CSV; a first line that is not all numbers is a header of feature names."""
    lines = [r for r in csv.reader(text.splitlines()) if r]
    if lines and not all(_is_number(cell) for cell in lines[0]):
        header, body = lines[0], lines[1:]
        return [
            _by_name(path, n, dict(zip(header, r, strict=False)), names)
            for n, r in enumerate(body, start=2)
        ]
    return [list(r) for r in lines]


def _by_name(
    path: Path, number: int, row: dict[str, object], names: Sequence[str] | None
) -> list[object]:
    """Put a row of named values in the model's input order."""
    if names is None:
        return list(row.values())
    unknown = sorted(set(row) - set(names))
    missing = [n for n in names if n not in row]
    if unknown or missing:
        raise ConfigError(
            f"{path} line {number}: feature names must be the model's; missing {missing[:5]}, "
            f"unknown {unknown[:5]}"
        )
    return [row[n] for n in names]


def _is_number(cell: str) -> bool:
    """True if a CSV cell parses as a float."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _matrix(path: Path, rows: list[list[object]], n_features: int) -> Rows:
    """Check every row's width and values; return them as float32."""
    for i, row in enumerate(rows):
        if len(row) != n_features:
            raise ConfigError(
                f"{path}: sample row {i} must have {n_features} values (the model's "
                f"features), got {len(row)}"
            )
    try:
        matrix = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: sample values must all be numbers: {exc}") from exc
    bad = ~np.isfinite(matrix) | (np.abs(matrix) > np.finfo(np.float32).max)
    if bad.any():
        at, column = (int(v) for v in np.argwhere(bad)[0])
        raise ConfigError(
            f"{path}: sample row {at} column {column} must be a finite float32 number, "
            f"got {matrix[at, column]}"
        )
    return matrix.astype(np.float32)
