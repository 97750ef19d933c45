"""`pipeline produce` and `pipeline consume` against the real broker."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import orjson

from .kafkaio import read_all, send


def _pipeline(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def test_produce_sends_json_lines_keyed_by_id_and_raw_lines_unkeyed(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=2)
    lines = '{"id": "a", "features": [1]}\n\n{"id": "b", "features": [2]}\nnot json\n'
    done = _pipeline("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                     "--file", "-", stdin=lines)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"sent 3 events to {topic}" in done.stderr
    got = read_all(kafka_bootstrap, [topic], expect=3, settle_s=0.5)
    assert sorted(((r.key, r.value) for r in got), key=lambda kv: kv[0] or b"") == [
        (None, b"not json"),
        (b"a", b'{"id": "a", "features": [1]}'),
        (b"b", b'{"id": "b", "features": [2]}'),
    ]


def test_produce_synthetic_at_a_rate_then_consume_prints_json_lines_with_headers(
    kafka_bootstrap: str, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=1)
    done = _pipeline("produce", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                     "--synthetic", "breast-cancer-mlp", "--count", "200", "--rate", "400")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"sent 200 events to {topic}" in done.stderr
    send(kafka_bootstrap, topic, [(b"k", b"\xff raw", [("pipeline.error.stage", b"decode")])])
    shown = _pipeline("consume", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                      "--from-beginning", "--count", "201", "--timeout", "20")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    records = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert len(records) == 201
    first = records[0]
    assert first["value"]["model"] == "breast-cancer-mlp" and len(first["value"]["features"]) == 30
    assert first["key"].startswith("entity-") and first["offset"] == 0
    assert records[-1]["headers"] == {"pipeline.error.stage": "decode"}
    assert records[-1]["value"] == "\ufffd raw"  # not JSON: shown as text, replaced bytes marked
