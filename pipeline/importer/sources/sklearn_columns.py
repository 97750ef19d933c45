"""scikit-learn pipelines that pick their columns by name: one typed ONNX input per column.

A `ColumnTransformer` fitted on a pandas DataFrame selects columns by name, so it cannot
be converted with the single float matrix input a vector model has (skl2onnx: "Unable to
find column name 'amount' among names ['features']"). Such a pipeline becomes a model
with one input per column of `feature_names_in_`, each of per-row shape ``[1]``: a string
(``BYTES``) where an encoder of the transformer was fitted on strings (its
``categories_`` hold objects), a float32 (``FP32``) otherwise. The source runs on a
DataFrame of the same columns for the parity check.

A text pipeline (a `CountVectorizer` or `TfidfVectorizer` first) takes one string input
of per-row shape ``[1]``, named by the single ``--features`` name or ``text``; its
lowercasing runs with a locale ONNX Runtime has (`pipeline.importer.locales`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.engine.signature import Feed, TensorSpec
from pipeline.errors import ConfigError
from pipeline.importer.extras import require
from pipeline.importer.locales import string_locale
from pipeline.importer.source import Outputs, SourceOptions

__all__ = ["TEXT_INPUT", "converter_options", "initial_types", "named_inputs", "run_on_columns"]

TEXT_INPUT = "text"
"""A text pipeline's input name unless ``--features`` names it."""

_PURPOSE = "importing a scikit-learn pipeline over named columns"


def named_inputs(estimator: Any, options: SourceOptions) -> tuple[TensorSpec, ...] | None:
    """A text pipeline's string input, or one input per column of a ColumnTransformer
    fitted on a DataFrame; None for any other estimator (a vector model).

    Raises:
        ConfigError: ``--features`` names more than one input of a text pipeline.
    """
    if _text_vectorizer(estimator) is None:
        return column_inputs(estimator)
    names = options.feature_names or (TEXT_INPUT,)
    if len(names) != 1:
        raise ConfigError(
            f"a text pipeline takes one string input; --features names {len(names)} "
            f"({', '.join(names[:5])}); name one, or leave it out for {TEXT_INPUT!r}"
        )
    return (TensorSpec(names[0], "BYTES", (1,)),)


def converter_options(estimator: Any) -> dict[int, dict[str, object]]:
    """skl2onnx options for the steps that need them: a text vectorizer's locale."""
    vectorizer = _text_vectorizer(estimator)
    return {} if vectorizer is None else {id(vectorizer): {"locale": string_locale()}}


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
    what scikit-learn computes in), or a text pipeline on its strings; keys are the ONNX
    outputs `names`."""
    if _text_vectorizer(estimator) is not None:
        (column,) = feed.values()
        return _predict(estimator, names, proba, [str(v) for v in column[:, 0]])
    pandas = require("pandas", extra="sklearn", purpose=_PURPOSE)
    frame = pandas.DataFrame(
        {
            name: column[:, 0] if column.dtype == object else column[:, 0].astype(np.float64)
            for name, column in feed.items()
        }
    )
    return _predict(estimator, names, proba, frame)


def _predict(estimator: Any, names: list[str], proba: bool, data: Any) -> Outputs:
    """predict (and predict_proba) on `data`, keyed by the ONNX outputs `names`."""
    outputs = {names[0]: np.asarray(estimator.predict(data))}
    if proba:
        outputs[names[1]] = np.asarray(estimator.predict_proba(data))
    return outputs


def _first_step(estimator: Any) -> Any:
    """A pipeline's first step, or the estimator itself."""
    steps = getattr(estimator, "steps", None)
    return steps[0][1] if steps else estimator


def _text_vectorizer(estimator: Any) -> Any:
    """The first step if it is a CountVectorizer (TfidfVectorizer is one), else None."""
    text = require("sklearn.feature_extraction.text", extra="sklearn", purpose=_PURPOSE)
    first = _first_step(estimator)
    return first if isinstance(first, text.CountVectorizer) else None


def _column_transformer(estimator: Any) -> Any:
    """The estimator if it is a ColumnTransformer, else a pipeline's first step if that is."""
    compose = require("sklearn.compose", extra="sklearn", purpose=_PURPOSE)
    first = _first_step(estimator)
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
