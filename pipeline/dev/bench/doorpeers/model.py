"""The model as the per-request peers run it: one ONNX Runtime session per process.

Each worker process loads ``$DOORPEER_MODEL_DIR/model.onnx`` (default: the example MLP) once
and runs it on one row per request. One intra-op thread per session: the servers run as
many worker processes as there are cores, so more threads would only contend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ["MODEL_DIR_ENV", "OneRowModel"]

MODEL_DIR_ENV = "DOORPEER_MODEL_DIR"
_DEFAULT = Path(__file__).resolve().parents[4] / "models" / "breast-cancer-mlp" / "1"


class OneRowModel:
    """One session, asked one row at a time.

    Args:
        model_dir: Directory with ``model.onnx``; None reads ``$DOORPEER_MODEL_DIR``.
    """

    def __init__(self, model_dir: Path | None = None) -> None:
        directory = model_dir or Path(os.environ.get(MODEL_DIR_ENV) or _DEFAULT)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(directory / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self.width = int(self._session.get_inputs()[0].shape[1])

    def answer(self, row: Any) -> dict[str, float]:
        """The seed's answer for one row: the most probable class and its probability.

        Raises:
            ValueError: `row` is not a list of `width` numbers.
        """
        features = np.asarray([row], dtype=np.float32)
        if features.shape != (1, self.width):
            raise ValueError(
                f"data must be a list of {self.width} numbers, got shape {features.shape[1:]}"
            )
        _labels, probabilities = self._session.run(None, {self._input: features})
        best = int(np.argmax(probabilities[0]))
        return {"prediction": float(best), "confidence": float(probabilities[0][best])}
