"""Exactly-once output: the producer side of Kafka's consume-transform-produce transactions.

In ``--guarantee exactly-once`` mode the worker's producer is transactional. Every output
(prediction or dead letter) is written inside an open transaction; at each commit the
consumed offsets are sent to the same transaction with the consumer's group metadata
(KIP-447) and the transaction commits, so outputs and offsets become visible together or
not at all. Consumers of the output must read with ``isolation.level=read_committed``.

`Transactions` owns the producer and its state; the worker decides when to commit and
what to do after an abort (rewind to the committed offsets and redo).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaException, Producer, TopicPartition

from pipeline.errors import KafkaError

__all__ = ["Transactions", "default_transactional_id"]

log = logging.getLogger("pipeline.transactions")
_TIMEOUT_S = 30.0


def default_transactional_id(group_id: str, index: int) -> str:
    """Unique per live worker process: group, host, index under its parent, and pid.

    Zombie fencing does not need a stable id here: with the consumer's group metadata sent
    to each transaction (KIP-447), the group coordinator fences an instance that lost its
    partitions. A shared id would instead make two live workers fence each other.
    """
    return f"pipeline-{group_id}-{socket.gethostname()}-{index}-{os.getpid()}"


class Transactions:
    """A transactional producer that is begun lazily, committed with offsets, and rebuilt
    after a fatal error (fencing)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        transactional_id: str,
        make_producer: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self._settings = {**settings, "transactional.id": transactional_id}
        self._make_producer = make_producer
        self.transactional_id = transactional_id
        self.producer = self._new_producer()
        self.open = False
        self.commits = 0
        self.aborts = 0

    def _new_producer(self) -> Producer:
        producer = self._make_producer(dict(self._settings))
        try:
            producer.init_transactions(_TIMEOUT_S)  # fences any earlier producer with this id
        except KafkaException as exc:
            raise KafkaError(
                f"could not start transactions as {self.transactional_id!r} ({exc.args[0]}); "
                "exactly-once needs a broker with transactions enabled (transaction state log "
                "replication <= brokers) and the principal allowed to write with this "
                "transactional id"
            ) from exc
        return producer

    def begin(self) -> None:
        """Open a transaction unless one is open."""
        if not self.open:
            self.producer.begin_transaction()
            self.open = True

    def commit(self, offsets: list[TopicPartition], group_metadata: object) -> None:
        """Send `offsets` to the open transaction and commit it (retrying retriable errors).

        Raises:
            KafkaException: the transaction must be aborted, or the producer is fenced or
                failed fatally; call `abort` (which rebuilds the producer when needed).
        """
        if not self.open:
            return
        if offsets:
            send = self.producer.send_offsets_to_transaction
            self._retrying(lambda: send(offsets, group_metadata, _TIMEOUT_S))
        self._retrying(lambda: self.producer.commit_transaction(_TIMEOUT_S))
        self.open = False
        self.commits += 1

    def abort(self, cause: BaseException | None = None) -> None:
        """Abort the open transaction; after a fatal error, rebuild the producer instead."""
        self.aborts += 1
        self.open = False
        error = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
        if error is not None and error.fatal():
            log.warning("transactional producer failed fatally (%s): rebuilding it", error)
            self._rebuild()
            return
        try:
            self.producer.abort_transaction(_TIMEOUT_S)
        except KafkaException as exc:
            log.warning("abort failed (%s): rebuilding the transactional producer", exc.args[0])
            self._rebuild()

    def _rebuild(self) -> None:
        self.producer.flush(0)
        self.producer = self._new_producer()

    def _retrying(self, call: Callable[[], object], attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                call()
                return
            except KafkaException as exc:
                error = exc.args[0]
                if not error.retriable() or attempt == attempts - 1:
                    raise
                log.info("retrying a transaction step after a retriable error: %s", error)
