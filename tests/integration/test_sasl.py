"""The worker through a SASL/SCRAM listener of a real broker, with its secret kept out of logs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from pipeline.dev.localkafka import SHORT_LIVED, BrokerInfo, LocalKafka

from .kafkaio import WorkerProcess, drop_producers, free_port, good_events, read_all, send

PASSWORD = "s3cret-scram-pw-7f3a"


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    broker = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka-sasl"), jvm_flags=SHORT_LIVED)
    info, _ = broker.start(port=free_port(), sasl_port=free_port(), scram_users={"alice": PASSWORD})
    try:
        yield info
    finally:
        drop_producers(info.bootstrap)
        broker.stop()


def _sasl_flags(password_ref: str) -> list[str]:
    return ["-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanism=SCRAM-SHA-512",
            "-X", "sasl.username=alice", "-X", f"sasl.password={password_ref}"]  # fmt: skip


def test_worker_runs_through_scram_and_never_logs_the_password(
    scram_broker: BrokerInfo, tmp_path: Path
) -> None:
    sasl = f"127.0.0.1:{scram_broker.sasl_port}"
    events = good_events(500)
    send(scram_broker.bootstrap, "scram-in", events)
    with WorkerProcess(
        ["--bootstrap-servers", sasl, "--input-topic", "scram-in", "--output-topic", "scram-out",
         "--group-id", "scram", "--default-model", "breast-cancer-mlp", "--stats-interval-s", "1",
         *_sasl_flags("env:TEST_SCRAM_PASSWORD")],
        tmp_path / "worker.log", env={"TEST_SCRAM_PASSWORD": PASSWORD},
    ) as worker:  # fmt: skip
        out = read_all(scram_broker.bootstrap, ["scram-out", "scram-out.dlq"], expect=len(events))
        code, _ = worker.stop()
    assert code == 0, worker.log[-2000:]
    assert sorted(r.json["id"] for r in out) == sorted(orjson.loads(v)["id"] for _, v in events)
    assert "sasl.password" in worker.log and "'***'" in worker.log  # the config dump is redacted
    assert PASSWORD not in worker.log


def test_a_wrong_password_is_a_clear_error(scram_broker: BrokerInfo) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--bootstrap-servers",
         f"127.0.0.1:{scram_broker.sasl_port}", *_sasl_flags("not-the-password")],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "could not reach Kafka" in done.stderr and "-X security settings" in done.stderr
    assert "not-the-password" not in done.stderr
