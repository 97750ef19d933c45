"""`Sensor`: the events the pipeline reports, each a no-op here; `Sensors` fans them out."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["NULL_SENSOR", "Sensor", "Sensors"]


class Sensor:
    """Receives the pipeline's events. Subclasses override what they read; the rest do
    nothing. Every method must be cheap and must not raise."""

    # -- the engine and its model cache ---------------------------------------------------

    def inference(
        self, model: str, version: str, rows: int, queue_wait_s: float, infer_s: float
    ) -> None:
        """One execution of a model on a batch of `rows` rows; the oldest row waited
        `queue_wait_s` for it, the run took `infer_s`."""

    def rows_expired(self, model: str, version: str, rows: int) -> None:
        """`rows` rows were not run because their caller's deadline passed first."""

    def model_loaded(self, model: str, version: str, seconds: float) -> None:
        """A model version was loaded and warmed up."""

    def model_load_failed(self, model: str, version: str) -> None:
        """Loading a model version failed."""

    def model_evicted(self, model: str, version: str) -> None:
        """A loaded model version was dropped from the cache (least recently used)."""

    def shadowed(
        self,
        model: str,
        version: str,
        shadow: str,
        rows: int,
        agreed: int | None,
        differences: np.ndarray,
    ) -> None:
        """A shadow version answered `rows` rows that `version` served: `agreed` of them
        with the same label (None for a model without labels), with these absolute score
        differences (`pipeline.engine.compare`)."""

    def shadow_failed(
        self, model: str, version: str, shadow: str, error_type: str, rows: int
    ) -> None:
        """The shadow version failed on `rows` rows of `version` (cannot load, other
        inputs, raised, not comparable)."""

    def shadow_skipped(self, model: str, version: str, shadow: str, rows: int) -> None:
        """`rows` rows were not shadowed: the shadow thread was behind."""

    # -- the Kafka adapter ------------------------------------------------------------------

    def records_consumed(self, topic: str, n: int) -> None:
        """`n` records of `topic` were read."""

    def records_produced(self, topic: str, n: int) -> None:
        """`n` records to `topic` were acknowledged by the broker."""

    def predictions(self, model: str, version: str, latencies_s: np.ndarray) -> None:
        """Predictions were acknowledged; one event-to-prediction latency each (seconds)."""

    def produce_acknowledged(self, model: str, version: str, seconds: float) -> None:
        """A batch's predictions took `seconds` from the first produce call to the last
        acknowledgement by the broker."""

    def dead_letters(self, stage: str, error_type: str, n: int) -> None:
        """`n` dead letters were acknowledged."""

    def partitions(self, assigned: int, paused: int) -> None:
        """The partitions held and paused now."""

    def rebalance(self, kind: str, partitions: int) -> None:
        """Partitions were ``assigned``, ``revoked`` or ``lost``."""

    def transaction(self, outcome: str) -> None:
        """A transaction ended: ``committed`` or ``aborted``."""

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """The consumer's lag on one partition, from librdkafka's statistics; a negative
        `lag` says the partition is no longer held (its figure is forgotten)."""

    def records_acknowledged(self, kind: str, n: int) -> None:
        """Share groups: `n` acquired records were ``accepted``, ``released`` or ``rejected``."""

    def enrich_table(self, table: str, rows: int, nbytes: int) -> None:
        """An enrichment table now holds `rows` entities in an estimated `nbytes` bytes."""

    def enrich_defaulted(self, table: str, rows: int) -> None:
        """`rows` rows took the model's defaults because `table` lacked their entity."""

    def enrich_waited(self, table: str, arrived: int, absent: int, seconds: float) -> None:
        """A consumed batch waited `seconds` for entities `table` lacked: `arrived` of them
        came in time, `absent` did not."""

    # -- the front doors --------------------------------------------------------------------

    def request(self, door: str, status: str, seconds: float) -> None:
        """A front-door request ended with `status` (an HTTP code or a gRPC status)."""

    def answered(self, model: str, version: str, rows: int) -> None:
        """A front door answered a caller with `rows` predictions of a model version."""


NULL_SENSOR = Sensor()


class Sensors(Sensor):
    """Hands every event to each of `sensors`, in order."""

    def __init__(self, sensors: Iterable[Sensor]) -> None:
        self.sensors = tuple(sensors)

    def inference(
        self, model: str, version: str, rows: int, queue_wait_s: float, infer_s: float
    ) -> None:
        for s in self.sensors:
            s.inference(model, version, rows, queue_wait_s, infer_s)

    def rows_expired(self, model: str, version: str, rows: int) -> None:
        for s in self.sensors:
            s.rows_expired(model, version, rows)

    def model_loaded(self, model: str, version: str, seconds: float) -> None:
        for s in self.sensors:
            s.model_loaded(model, version, seconds)

    def model_load_failed(self, model: str, version: str) -> None:
        for s in self.sensors:
            s.model_load_failed(model, version)

    def model_evicted(self, model: str, version: str) -> None:
        for s in self.sensors:
            s.model_evicted(model, version)

    def shadowed(
        self,
        model: str,
        version: str,
        shadow: str,
        rows: int,
        agreed: int | None,
        differences: np.ndarray,
    ) -> None:
        for s in self.sensors:
            s.shadowed(model, version, shadow, rows, agreed, differences)

    def shadow_failed(
        self, model: str, version: str, shadow: str, error_type: str, rows: int
    ) -> None:
        for s in self.sensors:
            s.shadow_failed(model, version, shadow, error_type, rows)

    def shadow_skipped(self, model: str, version: str, shadow: str, rows: int) -> None:
        for s in self.sensors:
            s.shadow_skipped(model, version, shadow, rows)

    def records_consumed(self, topic: str, n: int) -> None:
        for s in self.sensors:
            s.records_consumed(topic, n)

    def records_produced(self, topic: str, n: int) -> None:
        for s in self.sensors:
            s.records_produced(topic, n)

    def predictions(self, model: str, version: str, latencies_s: np.ndarray) -> None:
        for s in self.sensors:
            s.predictions(model, version, latencies_s)

    def produce_acknowledged(self, model: str, version: str, seconds: float) -> None:
        for s in self.sensors:
            s.produce_acknowledged(model, version, seconds)

    def dead_letters(self, stage: str, error_type: str, n: int) -> None:
        for s in self.sensors:
            s.dead_letters(stage, error_type, n)

    def partitions(self, assigned: int, paused: int) -> None:
        for s in self.sensors:
            s.partitions(assigned, paused)

    def rebalance(self, kind: str, partitions: int) -> None:
        for s in self.sensors:
            s.rebalance(kind, partitions)

    def transaction(self, outcome: str) -> None:
        for s in self.sensors:
            s.transaction(outcome)

    def consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        for s in self.sensors:
            s.consumer_lag(topic, partition, lag)

    def records_acknowledged(self, kind: str, n: int) -> None:
        for s in self.sensors:
            s.records_acknowledged(kind, n)

    def enrich_table(self, table: str, rows: int, nbytes: int) -> None:
        for s in self.sensors:
            s.enrich_table(table, rows, nbytes)

    def enrich_defaulted(self, table: str, rows: int) -> None:
        for s in self.sensors:
            s.enrich_defaulted(table, rows)

    def enrich_waited(self, table: str, arrived: int, absent: int, seconds: float) -> None:
        for s in self.sensors:
            s.enrich_waited(table, arrived, absent, seconds)

    def request(self, door: str, status: str, seconds: float) -> None:
        for s in self.sensors:
            s.request(door, status, seconds)

    def answered(self, model: str, version: str, rows: int) -> None:
        for s in self.sensors:
            s.answered(model, version, rows)
