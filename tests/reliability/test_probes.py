"""The liveness probe never fails because Kafka is away: the loop still turns."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.integration.kafkaio import WorkerProcess, free_port
from tests.integration.test_metrics import wait_ready

from .conftest import OwnBroker

MLP = "breast-cancer-mlp"


def test_healthz_stays_up_while_the_broker_is_down(own_broker: OwnBroker, tmp_path: Path) -> None:
    broker = own_broker
    port = free_port()
    args = ["--bootstrap-servers", broker.bootstrap, "--input-topic", "hz-in",
            "--output-topic", "hz-out", "--group-id", "hz", "--default-model", MLP,
            "--metrics-port", str(port)]  # fmt: skip
    with WorkerProcess(args, tmp_path / "worker.log") as worker:
        wait_ready(port, worker)
        broker.stop()
        for _ in range(16):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            time.sleep(0.5)
        broker.start()
        code, _ = worker.stop()
        assert code == 0, (
            f"the worker exited {code} after the broker came back:\n{worker.log[-3000:]}"
        )
