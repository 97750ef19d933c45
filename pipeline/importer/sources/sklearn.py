"""scikit-learn estimators and pipelines saved with joblib or pickle, converted with skl2onnx.

Loading a pickle (joblib files are pickles too) runs whatever code the file names, so
it is refused unless the caller says the file is trusted (``--trust-pickle``).
A pipeline that starts with a ColumnTransformer fitted on a DataFrame takes one typed
input per column instead of one float matrix (`pipeline.importer.sources.sklearn_columns`).
Classifiers are converted without ZipMap: ``label`` is a tensor of classes and
``probabilities`` a float32 matrix with one column per class, like the example models.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, ModelError
from pipeline.importer.extras import require
from pipeline.importer.onnxgraph import finish, opsets
from pipeline.importer.source import Converted, Outputs, Rows, SourceOptions, first_line
from pipeline.importer.sources.sklearn_columns import (
    converter_options,
    initial_types,
    named_inputs,
    run_on_columns,
)

__all__ = ["OPSET", "convert_pickle", "load_trusted_pickle"]

OPSET = {"": 17, "ai.onnx.ml": 3}
"""Opsets asked of skl2onnx; the same as the example models'."""

INPUT_NAME = "features"
_PURPOSE = "importing a scikit-learn model"


def load_trusted_pickle(path: Path, options: SourceOptions) -> Any:
    """Load a joblib or pickle file, but only when the caller trusts it.

    Raises:
        ConfigError: `options.trust_pickle` is not set.
        MissingExtraError: joblib is not installed.
        ModelError: the file cannot be unpickled.
    """
    if not options.trust_pickle:
        raise ConfigError(
            f"{path} is a pickle: loading it runs any code it contains. Import it only if "
            f"you trust where it came from, and then pass --trust-pickle"
        )
    joblib = require("joblib", extra="sklearn", purpose=_PURPOSE)
    try:
        return joblib.load(path)  # joblib reads plain pickles as well as its own files
    except Exception as exc:  # unpickling raises anything the pickled code raises
        raise ModelError(f"cannot unpickle {path}: {first_line(exc)}") from exc


def convert_pickle(path: Path, options: SourceOptions) -> Converted:
    """Convert the scikit-learn estimator or pipeline pickled in `path`.

    Raises:
        ConfigError: `options.trust_pickle` is not set.
        MissingExtraError: scikit-learn, skl2onnx or joblib is not installed.
        ModelError: the file holds no fitted estimator, or skl2onnx cannot convert it.
    """
    sklearn_base = require("sklearn.base", extra="sklearn", purpose=_PURPOSE)
    skl2onnx = require("skl2onnx", extra="sklearn", purpose=_PURPOSE)
    estimator = load_trusted_pickle(path, options)
    inputs = named_inputs(_fitted(path, estimator), options)
    width = len(inputs) if inputs is not None else _n_features(path, estimator, options)
    classifier = bool(sklearn_base.is_classifier(estimator))
    types = initial_types(inputs) if inputs else [(INPUT_NAME, _float_matrix(width))]
    proto = _to_onnx(skl2onnx, path, estimator, types, classifier)
    labels = _labels(estimator, options) if classifier else options.labels
    description = f"{type(estimator).__name__} imported from {path.name}"
    sklearn = require("sklearn", extra="sklearn", purpose=_PURPOSE)
    return Converted(
        onnx=finish(proto, description=description),
        reference=_reference_for(estimator, classifier, proto, columns=inputs is not None),
        n_features=width,
        feature_names=_feature_names(estimator, options),
        inputs=inputs,
        sample_required=inputs is not None,  # categories and texts cannot be made up
        labels=labels,
        probability_output=_probability_output(estimator, classifier, proto),
        source={
            "framework": "scikit-learn",
            "framework_version": sklearn.__version__,
            "format": "pickle",
            "estimator": _estimator_name(estimator),
        },
        converter={"name": "skl2onnx", "version": skl2onnx.__version__, "opset": opsets(proto)},
        description=description,
    )


def _final_step(estimator: Any) -> Any:
    """The last step of a pipeline, or the estimator itself."""
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def _estimator_name(estimator: Any) -> str:
    """``Pipeline(StandardScaler, LogisticRegression)`` or the class name."""
    steps = getattr(estimator, "steps", None)
    if not steps:
        return type(estimator).__name__
    return f"{type(estimator).__name__}({', '.join(type(s).__name__ for _, s in steps)})"


def _fitted(path: Path, estimator: Any) -> Any:
    """`estimator`, after refusing an object that is not an estimator or pipeline."""
    if not callable(getattr(estimator, "predict", None)):
        raise ModelError(
            f"{path} must hold a fitted scikit-learn estimator or pipeline (something with "
            f"predict), got {type(estimator).__module__}.{type(estimator).__name__}"
        )
    return estimator


def _n_features(path: Path, estimator: Any, options: SourceOptions) -> int:
    """The fitted estimator's feature count."""
    width = getattr(estimator, "n_features_in_", None)
    if isinstance(width, int | np.integer):
        return int(width)
    if options.feature_names:
        return len(options.feature_names)
    raise ModelError(
        f"{path}: {type(estimator).__name__} does not say how many features it takes "
        f"(no n_features_in_; is it fitted?); pass --features to name the columns"
    )


def _feature_names(estimator: Any, options: SourceOptions) -> tuple[str, ...] | None:
    """Names the estimator was fitted with (from a DataFrame), else the caller's."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and options.feature_names is None:
        return tuple(str(n) for n in names)
    return options.feature_names


def _labels(estimator: Any, options: SourceOptions) -> tuple[str, ...]:
    """Class labels in probability-column order: the caller's, else ``classes_``."""
    classes = [str(c) for c in getattr(estimator, "classes_", [])]
    if options.labels is None:
        return tuple(classes)
    if len(options.labels) != len(classes):
        raise ModelError(
            f"--labels lists {len(options.labels)} labels but the classifier has "
            f"{len(classes)} classes {classes}; give one label per class, in that order"
        )
    return options.labels


def _float_matrix(width: int) -> Any:
    """skl2onnx's type of a vector model's input: float32 [rows, width]."""
    from skl2onnx.common.data_types import FloatTensorType

    return FloatTensorType([None, width])


def _to_onnx(
    skl2onnx: ModuleType,
    path: Path,
    estimator: Any,
    types: list[tuple[str, Any]],
    classifier: bool,
) -> Any:
    """Run skl2onnx on `types` (its ``initial_types``), tensor outputs (no ZipMap) for
    classifiers."""
    options = converter_options(estimator)
    if classifier:
        options[id(_final_step(estimator))] = {"zipmap": False}
    try:
        return skl2onnx.convert_sklearn(
            estimator,
            name=path.stem,
            initial_types=types,
            options=options or None,
            target_opset=OPSET,
        )
    except Exception as exc:  # skl2onnx raises RuntimeError, ValueError, its own errors
        raise ModelError(
            f"skl2onnx cannot convert {_estimator_name(estimator)} from {path}: {first_line(exc)}"
        ) from exc


def _probability_output(estimator: Any, classifier: bool, proto: Any) -> str | None:
    """skl2onnx's second classifier output, when the estimator has probabilities."""
    if not classifier or not callable(getattr(estimator, "predict_proba", None)):
        return None
    return str(proto.graph.output[1].name)


def _reference_for(estimator: Any, classifier: bool, proto: Any, *, columns: bool) -> Any:
    """The parity reference: on float32 rows, or on a feed of named columns."""
    if not columns:
        return lambda rows: _reference(estimator, classifier, proto, rows)
    names = [str(o.name) for o in proto.graph.output]
    proba = _probability_output(estimator, classifier, proto) is not None
    return lambda feed: run_on_columns(estimator, names, proba, feed)


def _reference(estimator: Any, classifier: bool, proto: Any, rows: Rows) -> Outputs:
    """Run the estimator; keys follow the ONNX outputs (label, probabilities / variable).

    A classifier without ``predict_proba`` is compared on its labels only.
    """
    names = [str(o.name) for o in proto.graph.output]
    x = rows.astype(np.float64)  # what scikit-learn computes in; the values are the same
    outputs = {names[0]: np.asarray(estimator.predict(x))}
    if _probability_output(estimator, classifier, proto) is not None:
        outputs[names[1]] = np.asarray(estimator.predict_proba(x))
    return outputs
