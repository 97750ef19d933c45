"""The doors' refusals: a row the codec rejects gets one HTTP status and the gRPC code that
goes with it, whichever door it came through."""

from __future__ import annotations

import pytest

from pipeline.serve.calls import rejected

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
