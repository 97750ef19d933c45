"""One converter per source framework, and the guess of which one a path needs.

| framework    | what SRC is                               | converter   | extra        |
| ------------ | ----------------------------------------- | ----------- | ------------ |
| `tensorflow` | a SavedModel directory (saved_model.pb)   | tf2onnx     | `tensorflow` |
| `keras`      | a `.keras` file                           | tf2onnx     | `tensorflow` |
| `sklearn`    | a `.joblib`, `.pkl` or `.pickle` file     | skl2onnx    | `sklearn`    |
| `xgboost`    | a `.json` or `.ubj` XGBoost model file    | onnxmltools | `boosting`   |
| `lightgbm`   | a LightGBM text model file (`.txt`)       | onnxmltools | `boosting`   |
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.importer.source import Converted, SourceOptions

__all__ = ["FRAMEWORKS", "convert", "detect_framework"]

FRAMEWORKS = ("keras", "lightgbm", "sklearn", "tensorflow", "xgboost")

_SUFFIXES = {
    ".keras": "keras",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".json": "xgboost",
    ".ubj": "xgboost",
    ".txt": "lightgbm",
}


def detect_framework(path: Path) -> str:
    """Guess the framework of the model at `path` from what it is.

    Raises:
        ConfigError: `path` does not exist, or is nothing this importer knows.
    """
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "tensorflow"
        raise ConfigError(
            f"{path} is a directory without saved_model.pb; expected a TensorFlow SavedModel "
            f"directory or a model file"
        )
    if not path.is_file():
        raise ConfigError(f"model source {path} does not exist")
    framework = _SUFFIXES.get(path.suffix.lower())
    if framework is None:
        raise ConfigError(
            f"cannot tell the framework of {path} from its suffix {path.suffix!r}; expected "
            f"one of {sorted(_SUFFIXES)} or a SavedModel directory, or pass --framework "
            f"({', '.join(FRAMEWORKS)})"
        )
    return framework


def convert(path: Path, options: SourceOptions) -> tuple[str, Converted]:
    """Convert the model at `path` to ONNX with its framework's converter.

    Returns:
        The framework used and the converted model.

    Raises:
        ConfigError: the framework is unknown, or a pickle is not trusted.
        MissingExtraError: the framework's extra is not installed.
        ModelError: the source cannot be loaded or converted.
    """
    framework = options.framework or detect_framework(path)
    if framework not in FRAMEWORKS:
        raise ConfigError(f"--framework must be one of {', '.join(FRAMEWORKS)}, got {framework!r}")
    return framework, _converter(framework)(path, options)


def _converter(framework: str) -> Callable[[Path, SourceOptions], Converted]:
    """The converter function of `framework`, its heavy imports deferred until now."""
    if framework in ("tensorflow", "keras"):
        from pipeline.importer.sources import tensorflow

        return (
            tensorflow.convert_saved_model
            if framework == "tensorflow"
            else tensorflow.convert_keras
        )
    if framework == "sklearn":
        from pipeline.importer.sources import sklearn

        return sklearn.convert_pickle
    from pipeline.importer.sources import boosting

    return boosting.convert_xgboost if framework == "xgboost" else boosting.convert_lightgbm
