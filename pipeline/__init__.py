"""Kafka-native prediction pipeline: feature events in, ONNX Runtime predictions out.

The Kafka-free core is public so other front doors (HTTP, gRPC, a Faust agent) can reuse
it: `EventDecoder` turns raw values into per-model rows and rejects, `MicroBatcher`
groups rows, `ModelCache` finds sessions in a `ModelStore`, `run_batch` infers, and
`encode_predictions` writes the prediction records. `WorkerConfig` configures the Kafka
worker (`pipeline run`).
"""

from pipeline.config import WorkerConfig
from pipeline.engine.batching import Batch, MicroBatcher
from pipeline.engine.codec import Decoded, EventDecoder, Reject, RowBlock, encode_predictions
from pipeline.engine.inference import InferenceResult, RowFailure, run_batch
from pipeline.engine.models import LoadedModel, ModelCache, ModelStore
from pipeline.engine.spec import ModelCatalog, ModelSpec
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
    "Batch",
    "BrokerError",
    "ConfigError",
    "Decoded",
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
    "PipelineError",
    "Reject",
    "RowBlock",
    "RowFailure",
    "WorkerConfig",
    "encode_predictions",
    "run_batch",
]
__version__ = "0.1.0"
