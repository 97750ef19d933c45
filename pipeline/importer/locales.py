"""The locale a text model's string normaliser runs with, chosen where ONNX Runtime has it.

skl2onnx converts a text vectorizer's lowercasing to ONNX's ``StringNormalizer``, whose
locale defaults to ``en_US.UTF-8`` on Linux. On a machine without that locale (a bare
Debian image has only ``C.UTF-8``), ONNX Runtime refuses to create the session ("Failed to
construct locale with name:en_US.UTF-8"), so the model would not load in the worker. The
importer instead asks ONNX Runtime which of `CANDIDATES` it can construct, with a one-node
model, and converts with the first; if none works it says what to install.
"""

from __future__ import annotations

from functools import cache

from pipeline.errors import ModelError

__all__ = ["CANDIDATES", "string_locale"]

CANDIDATES = ("C.UTF-8", "en_US.UTF-8")
"""Tried in this order: ``C.UTF-8`` ships with glibc, so it is on every Linux machine."""


@cache
def string_locale() -> str:
    """The first of `CANDIDATES` ONNX Runtime can run a ``StringNormalizer`` with.

    Raises:
        ModelError: none of them; the message says how to install one.
    """
    for name in CANDIDATES:
        if _runs_with(name):
            return name
    raise ModelError(
        f"ONNX Runtime can construct none of the locales {list(CANDIDATES)}, which a text "
        "model's lowercasing needs; install one (Debian/Ubuntu: apt-get install locales && "
        "echo 'en_US.UTF-8 UTF-8' >> /etc/locale.gen && locale-gen) and import again"
    )


def _runs_with(locale: str) -> bool:
    """Whether a one-node ``StringNormalizer`` model with `locale` opens in ONNX Runtime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node(
        "StringNormalizer", ["x"], ["y"], case_change_action="LOWER", locale=locale
    )
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "locale", [tensor("x", TensorProto.STRING, [None])],
        [tensor("y", TensorProto.STRING, [None])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failure is the answer, not an error to log
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime's Fail has no importable base class but Exception
        return False
    return True
