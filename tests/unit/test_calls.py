"""The doors' refusals: a row the codec rejects gets one HTTP status and the gRPC code that
goes with it, whichever door it came through."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.serve.calls import rejected, seed_answers

from .test_codec import make_decoder


@pytest.mark.parametrize(
    ("event", "http", "grpc"),
    [
        ({"model": "nope"}, 404, "NOT_FOUND"),
        ({"version": "9"}, 404, "NOT_FOUND"),
        ({"model": "broken"}, 503, "UNAVAILABLE"),
        ({"model": "../etc"}, 400, "INVALID_ARGUMENT"),
        ({"features": [1.0]}, 400, "INVALID_ARGUMENT"),
        ({"features": [1.0, "a", 3.0]}, 400, "INVALID_ARGUMENT"),
    ],
)
def test_a_rejected_row_is_refused_with_a_matching_status_and_code(
    event: dict[str, object], http: int, grpc: str
) -> None:
    decoder, _ = make_decoder()
    (reject,) = decoder.decode_events(
        [{"id": "e", "features": [1.0, 2.0, 3.0], **event}], 0
    ).rejects

    refusal = rejected(reject, "instances[0]: ")

    assert (refusal.http, refusal.grpc) == (http, grpc)
    assert refusal.message == f"instances[0]: {reject.message}"


def test_a_sure_class_has_confidence_1_not_float32_rounding_above_it() -> None:
    """Issue 26 item 8: float32 probabilities of a sure class sum past 1 (1.0000001)."""
    probabilities = np.array([[np.float32(1.0000001), 0.0], [0.25, 0.75]], dtype=np.float32)
    model = SimpleNamespace(spec=SimpleNamespace(probability_output="probabilities", labels=None))

    answers = seed_answers(model, {"probabilities": probabilities})  # type: ignore[arg-type]

    assert [(a.prediction, a.confidence) for a in answers] == [(0.0, 1.0), (1.0, 0.75)]
    assert probabilities[0, 0] > 1.0  # the outputs keep the model's own figure
