"""Kafka-native prediction pipeline: feature events in, ONNX Runtime predictions out."""

from pipeline.errors import (
    BrokerError,
    ConfigError,
    KafkaError,
    ModelError,
    ModelLoadError,
    ModelNotFoundError,
    PipelineError,
)

__all__ = [
    "BrokerError",
    "ConfigError",
    "KafkaError",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "PipelineError",
]
__version__ = "0.1.0"
