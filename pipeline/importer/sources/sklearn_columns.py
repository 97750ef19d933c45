"""scikit-learn pipelines that pick their columns by name: one typed ONNX input per column.

A `ColumnTransformer` fitted on a pandas DataFrame selects columns by name, so it cannot
be converted with the single float matrix input a vector model has (skl2onnx: "Unable to
find column name 'amount' among names ['features']"). Such a pipeline becomes a model
with one input per column of `feature_names_in_`, each of per-row shape ``[1]``: a string
(``BYTES``) where an encoder of the transformer was fitted on strings (its
``categories_`` hold objects), a float32 (``FP32``) otherwise. The source runs on a
DataFrame of the same columns for the parity check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.engine.signature import Feed, TensorSpec
from pipeline.importer.extras import require
from pipeline.importer.source import Outputs

__all__ = ["column_inputs", "initial_types", "run_on_columns"]

_PURPOSE = "importing a scikit-learn pipeline over named columns"


def column_inputs(estimator: Any) -> tuple[TensorSpec, ...] | None:
    """One input per named column if `estimator` starts with a fitted `ColumnTransformer`
    over a DataFrame; None for any other estimator (a vector model)."""
    transformer = _column_transformer(estimator)
    names = getattr(transformer, "feature_names_in_", None)
    if transformer is None or names is None:
        return None
    columns = [str(n) for n in names]
    strings = set(_string_columns(transformer, columns))
    return tuple(TensorSpec(n, "BYTES" if n in strings else "FP32", (1,)) for n in columns)


def initial_types(inputs: tuple[TensorSpec, ...]) -> list[tuple[str, Any]]:
    """skl2onnx's ``initial_types``: a [None, 1] string or float tensor per column."""
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    return [
        (s.name, (StringTensorType if s.datatype == "BYTES" else FloatTensorType)([None, 1]))
        for s in inputs
    ]


def run_on_columns(estimator: Any, names: list[str], proba: bool, feed: Feed) -> Outputs:
    """Run the source pipeline on a DataFrame of the feed's columns (numbers as float64,
    what scikit-learn computes in); keys are the ONNX outputs `names`."""
    pandas = require("pandas", extra="sklearn", purpose=_PURPOSE)
    frame = pandas.DataFrame(
        {
            name: column[:, 0] if column.dtype == object else column[:, 0].astype(np.float64)
            for name, column in feed.items()
        }
    )
    outputs = {names[0]: np.asarray(estimator.predict(frame))}
    if proba:
        outputs[names[1]] = np.asarray(estimator.predict_proba(frame))
    return outputs


def _column_transformer(estimator: Any) -> Any:
    """The estimator if it is a ColumnTransformer, else a pipeline's first step if that is."""
    compose = require("sklearn.compose", extra="sklearn", purpose=_PURPOSE)
    steps = getattr(estimator, "steps", None)
    first = steps[0][1] if steps else estimator
    return first if isinstance(first, compose.ColumnTransformer) else None


def _string_columns(transformer: Any, columns: list[str]) -> Iterator[str]:
    """The columns an encoder inside `transformer` was fitted on as strings."""
    for _, part, selected in getattr(transformer, "transformers_", []):
        encoder = _encoder(part)
        if encoder is None:
            continue
        chosen = [columns[c] if isinstance(c, int | np.integer) else str(c) for c in selected]
        for name, categories in zip(chosen, encoder.categories_, strict=False):
            if np.asarray(categories).dtype == object:
                yield name


def _encoder(part: Any) -> Any:
    """`part` or the step of a sub-pipeline `part` that has ``categories_`` (an encoder)."""
    for step in [part, *(s for _, s in getattr(part, "steps", []))]:
        if hasattr(step, "categories_"):
            return step
    return None
