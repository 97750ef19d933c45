"""Finishing touches every converted ONNX graph gets, whatever converter made it."""

from __future__ import annotations

from typing import Any

__all__ = ["finish", "opsets"]

_BATCH = "N"


def finish(model: Any, *, description: str) -> bytes:
    """Return deterministic bytes of an ONNX ``ModelProto``, batch dimensions made symbolic.

    Some converters declare an output's first dimension as a fixed 1 (LightGBM's label,
    say) though it has one value per row; ONNX Runtime then warns on every batch. Each
    output whose first dimension is fixed to 1 while the input's is not gets the
    input's symbolic batch dimension. Opset imports are sorted so the bytes do not
    depend on the order a converter collected them in.

    Args:
        model: The converter's ``onnx.ModelProto``; changed in place.
        description: Stored as the model's doc string.
    """
    inputs = list(model.graph.input)
    dims = inputs[0].type.tensor_type.shape.dim if len(inputs) == 1 else []
    if dims and not dims[0].HasField("dim_value"):
        first = dims[0]
        batch = first.dim_param or _BATCH
        first.dim_param = batch
        for output in model.graph.output:
            out = output.type.tensor_type.shape.dim
            if out and out[0].HasField("dim_value") and out[0].dim_value == 1:
                out[0].dim_param = batch
    model.doc_string = description
    ordered = sorted(model.opset_import, key=lambda o: (o.domain, o.version))
    del model.opset_import[:]
    model.opset_import.extend(ordered)
    data: bytes = model.SerializeToString(deterministic=True)
    return data


def opsets(model: Any) -> dict[str, int]:
    """Return the opset of each domain an ONNX ``ModelProto`` imports ("" is ai.onnx)."""
    return {str(o.domain): int(o.version) for o in model.opset_import}
