"""Protobuf schemas of the registry (`pipeline.protoschema`): compiling .proto text and
base64 descriptors, the frame's message indexes, a message read as its JSON twin's data,
and a prediction written as a message; no registry, no broker."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, json_format

from pipeline.protoschema import (
    ProtoProblem,
    compile_schema,
    frame_indexes,
    message_data,
    prediction_message,
)

ROOT = Path(__file__).resolve().parents[2]

TYPES = """
syntax = "proto3";
package t;
import "google/protobuf/timestamp.proto";
message Event {
  string id = 1;
  string model = 2;
  int64 ts = 3;
  Inputs features = 4;
  optional string note = 5;
  map<string, double> extra = 6;
  Kind kind = 7;
  repeated Inputs history = 8;
  google.protobuf.Timestamp at = 9;
  oneof choice { string word = 10; int64 number = 11; }
  message Inputs {
    double amount = 1;
    int64 hour = 2;
    string country = 3;
    bool card_present = 4;
    repeated int64 ids = 5;
  }
}
enum Kind { KIND_UNSPECIFIED = 0; PAYMENT = 1; }
message Other { string id = 1; }
"""


def _event(**fields: Any) -> Any:
    return compile_schema(TYPES).message_class([0])(**fields)


def test_a_proto3_default_is_a_value_and_an_unset_optional_is_absent() -> None:
    cls = compile_schema(TYPES).message_class([0])
    message = json_format.ParseDict(
        {"id": "e1", "features": {"amount": 0.0, "hour": 3, "country": "", "ids": [1, 2]}}, cls()
    )

    data = message_data(cls.FromString(message.SerializeToString()))

    assert data == {
        "id": "e1",  # model "" and ts 0 are absent, as a null is in Avro
        "features": {"amount": 0.0, "hour": 3, "country": "", "card_present": False,
                     "ids": [1, 2]},
        "extra": {},
        "kind": "KIND_UNSPECIFIED",
        "history": [],
    }  # fmt: skip


def test_maps_enums_nested_lists_oneofs_and_well_known_types_read_as_json_would() -> None:
    message = _event(id="e", model="m", ts=5, note="n", extra={"a": 1.5}, kind=1, word="w")
    message.history.add(hour=7)
    message.at.seconds = 60

    data = message_data(message)

    assert data["model"] == "m" and data["ts"] == 5 and data["note"] == "n"
    assert data["extra"] == {"a": 1.5} and data["kind"] == "PAYMENT" and data["word"] == "w"
    assert "number" not in data and "features" not in data  # unset oneof member, message
    assert data["history"][0]["hour"] == 7 and data["at"] == {"seconds": 60, "nanos": 0}


def test_message_indexes_name_a_message_of_the_file_or_a_nested_one() -> None:
    schema = compile_schema(TYPES)
    assert frame_indexes(b"\0" * 5 + b"\x00rest", 5) == ([0], 6)  # the one-byte form
    assert frame_indexes(b"\0" * 5 + b"\x04\x02\x00rest", 5) == ([1, 0], 8)  # zigzag varints
    assert schema.message_class([1]).DESCRIPTOR.full_name == "t.Other"
    nested = [m.name for m in schema.proto.message_type[0].nested_type]  # map entries too
    inputs = schema.message_class([0, nested.index("Inputs")])
    assert inputs.DESCRIPTOR.full_name == "t.Event.Inputs"
    with pytest.raises(ProtoProblem, match=r"message 5 of the file, which holds 2"):
        schema.message_class([5])
    with pytest.raises(ProtoProblem, match="ends inside its message indexes") as cut:
        frame_indexes(b"\0" * 5 + b"\x04\x02", 5)
    assert cut.value.error_type == "TruncatedFrame"
    with pytest.raises(ProtoProblem, match="must start with their count"):
        frame_indexes(b"\0" * 5 + b"\x01", 5)  # zigzag -1


def test_a_schema_that_does_not_compile_quotes_protoc() -> None:
    with pytest.raises(ProtoProblem, match=r"protoc does not compile it: schema.proto:1:.*") as bad:
        compile_schema('syntax = "proto3"; message E { strin id = 1; }')
    assert bad.value.error_type == "InvalidProtobuf"
    with pytest.raises(ProtoProblem, match=r"shared\.proto"):
        compile_schema('syntax = "proto3"; import "shared.proto"; message E { S s = 1; }')


def test_an_imported_file_comes_from_the_references() -> None:
    shared = 'syntax = "proto3"; package s; message Money { double amount = 1; }'
    main = 'syntax = "proto3"; import "shared/money.proto"; message E { s.Money m = 1; }'

    cls = compile_schema(main, {"shared/money.proto": shared}).message_class([0])

    assert message_data(cls(m={"amount": 2.5})) == {"m": {"amount": 2.5}}


def test_a_base64_descriptor_compiles_as_its_text_does() -> None:
    proto = descriptor_pb2.FileDescriptorProto()
    compile_schema(TYPES).pool.FindFileByName("schema.proto").CopyToProto(proto)
    described = base64.b64encode(proto.SerializeToString()).decode()

    cls = compile_schema(described).message_class([0])

    assert message_data(cls(id="x", at={"seconds": 1}))["at"] == {"seconds": 1, "nanos": 0}


def test_a_prediction_message_carries_the_documents_fields_and_outputs() -> None:
    text = (ROOT / "schemas/prediction-message.proto").read_text()
    cls = compile_schema(text).message_class([0])
    doc = {
        "prediction_id": "in/0/7/m/1", "id": "e", "model": "m", "version": "1",
        "label": "fraud", "score": 0.75, "ts": 10, "predicted_at": 11,
        "outputs": {"probabilities": [0.25, 0.75], "label": 1, "grid": [[1.5, 2.0], [3.0, 4.0]],
                    "names": ["a", "b"], "zip": {0: 0.25, 1: 0.75}},
    }  # fmt: skip

    read = message_data(cls.FromString(prediction_message(cls, doc)))

    assert {k: read[k] for k in ("prediction_id", "id", "label", "score", "ts", "predicted_at")} == {
        "prediction_id": "in/0/7/m/1", "id": "e", "label": "fraud", "score": 0.75, "ts": 10,
        "predicted_at": 11,
    }  # fmt: skip
    outputs = read["outputs"]
    assert outputs["probabilities"]["numbers"] == [0.25, 0.75]
    assert outputs["probabilities"]["shape"] == [2]
    assert outputs["label"]["integers"] == [1] and outputs["label"]["shape"] == []
    assert outputs["grid"]["shape"] == [2, 2] and outputs["grid"]["numbers"] == [1.5, 2, 3, 4]
    assert outputs["names"]["strings"] == ["a", "b"]
    assert outputs["zip"]["probabilities"] == {"0": 0.25, "1": 0.75}
    unlabelled = {k: v for k, v in doc.items() if k not in ("label", "score", "prediction_id")}
    bare = message_data(cls.FromString(prediction_message(cls, unlabelled)))
    assert "label" not in bare and "score" not in bare and bare["prediction_id"] == ""
