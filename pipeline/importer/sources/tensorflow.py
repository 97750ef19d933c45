"""TensorFlow SavedModel directories and Keras ``.keras`` files, converted with tf2onnx.

A SavedModel is loaded with its tag set (``serve``) and one signature
(``serving_default`` unless told otherwise). A signature that takes one float32 matrix
[rows, features] becomes a vector model; any other keeps every input, typed
(`pipeline.importer.sources.tensorflow_inputs`), and parity feeds each input its own
array. A ``.keras`` file is loaded with Keras in safe mode (no
arbitrary Python code) and exported to a temporary SavedModel first, so both take the
same conversion path; parity for it is measured against the Keras model itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from pipeline.errors import ModelError
from pipeline.importer.extras import require
from pipeline.importer.onnxgraph import finish, opsets
from pipeline.importer.source import Converted, Feed, Outputs, Rows, SourceOptions, first_line
from pipeline.importer.sources.tensorflow_inputs import (
    SignatureInputs,
    in_graph_order,
    signature_inputs,
)

__all__ = ["OPSET", "convert_keras", "convert_saved_model"]

OPSET = 17
"""ONNX opset asked of tf2onnx; the same as the example models'."""

_PURPOSE = "importing a TensorFlow or Keras model"


def _tensorflow() -> tuple[ModuleType, ModuleType]:
    """Import TensorFlow (quietly) and tf2onnx, or name the extra that installs them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = require("tensorflow", extra="tensorflow", purpose=_PURPOSE)
    tf2onnx = require("tf2onnx", extra="tensorflow", purpose=_PURPOSE)
    for name in ("tensorflow", "tf2onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return tf, tf2onnx


def convert_saved_model(path: Path, options: SourceOptions) -> Converted:
    """Convert the SavedModel directory `path`; parity runs its own signature.

    Raises:
        MissingExtraError: TensorFlow or tf2onnx is not installed.
        ModelError: the SavedModel cannot be loaded, has no such tag or signature, an
            input of its signature is not one the engine serves, or tf2onnx fails.
    """
    tf, _ = _tensorflow()
    function = _signature(tf, path, options)
    inputs = signature_inputs(path, options, function)

    def reference(rows: Rows | Feed) -> Outputs:
        result = function(**{k: tf.constant(v) for k, v in inputs.feed(rows).items()})
        return {str(k): np.asarray(v) for k, v in result.items()}

    source = {"framework": "tensorflow", "framework_version": tf.__version__}
    source |= {"format": "saved_model", "tag": options.tag, "signature": options.signature}
    return _converted(path, options, inputs, reference, source, origin=path)


def convert_keras(path: Path, options: SourceOptions) -> Converted:
    """Convert the Keras file `path` (through a temporary SavedModel export).

    Raises:
        MissingExtraError: TensorFlow, Keras or tf2onnx is not installed.
        ModelError: Keras cannot load the file, or the model cannot be exported or
            converted.
    """
    tf, _ = _tensorflow()
    keras = require("keras", extra="tensorflow", purpose=_PURPOSE)
    try:
        model = keras.saving.load_model(str(path), safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError...
        raise ModelError(f"Keras cannot load {path}: {first_line(exc)}") from exc
    with _exported(model, path) as exported:
        exported_options = replace(options, tag="serve", signature="serving_default")
        function = _signature(tf, exported, exported_options)
        inputs = signature_inputs(path, options, function)
        names = sorted((str(k) for k in function.structured_outputs), key=lambda n: (len(n), n))

        def reference(rows: Rows | Feed) -> Outputs:
            result = model(rows, training=False)  # a feed by the Keras inputs' names
            values = list(result.values()) if isinstance(result, dict) else result
            flat = values if isinstance(values, list | tuple) else [values]
            return {n: np.asarray(v) for n, v in zip(names, flat, strict=True)}

        source = {"framework": "keras", "framework_version": keras.__version__}
        source |= {"tensorflow_version": tf.__version__, "format": "keras"}
        return _converted(exported, exported_options, inputs, reference, source, origin=path)


@contextlib.contextmanager
def _exported(model: Any, path: Path) -> Iterator[Path]:
    """Export a Keras model to a SavedModel in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pipeline-keras-") as tmp:
        target = Path(tmp) / "saved_model"
        try:
            model.export(str(target), format="tf_saved_model", verbose=False)
        except Exception as exc:  # Keras raises many kinds when tracing fails
            raise ModelError(
                f"Keras cannot export {path} as a SavedModel for conversion: {first_line(exc)}"
            ) from exc
        yield target


def _signature(tf: ModuleType, path: Path, options: SourceOptions) -> Any:
    """Load the SavedModel and return the signature function `options` names."""
    try:
        loaded = tf.saved_model.load(str(path), tags=[options.tag])
    except Exception as exc:  # TensorFlow raises its own error classes
        raise ModelError(
            f"TensorFlow cannot load the SavedModel {path} with tag {options.tag!r}: "
            f"{first_line(exc)}; pass --tag if it was saved with another tag set"
        ) from exc
    signatures = dict(loaded.signatures)
    if options.signature not in signatures:
        raise ModelError(
            f"SavedModel {path} has no signature {options.signature!r}; it has "
            f"{sorted(signatures) or 'none'}: pass one of them with --signature"
        )
    return signatures[options.signature]


def _converted(
    path: Path,
    options: SourceOptions,
    signature: SignatureInputs,
    reference: Callable[[Any], Outputs],
    source: dict[str, object],
    *,
    origin: Path,
) -> Converted:
    """Run tf2onnx on the SavedModel `path` (made from `origin`) and describe the result."""
    _, tf2onnx = _tensorflow()
    from tf2onnx import tf_loader  # a submodule, importable once tf2onnx is

    try:
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(path), None, None, tag=options.tag, signatures=[options.signature],
            return_tensors_to_rename=True,
        )  # fmt: skip
        proto, _ = tf2onnx.convert.from_graph_def(
            graph_def, input_names=inputs, output_names=outputs, opset=OPSET,
            tensors_to_rename=renames,
        )  # fmt: skip
    except Exception as exc:  # tf2onnx raises ValueError, KeyError... for unsupported ops
        raise ModelError(
            f"tf2onnx cannot convert {origin} (signature {options.signature!r}): {first_line(exc)}"
        ) from exc
    description = f"{source['framework']} model imported from {origin.name}"
    return Converted(
        onnx=finish(proto, description=description),
        reference=reference,
        n_features=signature.width,
        feature_names=options.feature_names if signature.specs is None else None,
        labels=options.labels,
        probability_output=_probability_output(proto, options.labels),
        source=source,
        converter={"name": "tf2onnx", "version": tf2onnx.__version__, "opset": opsets(proto)},
        description=description,
        inputs=None if signature.specs is None else in_graph_order(origin, signature.specs, proto),
    )


def _probability_output(proto: Any, labels: tuple[str, ...] | None) -> str | None:
    """The one output with a column per label, when labels were given."""
    if labels is None:
        return None
    fits = [
        str(o.name)
        for o in proto.graph.output
        if len(o.type.tensor_type.shape.dim) == 2
        and o.type.tensor_type.shape.dim[1].dim_value == len(labels)
    ]
    if len(fits) != 1:
        raise ModelError(
            f"--labels lists {len(labels)} labels, so exactly one output must be a matrix "
            f"with {len(labels)} columns (the class probabilities); found {len(fits)}"
        )
    return fits[0]
