"""Kafka-native prediction pipeline: feature events in, ONNX Runtime predictions out.

The Kafka-free engine is public so every front door (the Kafka worker, HTTP, gRPC, a
Faust agent) uses the same parts: `Engine` batches rows per model version across callers
and hands back an `Outcome` per part of each submission (run by the caller or an
`EngineLoop` thread); `EventDecoder` turns raw event values into per-model rows and
rejects; `ModelCache` finds sessions in a `ModelStore`; `run_batch` infers one batch,
isolating failing rows; `encode_predictions` writes the prediction records. Parts report
what happens to a `Sensor`. `WorkerConfig` configures the Kafka worker (`pipeline run`).
"""

from pipeline.config import WorkerConfig
from pipeline.engine.batching import Batch, MicroBatcher, Slice
from pipeline.engine.codec import Decoded, EventDecoder, Reject, RowBlock, encode_predictions
from pipeline.engine.engine import Engine, EngineLoop, Outcome, RowError
from pipeline.engine.inference import InferenceResult, RowFailure, run_batch
from pipeline.engine.models import LoadedModel, ModelCache, ModelStore
from pipeline.engine.spec import ModelCatalog, ModelSpec
from pipeline.errors import (
    BrokerError,
    BrokerUnreachable,
    ConfigError,
    DeliveryFailed,
    KafkaError,
    ModelError,
    ModelLoadError,
    ModelNotFoundError,
    Overloaded,
    PipelineError,
    RegistryError,
    RegistryUnreachable,
)
from pipeline.metrics import Sensor

__all__ = [
    "Batch",
    "BrokerError",
    "BrokerUnreachable",
    "ConfigError",
    "Decoded",
    "DeliveryFailed",
    "Engine",
    "EngineLoop",
    "EventDecoder",
    "InferenceResult",
    "KafkaError",
    "LoadedModel",
    "MicroBatcher",
    "ModelCache",
    "ModelCatalog",
    "ModelError",
    "ModelLoadError",
    "ModelNotFoundError",
    "ModelSpec",
    "ModelStore",
    "Outcome",
    "Overloaded",
    "PipelineError",
    "RegistryError",
    "RegistryUnreachable",
    "Reject",
    "RowBlock",
    "RowError",
    "RowFailure",
    "Sensor",
    "Slice",
    "WorkerConfig",
    "encode_predictions",
    "run_batch",
]
__version__ = "0.1.0"
