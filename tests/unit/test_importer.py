"""Unit tests of the importer's parts: atomic writes, version numbers, parity, samples,
the missing-extra message and the manifest keys it adds. No conversion library needed."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine.manifest import read_manifest
from pipeline.engine.models import ModelStore
from pipeline.errors import ConfigError, ModelError, ModelLoadError
from pipeline.importer import MissingExtraError, ParityError, SourceOptions, import_model, writer
from pipeline.importer.extras import require
from pipeline.importer.parity import compare
from pipeline.importer.samples import default_rows, read_rows
from pipeline.importer.sources import detect_framework

EXAMPLE = Path(__file__).resolve().parents[2] / "models" / "breast-cancer-logreg" / "1"
FILES = {"model.json": b"{}\n", "model.onnx": b"onnx bytes"}


def snapshot(root: Path) -> list[str]:
    """Every path under `root`, hidden ones included, to show nothing changed."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- version numbers --------------------------------------------------------------------


def test_first_version_is_1(tmp_path: Path) -> None:
    assert writer.next_version(tmp_path / "missing") == "1"
    assert writer.next_version(tmp_path) == "1"


def test_next_version_follows_the_newest_numeric_directory(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "v11", "latest", ".11.importing-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "99").write_text("a file, not a version")
    assert writer.next_version(tmp_path) == "11"


# --- atomic writes ----------------------------------------------------------------------


def test_write_version_publishes_a_complete_directory(tmp_path: Path) -> None:
    path = writer.write_version(tmp_path, "m", "1", FILES)
    assert path == tmp_path / "m" / "1"
    assert {p.name: p.read_bytes() for p in path.iterdir()} == FILES
    assert snapshot(tmp_path) == ["m", "m/1", "m/1/model.json", "m/1/model.onnx"]
    assert oct(path.stat().st_mode & 0o777) == "0o755"


def test_the_version_is_invisible_to_the_store_until_renamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "m" / "1")
    seen: dict[str, object] = {}
    real_rename = os.rename

    def rename(src: Path, dst: Path) -> None:
        seen["staging"] = Path(src).name
        seen["files"] = sorted(p.name for p in Path(src).iterdir())
        seen["versions"] = ModelStore(tmp_path).versions("m")
        real_rename(src, dst)

    monkeypatch.setattr(writer.os, "rename", rename)
    writer.write_version(tmp_path, "m", "2", FILES)
    assert str(seen["staging"]).startswith(".2.")
    assert seen["files"] == ["model.json", "model.onnx"]  # complete before the rename
    assert seen["versions"] == ["1"]  # the hidden directory is not a version
    assert ModelStore(tmp_path).versions("m") == ["1", "2"]


def test_a_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m").mkdir()

    def rename(src: Path, dst: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer.os, "rename", rename)
    with pytest.raises(ConfigError, match=r"No space left on device.*nothing was written"):
        writer.write_version(tmp_path, "m", "1", FILES)
    assert snapshot(tmp_path) == ["m"]


def test_an_existing_version_is_never_overwritten(tmp_path: Path) -> None:
    writer.write_version(tmp_path, "m", "1", FILES)
    with pytest.raises(
        ConfigError, match=r"m/1 already exists; versions are never overwritten.*\(2\)"
    ):
        writer.write_version(tmp_path, "m", "1", {"model.onnx": b"other"})
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"onnx bytes"


def test_a_version_that_appears_during_the_write_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_rename = os.rename

    def racing_rename(src: Path, dst: Path) -> None:
        Path(dst).mkdir()  # another import got there first, between the check and the rename
        (Path(dst) / "model.onnx").write_bytes(b"theirs")
        real_rename(src, dst)

    monkeypatch.setattr(writer.os, "rename", racing_rename)
    with pytest.raises(ConfigError, match="appeared while this import was writing it"):
        writer.write_version(tmp_path, "m", "1", FILES)
    assert snapshot(tmp_path) == ["m", "m/1", "m/1/model.onnx"]
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == b"theirs"


@pytest.mark.parametrize(("name", "version"), [("../x", "1"), ("m", "a/b"), (".hidden", "1")])
def test_names_and_versions_must_be_plain(tmp_path: Path, name: str, version: str) -> None:
    with pytest.raises(ConfigError, match="must be 1 to 128 characters"):
        writer.write_version(tmp_path, name, version, FILES)
    assert snapshot(tmp_path) == []


def test_the_store_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"must be an existing directory; create it \(mkdir -p"):
        writer.write_version(tmp_path / "nope", "m", "1", FILES)


# --- parity -----------------------------------------------------------------------------


def outputs(labels: list[int], probabilities: list[list[float]]) -> dict[str, np.ndarray]:
    return {"label": np.array(labels), "probabilities": np.array(probabilities)}


def test_equal_outputs_pass_and_are_recorded() -> None:
    source = outputs([0, 1], [[0.9, 0.1], [0.2, 0.8]])
    converted = outputs([0, 1], [[0.9, 0.1], [0.2, 0.8]])
    converted["probabilities"] = converted["probabilities"].astype(np.float32)
    report = compare(source, converted, tolerance=1e-4)
    assert report.ok
    assert report.max_difference < 1e-7
    assert report.record()["label_mismatches"] == 0
    assert report.summary().endswith("label equal on 2 of 2 rows")


def test_a_float_drift_beyond_the_tolerance_is_refused_naming_the_worst_rows() -> None:
    source = outputs([0, 0, 1], [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    converted = outputs([0, 0, 1], [[0.9, 0.1], [0.6, 0.4003], [0.2, 0.8]])
    report = compare(source, converted, tolerance=1e-4)
    assert not report.ok
    assert report.max_difference == pytest.approx(3e-4)
    message = str(report.refusal())
    assert isinstance(report.refusal(), ParityError)
    assert "nothing was written" in message
    assert "row 1 probabilities[1]: source 0.4, converted 0.4003, difference 0.0003" in message
    assert "\n" not in message


def test_labels_must_be_equal_whatever_the_tolerance() -> None:
    report = compare(outputs([0, 1], [[0.5, 0.5]] * 2), outputs([0, 0], [[0.5, 0.5]] * 2),
                     tolerance=1.0)  # fmt: skip
    assert not report.ok
    assert report.exact_outputs == {"label": 1}
    assert "row 1 label: source 1, converted 0" in str(report.refusal())


def test_large_values_compare_relatively_and_small_ones_absolutely() -> None:
    big = compare({"y": np.array([1000.0])}, {"y": np.array([1000.05])}, tolerance=1e-4)
    small = compare({"y": np.array([3e-6])}, {"y": np.array([3.1e-6])}, tolerance=1e-4)
    assert big.max_difference == pytest.approx(5e-5)
    assert small.max_difference == pytest.approx(1e-7)
    assert big.ok and small.ok


def test_nan_equals_nan_but_not_a_number() -> None:
    same = compare({"y": np.array([np.nan])}, {"y": np.array([np.nan])}, tolerance=0)
    other = compare({"y": np.array([np.nan])}, {"y": np.array([1.0])}, tolerance=1e9)
    assert same.ok
    assert not other.ok


def test_a_column_vector_compares_with_a_flat_one_but_shapes_must_fit() -> None:
    assert compare({"y": np.ones(3)}, {"y": np.ones((3, 1))}, tolerance=0).ok
    with pytest.raises(
        ModelError, match=r"source gives shape \[3\] but the converted model gives \[3, 2\]"
    ):
        compare({"y": np.ones(3)}, {"y": np.ones((3, 2))}, tolerance=0)


def test_an_output_missing_from_the_conversion_is_an_error() -> None:
    with pytest.raises(ModelError, match=r"lacks output\(s\) \['scores'\]"):
        compare({"scores": np.ones(2)}, {"y": np.ones(2)}, tolerance=0)


# --- sample rows ------------------------------------------------------------------------


def test_default_rows_are_seeded_and_include_the_bundled_rows_for_30_features() -> None:
    assert default_rows(4).shape == (256, 4)
    np.testing.assert_array_equal(default_rows(4), default_rows(4))
    rows = default_rows(30)
    assert rows.shape == (456, 30) and rows.dtype == np.float32
    assert rows[256:, 3].max() > 100  # real mean_area values, not N(0, 1)


def test_json_lines_take_arrays_named_objects_and_events(tmp_path: Path) -> None:
    sample = tmp_path / "rows.jsonl"
    lines = [
        [1, 2],
        {"b": 4, "a": 3},
        {"id": "e", "features": [5, 6]},
        {"features": {"a": 7, "b": 8}},
    ]
    sample.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    rows = read_rows(sample, n_features=2, feature_names=["a", "b"])
    np.testing.assert_array_equal(rows, [[1, 2], [3, 4], [5, 6], [7, 8]])


def test_csv_headers_are_put_in_input_order(tmp_path: Path) -> None:
    sample = tmp_path / "rows.csv"
    sample.write_text("b,a\n2,1\n4,3\n")
    np.testing.assert_array_equal(read_rows(sample, n_features=2, feature_names=["a", "b"]),
                                  [[1, 2], [3, 4]])  # fmt: skip
    sample.write_text("1,2\n3,4\n")
    np.testing.assert_array_equal(
        read_rows(sample, n_features=2, feature_names=None), [[1, 2], [3, 4]]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2, 3]\n", "sample row 0 must have 2 values .* got 3"),
        ('{"a": 1, "c": 2}\n', r"missing \['b'\], unknown \['c'\]"),
        ("[1, 1e39]\n", "row 0 column 1 must be a finite float32 number"),
        ('"text"\n', "expected an array of numbers"),
        ("\n", "has no rows"),
        ("[1, 2\n", "line 1: not JSON"),
    ],
)
def test_bad_sample_rows_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    sample = tmp_path / "rows.jsonl"
    sample.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_rows(sample, n_features=2, feature_names=["a", "b"])


# --- frameworks and extras --------------------------------------------------------------


def test_the_framework_is_guessed_from_the_source(tmp_path: Path) -> None:
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    for name in ("m.keras", "m.joblib", "m.pkl", "m.json", "m.txt", "m.onnx"):
        (tmp_path / name).write_bytes(b"")
    guessed = {
        p: detect_framework(tmp_path / p)
        for p in ("sm", "m.keras", "m.joblib", "m.pkl", "m.json", "m.txt")
    }
    assert guessed == {"sm": "tensorflow", "m.keras": "keras", "m.joblib": "sklearn",
                       "m.pkl": "sklearn", "m.json": "xgboost", "m.txt": "lightgbm"}  # fmt: skip
    with pytest.raises(ConfigError, match=r"suffix '\.onnx'.*pass --framework"):
        detect_framework(tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="does not exist"):
        detect_framework(tmp_path / "missing.json")


def test_a_missing_library_names_the_extra_that_installs_it() -> None:
    with pytest.raises(MissingExtraError) as info:
        require("no_such_module_for_the_test", extra="boosting", purpose="importing a booster")
    message = str(info.value)
    assert message.startswith(
        "importing a booster needs the Python module 'no_such_module_for_the_test'"
    )
    assert message.endswith("install it with: pip install '.[boosting]' in the project's checkout")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("module", "suffix", "extra"),
    [
        ("xgboost", ".json", "boosting"),
        ("tensorflow", ".keras", "tensorflow"),
        ("skl2onnx", ".pkl", "sklearn"),
    ],
)
def test_import_without_the_extra_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, suffix: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    source = tmp_path / f"model{suffix}"
    source.write_bytes(b"never read")
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(
        MissingExtraError, match=rf"pip install '\.\[{extra}\]' in the project's checkout"
    ):
        import_model(source, name="m", models=store, options=SourceOptions(trust_pickle=True))
    assert snapshot(store) == []


@pytest.mark.parametrize("tolerance", [-1.0, float("nan"), float("inf")])
def test_the_tolerance_must_be_a_finite_number(tmp_path: Path, tolerance: float) -> None:
    with pytest.raises(ConfigError, match="tolerance must be a finite number >= 0"):
        import_model(tmp_path / "m.json", name="m", models=tmp_path, tolerance=tolerance)


# --- manifest keys the importer writes ----------------------------------------------------


def test_the_import_records_are_accepted_in_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    content = {"features": ["a", "b"], "n_features": 2, "source": {"framework": "x"},
               "converter": {"name": "c", "opset": {"": 17}}, "parity": {"rows": 3}}  # fmt: skip
    path.write_text(json.dumps(content))
    assert read_manifest(path) == content


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"n_features": 0}, "'n_features' must be an integer >= 1, got a number"),
        ({"n_features": True}, "'n_features' must be an integer >= 1, got a boolean"),
        ({"features": ["a"], "n_features": 2}, "'n_features' is 2 but 'features' lists 1"),
        ({"source": "tensorflow"}, "'source' must be a JSON object, got the string"),
        ({"parity": [1]}, "'parity' must be a JSON object, got an array"),
    ],
)
def test_bad_import_records_are_refused(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=message):
        read_manifest(path)


def test_the_import_help_text_names_the_pickle_risk_and_the_extras(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["models", "import", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "loading a pickle or joblib file runs any code it contains" in text
    assert "--trust-pickle" in text
    assert "pip install '.[tensorflow]' in the project's checkout" in text
