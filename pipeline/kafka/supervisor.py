"""`--workers N`: N worker processes in one consumer group under one parent.

Each child is a full worker (its own consumer, producer and model sessions); Kafka's group
assignment spreads the partitions over them, as it does over workers on other machines.
The parent forwards SIGTERM/SIGINT to the children and waits for them. A child that dies
on its own is reported, the others are stopped cleanly, and the parent exits with the
child's exit code (`pipeline.exitcodes`; 1 if it died of a signal) so whatever runs it
(systemd, Kubernetes, compose) can restart the set. On Linux each child asks the kernel
for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a parent killed with SIGKILL
leaves no child running beside the set its restart starts: each stops cleanly.

Exactly-once with ``--transactional-id ID``: child ``i`` uses ``ID-i``, so the children
never fence each other, and each one, started again, fences its own predecessor at once.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from pipeline.config import WorkerConfig
from pipeline.errors import PipelineError
from pipeline.exitcodes import FAILED, exit_code
from pipeline.startup import early_stop

__all__ = ["child_config", "supervise"]

log = logging.getLogger("pipeline.supervisor")
_CHILD_STOP_TIMEOUT_S = 15.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def child_config(config: WorkerConfig, index: int) -> WorkerConfig:
    """The settings of child `index`: the parent's, with ``-<index>`` after a given
    transactional id (two live producers with one id fence each other)."""
    if not config.transactional_id:
        return config  # the default id already holds the index
    return dataclasses.replace(config, transactional_id=f"{config.transactional_id}-{index}")


def _end_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies; if the parent
    is already gone (it died before the call), stop now."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("could not ask to end with the parent (prctl: %s)",
                    os.strerror(ctypes.get_errno()))  # fmt: skip
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _child(config: WorkerConfig, index: int, parent_pid: int) -> None:
    from pipeline.startup import remember_early_stop, start_logging

    remember_early_stop()  # and unblock what the parent blocked while starting this process
    from pipeline.kafka import worker

    _end_with_parent(parent_pid)
    start_logging(config, prefix=f"worker-{index} ")
    try:
        code = worker.run_worker(child_config(config, index), index)
    except PipelineError as exc:
        log.error("error: %s", exc)
        code = exit_code(exc)
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
    if early := early_stop():
        log.info("received %s while starting: stopping", early.name)
        return 0
    for index in range(config.workers):
        process = ctx.Process(
            target=_child, args=(config, index, os.getpid()), name=f"worker-{index}"
        )
        # The child inherits the blocked signals and unblocks them once it can remember
        # one: a SIGTERM forwarded while its interpreter starts would otherwise end it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        children.append(process)
        log.info("started worker-%d (pid %s)", index, process.pid)
    code = 0
    while any(c.is_alive() for c in children):
        for child in children:
            if not child.is_alive() and child.exitcode not in (0, None) and not stopping:
                log.error("%s (pid %s) died with exit code %s; stopping the others",
                          child.name, child.pid, child.exitcode)  # fmt: skip
                code = _parent_code(child.exitcode)
                _forward(signal.SIGTERM, None)
        time.sleep(0.2)
    for child in children:
        child.join(_CHILD_STOP_TIMEOUT_S)
        if child.exitcode not in (0, None) and code == 0:
            log.error("%s (pid %s) exited with code %s", child.name, child.pid, child.exitcode)
            code = _parent_code(child.exitcode)
    return code


def _parent_code(child_code: int | None) -> int:
    """The child's own exit code; FAILED if a signal ended it (a negative code)."""
    return child_code if child_code is not None and child_code > 0 else FAILED
