"""Producing what the worker owes for each input: a prediction or a dead letter.

`Outputs` encodes the predictions of an engine outcome, produces them and the dead
letters, and tells the worker when an input is *finished*: its output acknowledged by the
broker. Acknowledgements are accounted per outcome, not per record: the predictions of one
outcome share one `_Predictions` object, whose callback only counts down until all are
acknowledged, then finishes their inputs at once.

Records the producer or the broker refuses (too large, say) do not stop anything: a
prediction becomes a ``produce``-stage dead letter, and a dead letter is written again
without its value (``pipeline.value.omitted`` says how large it was; the source headers
say where to read it back), then without the original headers, then without its key
(``pipeline.key.omitted``, ``pipeline.key.sha256``). In exactly-once mode a
refusal reported on delivery has already made the transaction abortable, so it goes to the
committer instead, which redoes the input as a dead letter one level smaller. A dead
letter refused in every form, and any other failure, goes to the committer too:
at-least-once stops the worker; exactly-once aborts, or stops for the unwritable letter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import numpy as np
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException, Message

from pipeline.engine.codec import encode_rows
from pipeline.engine.framing import FrameProblem
from pipeline.engine.spec import ModelSpec
from pipeline.errors import KafkaError
from pipeline.kafka.committer import REFUSED_RECORD, Committer
from pipeline.kafka.deadletter import MAX_OMIT, dead_letter
from pipeline.kafka.offsets import Owed
from pipeline.metrics import Sensor
from pipeline.metrics.tracing import BatchTracer, trace_headers

__all__ = ["Outputs", "Owed", "now_ms", "usable_record"]

log = logging.getLogger("pipeline.worker")
_QUEUE_FULL_LIMIT_S = 60.0  # the producer's queue stays full this long: the broker is gone

Headers = list[tuple[str, bytes | None]]
Finish = Callable[[Owed, Sequence[int]], None]
EncodeRows = Callable[
    [ModelSpec, Sequence[str], Sequence[int], dict[str, np.ndarray], int, Sequence[str]],
    list[bytes],
]
"""Writes a batch's predictions: `encode_rows`'s arguments (prediction ids given), its result."""


def usable_record(msg: Message, consumer: str, fail: Callable[[KafkaError], None]) -> bool:
    """Whether a record a consumer returned is usable: one that came with an error never is.
    A fatal error goes to `fail` (the worker stops); librdkafka retries the others, so they
    are only logged. Both loops, the consumer group's and the share group's, ask this."""
    err = msg.error()
    if err is None:
        return True
    if err.fatal():
        fail(KafkaError(f"the {consumer} hit a fatal Kafka error: {err}"))
    elif err.code() != RdKafkaError._PARTITION_EOF:
        log.warning("%s error (librdkafka retries it): %s", consumer, err)
    return False


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch, as Kafka timestamps are."""
    return time.time_ns() // 1_000_000


class _Predictions:
    """The predictions of one outcome on their way to the broker."""

    __slots__ = ("handed_off", "offsets", "outputs", "owed", "pending", "produced_at", "records",
                 "spec", "ts", "values")  # fmt: skip

    def __init__(
        self,
        outputs: Outputs,
        spec: ModelSpec,
        owed: Owed,
        records: Sequence[Message],
        offsets: Sequence[int],
        ts: Sequence[int],
        values: list[bytes],
    ) -> None:
        self.outputs = outputs
        self.spec = spec
        self.owed = owed
        self.records = records
        self.offsets = offsets
        self.ts = ts
        self.values = values
        self.pending = len(values)
        self.handed_off: set[int] = set()  # positions that became dead letters instead
        self.produced_at = time.monotonic()

    def delivered(self, err: RdKafkaError | None, msg: Message) -> None:
        if err is not None:
            self.outputs.prediction_failed(self, err, msg)
        self.pending -= 1
        if not self.pending:
            self.outputs.predictions_done(self)


class _Letter:
    """One dead letter on its way to the broker."""

    __slots__ = ("error_type", "extra", "message", "omit", "outputs", "owed", "record", "stage")

    def __init__(
        self,
        outputs: Outputs,
        record: Message,
        owed: Owed,
        reason: tuple[str, str, str],
        omit: int,
        extra: Headers,
    ) -> None:
        self.outputs = outputs
        self.record = record
        self.owed = owed
        self.extra = [h for h in extra if not h[0].endswith(".omitted")]
        self.stage, self.error_type, self.message = reason
        self.omit = omit

    def delivered(self, err: RdKafkaError | None, _: Message) -> None:
        self.outputs.letter_delivered(self, err)


class Outputs:
    """Produces predictions and dead letters for the worker.

    Args:
        committer: Owns the producer and decides what a failed output means.
        output_topic: Where predictions go.
        dlq_topic: Where dead letters go.
        sensor: Receives predictions, dead letters and records produced.
        finish: Called with the offsets of inputs whose outputs were acknowledged.
        tracer: Records a span per batch of predictions (OpenTelemetry), if configured.
        encode: Writes a batch's predictions (`encode_rows`'s arguments and result): JSON
            text by default; `pipeline.schemaregistry.AvroPredictionWriter` for Avro.
    """

    def __init__(
        self,
        committer: Committer,
        *,
        output_topic: str,
        dlq_topic: str,
        sensor: Sensor,
        finish: Finish,
        tracer: BatchTracer | None = None,
        encode: EncodeRows = encode_rows,
    ) -> None:
        self._committer = committer
        self._encode = encode
        self._tracer = tracer
        self._output_topic = output_topic
        self._dlq_topic = dlq_topic
        self._sensor = sensor
        self._finish = finish

    # -- predictions ------------------------------------------------------------------------

    def predictions(
        self,
        spec: ModelSpec,
        owed: Owed,
        records: Sequence[Message],
        offsets: Sequence[int],
        ids: Sequence[str],
        ts: Sequence[int],
        outputs: dict[str, np.ndarray],
        *,
        enriched_at: bytes | None = None,
        defaulted: Mapping[int, bytes] | None = None,
    ) -> None:
        """Encode and produce one prediction per record (all of one partition); dead-letter
        them all if the outputs cannot be encoded (they do not fit the manifest, or JSON).

        Each prediction carries a ``prediction_id`` (field and header) derived from its
        record and the model version, and its input's trace-context headers; with
        `enriched_at`, a ``pipeline.enriched.at`` header too (`pipeline.kafka.enrich`), and
        a record whose offset is in `defaulted` a ``pipeline.enriched.defaults`` header
        naming the tables that lacked its entity (the model's defaults filled its row).
        """
        (topic, partition), _ = owed
        prefix, suffix = f"{topic}/{partition}/", f"/{spec.name}/{spec.version}"
        prediction_ids = [f"{prefix}{offset}{suffix}" for offset in offsets]
        try:
            values = self._encode(spec, ids, ts, outputs, now_ms(), prediction_ids)
        except (ValueError, TypeError) as exc:
            for record in records:
                self.dead_letter(record, owed, ("infer", "OutputMismatch", str(exc)))
            return
        except FrameProblem as problem:  # the registry refused or lacks the version's schema
            for record in records:
                self.dead_letter(record, owed, (problem.stage, problem.error_type, problem.message))
            return
        contexts = [trace_headers(read_headers(record)[0]) for record in records]
        if self._tracer is not None:
            self._tracer.batch(spec.name, spec.version, contexts)
        sent = _Predictions(self, spec, owed, records, offsets, ts, values)
        self._committer.begin()
        output_topic, on_delivery = self._output_topic, sent.delivered
        rows = zip(records, values, prediction_ids, contexts, offsets, strict=True)
        for position, (record, value, prediction_id, context, offset) in enumerate(rows):
            headers = [("pipeline.prediction.id", prediction_id.encode()), *context]
            if enriched_at is not None:
                headers.append(("pipeline.enriched.at", enriched_at))
            if defaulted and offset in defaulted:
                headers.append(("pipeline.enriched.defaults", defaulted[offset]))
            refused = self._produce(output_topic, value, record.key(), headers, on_delivery)
            if refused is not None:  # never queued: no delivery report will come for it
                message = f"the producer refused the prediction: {refused}"
                self._hand_off(sent, position, ("produce", camel(refused.name()), message))
                sent.pending -= 1
        if not sent.pending:
            self.predictions_done(sent)

    def prediction_failed(self, sent: _Predictions, err: RdKafkaError, msg: Message) -> None:
        """A prediction's delivery failed: dead-letter its input or hand it to the committer."""
        position = _position(sent, msg)
        record = sent.records[position]
        if err.code() in REFUSED_RECORD and self._committer.dead_letters_for_refused:
            message = f"the broker refused the prediction: {err}"
            self._hand_off(sent, position, ("produce", camel(err.name()), message))
        else:
            sent.handed_off.add(position)  # not finished: the committer stops or aborts
            self._committer.output_failed(record, err, sent.owed, to=self._output_topic)

    def predictions_done(self, sent: _Predictions) -> None:
        """Every prediction of an outcome is acknowledged or handed off: finish the inputs."""
        if sent.handed_off:
            keep = [i for i in range(len(sent.records)) if i not in sent.handed_off]
            offsets: Sequence[int] = [sent.offsets[i] for i in keep]
            ts: Sequence[int] = [sent.ts[i] for i in keep]
        else:
            offsets, ts = sent.offsets, sent.ts
        if not offsets:
            return
        self._finish(sent.owed, offsets)
        spec = sent.spec
        self._sensor.produce_acknowledged(
            spec.name, spec.version, time.monotonic() - sent.produced_at
        )
        self._sensor.records_produced(self._output_topic, len(offsets))
        latencies = (now_ms() - np.asarray(ts, dtype=np.float64)) / 1000.0
        self._sensor.predictions(sent.spec.name, sent.spec.version, latencies)

    def _hand_off(self, sent: _Predictions, position: int, reason: tuple[str, str, str]) -> None:
        sent.handed_off.add(position)
        self.dead_letter(sent.records[position], sent.owed, reason)

    # -- dead letters -----------------------------------------------------------------------

    def dead_letter(
        self,
        record: Message,
        owed: Owed,
        reason: tuple[str, str, str],
        *,
        omit: int = 0,
        extra: Headers = (),  # type: ignore[assignment]
    ) -> None:
        """Write `record` to the DLQ with the headers of `reason` (stage, type, message)
        and `extra` ones.

        `omit` 0 sends the original key, value and headers; 1 leaves the value out; 2
        also the original headers; 3 also the key.
        """
        original, unreadable = read_headers(record)
        key, value, headers = dead_letter(
            record.key(),
            record.value(),
            original,
            reason=reason,
            topic=record.topic() or "",
            partition=record.partition() or 0,
            offset=record.offset() or 0,
            failed_at_ms=now_ms(),
            omit=omit,
            unreadable_headers=unreadable,
        )
        letter = _Letter(self, record, owed, reason, omit, list(extra))
        self._committer.begin()
        refused = self._produce(self._dlq_topic, value, key, headers + letter.extra,
                                letter.delivered)  # fmt: skip
        if refused is not None:
            self._letter_refused(letter, refused)

    def letter_delivered(self, letter: _Letter, err: RdKafkaError | None) -> None:
        if err is None:
            self._finish(letter.owed, (letter.record.offset(),))  # type: ignore[arg-type]
            self._sensor.records_produced(self._dlq_topic, 1)
            self._sensor.dead_letters(letter.stage, letter.error_type, 1)
        elif err.code() in REFUSED_RECORD and self._committer.dead_letters_for_refused:
            self._letter_refused(letter, err)
        else:
            next_omit = letter.omit + 1  # if the committer redoes it (a refused record)
            self._committer.output_failed(letter.record, err, letter.owed, next_omit=next_omit,
                                          to=self._dlq_topic)  # fmt: skip

    def _letter_refused(self, letter: _Letter, error: RdKafkaError) -> None:
        """A dead letter the producer or broker would not take: send it smaller, or give up."""
        if letter.omit < MAX_OMIT:
            reason = (letter.stage, letter.error_type, letter.message)
            self.dead_letter(letter.record, letter.owed, reason, omit=letter.omit + 1,
                             extra=letter.extra)  # fmt: skip
        else:  # not even without its key, value and headers: the committer stops
            self._committer.output_failed(letter.record, error, letter.owed,
                                          next_omit=MAX_OMIT + 1, to=self._dlq_topic)  # fmt: skip

    # -- the producer -----------------------------------------------------------------------

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: Headers | None,
        on_delivery: Callable[[Any, Message], None],
    ) -> RdKafkaError | None:
        """Hand one record to the producer.

        Returns:
            The error if the producer refused this record itself (too large, say). None
            when it was queued, or when the producer failed as a whole (then the committer
            stops the worker or aborts the transaction).
        """
        full_since: float | None = None
        while True:
            producer = self._committer.producer
            try:
                producer.produce(
                    topic, value, key, headers=cast(Any, headers), on_delivery=on_delivery
                )
                return None
            except BufferError:  # the producer's queue is full: serve delivery reports first
                full_since = full_since or time.monotonic()
                if time.monotonic() - full_since > _QUEUE_FULL_LIMIT_S:
                    limit = _QUEUE_FULL_LIMIT_S
                    self._committer.producer_failed(f"its queue stayed full for {limit:.0f} s")
                    return None
                try:
                    producer.poll(0.05)
                except KafkaException as exc:  # a fatal error (fenced, say)
                    self._committer.producer_failed(f"the producer failed: {exc.args[0]}")
                    return None
            except KafkaException as exc:
                error: RdKafkaError = exc.args[0]
                if error.code() in REFUSED_RECORD:
                    return error
                self._committer.producer_failed(str(error))
                return None


def _position(sent: _Predictions, msg: Message) -> int:
    """Which of an outcome's predictions a delivery report is for (rare path: failures)."""
    value = msg.value()
    for i, produced in enumerate(sent.values):
        if produced == value and i not in sent.handed_off:
            return i
    return 0


def read_headers(msg: Message) -> tuple[Headers | None, bool]:
    """A record's headers, and whether they could not be read: confluent-kafka cannot
    decode a header name that is not UTF-8 (other clients can write one)."""
    try:
        return cast(Headers | None, msg.headers()), False
    except (SystemError, UnicodeError):
        return None, True


def camel(name: str) -> str:
    """librdkafka's MSG_SIZE_TOO_LARGE as the DLQ's error type MsgSizeTooLarge."""
    return "".join(part.capitalize() for part in name.strip("_").split("_")) or "KafkaError"
