"""`--workers N`: N worker processes in one consumer group under one parent.

Each child is a full worker (its own consumer, producer and model sessions); Kafka's group
assignment spreads the partitions over them, as it does over workers on other machines.
The parent forwards SIGTERM/SIGINT to the children and waits for them. A child that dies
on its own is reported, the others are stopped cleanly, and the parent exits non-zero so
whatever runs it (systemd, Kubernetes, compose) can restart the set.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from pipeline.config import WorkerConfig
from pipeline.errors import PipelineError

__all__ = ["supervise"]

log = logging.getLogger("pipeline.supervisor")
_CHILD_STOP_TIMEOUT_S = 15.0


def _child(config: WorkerConfig, index: int) -> None:
    from pipeline.kafka import worker
    from pipeline.logs import setup_logging

    setup_logging(prefix=f"worker-{index} ")
    try:
        code = worker.run_worker(config, index)
    except PipelineError as exc:
        log.error("error: %s", exc)
        code = 2
    worker.exit_if_abandoned(code)
    raise SystemExit(code)


def supervise(config: WorkerConfig) -> int:
    """Run `config.workers` worker processes until signalled or one dies; return the exit code."""
    ctx = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = []
    stopping = False

    def _forward(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        log.info("received %s: stopping %d workers", signal.Signals(signum).name, len(children))
        for child in children:
            if child.is_alive() and child.pid is not None:
                child.terminate()  # SIGTERM: each child finishes its batches and commits

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    for index in range(config.workers):
        process = ctx.Process(target=_child, args=(config, index), name=f"worker-{index}")
        process.start()
        children.append(process)
        log.info("started worker-%d (pid %s)", index, process.pid)
    code = 0
    while any(c.is_alive() for c in children):
        for child in children:
            if not child.is_alive() and child.exitcode not in (0, None) and not stopping:
                log.error("%s (pid %s) died with exit code %s; stopping the others",
                          child.name, child.pid, child.exitcode)  # fmt: skip
                code = 1
                _forward(signal.SIGTERM, None)
        time.sleep(0.2)
    for child in children:
        child.join(_CHILD_STOP_TIMEOUT_S)
        if child.exitcode not in (0, None) and code == 0:
            log.error("%s (pid %s) exited with code %s", child.name, child.pid, child.exitcode)
            code = 1
    return code
