"""Every ``pipeline.error.type`` a dead letter (or a door's error) can carry, with its stage.

This is the registry the README's table is generated from. The codec, the engine and the
Kafka adapter name these types where they reject a value; a test reads their source and
fails if a type is raised there that is not listed here, or listed here and raised nowhere,
so the table cannot drift. Two stages also carry types that are not fixed names: an ONNX
Runtime exception's class name (``infer``) and a librdkafka error name (``produce``);
`PATTERNS` describes those.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["ERROR_TYPES", "PATTERNS", "STAGES", "ErrorType"]

STAGES: Final = ("decode", "validate", "route", "enrich", "infer", "produce", "deliver", "deadline")
"""In data-path order. ``deadline`` happens only at the doors: Kafka events have no
deadline, so it is never a dead letter."""


@dataclass(frozen=True, slots=True)
class ErrorType:
    """One kind of rejection.

    Attributes:
        name: The ``pipeline.error.type`` value.
        stage: The ``pipeline.error.stage`` it comes with.
        meaning: What arrived, and what to do about it.
    """

    name: str
    stage: str
    meaning: str


ERROR_TYPES: Final = (
    ErrorType("EmptyValue", "decode", "the record has no value, or an empty one"),
    ErrorType("TooLarge", "decode", "the value is over 64 KiB, checked before parsing"),
    ErrorType(
        "InvalidUtf8",
        "decode",
        "the value is not UTF-8 text; the message names the first bad byte and its offset",
    ),
    ErrorType(
        "InvalidJson",
        "decode",
        "the value is not one JSON document (also a Schema Registry framed value read with "
        "`--value-format json`: read those with `avro`, `jsonschema`, `protobuf` or `auto`); with "
        "`jsonschema`, a framed payload that is not JSON text, or a schema that is not JSON "
        "Schema",
    ),
    ErrorType(
        "NotAnObject",
        "decode",
        "the JSON is not an object (an array, a string, ...), or a framed value not a record",
    ),
    ErrorType(
        "UnknownMagicByte",
        "decode",
        "`--value-format avro|jsonschema|protobuf|auto`: the value does not start with the Schema "
        "Registry magic byte 0 (auto: a value starting with a control byte JSON text cannot "
        "start with)",
    ),
    ErrorType(
        "TruncatedFrame",
        "decode",
        "`--value-format avro|jsonschema|protobuf|auto`: the value ends within the 5-byte "
        "header (magic byte, schema id) or right after it, or within a Protobuf value's "
        "message indexes",
    ),
    ErrorType("UnknownSchema", "decode", "the Schema Registry does not know the value's schema id"),
    ErrorType(
        "RegistryUnavailable",
        "decode",
        "the Schema Registry did not answer for a schema id not fetched before, after the "
        "client's retries; replay the dead letter once it answers",
    ),
    ErrorType(
        "InvalidAvro",
        "decode",
        "the framed payload does not decode with its schema (cut short, corrupt), or the "
        "schema is not Avro (nor, under `auto`, JSON Schema or Protobuf)",
    ),
    ErrorType(
        "InvalidProtobuf",
        "decode",
        "`--value-format protobuf`: the payload does not decode as the message its message "
        "indexes name (cut short, corrupt), the indexes name no message of the schema, the "
        "schema does not compile, or it is not a Protobuf schema",
    ),
    ErrorType("TooDeep", "decode", "arrays or objects nest deeper than 8 levels"),
    ErrorType(
        "MissingField",
        "validate",
        "`id` or `features` is missing, or `model` with no `--default-model`, or the "
        "`--enrich` key field of an event that lacks features",
    ),
    ErrorType(
        "InvalidField",
        "validate",
        "`id`, `model`, `version`, `ts`, `features` or an `--enrich` key field has the "
        "wrong type or range, or named features went to a model without feature names",
    ),
    ErrorType("FeatureCount", "validate", "`features` has a different length than the model takes"),
    ErrorType("UnknownFeature", "validate", "`features` names a feature or input the model lacks"),
    ErrorType("MissingFeature", "validate", "`features` lacks some features or inputs"),
    ErrorType(
        "NonNumeric", "validate", "a feature is a string, a boolean, null, an array or object"
    ),
    ErrorType("NonFinite", "validate", "a feature is NaN or infinite"),
    ErrorType("Float32Overflow", "validate", "a feature's magnitude is beyond float32's"),
    ErrorType("Float16Overflow", "validate", "a value of an FP16 input is beyond float16's"),
    ErrorType("Float64Overflow", "validate", "a value of an FP64 input is beyond float64's"),
    ErrorType("NotAnInteger", "validate", "a number with a fraction for an integer input"),
    ErrorType("IntegerRange", "validate", "an integer outside its input's type (INT8, UINT32...)"),
    ErrorType("NotBoolean", "validate", "a BOOL input's value is not true or false"),
    ErrorType("NotAString", "validate", "a string (BYTES) input's value is not a string"),
    ErrorType(
        "WrongShape",
        "validate",
        "an input's value has another shape than one row of it takes (a ragged or short array)",
    ),
    ErrorType(
        "InvalidModelName",
        "route",
        "`model` or `version` is not a plain name (a path, `..`, over 128 characters)",
    ),
    ErrorType("UnknownModel", "route", "no model of that name is in the store"),
    ErrorType("UnknownVersion", "route", "the model has no such version"),
    ErrorType(
        "ModelLoadFailed",
        "route",
        "the model's file cannot be loaded (corrupt, checksum mismatch, unsafe path)",
    ),
    ErrorType(
        "EntityNotFound",
        "enrich",
        "the event lacks features and its `--enrich` key is not in the table topic (never "
        "produced, or deleted by a tombstone); the message names the topic and the key",
    ),
    ErrorType(
        "OutputShape",
        "infer",
        "the model returned an output without one entry per row",
    ),
    ErrorType(
        "OutputMismatch",
        "infer",
        "the outputs do not fit the manifest (labels, probability output) or JSON",
    ),
    ErrorType(
        "TooManyDeliveries",
        "deliver",
        "share groups: the record was acquired more than `--max-delivery-attempts` times "
        "(its processing kept failing or timing out)",
    ),
    ErrorType(
        "DeadlineExceeded",
        "deadline",
        "doors only: the caller's deadline passed before its rows ran (HTTP 504, gRPC "
        "DEADLINE_EXCEEDED)",
    ),
    ErrorType(
        "IncompatibleSchema",
        "produce",
        "`--output-format avro|jsonschema`: the Schema Registry refused the prediction "
        "schema of a model version first met while running (its outputs break the subject's "
        "compatibility; one met at start stops the worker instead); replay once fixed",
    ),
    ErrorType(
        "UnwritableOutputs",
        "produce",
        "`--output-format avro`: two outputs of the model version share one Avro name",
    ),
    ErrorType(
        "SchemaNotRegistered",
        "produce",
        "`--output-format avro|jsonschema`: the Schema Registry did not answer when a "
        "version's prediction schema was first registered; replay the dead letter once it "
        "answers",
    ),
)

PATTERNS: Final = (
    ErrorType(
        "ONNX Runtime's exception class, e.g. `InvalidArgument`, `Fail`, `RuntimeException`",
        "infer",
        "ONNX Runtime failed on this row (the rest of its batch was predicted)",
    ),
    ErrorType(
        "librdkafka's error name in CamelCase, e.g. `MsgSizeTooLarge`, `InvalidRecord`",
        "produce",
        "the broker or the producer refused the prediction or the dead letter itself",
    ),
)
