"""Importing real scikit-learn, XGBoost and LightGBM models trained here on the bundled
breast-cancer data (569 rows, 30 features), and refusing the ones that do not convert.

The imported versions are loaded through `ModelCache`, as the worker loads them, and
must give the framework's own labels on every row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.gaussian_process import GaussianProcessClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline.engine.models import ModelCache, ModelStore
from pipeline.errors import ConfigError, ModelError, ModelLoadError
from pipeline.importer import ParityError, SourceOptions, import_model, list_models, validate

X, Y = load_breast_cancer(return_X_y=True)
ROWS = X.astype(np.float32)  # what events carry
NAMES = [str(n).replace(" ", "_") for n in load_breast_cancer().feature_names]
LABELS = ("malignant", "benign")
TRUSTED = SourceOptions(trust_pickle=True, labels=LABELS, feature_names=tuple(NAMES))


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Each framework's model trained on the whole data set and saved natively."""
    out = tmp_path_factory.mktemp("sources")
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, Y)
    joblib.dump(pipeline, out / "sk.joblib")
    booster = xgb.XGBClassifier(n_estimators=40, max_depth=3, random_state=0).fit(X, Y)
    booster.save_model(out / "x.json")
    light = lgb.LGBMClassifier(n_estimators=40, random_state=0, verbose=-1).fit(X, Y)
    light.booster_.save_model(out / "l.txt")
    return {
        "sklearn": (out / "sk.joblib", pipeline),
        "xgboost": (out / "x.json", booster),
        "lightgbm": (out / "l.txt", light),
    }


@pytest.fixture(scope="module")
def all_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 569 rows as a CSV with a header, for --sample."""
    path = tmp_path_factory.mktemp("sample") / "rows.csv"
    lines = [",".join(NAMES), *(",".join(repr(float(v)) for v in row) for row in ROWS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def framework_labels(framework: str, model: Any) -> np.ndarray:
    if framework == "lightgbm":
        return (model.booster_.predict(ROWS.astype(np.float64)) > 0.5).astype(int)
    return np.asarray(model.predict(ROWS))


@pytest.mark.parametrize("framework", ["sklearn", "xgboost", "lightgbm"])
def test_imported_model_serves_the_frameworks_labels_on_all_569_rows(
    store: Path, sources: dict[str, tuple[Path, Any]], all_rows: Path, framework: str
) -> None:
    path, model = sources[framework]
    result = import_model(path, name=f"bc-{framework}", models=store, options=TRUSTED,
                          sample=all_rows)  # fmt: skip
    assert (result.version, result.framework) == ("1", framework)
    assert result.parity.rows == 569
    assert result.parity.exact_outputs == {"label": 0}
    assert result.parity.max_difference < 1e-5
    print(f"{framework}: largest difference {result.parity.max_difference:.3g}")

    loaded = ModelCache(ModelStore(store)).get(f"bc-{framework}", "1")
    assert loaded.spec.labels == LABELS
    assert loaded.spec.feature_names == tuple(NAMES)
    assert loaded.spec.probability_output == "probabilities"
    label, probabilities = loaded.session.run(["label", "probabilities"], {"features": ROWS})
    np.testing.assert_array_equal(label, framework_labels(framework, model))
    assert label.shape == (569,) and probabilities.shape == (569, 2)

    manifest = json.loads((result.path / "model.json").read_text())
    assert manifest["n_features"] == 30
    assert manifest["source"]["framework"] == {"sklearn": "scikit-learn"}.get(framework, framework)
    assert manifest["converter"]["runtime"] == "onnxruntime"
    assert manifest["parity"]["rows"] == 569
    assert manifest["parity"]["label_mismatches"] == 0


def test_versions_count_up_and_the_listing_and_validation_see_them(
    store: Path, sources: dict[str, tuple[Path, Any]]
) -> None:
    path, _ = sources["xgboost"]
    versions = [import_model(path, name="x", models=store).version for _ in range(2)]
    assert versions == ["1", "2"]
    assert import_model(path, name="x", models=store, version="7").version == "7"
    assert import_model(path, name="x", models=store).version == "8"
    infos = list_models(store)
    assert [(i.version, i.latest) for i in infos] == [
        ("1", False),
        ("2", False),
        ("7", False),
        ("8", True),
    ]
    assert all(c.ok and c.checksum == "ok" for c in validate(store))


def test_validation_names_the_broken_version_and_why(
    store: Path, sources: dict[str, tuple[Path, Any]]
) -> None:
    path, _ = sources["lightgbm"]
    import_model(path, name="l", models=store)
    broken = import_model(path, name="l", models=store).path / "model.onnx"
    broken.write_bytes(broken.read_bytes()[:-10])
    checks = {c.version: c for c in validate(store, "l")}
    assert checks["1"].ok
    assert not checks["2"].ok and checks["2"].checksum == "mismatch"
    assert "SHA-256 is" in (checks["2"].error or "")


def test_a_drifting_conversion_is_refused_and_nothing_is_written(
    store: Path, sources: dict[str, tuple[Path, Any]]
) -> None:
    path, _ = sources["sklearn"]
    before = snapshot(store)
    with pytest.raises(ParityError) as info:
        import_model(path, name="drift", models=store, options=TRUSTED, tolerance=0.0)
    message = str(info.value)
    assert "parity check failed, nothing was written" in message
    assert "(tolerance 0)" in message
    assert "worst rows: row " in message and "probabilities[" in message
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("estimator", "message", "error"),
    [
        (
            HistGradientBoostingClassifier(max_iter=5),
            "skl2onnx cannot convert HistGradientBoostingClassifier",
            ModelError,
        ),
        (
            GaussianProcessClassifier(),
            "would not load in the worker, so nothing was written: .*Solve",
            ModelLoadError,
        ),
    ],
)
def test_an_estimator_that_does_not_convert_is_refused_with_the_reason(
    store: Path, tmp_path: Path, estimator: Any, message: str, error: type[Exception]
) -> None:
    path = tmp_path / "model.pkl"
    joblib.dump(estimator.fit(X[:100], Y[:100]), path)
    with pytest.raises(error, match=message):
        import_model(path, name="unsupported", models=store, options=TRUSTED)
    assert snapshot(store) == []


def test_a_pickle_is_not_loaded_without_trust(
    store: Path, sources: dict[str, tuple[Path, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Any] = []
    monkeypatch.setattr(joblib, "load", loads.append)
    with pytest.raises(ConfigError, match=r"loading it runs any code it contains.*--trust-pickle"):
        import_model(sources["sklearn"][0], name="m", models=store)
    assert loads == []


def test_the_command_refuses_a_drift_in_one_line_and_exits_1(
    store: Path, sources: dict[str, tuple[Path, Any]]
) -> None:
    path, _ = sources["lightgbm"]
    command = [sys.executable, "-m", "pipeline", "models", "import", str(path), "--name", "l",
               "--models", str(store), "--tolerance", "0"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr  # pipeline.exitcodes.FAILED: a model error
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith("error: parity check failed, nothing was written")
    assert snapshot(store) == []


def test_the_command_imports_lists_and_validates(
    store: Path, sources: dict[str, tuple[Path, Any]]
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pipeline", "models", *args, "--models", str(store)]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    imported = run(
        "import", str(sources["xgboost"][0]), "--name", "x", "--labels", "malignant,benign"
    )
    assert imported.returncode == 0, imported.stderr
    assert "imported x version 1" in imported.stdout
    assert "-> onnxmltools" in imported.stdout and "served by onnxruntime" in imported.stdout
    listed = json.loads(run("list", "--json").stdout)
    assert [(v["name"], v["version"], v["latest"]) for v in listed] == [("x", "1", True)]
    assert listed[0]["manifest"]["labels"] == list(LABELS)
    shown = run("show", "x")
    assert "x version 1 (latest)" in shown.stdout and '"framework": "xgboost"' in shown.stdout
    valid = run("validate")
    assert valid.returncode == 0 and "x      1        ok" in valid.stdout
    (store / "x" / "1" / "model.onnx").write_bytes(b"garbage")
    invalid = run("validate", "x", "--json")
    assert invalid.returncode == 1
    assert json.loads(invalid.stdout)[0]["checksum"] == "mismatch"
    assert "error: x version 1: " in invalid.stderr


def test_labels_must_match_the_class_count(
    store: Path, sources: dict[str, tuple[Path, Any]]
) -> None:
    with pytest.raises(ModelError, match="--labels lists 3 labels but the booster has 2 classes"):
        import_model(sources["xgboost"][0], name="x", models=store,
                     options=SourceOptions(labels=("a", "b", "c")))  # fmt: skip
