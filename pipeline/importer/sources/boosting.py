"""XGBoost and LightGBM boosters in their native formats, converted with onnxmltools.

XGBoost: a ``.json`` or ``.ubj`` model file (``Booster.save_model``). LightGBM: a text
model file (``Booster.save_model``). Neither is a pickle, so neither runs code on load.
Binary and multi-class classifiers get tensor outputs ``label`` and ``probabilities``
(one column per class, no ZipMap); regressors get ``variable``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.importer.extras import require
from pipeline.importer.onnxgraph import finish, opsets
from pipeline.importer.source import Converted, Outputs, Rows, SourceOptions, first_line

__all__ = ["OPSET", "convert_lightgbm", "convert_xgboost"]

OPSET = 15
"""ONNX opset asked of onnxmltools: 1.16 converts boosters up to opset 15."""

INPUT_NAME = "features"
_PURPOSE = "importing an XGBoost or LightGBM model"


def convert_xgboost(path: Path, options: SourceOptions) -> Converted:
    """Convert the XGBoost model file `path` (JSON or UBJSON).

    Raises:
        MissingExtraError: xgboost or onnxmltools is not installed.
        ModelError: the file is not an XGBoost model, its objective is not supported,
            or onnxmltools cannot convert it.
    """
    xgb, booster = _load_booster("xgboost", path)
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    n_classes = _xgboost_classes(path, objective, booster)

    def predict(rows: Rows) -> np.ndarray[Any, Any]:
        return np.asarray(booster.predict(xgb.DMatrix(rows)))

    names = booster.feature_names
    return _convert(
        path, options, "xgboost", xgb.__version__, booster, n_classes, predict,
        width=int(booster.num_features()), names=names, objective=objective,
    )  # fmt: skip


def convert_lightgbm(path: Path, options: SourceOptions) -> Converted:
    """Convert the LightGBM text model file `path`.

    Raises:
        MissingExtraError: lightgbm or onnxmltools is not installed.
        ModelError: the file is not a LightGBM model, its objective is not supported,
            or onnxmltools cannot convert it.
    """
    lgb, booster = _load_booster("lightgbm", path)
    objective = str(booster.dump_model(num_iteration=0).get("objective", "")).split(" ")[0]
    n_classes = _lightgbm_classes(path, objective, booster)
    width = int(booster.num_feature())
    default = [f"Column_{i}" for i in range(width)]
    names = booster.feature_name()
    return _convert(
        path, options, "lightgbm", lgb.__version__, booster, n_classes,
        lambda rows: np.asarray(booster.predict(rows.astype(np.float64))),
        width=width, names=None if names == default else names, objective=objective,
    )  # fmt: skip


def _load_booster(module: str, path: Path) -> tuple[ModuleType, Any]:
    """Import xgboost or lightgbm and load the model file `path` as its ``Booster``."""
    library = require(module, extra="boosting", purpose=_PURPOSE)
    try:
        return library, library.Booster(model_file=str(path))
    except Exception as exc:  # XGBoostError, LightGBMError
        raise ModelError(f"{module} cannot load {path}: {first_line(exc)}") from exc


def _xgboost_classes(path: Path, objective: str, booster: Any) -> int:
    """Classes of an XGBoost classifier (0 for a regressor), or refuse the objective."""
    if objective == "binary:logistic":
        return 2
    if objective == "multi:softprob":
        config = json.loads(booster.save_config())
        return int(config["learner"]["learner_model_param"]["num_class"])
    if objective.startswith("reg:"):
        return 0
    raise ModelError(
        f"{path}: XGBoost objective {objective!r} is not supported; expected "
        f"binary:logistic, multi:softprob or a reg: objective"
    )


def _lightgbm_classes(path: Path, objective: str, booster: Any) -> int:
    """Classes of a LightGBM classifier (0 for a regressor), or refuse the objective."""
    if objective == "binary":
        return 2
    if objective == "multiclass":
        return int(booster.dump_model(num_iteration=0)["num_class"])
    if objective in ("regression", "regression_l1", "huber", "fair", "quantile", "mape"):
        return 0
    raise ModelError(
        f"{path}: LightGBM objective {objective!r} is not supported; expected binary, "
        f"multiclass or a regression objective"
    )


def _convert(
    path: Path,
    options: SourceOptions,
    framework: str,
    version: str,
    booster: Any,
    n_classes: int,
    predict: Callable[[Rows], np.ndarray[Any, Any]],
    *,
    width: int,
    names: list[str] | None,
    objective: str,
) -> Converted:
    """Convert a loaded booster with onnxmltools and describe the result."""
    onnxmltools = require("onnxmltools", extra="boosting", purpose=_PURPOSE)
    proto = _to_onnx(onnxmltools, path, framework, booster, width)
    outputs = [str(o.name) for o in proto.graph.output]
    description = f"{framework} booster ({objective}) imported from {path.name}"
    feature_names = options.feature_names or (tuple(names) if names else None)
    return Converted(
        onnx=finish(proto, description=description),
        reference=lambda rows: _reference(predict(rows), n_classes, outputs),
        n_features=width,
        feature_names=feature_names,
        labels=_labels(options, n_classes),
        probability_output=outputs[1] if n_classes else None,
        source={
            "framework": framework,
            "framework_version": version,
            "format": "native",
            "objective": objective,
        },
        converter={
            "name": "onnxmltools",
            "version": onnxmltools.__version__,
            "opset": opsets(proto),
        },
        description=description,
    )


def _to_onnx(onnxmltools: ModuleType, path: Path, framework: str, booster: Any, width: int) -> Any:
    """Run onnxmltools' converter for `framework` with tensor outputs."""
    from onnxmltools.convert.common.data_types import FloatTensorType

    initial_types = [(INPUT_NAME, FloatTensorType([None, width]))]
    try:
        if framework == "xgboost":
            return onnxmltools.convert_xgboost(
                booster, name=path.stem, initial_types=initial_types, target_opset=OPSET
            )
        return onnxmltools.convert_lightgbm(
            booster, name=path.stem, initial_types=initial_types, target_opset=OPSET, zipmap=False
        )
    except Exception as exc:  # onnxmltools raises RuntimeError, ValueError, AttributeError...
        raise ModelError(f"onnxmltools cannot convert {path}: {first_line(exc)}") from exc


def _labels(options: SourceOptions, n_classes: int) -> tuple[str, ...] | None:
    """The caller's labels (one per class), else the class indices as text."""
    if n_classes == 0:
        return None
    if options.labels is None:
        return tuple(str(i) for i in range(n_classes))
    if len(options.labels) != n_classes:
        raise ModelError(
            f"--labels lists {len(options.labels)} labels but the booster has {n_classes} "
            f"classes; give one label per class, in class order"
        )
    return options.labels


def _reference(predicted: np.ndarray[Any, Any], n_classes: int, outputs: list[str]) -> Outputs:
    """Turn a booster's raw prediction into the converted model's outputs."""
    if n_classes == 0:
        return {outputs[0]: predicted}
    if predicted.ndim == 1 and n_classes == 2:  # binary: P(class 1)
        probabilities = np.stack([1.0 - predicted, predicted], axis=1)
        labels = (predicted > 0.5).astype(np.int64)
    else:
        probabilities = predicted
        labels = predicted.argmax(axis=1).astype(np.int64)
    return {outputs[0]: labels, outputs[1]: probabilities}
