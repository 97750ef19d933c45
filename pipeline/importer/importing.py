"""`import_model`: convert a model, prove parity on the serving path, publish a new version.

The steps, and why in this order:

1. Check the target: the store exists, the name and version are plain, the version is
   new (before any slow conversion).
2. Convert with the framework's converter (`pipeline.importer.sources`).
3. Load the converted model exactly as the worker does (`ModelCache` over a throw-away
   store outside the real one: manifest checks, checksum, warm-up) and run the sample
   rows through that session; run the source model on the same float32 rows.
4. Compare (`pipeline.importer.parity`); refuse on disagreement. Nothing has been
   written to the store up to here.
5. Write the version atomically (`pipeline.importer.writer`), its manifest recording
   the source, the converter and the parity figures.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.engine.manifest import MANIFEST_FILE
from pipeline.engine.models import MODEL_FILE, ModelCache, ModelStore
from pipeline.engine.signature import Feed, TensorSpec
from pipeline.errors import ConfigError, ModelError, ModelLoadError
from pipeline.importer.parity import DEFAULT_TOLERANCE, ParityReport, compare
from pipeline.importer.samples import default_feed, default_rows, read_feed, read_rows
from pipeline.importer.source import Converted, Outputs, Rows, SourceOptions
from pipeline.importer.sources import convert
from pipeline.importer.writer import check_new_version, next_version, write_version

__all__ = ["ImportResult", "import_model"]

RUNTIME = "onnxruntime"
"""How every imported model is served: converted to ONNX, run by ONNX Runtime."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportResult:
    """What an import wrote and measured.

    Attributes:
        name: The model's name in the store.
        version: The version written.
        path: The version directory.
        framework: The source framework.
        converted: The conversion (its source and converter records say the path).
        manifest: The ``model.json`` written.
        parity: The parity comparison.
        notes: Warnings the libraries raised while converting, once each.
    """

    name: str
    version: str
    path: Path
    framework: str
    converted: Converted
    manifest: dict[str, object]
    parity: ParityReport
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> list[str]:
        """Lines for a person: what was written, by which path, and the parity figures."""
        source, converter = self.converted.source, self.converted.converter
        return [
            f"imported {self.name} version {self.version} into {self.path}",
            f"path: {source['framework']} {source['framework_version']} -> "
            f"{converter['name']} {converter['version']} (opsets {converter['opset']}) -> "
            f"ONNX, served by {RUNTIME}",
            f"parity: {self.parity.summary()}",
        ]


def import_model(
    source: Path,
    *,
    name: str,
    models: Path,
    version: str | None = None,
    options: SourceOptions | None = None,
    sample: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ImportResult:
    """Convert the model at `source` to ONNX and add it to the store as a new version.

    Args:
        source: A SavedModel directory, a ``.keras``, pickle/joblib, XGBoost JSON/UBJSON
            or LightGBM text file.
        name: The model's plain name in the store.
        models: The store's root directory; it must exist.
        version: The new version; default: one more than the newest numeric version.
        options: How to read the source (framework, signature, trust, labels, names).
        sample: JSON-lines or CSV rows for parity; default: generated rows.
        tolerance: Largest scaled float difference accepted (labels must be equal).

    Raises:
        ConfigError: a bad argument, an untrusted pickle, or an existing version.
        MissingExtraError: the framework's extra is not installed.
        ModelError: the source cannot be loaded or converted, the conversion does not
            load as the worker would load it, or (`ParityError`) it disagrees with the
            source. Nothing is written in any of these cases.
    """
    if not (isinstance(tolerance, int | float) and math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    version = version or next_version(models / name)
    check_new_version(models, name, version)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        framework, converted = convert(source, options or SourceOptions())
        rows = _rows(sample, converted)
        manifest = _manifest(converted)
        served, outputs = _run_as_served(name, version, converted.onnx, manifest, rows)
        report = compare(converted.reference(rows), served, tolerance=tolerance)
    if not report.ok:
        raise report.refusal()
    if converted.inputs is not None:
        manifest["outputs"] = _tensors(outputs)
    manifest["parity"] = report.record()
    files = {MANIFEST_FILE: _json_bytes(manifest), MODEL_FILE: converted.onnx}
    path = write_version(models, name, version, files)
    notes = tuple(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    return ImportResult(
        name=name,
        version=version,
        path=path,
        framework=framework,
        converted=converted,
        manifest=manifest,
        parity=report,
        notes=notes,
    )


def _rows(sample: Path | None, converted: Converted) -> Rows | Feed:
    """The caller's sample rows, or rows generated for the model's width; a feed of one
    array per input for a model with typed inputs."""
    if converted.inputs is not None:
        if sample is None and converted.sample_required:
            names = [spec.name for spec in converted.inputs]
            raise ConfigError(
                f"the model takes named columns {names[:8]}, of which made-up rows would "
                f"not be realistic; pass --sample FILE (a CSV with a header, or JSON lines "
                f"of objects) with real rows, unseen categories included"
            )
        return default_feed(converted.inputs) if sample is None else read_feed(
            sample, converted.inputs)  # fmt: skip
    if sample is None:
        return default_rows(converted.n_features)
    return read_rows(sample, n_features=converted.n_features, feature_names=converted.feature_names)


def _manifest(converted: Converted) -> dict[str, object]:
    """The ``model.json`` of a converted model (parity is added once measured)."""
    manifest: dict[str, object] = {}
    if converted.inputs is not None:  # events name each input; no vector columns
        manifest["inputs"] = _tensors(converted.inputs)
    elif converted.feature_names is not None:
        manifest["features"] = list(converted.feature_names)
    if converted.labels is not None and converted.probability_output is not None:
        manifest["labels"] = list(converted.labels)
        manifest["probability_output"] = converted.probability_output
    manifest["description"] = converted.description
    manifest["sha256"] = hashlib.sha256(converted.onnx).hexdigest()
    if converted.inputs is None:
        manifest["n_features"] = converted.n_features
    manifest["source"] = converted.source
    manifest["converter"] = {**converted.converter, "runtime": RUNTIME}
    return manifest


def _tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, object]]:
    """A signature as the manifest records it: per-row shapes, -1 for any size."""
    return [
        {"name": s.name, "datatype": s.datatype, "shape": [-1 if d is None else d for d in s.shape]}
        for s in specs
    ]


def _run_as_served(
    name: str, version: str, onnx: bytes, manifest: dict[str, object], rows: Rows | Feed
) -> tuple[Outputs, tuple[TensorSpec, ...]]:
    """Load the model through a `ModelCache` in a throw-away store and run `rows` (a feed
    of every input, or a vector model's float32 rows) on it; also return its outputs."""
    with tempfile.TemporaryDirectory(prefix="pipeline-import-") as tmp:
        directory = Path(tmp) / name / version
        directory.mkdir(parents=True)
        (directory / MANIFEST_FILE).write_bytes(_json_bytes(manifest))
        (directory / MODEL_FILE).write_bytes(onnx)
        try:
            model = ModelCache(ModelStore(Path(tmp)), max_loaded=1).get(name, version)
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"the converted model would not load in the worker, so nothing was written: {exc}"
            ) from exc
        try:
            feed = rows if isinstance(rows, dict) else {model.input_name: rows}
            values = model.session.run(list(model.output_names), feed)
        except Exception as exc:  # onnxruntime raises its own Exception subclasses
            raise ModelError(
                f"the converted model fails on the sample rows, so nothing was written: {exc}"
            ) from exc
    return dict(zip(model.output_names, values, strict=True)), model.outputs


def _json_bytes(manifest: dict[str, object]) -> bytes:
    """The manifest as the store keeps it: indented JSON and a final newline."""
    return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
