"""The codec: every reject reason, row grouping and order, and the prediction documents."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from pipeline.engine.codec import (
    Decoded,
    EventDecoder,
    Reject,
    RowBlock,
    encode_predictions,
    encode_rows,
    is_plain_name,
)
from pipeline.engine.spec import ModelSpec
from pipeline.errors import ModelLoadError, ModelNotFoundError

NAMES = ("radius", "texture", "mean area")
LABELS = ("malignant", "benign")
BC1 = ModelSpec(
    name="bc",
    version="1",
    n_features=3,
    feature_names=NAMES,
    labels=LABELS,
    probability_output="probabilities",
)
BC2 = ModelSpec(
    name="bc",
    version="2",
    n_features=3,
    feature_names=NAMES,
    labels=LABELS,
    probability_output="probabilities",
)
PLAIN = ModelSpec(name="plain", version="1", n_features=2)
FALLBACK_TS = 1_700_000_000_000

try:
    orjson.loads(b"1e400")
except orjson.JSONDecodeError:
    HUGE_LITERAL = ("decode", "InvalidJson", "infinity")
else:  # an orjson that parses 1e400 as inf
    HUGE_LITERAL = ("validate", "NonFinite", "features[0]")


class DictCatalog:
    """A ModelCatalog over a dict; the last spec listed for a name is its newest."""

    def __init__(self, *specs: ModelSpec, broken: tuple[str, ...] = ()) -> None:
        self.specs: dict[str, list[ModelSpec]] = {}
        for spec in specs:
            self.specs.setdefault(spec.name, []).append(spec)
        self.broken = broken
        self.calls: list[tuple[str, str | None]] = []

    def resolve(self, name: str, version: str | None) -> ModelSpec:
        self.calls.append((name, version))
        if name in self.broken:
            raise ModelLoadError(f"model {name!r}: model.onnx fails its checksum")
        versions = self.specs.get(name)
        if not versions:
            raise ModelNotFoundError(f"no model {name!r} in the store")
        if version is None:
            return versions[-1]
        for spec in versions:
            if spec.version == version:
                return spec
        raise ModelNotFoundError(f"no version {version!r} of model {name!r}")


def make_decoder(**kwargs: Any) -> tuple[EventDecoder, DictCatalog]:
    catalog = DictCatalog(BC1, BC2, PLAIN, broken=("broken",))
    kwargs.setdefault("default_model", "bc")
    return EventDecoder(catalog=catalog, **kwargs), catalog


def event(**fields: Any) -> bytes:
    """A feature event for model bc with three good features, with `fields` overriding."""
    doc: dict[str, Any] = {"id": "e-1", "features": [1.5, 2, 3.25]}
    doc.update(fields)
    return orjson.dumps({k: v for k, v in doc.items() if v is not DROP})


DROP = object()


def decode(*values: bytes | None, **kwargs: Any) -> Decoded:
    decoder, _ = make_decoder(**kwargs)
    return decoder.decode(list(values), [FALLBACK_TS + i for i in range(len(values))])


def only_reject(decoded: Decoded) -> Reject:
    assert decoded.blocks == {}
    assert len(decoded.rejects) == 1
    return decoded.rejects[0]


def named(**overrides: Any) -> dict[str, Any]:
    features: dict[str, Any] = {"radius": 1.0, "texture": 2.0, "mean area": 3.0}
    features.update(overrides)
    return {k: v for k, v in features.items() if v is not DROP}


REJECTS: list[tuple[str, bytes | None, str, str, str]] = [
    # (case, value, stage, error_type, text the message must contain)
    ("non-utf8", b'{"id": "\xff", "features": [1, 2, 3]}', "decode", "InvalidUtf8", "UTF-8"),
    ("latin1", '{"id": "café"}'.encode("latin-1"), "decode", "InvalidUtf8", "UTF-8"),
    ("null-value", None, "decode", "EmptyValue", "null"),
    ("empty-value", b"", "decode", "EmptyValue", "empty"),
    ("truncated-json", b'{"id": "e-1", "features": [1, 2', "decode", "InvalidJson", "JSON"),
    ("bad-json", b"{id: 1}", "decode", "InvalidJson", "JSON"),
    ("nan-literal", b'{"id": "e", "features": [NaN, 1, 2]}', "decode", "InvalidJson", "JSON"),
    ("top-array", b"[1, 2, 3]", "decode", "NotAnObject", "got an array"),
    ("top-string", b'"hello"', "decode", "NotAnObject", "got string 'hello'"),
    ("top-null", b"null", "decode", "NotAnObject", "got null"),
    ("too-large", event(id="x" * 70_000), "decode", "TooLarge", "70"),
    ("megabyte-of-brackets", b"[" * 1_000_000, "decode", "TooLarge", "1000000 bytes"),
    ("too-deep", event(extra=[[[[[[[[[1]]]]]]]]]), "decode", "TooDeep", "10 levels"),
    ("deep-features", event(features=[[[[[[[[[1]]]]]]]]]), "decode", "TooDeep", "levels"),
    ("deep-id", event(id=[[[[[[[[["a"]]]]]]]]]), "decode", "TooDeep", "levels"),
    ("deep-top-array", b"[" * 9 + b"]" * 9, "decode", "TooDeep", "9 levels"),
    ("deep-truncated", b'{"id": "e", "features": ' + b"[" * 20, "decode", "TooDeep", "21 levels"),
    ("missing-id", event(id=DROP), "validate", "MissingField", "id"),
    ("integer-id", event(id=5), "validate", "InvalidField", "id must be"),
    ("null-id", event(id=None), "validate", "InvalidField", "id must be"),
    ("empty-id", event(id=""), "validate", "InvalidField", "id must be"),
    ("long-id", event(id="x" * 257), "validate", "InvalidField", "257 characters"),
    ("missing-features", event(features=DROP), "validate", "MissingField", "features"),
    ("string-features", event(features="1,2,3"), "validate", "InvalidField", "features"),
    ("number-features", event(features=7), "validate", "InvalidField", "features"),
    ("too-few", event(features=[1, 2]), "validate", "FeatureCount", "features must have 3"),
    ("too-many", event(features=[1, 2, 3, 4]), "validate", "FeatureCount", "got 4"),
    ("empty-array", event(features=[]), "validate", "FeatureCount", "got 0"),
    ("named-missing", event(features=named(texture=DROP)), "validate", "MissingFeature", "texture"),
    ("named-unknown", event(features=named(colour=1)), "validate", "UnknownFeature", "colour"),
    (
        "named-on-unnamed-model",
        event(model="plain", features={"a": 1, "b": 2}),
        "validate",
        "UnknownFeature",
        "takes 1 input: 'features' (FP32 [2])",
    ),
    ("string-value", event(features=[1, "1.5", 2]), "validate", "NonNumeric", "features[1]"),
    ("bool-true", event(features=[1, True, 2]), "validate", "NonNumeric", "boolean true"),
    ("bool-false", event(features=[False, 1, 2]), "validate", "NonNumeric", "features[0]"),
    ("null-feature", event(features=[1, 2, None]), "validate", "NonNumeric", "features[2]"),
    ("nested-array", event(features=[1, [2], 3]), "validate", "NonNumeric", "array"),
    ("nested-object", event(features=[1, {"v": 2}, 3]), "validate", "NonNumeric", "object"),
    (
        "named-bool",
        event(features=named(texture=True)),
        "validate",
        "NonNumeric",
        "features['texture']",
    ),
    ("huge-literal", b'{"id": "e", "features": [1e400, 1, 2]}', *HUGE_LITERAL),
    ("f32-overflow", event(features=[1, 2, 1e39]), "validate", "Float32Overflow", "features[2]"),
    ("f32-underflow", event(features=[-1e39, 2, 3]), "validate", "Float32Overflow", "features[0]"),
    (
        "named-f32-overflow",
        event(features=named(**{"mean area": 5e38})),
        "validate",
        "Float32Overflow",
        "features['mean area']",
    ),
    ("string-ts", event(ts="2024-01-01"), "validate", "InvalidField", "ts must be a non-negative"),
    ("float-ts", event(ts=1.5), "validate", "InvalidField", "ts"),
    ("bool-ts", event(ts=True), "validate", "InvalidField", "ts"),
    ("negative-ts", event(ts=-1), "validate", "InvalidField", "ts"),
    ("integer-model", event(model=5), "validate", "InvalidField", "model must be a string"),
    ("null-model", event(model=None), "validate", "InvalidField", "model must be a string"),
    ("array-model", event(model=["bc"]), "validate", "InvalidField", "model"),
    ("integer-version", event(version=2), "validate", "InvalidField", "version must be a string"),
    ("unknown-model", event(model="nope"), "route", "UnknownModel", "model 'nope'"),
    ("unknown-version", event(version="9"), "route", "UnknownVersion", "version '9'"),
    ("model-load-error", event(model="broken"), "route", "ModelLoadFailed", "checksum"),
]

INVALID_NAMES = ["../etc", "a/b", "a\\b", "/abs", "a\x00b", "", ".", "..", ".hidden", "x" * 129]


@pytest.mark.parametrize(
    ("value", "stage", "error_type", "text"),
    [pytest.param(*case[1:], id=case[0]) for case in REJECTS],
)
def test_each_bad_value_is_rejected_with_a_reason(
    value: bytes | None, stage: str, error_type: str, text: str
) -> None:
    reject = only_reject(decode(value))

    assert (reject.index, reject.stage, reject.error_type) == (0, stage, error_type)
    assert text in reject.message


def test_no_model_and_no_default_model_is_a_missing_field() -> None:
    reject = only_reject(decode(event(), default_model=None))

    assert (reject.stage, reject.error_type) == ("validate", "MissingField")
    assert "model" in reject.message


def test_a_deep_value_is_rejected_without_parsing_even_under_a_large_size_limit() -> None:
    reject = only_reject(decode(b"[" * 1_000_000, max_value_bytes=2_000_000))

    assert (reject.stage, reject.error_type) == ("decode", "TooDeep")


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    decoded = decode(event(id="[[[[[{{{{{[[[[[", note='"quoted" [[[[[[[[[['))

    assert decoded.rejects == []
    assert decoded.blocks[("bc", "2")].ids == ["[[[[[{{{{{[[[[["]


@pytest.mark.parametrize("field", ["model", "version"])
@pytest.mark.parametrize("name", INVALID_NAMES)
def test_a_name_that_is_not_plain_is_rejected_without_asking_the_catalog(
    field: str, name: str
) -> None:
    decoder, catalog = make_decoder()

    reject = only_reject(decoder.decode([event(**{field: name})], [FALLBACK_TS]))

    assert (reject.stage, reject.error_type) == ("route", "InvalidModelName")
    assert reject.message.startswith(f"{field} must be a plain name")
    assert all(name not in call for call in catalog.calls)


def test_model_load_error_message_is_passed_on() -> None:
    reject = only_reject(decode(event(model="broken")))

    assert reject.message == "model 'broken': model.onnx fails its checksum"


def test_named_features_are_put_in_the_spec_column_order() -> None:
    decoded = decode(event(features={"mean area": 3.5, "radius": 1.25, "texture": -2}))

    block = decoded.blocks[("bc", "2")]
    assert block.feed["features"].tolist() == [[1.25, -2.0, 3.5]]


def test_a_good_event_beside_bad_ones_is_decoded() -> None:
    decoded = decode(b"{", event(id="good"), None, event(features=[1, True, 3]))

    assert [(r.index, r.error_type) for r in decoded.rejects] == [
        (0, "InvalidJson"),
        (2, "EmptyValue"),
        (3, "NonNumeric"),
    ]
    block = decoded.blocks[("bc", "2")]
    assert (block.indices, block.ids) == ([1], ["good"])
    assert block.feed["features"].tolist() == [[1.5, 2.0, 3.25]]


def test_an_out_of_range_row_is_dropped_from_its_block_and_the_others_kept() -> None:
    decoded = decode(
        event(id="a", features=[1, 2, 3]),
        event(id="b", features=[1, 4e38, 3]),
        event(id="c", features=[4, 5, 6]),
    )

    assert [(r.index, r.error_type) for r in decoded.rejects] == [(1, "Float32Overflow")]
    block = decoded.blocks[("bc", "2")]
    assert (block.indices, block.ids, block.ts) == (
        [0, 2],
        ["a", "c"],
        [FALLBACK_TS, FALLBACK_TS + 2],
    )
    assert block.feed["features"].tolist() == [[1, 2, 3], [4, 5, 6]]


def test_a_block_whose_every_row_is_out_of_range_is_not_returned() -> None:
    decoded = decode(event(features=[1, 2, 1e39]), event(model="plain", features=[1, 2]))

    assert list(decoded.blocks) == [("plain", "1")]
    assert [r.index for r in decoded.rejects] == [0]


def test_rows_are_grouped_per_model_and_resolved_version_in_input_order() -> None:
    decoded = decode(
        event(id="a", version="1", features=[1, 1, 1]),
        event(id="b", model="plain", features=[2, 2], ts=5),
        event(id="c", features=[3, 3, 3]),
        event(id="d", version="2", features=[4, 4, 4], ts=7),
        event(id="e", version="1", features=[5, 5, 5]),
    )

    assert decoded.rejects == []
    assert sorted(decoded.blocks) == [("bc", "1"), ("bc", "2"), ("plain", "1")]
    expected = {
        ("bc", "1"): ([0, 4], ["a", "e"], [FALLBACK_TS, FALLBACK_TS + 4], [[1] * 3, [5] * 3]),
        ("bc", "2"): ([2, 3], ["c", "d"], [FALLBACK_TS + 2, 7], [[3] * 3, [4] * 3]),
        ("plain", "1"): ([1], ["b"], [5], [[2, 2]]),
    }
    for key, (indices, ids, ts, rows) in expected.items():
        block = decoded.blocks[key]
        assert (block.spec.name, block.spec.version) == key
        assert (block.indices, block.ids, block.ts) == (indices, ids, ts)
        assert block.feed["features"].tolist() == rows
        assert block.feed["features"].dtype == np.float32
        assert block.feed["features"].flags.c_contiguous


def test_default_model_is_used_when_model_is_absent() -> None:
    decoded = decode(event(features=[1, 2]), default_model="plain")

    assert decoded.rejects == []
    assert list(decoded.blocks) == [("plain", "1")]


def test_absent_version_is_resolved_by_the_catalog_as_newest() -> None:
    decoder, catalog = make_decoder()

    decoded = decoder.decode([event()], [FALLBACK_TS])

    assert catalog.calls == [("bc", None)]
    assert decoded.blocks[("bc", "2")].spec is BC2


def test_each_model_and_version_is_resolved_once_per_call() -> None:
    decoder, catalog = make_decoder()

    decoder.decode([event(id=str(i), version=str(1 + i % 2)) for i in range(10)], [0] * 10)

    assert sorted(catalog.calls) == [("bc", "1"), ("bc", "2")]


def test_a_failed_route_is_asked_once_per_call_and_rejects_every_event() -> None:
    decoder, catalog = make_decoder()

    decoded = decoder.decode([event(id=str(i), model="nope") for i in range(3)], [0] * 3)

    assert catalog.calls == [("nope", None)]
    assert [(r.index, r.error_type) for r in decoded.rejects] == [
        (0, "UnknownModel"),
        (1, "UnknownModel"),
        (2, "UnknownModel"),
    ]


def test_non_string_models_that_compare_equal_get_their_own_messages() -> None:
    decoded = decode(event(model=True), event(model=1), event(model=1.0))

    assert [r.message for r in decoded.rejects] == [
        "model must be a string, got boolean true",
        "model must be a string, got integer 1",
        "model must be a string, got number 1.0",
    ]


def test_event_ts_is_used_and_the_fallback_only_when_ts_is_absent() -> None:
    decoder, _ = make_decoder()

    decoded = decoder.decode([event(ts=0), event(), event(ts=123)], [10, 20, 30])

    assert decoded.blocks[("bc", "2")].ts == [0, 20, 123]


def test_integer_and_float32_limit_features_are_accepted() -> None:
    decoded = decode(
        b'{"id": "e", "features": [3.4028235e38, -3.4028235e38, 18446744073709551615]}'
    )

    assert decoded.rejects == []
    row = decoded.blocks[("bc", "2")].feed["features"][0]
    assert np.isfinite(row).all()


def test_an_id_of_256_characters_is_accepted() -> None:
    assert decode(event(id="x" * 256)).rejects == []


def test_extra_fields_are_ignored() -> None:
    assert decode(event(source="sensor-7", tags={"site": "a"})).rejects == []


def test_decode_refuses_mismatched_fallback_timestamps() -> None:
    decoder, _ = make_decoder()

    with pytest.raises(ValueError, match="fallback_ts must have one entry per value"):
        decoder.decode([event(), event()], [1])


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [({"max_value_bytes": 0}, "max_value_bytes"), ({"max_depth": 1}, "max_depth")],
)
def test_decoder_refuses_nonsense_limits(kwargs: dict[str, int], text: str) -> None:
    with pytest.raises(ValueError, match=text):
        make_decoder(**kwargs)


@pytest.mark.parametrize(
    ("name", "plain"),
    [("breast-cancer-mlp", True), ("v1.2_rc-3", True), ("1", True)]
    + [(name, False) for name in INVALID_NAMES],
)
def test_is_plain_name(name: str, plain: bool) -> None:
    assert is_plain_name(name) is plain


def block_of(spec: ModelSpec, n: int) -> RowBlock:
    return RowBlock(
        spec=spec,
        feed={"features": np.zeros((n, spec.n_features), dtype=np.float32)},
        indices=list(range(n)),
        ids=[f"e-{i}" for i in range(n)],
        ts=[100 + i for i in range(n)],
    )


def test_predictions_carry_ids_outputs_label_and_score() -> None:
    block = block_of(BC1, 2)
    outputs = {
        "label": np.array([1, 0], dtype=np.int64),
        "probabilities": np.array([[0.25, 0.75], [0.9, 0.1]], dtype=np.float32),
    }

    docs = [orjson.loads(b) for b in encode_predictions(block, outputs, predicted_at_ms=999)]

    assert docs == [
        {
            "id": "e-0",
            "model": "bc",
            "version": "1",
            "label": "benign",
            "score": 0.75,
            "outputs": {"label": 1, "probabilities": [0.25, 0.75]},
            "ts": 100,
            "predicted_at": 999,
        },
        {
            "id": "e-1",
            "model": "bc",
            "version": "1",
            "label": "malignant",
            "score": 0.9,
            "outputs": {"label": 0, "probabilities": [0.9, 0.1]},
            "ts": 101,
            "predicted_at": 999,
        },
    ]


@pytest.mark.parametrize("n_outputs", [1, 2, 3])
def test_unlabelled_predictions_have_numbers_or_lists_of_numbers(n_outputs: int) -> None:
    block = block_of(PLAIN, 3)
    candidates = {
        "variable": np.array([[0.5], [1.5], [2.5]], dtype=np.float32),
        "rank": np.array([3, 1, 2], dtype=np.int64),
        "raw": np.array([0.1, 0.2, 0.3], dtype=np.float64),
    }
    outputs = dict(list(candidates.items())[:n_outputs])

    docs = [orjson.loads(b) for b in encode_predictions(block, outputs, predicted_at_ms=1)]

    assert [d["id"] for d in docs] == ["e-0", "e-1", "e-2"]
    for row, doc in enumerate(docs):
        assert set(doc) == {"id", "model", "version", "outputs", "ts", "predicted_at"}
        assert doc["outputs"] == {k: v.tolist()[row] for k, v in outputs.items()}


def test_encode_refuses_outputs_with_the_wrong_number_of_rows() -> None:
    with pytest.raises(ValueError, match="output 'rank' must have one entry per row"):
        encode_predictions(block_of(PLAIN, 3), {"rank": np.arange(2)}, predicted_at_ms=1)


def test_encode_refuses_a_probability_output_without_one_column_per_label() -> None:
    outputs = {"probabilities": np.ones((2, 3), dtype=np.float32)}

    with pytest.raises(ValueError, match="one column per label"):
        encode_predictions(block_of(BC1, 2), outputs, predicted_at_ms=1)


def test_decoded_rows_round_trip_to_predictions() -> None:
    decoded = decode(event(id="a", ts=1), event(id="b", ts=2))
    block = decoded.blocks[("bc", "2")]
    outputs = {
        "label": np.array([0, 1], dtype=np.int64),
        "probabilities": np.array([[0.6, 0.4], [0.3, 0.7]], dtype=np.float32),
    }

    docs = [orjson.loads(b) for b in encode_predictions(block, outputs, predicted_at_ms=3)]

    assert [(d["id"], d["ts"], d["version"], d["label"]) for d in docs] == [
        ("a", 1, "2", "malignant"),
        ("b", 2, "2", "benign"),
    ]


# --- outputs that are not tensors (ZipMap) ----------------------------------------------


def test_map_outputs_become_objects_with_string_keys() -> None:
    spec = ModelSpec(name="zm", version="1", n_features=3)
    block = block_of(spec, 2)
    maps = np.empty(2, dtype=object)
    maps[:] = [{0: 0.25, 1: 0.75}, {0: 1.0, 1: 0.0}]
    outputs = {"output_label": np.array([1, 0], dtype=np.int64), "output_probability": maps}
    docs = [orjson.loads(d) for d in encode_predictions(block, outputs, 5)]
    assert docs[0]["outputs"] == {"output_label": 1, "output_probability": {"0": 0.25, "1": 0.75}}
    assert docs[1]["outputs"]["output_probability"] == {"0": 1.0, "1": 0.0}


def test_labels_and_scores_come_from_a_map_probability_output() -> None:
    spec = ModelSpec(
        name="zm", version="1", n_features=3, labels=("malignant", "benign"),
        probability_output="output_probability",
    )  # fmt: skip
    maps = np.empty(2, dtype=object)
    maps[:] = [{0: 0.25, 1: 0.75}, {0: 0.875, 1: 0.125}]
    outputs = {"output_label": np.array([1, 0], dtype=np.int64), "output_probability": maps}
    docs = [orjson.loads(d) for d in encode_predictions(block_of(spec, 2), outputs, 5)]
    assert [(d["label"], d["score"]) for d in docs] == [("benign", 0.75), ("malignant", 0.875)]


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("with_ids", [True, False])
def test_each_prediction_document_has_its_fields_in_the_contract_order(
    labelled: bool, with_ids: bool
) -> None:
    probabilities = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    if labelled:
        spec = ModelSpec(name="m", version="3", n_features=2, labels=("no", "yes"),
                         probability_output="probabilities")  # fmt: skip
        outputs = {"label": np.array([1, 0]), "probabilities": probabilities}
    else:
        spec = ModelSpec(name="m", version="3", n_features=2)
        outputs = {"variable": probabilities[:, :1]}
    prediction_ids = ["in/0/7/m/3", "in/0/8/m/3"] if with_ids else None

    docs = [orjson.loads(d) for d in encode_rows(spec, ["a", "b"], [10, 11], outputs, 99,
                                                  prediction_ids)]  # fmt: skip

    keys = ["id", "model", "version", *(["label", "score"] if labelled else []), "outputs",
            "ts", "predicted_at"]  # fmt: skip
    assert [list(d) for d in docs] == [(["prediction_id"] if with_ids else []) + keys] * 2
    assert [d.get("prediction_id") for d in docs] == (prediction_ids or [None, None])
    assert [(d["id"], d["ts"], d["predicted_at"]) for d in docs] == [("a", 10, 99), ("b", 11, 99)]
    if labelled:
        assert [(d["label"], d["score"]) for d in docs] == [("yes", 0.75), ("no", 0.5)]
