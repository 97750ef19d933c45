"""What every framework's source hands the importer: ONNX bytes, a way to run the original
model on the same rows, and the facts the manifest records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.engine.signature import Feed, TensorSpec

__all__ = ["Converted", "Feed", "Outputs", "Rows", "SourceOptions", "first_line"]

Rows = np.ndarray[Any, np.dtype[np.float32]]
"""A float32 matrix [rows, features], what the worker feeds a model."""

Outputs = dict[str, np.ndarray[Any, Any]]
"""Model outputs keyed by the ONNX output they correspond to."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceOptions:
    """How to read a source model; every field has a default.

    Attributes:
        framework: Force the framework instead of guessing it from the path.
        tag: SavedModel tag set to load.
        signature: SavedModel signature to convert.
        trust_pickle: Allow loading a pickle or joblib file, which runs its code.
        labels: Class labels in probability-column order, overriding the source's.
        feature_names: Feature names in input order, when the source has none.
    """

    framework: str | None = None
    tag: str = "serve"
    signature: str = "serving_default"
    trust_pickle: bool = False
    labels: tuple[str, ...] | None = None
    feature_names: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Converted:
    """A source model converted to ONNX, with its original kept runnable for parity.

    Attributes:
        onnx: The serialized ONNX model: one float32 input [rows, features], or the
            typed inputs `inputs` lists.
        reference: Runs the source model on the sample: float32 rows (`Rows`) for a
            vector model, a `Feed` (one array per input) when `inputs` is set; its keys
            are the ONNX outputs that each result corresponds to.
        n_features: Columns one row has.
        feature_names: Feature names in input order, if known.
        labels: Class labels in probability-column order, if known.
        probability_output: The ONNX output holding class probabilities, if any.
        source: Framework, its version and the file format, for the manifest.
        converter: Converter name, version and opsets, for the manifest.
        description: One line for the manifest.
        inputs: Every input (name, datatype, per-row shape) in the graph's order for a
            model that takes named, typed inputs; None for a vector model.
        sample_required: Parity needs the caller's sample (made-up values would not be
            realistic, such as categories of string columns); otherwise seeded random
            rows of each input's datatype and shape are used when no sample is given.
    """

    onnx: bytes
    reference: Callable[[Any], Outputs] = field(repr=False)  # Rows, or a Feed with inputs
    n_features: int
    feature_names: tuple[str, ...] | None
    labels: tuple[str, ...] | None
    probability_output: str | None
    source: dict[str, object]
    converter: dict[str, object]
    description: str
    inputs: tuple[TensorSpec, ...] | None = None
    sample_required: bool = False


def first_line(exc: BaseException, limit: int = 300) -> str:
    """A converter's exception as one short line (some dump whole graphs)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "..."
