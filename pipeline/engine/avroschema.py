"""The Avro schema of a model version's predictions, derived from its outputs.

A prediction written as Avro carries the same fields as the JSON one (`pipeline.engine.codec`
documents them): ``prediction_id``, ``id``, ``model``, ``version``, ``label`` and ``score``
(null for a model without labels), ``outputs`` and the two times. ``outputs`` is a record
with one field per model output, typed from the graph, so a consumer reads numbers as
numbers, not text:

===========================  =======================================
output                       Avro type of one row's value
===========================  =======================================
FP16, FP32                   ``float``
FP64                         ``double``
INT8, INT16, INT32, UINT8,   ``int``
UINT16
INT64, UINT32, UINT64        ``long`` (a UINT64 above 2^63-1 does not fit: OutputMismatch)
BOOL                         ``boolean``
BYTES (strings)              ``string``
a sequence of maps (ZipMap)  ``map`` of ``float`` (keys as strings, as in JSON)
===========================  =======================================

and an ``array`` around that per dimension of one row's shape. Every output field, and
``label`` and ``score``, is a union with ``null`` defaulting to null: a later version that
adds an output, or labels, stays BACKWARD compatible, while one that changes an output's
type is refused by a registry that checks compatibility (`pipeline.schemaregistry`).

One schema per model (its record is ``pipeline.prediction.<model>``), evolving over the
model's versions: the record name stays, so the registry can judge each new version
against the last. Names Avro does not allow (``breast-cancer-mlp``) have every other
character replaced by ``_``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pipeline.engine.signature import TensorSpec
from pipeline.engine.spec import ModelSpec

__all__ = ["NAMESPACE", "avro_name", "prediction_schema"]

NAMESPACE: Final = "pipeline.prediction"

_AVRO_TYPES: Final[Mapping[str, str]] = {
    "FP16": "float",
    "FP32": "float",
    "FP64": "double",
    "INT8": "int",
    "INT16": "int",
    "INT32": "int",
    "UINT8": "int",
    "UINT16": "int",
    "INT64": "long",
    "UINT32": "long",
    "UINT64": "long",
    "BOOL": "boolean",
    "BYTES": "string",
}
_NOT_A_NAME: Final = re.compile(r"[^A-Za-z0-9_]")


def avro_name(name: str) -> str:
    """`name` as an Avro name: letters, digits and ``_``, not starting with a digit."""
    cleaned = _NOT_A_NAME.sub("_", name)
    return f"_{cleaned}" if cleaned[:1].isdigit() or not cleaned else cleaned


def prediction_schema(
    spec: ModelSpec, outputs: tuple[TensorSpec, ...], map_outputs: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The Avro schema (as parsed JSON) of the predictions of `spec`'s version.

    Args:
        spec: The model version.
        outputs: Every output of its graph, in the order the model gives them.
        map_outputs: The outputs that are a sequence of per-row maps.

    Raises:
        ValueError: Two outputs share one Avro name, or an output's type has no Avro form.
    """
    record = avro_name(spec.name)
    fields: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for tensor in outputs:
        field = avro_name(tensor.name)
        if field in seen:
            raise ValueError(
                f"outputs {seen[field]!r} and {tensor.name!r} of {spec.describe()} are both "
                f"{field!r} as Avro field names; rename one in the model to write Avro"
            )
        seen[field] = tensor.name
        fields.append(
            {
                "name": field,
                "type": ["null", _row_type(tensor, tensor.name in map_outputs, spec)],
                "default": None,
                "doc": f"output {tensor.name!r}",
            }
        )
    return {
        "type": "record",
        "name": record,
        "namespace": NAMESPACE,
        "doc": f"A prediction of model {spec.name!r} (written by pipeline run)",
        "fields": [
            {"name": "prediction_id", "type": "string"},
            {"name": "id", "type": "string"},
            {"name": "model", "type": "string"},
            {"name": "version", "type": "string"},
            {"name": "label", "type": ["null", "string"], "default": None},
            {"name": "score", "type": ["null", "double"], "default": None},
            {
                "name": "outputs",
                "type": {
                    "type": "record",
                    "name": "Outputs",
                    "namespace": f"{NAMESPACE}.{record}",
                    "fields": fields,
                },
            },
            {"name": "ts", "type": "long", "doc": "the event's time, ms since epoch"},
            {"name": "predicted_at", "type": "long", "doc": "ms since epoch"},
        ],
    }


def _row_type(tensor: TensorSpec, is_map: bool, spec: ModelSpec) -> Any:
    if is_map:
        return {"type": "map", "values": "float"}
    element: Any = _AVRO_TYPES.get(tensor.datatype)
    if element is None:
        raise ValueError(
            f"output {tensor.name!r} of {spec.describe()} is {tensor.datatype}, which has no "
            "Avro form here; write this model's predictions as JSON"
        )
    for _ in tensor.shape:
        element = {"type": "array", "items": element}
    return element
