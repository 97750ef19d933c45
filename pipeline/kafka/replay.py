"""`pipeline replay`: run a range of an input topic through one model version, and say how
its answers differ from what was served.

The range is read by an assigned consumer of a group of its own that never commits, so the
live workers' group and offsets are untouched. Every event of the replayed model (events
naming no model count as it) runs through the chosen version, whatever version it names.
With ``--against OUTPUT_TOPIC`` the served predictions of the same events are found by
their ``prediction_id`` (``topic/partition/offset/model/version``: the source record's
coordinates) and compared row by row (`pipeline.engine.compare`); ``--against-dlq`` also
counts the events the served path dead-lettered. With ``--output-topic`` the candidate's
predictions are written there, as the worker writes them.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka import KafkaError as KafkaError_

from pipeline.engine.codec import EventDecoder, encode_rows
from pipeline.engine.compare import compare
from pipeline.engine.diff import DiffReport
from pipeline.engine.engine import Engine, Outcome
from pipeline.engine.models import ModelCache
from pipeline.engine.spec import ModelSpec
from pipeline.errors import KafkaError, ModelError, ModelNotFoundError
from pipeline.kafka.clientlog import client_settings
from pipeline.kafka.topics import reach

__all__ = ["Range", "ReplayOptions", "progress_stream", "replay"]

log = logging.getLogger("pipeline.replay")

_CHUNK = 500
_SOURCE = "pipeline.source."


@dataclass(frozen=True, slots=True, kw_only=True)
class Range:
    """Where a replay starts and stops: offsets (each partition's) or times (ms since
    epoch); a start is included, an end is not. None: the partition's first offset, or
    its end when the replay starts."""

    from_offset: int | None = None
    from_time_ms: int | None = None
    to_offset: int | None = None
    to_time_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayOptions:
    """What `pipeline replay` was asked."""

    input_topic: str
    model: str
    version: str
    range: Range
    against: str | None = None
    against_dlq: str | None = None
    output_topic: str | None = None
    largest: int = 5


class _Candidate:
    """A catalog that answers every event of `model` with one version (for the decoder)."""

    def __init__(self, cache: ModelCache, model: str, version: str) -> None:
        self._cache, self._model, self._version = cache, model, version

    def resolve(self, name: str, version: str | None) -> ModelSpec:
        if name != self._model:
            raise ModelNotFoundError(f"model {name!r} is not the one replayed")
        return self._cache.resolve(self._model, self._version)


@dataclass(slots=True)
class _Served:
    version: str
    outputs: dict[str, Any]


def replay(
    options: ReplayOptions,
    engine: Engine[Any],
    *,
    bootstrap_servers: str,
    kafka: Mapping[str, str],
    progress: TextIO | None = None,
) -> DiffReport:
    """Replay the range; return the report.

    Raises:
        BrokerUnreachable: no broker answered.
        KafkaError: a topic could not be read or written.
        ModelError: the version cannot be loaded.
    """
    settings = client_settings(bootstrap_servers, kafka)
    consumer = Consumer(_consumer_settings(settings))
    try:
        reach(consumer, bootstrap_servers)
        candidate = engine.models.get(options.model, options.version)
        bounds = _bounds(consumer, options.input_topic, options.range)
        served = _served(consumer, options, bounds) if options.against else {}
        report = DiffReport(options.model, options.version, largest_n=options.largest)
        if options.against_dlq:
            report.served_dead_letters.update(_dead_letters(consumer, options, bounds))
        run = _Run(options, engine, candidate.spec, served, report, settings)
        total = sum(end - start for start, end in bounds.values())
        for records in _read(consumer, options.input_topic, bounds):
            run.take(records)
            if progress is not None:
                _show(progress, report.events, total)
        run.finish()
    except KafkaException as exc:
        raise KafkaError(f"replay of {options.input_topic} failed: {exc.args[0]}") from exc
    finally:
        consumer.close()
    if progress is not None:
        progress.write("\n")
    return report


def _consumer_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **settings,
        "group.id": f"pipeline-replay-{uuid.uuid4().hex[:8]}",  # never committed
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
    }


class _Run:
    """Decodes, predicts and compares the range's records, a chunk at a time."""

    def __init__(
        self,
        options: ReplayOptions,
        engine: Engine[Any],
        spec: ModelSpec,
        served: dict[tuple[int, int], _Served],
        report: DiffReport,
        settings: Mapping[str, Any],
    ) -> None:
        self._options = options
        self._engine = engine
        self._spec = spec
        self._served = served
        self._report = report
        self._decoder = EventDecoder(
            catalog=_Candidate(engine.models, options.model, options.version),
            default_model=options.model,
        )
        self._producer = (
            Producer({**settings, "enable.idempotence": True, "linger.ms": 20})
            if options.output_topic
            else None
        )
        self._failed: list[str] = []

    def take(self, records: list[Message]) -> None:
        report = self._report
        report.events += len(records)
        decoded = self._decoder.decode(
            [m.value() for m in records], [max(m.timestamp()[1], 0) for m in records]
        )
        for reject in decoded.rejects:
            if reject.error_type == "UnknownModel":
                report.other_models += 1
            else:
                report.rejected[f"{reject.stage}/{reject.error_type}"] += 1
        outcomes: list[Outcome[Any]] = []
        for block in decoded.blocks.values():
            ticket = [records[i] for i in block.indices], block.ids, block.ts
            self._engine.submit(block.spec.name, block.spec.version, block.feed, ticket,
                                outcomes.append)  # fmt: skip
        self._engine.flush()
        for outcome in outcomes:
            self._predicted(outcome)

    def _predicted(self, outcome: Outcome[Any]) -> None:
        report = self._report
        records, ids, ts = outcome.ticket
        for error in outcome.errors:
            report.rejected[f"{error.stage}/{error.error_type}"] += 1
        rows = list(outcome.rows)
        if not rows:
            return
        report.predicted += len(rows)
        mine = [records[i] for i in rows]
        if self._producer is not None:
            self._write(mine, [ids[i] for i in rows], [ts[i] for i in rows], outcome.outputs)
        if self._served:
            self._compare(mine, [ids[i] for i in rows], outcome.outputs)

    def _write(self, records: list[Message], ids: list[str], ts: list[int],
               outputs: dict[str, np.ndarray]) -> None:  # fmt: skip
        assert self._producer is not None and self._options.output_topic is not None
        spec = self._spec
        prediction_ids = [
            f"{m.topic()}/{m.partition()}/{m.offset()}/{spec.name}/{spec.version}" for m in records
        ]
        values = encode_rows(spec, ids, ts, outputs, int(time.time() * 1000), prediction_ids)
        for record, value, pid in zip(records, values, prediction_ids, strict=True):
            self._producer.produce(self._options.output_topic, value, record.key(),
                                   headers=[("pipeline.prediction_id", pid.encode())],
                                   on_delivery=self._delivered)  # fmt: skip
            self._producer.poll(0)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._failed.append(str(err))

    def _compare(self, records: list[Message], ids: list[str],
                 outputs: dict[str, np.ndarray]) -> None:  # fmt: skip
        """Compare the rows that have a served prediction, per served version."""
        groups: dict[str, list[int]] = {}
        for i, m in enumerate(records):
            found = self._served.get((m.partition(), m.offset()))  # type: ignore[arg-type]
            if found is None:
                self._report.not_served += 1
            else:
                groups.setdefault(found.version, []).append(i)
        for version, rows in groups.items():
            served = [self._served[(records[i].partition(), records[i].offset())] for i in rows]  # type: ignore[index]
            names = [n for n in outputs if all(n in s.outputs for s in served)]
            served_outputs = {n: _column([s.outputs[n] for s in served]) for n in names}
            mine = {n: outputs[n][rows] for n in outputs}
            try:
                comparison = compare(self._served_spec(version), served_outputs, self._spec, mine)
            except ValueError as exc:
                self._report.rejected["compare/NotComparable"] += len(rows)
                log.warning("served version %s cannot be compared: %s", version, exc)
                continue
            sources = [f"{records[i].topic()}/{records[i].partition()}/{records[i].offset()}"
                       for i in rows]  # fmt: skip
            self._report.add(comparison, [ids[i] for i in rows], sources, version)

    def _served_spec(self, version: str) -> ModelSpec:
        """The served version's spec (its labels' order), or the candidate's if the store
        no longer has it."""
        try:
            return self._engine.models.resolve(self._options.model, version)
        except ModelError:
            return self._spec

    def finish(self) -> None:
        if self._producer is not None:
            left = self._producer.flush(60)
            if left or self._failed:
                reason = self._failed[0] if self._failed else f"{left} not acknowledged in 60 s"
                raise KafkaError(
                    f"writing the replay's predictions to {self._options.output_topic} "
                    f"failed: {reason}"
                )


def _column(values: list[Any]) -> np.ndarray:
    if values and isinstance(values[0], dict):
        column = np.empty(len(values), dtype=object)
        column[:] = values
        return column
    return np.asarray(values)


def _bounds(consumer: Consumer, topic: str, span: Range) -> dict[int, tuple[int, int]]:
    """Each partition's first offset replayed and the offset it stops before."""
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise KafkaError(f"topic {topic!r} does not exist (or has no partitions)")
    bounds: dict[int, tuple[int, int]] = {}
    for p in sorted(meta.partitions):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        start = _at(consumer, topic, p, span.from_offset, span.from_time_ms, low, high)
        end = _at(consumer, topic, p, span.to_offset, span.to_time_ms, high, high)
        bounds[p] = (max(start, low), max(min(end, high), max(start, low)))
    return bounds


def _at(consumer: Consumer, topic: str, partition: int, offset: int | None,
        time_ms: int | None, default: int, high: int) -> int:  # fmt: skip
    if offset is not None:
        return offset
    if time_ms is None:
        return default
    (found,) = consumer.offsets_for_times([TopicPartition(topic, partition, time_ms)], 10)
    return high if found.offset < 0 else int(found.offset)


def _read(
    consumer: Consumer, topic: str, bounds: Mapping[int, tuple[int, int]]
) -> Iterator[list[Message]]:
    """The records of the range, a chunk at a time, until every partition reached its end."""
    left = {p: end for p, (start, end) in bounds.items() if start < end}
    if not left:
        return
    consumer.assign([TopicPartition(topic, p, bounds[p][0]) for p in left])
    idle_since = time.monotonic()
    while left:
        chunk: list[Message] = []
        for m in consumer.consume(_CHUNK, 1.0):
            p = m.partition()
            error = m.error()
            if error is not None:
                if error.code() != KafkaError_._PARTITION_EOF:  # the end is known by offset
                    raise KafkaException(error)
                continue
            end = left.get(p)  # type: ignore[arg-type]
            if end is None or m.offset() >= end:  # type: ignore[operator]
                continue
            chunk.append(m)
            if m.offset() + 1 >= end:  # type: ignore[operator]
                del left[p]  # type: ignore[arg-type]
                consumer.incremental_unassign([TopicPartition(topic, p)])  # type: ignore[arg-type]
        if chunk:
            idle_since = time.monotonic()
            yield chunk
        elif time.monotonic() - idle_since > 30:
            raise KafkaError(
                f"no record of {topic} arrived for 30 s before the range's end "
                f"(partitions {sorted(left)} left); records removed by retention or "
                "compaction, or aborted transactions, leave gaps a replay cannot read"
            )
        _skip_gaps(consumer, topic, left)


def _skip_gaps(consumer: Consumer, topic: str, left: dict[int, int]) -> None:
    """Drop partitions whose position reached their end (the range's last offsets were
    transaction markers or aborted records, which are never delivered)."""
    if not left:
        return
    for tp in consumer.position([TopicPartition(topic, p) for p in left]):
        if tp.offset >= left[tp.partition]:
            del left[tp.partition]
            consumer.incremental_unassign([TopicPartition(topic, tp.partition)])


def _whole_topic(consumer: Consumer, topic: str) -> Iterator[list[Message]]:
    """Every record of `topic` up to its end when called."""
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None:
        raise KafkaError(f"topic {topic!r} does not exist")
    bounds = {}
    for p in meta.partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        bounds[p] = (low, high)
    yield from _read(consumer, topic, bounds)
    consumer.unassign()


def _served(
    consumer: Consumer, options: ReplayOptions, bounds: Mapping[int, tuple[int, int]]
) -> dict[tuple[int, int], _Served]:
    """The served predictions of the range's events, by (partition, offset)."""
    assert options.against is not None
    found: dict[tuple[int, int], _Served] = {}
    for chunk in _whole_topic(consumer, options.against):
        for m in chunk:
            try:
                doc = orjson.loads(m.value() or b"")
                parts: list[str] = str(doc["prediction_id"]).split("/")
                topic, partition, offset, model, version = parts
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # not a JSON prediction of this pipeline
            if model != options.model or topic != options.input_topic:
                continue
            p, o = int(partition), int(offset)
            start, end = bounds.get(p, (0, 0))
            if start <= o < end and isinstance(doc.get("outputs"), dict):
                found[(p, o)] = _Served(version, doc["outputs"])
    return found


def _dead_letters(
    consumer: Consumer, options: ReplayOptions, bounds: Mapping[int, tuple[int, int]]
) -> dict[str, int]:
    """The range's events in the dead-letter topic, by ``stage/error_type``."""
    assert options.against_dlq is not None
    counts: dict[str, int] = {}
    for chunk in _whole_topic(consumer, options.against_dlq):
        for m in chunk:
            headers = _headers(m)
            if headers.get(_SOURCE + "topic") != options.input_topic.encode():
                continue
            try:
                p = int(headers[_SOURCE + "partition"])
                o = int(headers[_SOURCE + "offset"])
            except (KeyError, ValueError):
                continue
            start, end = bounds.get(p, (0, 0))
            if start <= o < end:
                reason = (
                    f"{headers.get('pipeline.error.stage', b'?').decode()}/"
                    f"{headers.get('pipeline.error.type', b'?').decode()}"
                )
                counts[reason] = counts.get(reason, 0) + 1
    return counts


def _headers(m: Message) -> dict[str, bytes]:
    found: list[Any] = list(m.headers() or [])
    return {str(h[0]): h[1] for h in found if isinstance(h[1], bytes)}


def _show(out: TextIO, done: int, total: int) -> None:
    share = done / total if total else 1.0
    bar = "#" * int(share * 30)
    out.write(f"\rreplayed {done:,} of {total:,} records [{bar:<30}] {share:.0%}")
    out.flush()


def progress_stream() -> TextIO | None:
    """Where the progress bar goes: standard error, if it is a terminal."""
    return sys.stderr if sys.stderr.isatty() else None
