"""Bring your own model: convert it to ONNX, prove parity, publish it into the model store.

`import_model` converts a TensorFlow SavedModel or Keras file (tf2onnx), a scikit-learn
estimator or pipeline (skl2onnx), or an XGBoost or LightGBM booster (onnxmltools),
runs the original and the conversion on the same rows, and writes
``<store>/<name>/<version>/`` atomically only if they agree. `list_models`,
`show_model` and `validate` report on what the store holds. The conversion libraries
are optional extras (`tensorflow`, `sklearn`, `boosting`, or `import` for all);
nothing here is imported by the worker.

Modules::

    importing.py     import_model: the steps, in order
    sources/         one converter per framework, and guessing the framework
    samples.py       parity rows: a file, or generated
    parity.py        comparing source and conversion; ParityError
    writer.py        atomic version directories; version numbering
    inventory.py     list, show, validate
    extras.py        optional libraries, and the extra that installs each
    cli.py           `pipeline models ...`
"""

from pipeline.importer.extras import MissingExtraError
from pipeline.importer.importing import ImportResult, import_model
from pipeline.importer.inventory import VersionCheck, VersionInfo, list_models, show_model, validate
from pipeline.importer.parity import ParityError, ParityReport
from pipeline.importer.source import SourceOptions

__all__ = [
    "ImportResult",
    "MissingExtraError",
    "ParityError",
    "ParityReport",
    "SourceOptions",
    "VersionCheck",
    "VersionInfo",
    "import_model",
    "list_models",
    "show_model",
    "validate",
]
