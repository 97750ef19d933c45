"""`make demo` (python -m pipeline.dev.demo) on its own local broker: Ctrl-C ends it with
its worker and broker stopped, no traceback; the closing hint names the demo's port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.dev.demo import try_it_yourself

from .kafkaio import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_stops_the_demo_quietly_with_its_broker(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "pipeline.dev.demo", "--port", str(port),
             "--data-dir", str(tmp_path / "kafka"), "--events", "200000"],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            # as from a terminal: a shell without job control starts a background job (this
            # suite, say) with SIGINT ignored, and Python then leaves it ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "starting: pipeline run" not in log.read_text():
                assert demo.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            demo.send_signal(signal.SIGINT)
            code = demo.wait(60)
        finally:
            if demo.poll() is None:
                demo.kill()
    text = log.read_text()
    assert code == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "demo stopped (Ctrl-C)" in text and "Kafka broker stopped" in text, text
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the demo's broker still listens"


def test_the_closing_hint_names_the_demos_port() -> None:
    hint = try_it_yourself(29092)
    assert "pipeline kafka start --port 29092" in hint
    assert hint.count("--bootstrap-servers 127.0.0.1:29092") == 3


def test_the_avro_demo_ends_every_event_as_one_prediction_or_dead_letter(
    tmp_path: Path,
) -> None:
    """`make demo-avro`: its own broker and Schema Registry, framed Avro events, Avro
    predictions read back by a plain AvroDeserializer, and the bad values (JSON text
    ones and a framed one of an unknown schema id) as dead letters."""
    from pipeline.dev.localregistry import missing_tools

    missing = missing_tools()
    if missing is not None:
        pytest.skip(f"no Schema Registry for the Avro demo: {missing}")
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.dev.demo", "--avro", "--port", str(port),
         "--data-dir", str(tmp_path / "kafka"), "--events", "300"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "produced 300 events as framed Avro" in out and "and 4 bad ones" in out, out[-4000:]
    assert "304 events in -> 300 predictions + 4 dead letters, 0 duplicates" in out, out[-4000:]
    assert "type=UnknownSchema" in out and "are written as Avro: schema id" in out, out[-4000:]
    assert "Schema Registry stopped" in out and "Kafka broker stopped" in out, out[-4000:]


def test_the_avro_demos_closing_hint_starts_a_registry_and_names_the_formats() -> None:
    hint = try_it_yourself(29092, avro=True)
    assert "pipeline schema-registry start --port 8081" in hint
    assert "--value-format auto --output-format avro --schema-registry-url " in hint
