"""Model manifests: the optional ``model.json`` beside each ``model.onnx``, validated.

A manifest is a JSON object with any of these keys: ``features`` (a vector model's column
names in input order), ``inputs`` and ``outputs`` (the model's signature as recorded when it
was made: a list of ``{"name", "datatype", "shape"}``, the datatype as the Open Inference
Protocol names it, the shape of one row without the batch axis, -1 for a dimension of any
size; ``inputs`` is checked against the graph on every load),
``labels`` (class labels in probability-column order), ``probability_output``
(the ONNX output holding class probabilities), ``description`` and ``sha256`` (hex
digest of model.onnx, checked on every load). ``pipeline models import`` also writes
``n_features`` (how many columns a row has; it must agree with ``features``) and three
records of where the model came from, each a JSON object kept as written: ``source``
(framework, its version, the file format), ``converter`` (name, version, opset, and the
serving path) and ``parity`` (what the source-versus-ONNX check measured). ``serving``
holds the model's own serving settings, as Triton's model config does: any of
``max_batch_size`` (rows per batch, an integer >= 1), ``max_wait_ms`` (how long a batch's
oldest row may wait, a number >= 0) and ``intra_op_threads`` (ONNX Runtime's threads within
an operator, an integer >= 0, 0 for one per core); each replaces the worker's or server's
flag (``--max-batch-size``, ``--max-wait-ms``, ``--model-threads``) for this version alone.
``defaults`` maps input names (or a vector model's feature names) to one value each (a
string for a ``BYTES`` input, a number for a numeric one, true or false for ``BOOL``): what
a row takes when an ``--enrich`` table with ``--enrich-missing NAME=defaults`` has no entry
for the event's entity; the model load checks the names and kinds.
Unknown keys
are refused, so a misspelt key fails loudly instead of being ignored; ``null`` means
absent. Every error names the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import TypedDict

from pipeline.engine.signature import DATATYPES, TensorSpec
from pipeline.errors import ModelLoadError

__all__ = ["MANIFEST_FILE", "Manifest", "Serving", "read_manifest", "verify_sha256"]

MANIFEST_FILE = "model.json"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class Serving(TypedDict, total=False):
    """A manifest's ``serving`` settings; each replaces its flag for this version."""

    max_batch_size: int
    max_wait_ms: float
    intra_op_threads: int


class Manifest(TypedDict, total=False):
    """A validated ``model.json``; every key is optional."""

    features: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str]
    probability_output: str
    description: str
    sha256: str
    n_features: int
    source: dict[str, object]
    converter: dict[str, object]
    parity: dict[str, object]
    serving: Serving
    defaults: dict[str, str | int | float | bool]


def verify_sha256(path: Path, data: bytes, expected: str | None) -> None:
    """Refuse model bytes whose SHA-256 differs from the manifest's."""
    if expected is None:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise ModelLoadError(
            f"{path}: SHA-256 is {actual} but {MANIFEST_FILE} says {expected.lower()}; the "
            f"file is incomplete or was replaced. If the new file is intended, regenerate "
            f"the manifest (for the example models: python scripts/make_models.py)"
        )


def read_manifest(path: Path) -> Manifest:
    """Read and validate one manifest file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read manifest {path}: {exc}") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ModelLoadError(f"{path}: manifest is not valid UTF-8 JSON: {exc}") from exc
    return _parse_manifest(path, raw)


def _parse_manifest(path: Path, raw: object) -> Manifest:
    """Validate a decoded manifest; messages name the file and the field."""
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path}: manifest must be a JSON object, got {_kind(raw)}")
    unknown = sorted(set(raw) - set(Manifest.__annotations__))
    if unknown:
        raise ModelLoadError(
            f"{path}: unknown manifest field(s) {unknown}; "
            f"expected any of {sorted(Manifest.__annotations__)}"
        )
    fields = {k: v for k, v in raw.items() if v is not None}
    manifest: Manifest = {}
    if "features" in fields:
        manifest["features"] = _names_field(path, "features", fields["features"])
    if "labels" in fields:
        manifest["labels"] = _names_field(path, "labels", fields["labels"])
    if "inputs" in fields:
        manifest["inputs"] = _tensors_field(path, "inputs", fields["inputs"])
    if "outputs" in fields:
        manifest["outputs"] = _tensors_field(path, "outputs", fields["outputs"])
    if "probability_output" in fields:
        manifest["probability_output"] = _text_field(path, "probability_output", fields)
    if "description" in fields:
        manifest["description"] = _text_field(path, "description", fields)
    if "sha256" in fields:
        manifest["sha256"] = _sha256_field(path, fields["sha256"])
    if "n_features" in fields:
        manifest["n_features"] = _count_field(path, fields["n_features"], manifest)
    for key in ("source", "converter", "parity"):
        if key in fields:
            manifest[key] = _object_field(path, key, fields[key])
    if "serving" in fields:
        manifest["serving"] = _serving_field(path, fields["serving"])
    if "defaults" in fields:
        manifest["defaults"] = _defaults_field(path, fields["defaults"])
    return manifest


def _defaults_field(path: Path, value: object) -> dict[str, str | int | float | bool]:
    """Validate ``defaults``: an object of names to one JSON string, number or boolean."""
    if not isinstance(value, dict):
        raise ModelLoadError(
            f"{path}: manifest field 'defaults' must be a JSON object of input names to "
            f'values (e.g. {{"country": "unknown"}}), got {_kind(value)}'
        )
    for name, item in value.items():
        if not name or not isinstance(item, str | int | float | bool):
            raise ModelLoadError(
                f"{path}: manifest field 'defaults' must map each input name to one string, "
                f"number or boolean, got {name!r}: {_kind(item)}"
            )
    return dict(value)


def _serving_field(path: Path, value: object) -> Serving:
    """Validate ``serving``: an object of the known settings, each in range."""
    known = sorted(Serving.__annotations__)
    if not isinstance(value, dict):
        raise ModelLoadError(
            f"{path}: manifest field 'serving' must be a JSON object with any of {known}, "
            f"got {_kind(value)}"
        )
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ModelLoadError(
            f"{path}: unknown serving setting(s) {unknown}; expected any of {known}"
        )
    serving: Serving = {}
    for key, least in (("max_batch_size", 1), ("intra_op_threads", 0)):
        setting = value.get(key)
        if setting is None:
            continue
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < least:
            raise ModelLoadError(
                f"{path}: serving setting {key!r} must be an integer >= {least}, "
                f"got {_kind(setting)}"
            )
        serving[key] = setting  # type: ignore[literal-required]
    wait = value.get("max_wait_ms")
    if wait is not None:
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < 1e6:
            raise ModelLoadError(
                f"{path}: serving setting 'max_wait_ms' must be a number of milliseconds "
                f">= 0 (and under 1,000,000), got {_kind(wait)}"
            )
        serving["max_wait_ms"] = float(wait)
    return serving


def _names_field(path: Path, field: str, value: object) -> list[str]:
    """Validate a non-empty list of distinct non-empty strings."""
    expected = f"{path}: manifest field {field!r} must be a non-empty list of distinct strings"
    if not isinstance(value, list) or not value:
        raise ModelLoadError(f"{expected}, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ModelLoadError(f"{expected}, got {_kind(item)} at index {i}")
    if len(set(value)) != len(value):
        duplicates = sorted({v for v in value if value.count(v) > 1})
        raise ModelLoadError(f"{expected}, got duplicates {duplicates}")
    return list(value)


def _tensors_field(path: Path, field: str, value: object) -> list[TensorSpec]:
    """Validate a recorded signature: a non-empty list of {name, datatype, shape}."""
    expected = (
        f"{path}: manifest field {field!r} must be a non-empty list of objects "
        '{"name": string, "datatype": one of ' + ", ".join(DATATYPES) + ', "shape": '
        "[sizes of one row, -1 for any]}"
    )
    if not isinstance(value, list) or not value:
        raise ModelLoadError(f"{expected}, got {_kind(value)}")
    tensors = []
    for i, item in enumerate(value):
        if (
            not isinstance(item, dict)
            or set(item) != {"name", "datatype", "shape"}
            or not isinstance(item["name"], str)
            or not item["name"]
            or item["datatype"] not in DATATYPES
            or not isinstance(item["shape"], list)
            or not all(type(d) is int and d >= -1 for d in item["shape"])
        ):
            raise ModelLoadError(f"{expected}; item {i} is {json.dumps(item)[:120]}")
        shape = tuple(None if d == -1 else d for d in item["shape"])
        tensors.append(TensorSpec(item["name"], item["datatype"], shape))
    return tensors


def _text_field(path: Path, field: str, fields: dict[str, object]) -> str:
    """Validate a non-empty string field."""
    value = fields[field]
    if not isinstance(value, str) or not value:
        raise ModelLoadError(
            f"{path}: manifest field {field!r} must be a non-empty string, got {_kind(value)}"
        )
    return value


def _sha256_field(path: Path, value: object) -> str:
    """Validate a SHA-256 hex digest."""
    if not isinstance(value, str) or _SHA256.fullmatch(value) is None:
        raise ModelLoadError(
            f"{path}: manifest field 'sha256' must be 64 hex digits, got {_kind(value)}"
        )
    return value.lower()


def _count_field(path: Path, value: object, manifest: Manifest) -> int:
    """Validate ``n_features``: an integer >= 1 that agrees with ``features`` if present."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(
            f"{path}: manifest field 'n_features' must be an integer >= 1, got {_kind(value)}"
        )
    features = manifest.get("features")
    if features is not None and len(features) != value:
        raise ModelLoadError(
            f"{path}: manifest field 'n_features' is {value} but 'features' lists "
            f"{len(features)} names; make them agree"
        )
    return value


def _object_field(path: Path, field: str, value: object) -> dict[str, object]:
    """Validate a free-form record: a JSON object, kept as written."""
    if not isinstance(value, dict):
        raise ModelLoadError(
            f"{path}: manifest field {field!r} must be a JSON object, got {_kind(value)}"
        )
    return dict(value)


def _kind(value: object) -> str:
    """Describe a JSON value's kind for error messages, quoting short strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" if value else "an empty string"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
