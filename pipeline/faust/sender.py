"""Sending predictions and dead letters with the Faust app's own producer.

Predictions go out in two steps so that they keep their order without waiting for each
other: `Sender.hand_over` gives one batch's records to the producer, in order, and
`Sender.settle` then waits until the broker acknowledged each. A record the producer or
the broker refuses (too large, say) becomes a ``produce``-stage dead letter, and a dead
letter that is refused is sent again without its value, then without the original
headers (`pipeline.kafka.deadletter.dead_letter`), as the Kafka worker does. Any other
failure raises `DeliveryFailed`: the caller acknowledges none of those events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.errors import KafkaError
from pipeline.kafka.deadletter import MAX_OMIT, dead_letter

__all__ = ["DeliveryFailed", "Handed", "Sender", "SourceRecord", "now_ms"]

# Broker error codes of a record refused for what it is, by their librdkafka names (the
# worker's pipeline.error.type for them): MSG_SIZE_TOO_LARGE, INVALID_MSG, INVALID_RECORD.
_REFUSED = {10: "MsgSizeTooLarge", 2: "InvalidMsg", 87: "InvalidRecord"}


class SourceRecord(Protocol):
    """What the sender reads of an input record (a Faust ``Message``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any  # a sequence of (name, value) pairs, or None


class DeliveryFailed(KafkaError):
    """An output was not delivered and cannot be dead-lettered: its event must not be
    acknowledged, and the app stops so that a restart redoes it."""


class _Refused(Exception):
    """The producer or the broker refused one record for what it is (never escapes)."""

    def __init__(self, kind: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.kind = kind
        self.cause = cause


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, as Kafka timestamps are."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Handed:
    """One batch of predictions handed to the producer, not yet acknowledged.

    Attributes:
        records: The input records, one per prediction.
        futures: Each prediction's delivery (failed at once if the producer refused it).
    """

    records: Sequence[SourceRecord]
    futures: list[Awaitable[Any]]


class Sender:
    """Produces the agent's outputs and waits for the broker to acknowledge them.

    Args:
        producer: The Faust app's producer (``app.producer``).
        output_topic: Where predictions go.
        dlq_topic: Where dead letters go.
    """

    def __init__(self, producer: Any, *, output_topic: str, dlq_topic: str) -> None:
        self._producer = producer
        self._output_topic = output_topic
        self._dlq_topic = dlq_topic

    async def hand_over(self, records: Sequence[SourceRecord], values: Sequence[bytes]) -> Handed:
        """Give one prediction per record to the producer, in order, keyed like its input.

        Raises:
            DeliveryFailed: The producer failed for another reason than the record itself.
        """
        futures: list[Awaitable[Any]] = []
        for record, value in zip(records, values, strict=True):
            try:
                futures.append(await self._send(self._output_topic, record.key, value, None))
            except _Refused as refused:
                futures.append(_already(refused))
            except Exception as exc:
                raise _failed("prediction", record, exc) from exc
        return Handed(records, futures)

    async def settle(self, handed: Handed) -> None:
        """Wait until every prediction of `handed` is acknowledged, dead-lettering those
        refused.

        Raises:
            DeliveryFailed: A prediction, or the dead letter of a refused one, was lost.
        """
        results = await asyncio.gather(*handed.futures, return_exceptions=True)
        letters: list[tuple[SourceRecord, tuple[str, str, str]]] = []
        for record, result in zip(handed.records, results, strict=True):
            if not isinstance(result, BaseException):
                continue
            if isinstance(result, _Refused):
                text = f"the producer refused the prediction: {result.cause}"
                letters.append((record, ("produce", result.kind, text)))
                continue
            kind = _refusal(result)
            if kind is None:
                raise _failed("prediction", record, result) from result
            letters.append(
                (record, ("produce", kind, f"the broker refused the prediction: {result}"))
            )
        if letters:
            await asyncio.gather(*(self.dead_letter(record, reason) for record, reason in letters))

    async def dead_letter(self, record: SourceRecord, reason: tuple[str, str, str]) -> None:
        """Send `record`'s dead letter and wait for the broker; smaller if refused.

        Args:
            record: The input record.
            reason: (stage, error type, message).

        Raises:
            DeliveryFailed: Not delivered, even without its value and original headers.
        """
        for omit in range(MAX_OMIT + 1):
            key, value, headers = dead_letter(
                record.key,
                record.value,
                record.headers,
                reason=reason,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                failed_at_ms=now_ms(),
                omit=omit,
            )
            try:
                await (await self._send(self._dlq_topic, key, value, headers))
                return
            except _Refused as refused:
                last: BaseException = refused.cause
            except Exception as exc:
                if _refusal(exc) is None:
                    raise _failed("dead letter", record, exc) from exc
                last = exc
        raise _failed("dead letter", record, last)

    async def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]] | None,
    ) -> Awaitable[Any]:
        """Hand one record to the producer; return its delivery.

        Raises:
            _Refused: The producer refused the record itself (too large).
        """
        if key is None and value is None:
            value = b""  # aiokafka refuses a record with neither key nor value
        try:
            delivery: Awaitable[Any] = await self._producer.send(
                topic, key, value, None, None, headers
            )
        except Exception as exc:
            kind = _refusal(exc)
            if kind is None:
                raise
            raise _Refused(kind, exc.__cause__ or exc) from exc
        return delivery


def _already(error: BaseException) -> asyncio.Future[Any]:
    """A delivery that has already failed with `error`."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_exception(error)
    return future


def _refusal(exc: BaseException) -> str | None:
    """The kind of refusal `exc` is (Faust wraps the producer's own errors), or None."""
    for error in (exc, exc.__cause__):
        if isinstance(error, OSError):  # its errno is the system's, not a broker's
            continue
        kind = _REFUSED.get(getattr(error, "errno", None))  # type: ignore[arg-type]
        if kind is not None:
            return kind
    return None


def _failed(what: str, record: SourceRecord, exc: BaseException) -> DeliveryFailed:
    return DeliveryFailed(
        f"the {what} of {record.topic}[{record.partition}] offset {record.offset} was not "
        f"delivered ({type(exc).__name__}: {exc}); the event is not acknowledged, so no "
        "commit passes it and it is processed again after a restart"
    )
