"""The observation seam: every part of the pipeline reports what happens to a `Sensor`.

The engine reports inference executions, the model cache loads and evictions, the Kafka
adapter records consumed and produced, predictions and dead letters, partitions, rebalances
and transactions, the front doors their requests. Readers implement the methods they care
about: the stats line (`pipeline.metrics.statsline`) is one, the Prometheus exporter
(`pipeline.metrics.prometheus`) another. Calls are per batch or per event of the
pipeline's own, never per row, so the seam costs little on the hot path.
"""

from pipeline.metrics.sensor import NULL_SENSOR, Sensor, Sensors

__all__ = ["NULL_SENSOR", "Sensor", "Sensors"]
