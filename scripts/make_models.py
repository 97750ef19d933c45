"""Train the example models and write them into the model store, reproducibly.

Three binary classifiers are trained on scikit-learn's bundled Wisconsin breast cancer
data set (569 rows, 30 float features, no download), and one wide one on a seeded
synthetic data set of 200 features (``make_classification``: what a model fed by a
feature store looks like, and what the benchmark's wide events need). Each is converted
to ONNX with skl2onnx: plain tensor outputs (``label`` int64, ``probabilities`` float32
with one column per class), no ZipMap, one float32 input named ``features``.

Two take named, typed inputs: ``card-fraud``, a card-payment fraud model (a
ColumnTransformer that scales ``amount`` (float64) and ``hour`` (int64) and one-hot-encodes
``country`` and ``channel`` (strings), then a logistic regression) on a seeded synthetic
set of payments, and ``ticket-topic``, a text classifier (TF-IDF, then a logistic
regression) on a seeded synthetic set of support tickets, with one string input ``text``.
Their string normaliser is given the ``C.UTF-8`` locale, which every glibc has (skl2onnx
writes ``en_US.UTF-8``, which a bare Debian lacks and ONNX Runtime then cannot load).

Each is written as ``<out>/<name>/1/model.onnx`` plus a ``model.json`` manifest that names
the features (or records the typed inputs), the labels and the probability output, and
pins the ONNX file's SHA-256.

Everything that could vary between runs is fixed (split, random states, target
opsets, ONNX header fields), so running the script twice on the same library versions
writes byte-identical files. Other library versions may train slightly different
models; regenerate the manifests together with the models.

Usage::

    python scripts/make_models.py [--out models]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from onnx import ModelProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import (
    DoubleTensorType,
    FloatTensorType,
    Int64TensorType,
    StringTensorType,
)
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

__all__ = [
    "FRAUD",
    "INPUT_NAME",
    "PROBABILITY_OUTPUT",
    "TARGET_OPSET",
    "TEXT",
    "TYPED_INPUTS",
    "VERSION",
    "WIDE",
    "build_models",
    "feature_names",
    "label_names",
    "load_data",
    "main",
    "typed_data",
    "typed_labels",
    "write_models",
]

INPUT_NAME = "features"
PROBABILITY_OUTPUT = "probabilities"
VERSION = "1"
RANDOM_STATE = 0
TEST_SIZE = 0.25
# Pinned so the graph does not change with the installed onnx's newest opset.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

DESCRIPTIONS = {
    "breast-cancer-logreg": "StandardScaler + LogisticRegression on the Wisconsin breast "
    "cancer data set (30 features).",
    "breast-cancer-mlp": "StandardScaler + MLPClassifier(64, 32) on the Wisconsin breast "
    "cancer data set (30 features).",
    "breast-cancer-gbt": "GradientBoostingClassifier (100 trees of depth 3) on the Wisconsin "
    "breast cancer data set (30 features).",
    "wide-mlp": "StandardScaler + MLPClassifier(64, 32) on a seeded synthetic data set of "
    "200 features (scikit-learn's make_classification).",
    "card-fraud": "ColumnTransformer (StandardScaler on amount and hour, OneHotEncoder on "
    "country and channel) + LogisticRegression on 4,000 seeded synthetic card payments.",
    "ticket-topic": "TfidfVectorizer + LogisticRegression on 600 seeded synthetic support "
    "tickets (billing, login, delivery).",
}
FRAUD = "card-fraud"
TEXT = "ticket-topic"
TYPED_INPUTS = {  # a typed model's inputs: name -> skl2onnx type, each one value per row
    FRAUD: {
        "amount": DoubleTensorType([None, 1]),
        "hour": Int64TensorType([None, 1]),
        "country": StringTensorType([None, 1]),
        "channel": StringTensorType([None, 1]),
    },
    TEXT: {"text": StringTensorType([None, 1])},
}
# What a row takes where an --enrich table with --enrich-missing NAME=defaults lacks the
# entity: a category the encoder never saw, which it encodes as all zeros (zeros=1).
DEFAULTS = {FRAUD: {"country": "unknown", "channel": "unknown"}}
_LOCALE = "C.UTF-8"  # what ONNX Runtime's StringNormalizer uses; present on every glibc
WIDE = "wide-mlp"
WIDE_FEATURES = 200


def load_data(name: str = "") -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Return model `name`'s whole data set as ``(X, y)``: float64 features, integer classes.

    Every model but `WIDE` uses the breast cancer data set.
    """
    if name == WIDE:
        x, y = make_classification(
            n_samples=2000,
            n_features=WIDE_FEATURES,
            n_informative=40,
            n_redundant=20,
            random_state=RANDOM_STATE,
        )
        return np.asarray(x, dtype=np.float64), np.asarray(y)
    data = load_breast_cancer()
    return np.asarray(data.data, dtype=np.float64), np.asarray(data.target)


def feature_names(name: str = "") -> list[str]:
    """Return model `name`'s feature names in column order (plain names, no spaces)."""
    if name == WIDE:
        return [f"f{i:03d}" for i in range(WIDE_FEATURES)]
    return [str(n).replace(" ", "_") for n in load_breast_cancer().feature_names]


def label_names(name: str = "") -> list[str]:
    """Return model `name`'s class labels in the order of the probability columns."""
    if name == WIDE:
        return ["negative", "positive"]
    return [str(n) for n in load_breast_cancer().target_names]


def typed_data(name: str) -> tuple[pd.DataFrame, np.ndarray[Any, Any]]:
    """Return a typed model's seeded synthetic data set: one column per input, and classes."""
    rng = np.random.default_rng(RANDOM_STATE)
    if name == FRAUD:
        n = 4000
        frame = pd.DataFrame({
            "amount": np.round(rng.lognormal(3.5, 1.0, n), 2),
            "hour": rng.integers(0, 24, n, dtype=np.int64),
            "country": rng.choice(["DE", "FR", "GB", "US", "NL", "BR"], n),
            "channel": rng.choice(["web", "pos", "app"], n),
        })  # fmt: skip
        night = (frame.hour < 5) | (frame.hour > 22)
        risk = 0.01 * frame.amount + 1.5 * night + 1.0 * (frame.country == "BR")
        risk += 0.8 * (frame.channel == "web") - 3.5
        return frame, (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(np.int64).to_numpy()
    words = {
        0: "invoice refund charged twice payment card billing price receipt overcharged",
        1: "login password reset account locked sign two-factor code email username",
        2: "parcel delivery courier tracking late package address shipped arrived",
    }
    filler = ["please", "help", "my", "the", "with", "since", "again", "urgent", "thanks"]
    texts, classes = [], []
    for i in range(600):
        topic = i % 3
        chosen = rng.choice(words[topic].split(), 3).tolist() + rng.choice(filler, 3).tolist()
        texts.append(" ".join(rng.permutation(chosen)))
        classes.append(topic)
    return pd.DataFrame({"text": texts}), np.asarray(classes, dtype=np.int64)


def typed_labels(name: str) -> list[str]:
    """Return a typed model's class labels in the order of the probability columns."""
    return ["legit", "fraud"] if name == FRAUD else ["billing", "login", "delivery"]


def _typed_estimators() -> dict[str, Any]:
    """Return the untrained typed estimators: a DataFrame in, one column per input."""
    scale_and_encode = ColumnTransformer([
        ("numbers", StandardScaler(), ["amount", "hour"]),
        ("categories", OneHotEncoder(handle_unknown="ignore"), ["country", "channel"]),
    ])  # fmt: skip
    return {
        FRAUD: Pipeline(
            [
                ("columns", scale_and_encode),
                ("classifier", LogisticRegression(max_iter=1000, random_state=RANDOM_STATE)),
            ]
        ),
        TEXT: Pipeline(
            [
                ("columns", ColumnTransformer([("tfidf", TfidfVectorizer(), "text")])),
                ("classifier", LogisticRegression(max_iter=1000, random_state=RANDOM_STATE)),
            ]
        ),
    }


def _estimators() -> dict[str, Any]:
    """Return the untrained estimators, keyed by model name."""
    return {
        "breast-cancer-logreg": make_pipeline(
            StandardScaler(), LogisticRegression(max_iter=1000, random_state=RANDOM_STATE)
        ),
        "breast-cancer-mlp": make_pipeline(
            StandardScaler(),
            MLPClassifier(
                hidden_layer_sizes=(64, 32),
                max_iter=2000,
                early_stopping=False,
                random_state=RANDOM_STATE,
            ),
        ),
        # HistGradientBoostingClassifier would be the modern choice, but skl2onnx 1.20
        # cannot convert it from scikit-learn 1.9 (its `missing_go_to_left` flags are
        # booleans that onnx rejects), so the classic estimator it converts is used.
        "breast-cancer-gbt": GradientBoostingClassifier(
            n_estimators=100, max_depth=3, random_state=RANDOM_STATE
        ),
        WIDE: make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=500, random_state=RANDOM_STATE),
        ),
    }


def _final_step(model: Any) -> Any:
    """Return the classifier inside `model` (the last pipeline step, or itself)."""
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


def _to_onnx(name: str, model: Any) -> bytes:
    """Convert a fitted classifier to deterministic ONNX bytes with tensor outputs."""
    if name in TYPED_INPUTS:
        initial_types = list(TYPED_INPUTS[name].items())
    else:
        initial_types = [(INPUT_NAME, FloatTensorType([None, len(feature_names(name))]))]
    onx: ModelProto = convert_sklearn(
        model,
        name=name,
        initial_types=initial_types,
        options={id(_final_step(model)): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    for node in onx.graph.node:
        if node.op_type == "StringNormalizer":
            node.attribute.append(helper.make_attribute("locale", _LOCALE))
    onx.doc_string = DESCRIPTIONS[name]
    onx.graph.doc_string = ""
    onx.model_version = int(VERSION)
    # skl2onnx collects opset imports in a set, whose order follows Python's per-process
    # string hash seed; sort them so the bytes do not depend on PYTHONHASHSEED.
    opsets = sorted(onx.opset_import, key=lambda o: (o.domain, o.version))
    del onx.opset_import[:]
    onx.opset_import.extend(opsets)
    blob: bytes = onx.SerializeToString(deterministic=True)
    return blob


def build_models() -> dict[str, tuple[Any, bytes]]:
    """Train every example model and convert it to ONNX.

    Training uses a fixed, stratified 75/25 split of the data set and fixed random
    states, so the result depends only on the installed library versions.

    Returns:
        Model name -> (fitted scikit-learn estimator, ONNX model bytes).
    """
    built: dict[str, tuple[Any, bytes]] = {}
    for name, model in _estimators().items():
        built[name] = _trained(name, model, *load_data(name))
    for name, model in _typed_estimators().items():
        built[name] = _trained(name, model, *typed_data(name))
    return built


def _trained(name: str, model: Any, x: Any, y: np.ndarray[Any, Any]) -> tuple[Any, bytes]:
    """Fit `model` on the fixed, stratified 75% of (x, y) and convert it to ONNX."""
    x_train, _, y_train, _ = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=RANDOM_STATE, stratify=y
    )
    model.fit(x_train, y_train)
    return model, _to_onnx(name, model)


def _manifest(name: str, blob: bytes) -> dict[str, object]:
    """Return the ``model.json`` content for one model."""
    if name in TYPED_INPUTS:
        datatypes = {DoubleTensorType: "FP64", Int64TensorType: "INT64", StringTensorType: "BYTES"}
        inputs = [
            {"name": input_name, "datatype": datatypes[type(kind)], "shape": [1]}
            for input_name, kind in TYPED_INPUTS[name].items()
        ]
        return {
            "inputs": inputs,
            "labels": typed_labels(name),
            "probability_output": PROBABILITY_OUTPUT,
            "description": DESCRIPTIONS[name],
            "sha256": hashlib.sha256(blob).hexdigest(),
            **({"defaults": DEFAULTS[name]} if name in DEFAULTS else {}),
        }
    return {
        "features": feature_names(name),
        "labels": label_names(name),
        "probability_output": PROBABILITY_OUTPUT,
        "description": DESCRIPTIONS[name],
        "sha256": hashlib.sha256(blob).hexdigest(),
    }


def write_models(out: Path) -> list[Path]:
    """Train, convert and write every example model under `out`.

    Args:
        out: The model store root; ``<out>/<name>/1/`` is created as needed.

    Returns:
        The paths written, model files and manifests.
    """
    written: list[Path] = []
    for name, (_, blob) in build_models().items():
        directory = out / name / VERSION
        directory.mkdir(parents=True, exist_ok=True)
        manifest_path = directory / "model.json"
        model_path = directory / "model.onnx"
        # The manifest first and the model last: a version counts as present once its
        # model.onnx exists, so a running cache must never see a model without its
        # manifest, nor a half-written model.
        text = json.dumps(_manifest(name, blob), indent=2) + "\n"
        _write_atomically(manifest_path, text.encode("utf-8"))
        _write_atomically(model_path, blob)
        written += [model_path, manifest_path]
    return written


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling of `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: write the example models and list what was written."""
    parser = argparse.ArgumentParser(description="Train and write the example models.")
    default_out = Path(__file__).resolve().parent.parent / "models"
    parser.add_argument("--out", type=Path, default=default_out, help="model store root")
    args = parser.parse_args(argv)
    for path in write_models(args.out):
        print(f"{path} {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
