"""`predict_agent`: register a prediction agent on a Faust app the user already has.

The agent reads raw feature events from the input topic with Faust's ``noack_take``
(batches of up to ``max_batch_size`` events, or what came within ``max_wait_ms``), and
hands each batch to a `Predictor`: the project's `EventDecoder`, `Engine` (run by an
`EngineLoop` thread, so ONNX Runtime never blocks Faust's event loop) and `encode_rows`,
with the app's own producer for predictions and dead letters. Events are acknowledged to
Faust only after their output is acknowledged by the broker, in order per partition.

At start the agent creates the output and dead-letter topics if they are missing (as
Faust declares topics) and loads the default model off the event loop. When the app
stops, the agent waits up to `DRAIN_TIMEOUT_S` for the outputs in flight, so a clean stop
leaves little to redo. Faust's ``exactly_once`` processing guarantee is refused: see
`pipeline.faust`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pipeline.config import EngineSettings
from pipeline.engine.codec import EventDecoder
from pipeline.engine.engine import Engine, EngineLoop
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.errors import ConfigError, ModelError
from pipeline.faust.predictor import Predictor
from pipeline.faust.sender import Sender
from pipeline.importer.extras import require

__all__ = ["DRAIN_TIMEOUT_S", "predict_agent"]

log = logging.getLogger("pipeline.faust")

DRAIN_TIMEOUT_S: Final = 10.0
"""How long a stopping agent waits for its outputs in flight to be acknowledged."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Plan:
    """What one registered agent does: its topics, its engine and its bounds."""

    output_topic: str
    dlq_topic: str
    settings: EngineSettings
    max_in_flight: int
    engine: Engine[Any]


def predict_agent(
    app: Any,
    input_topic: Any,
    output_topic: str,
    *,
    models: str | os.PathLike[str],
    dlq_topic: str | None = None,
    default_model: str | None = None,
    max_batch_size: int = 256,
    max_wait_ms: float = 5.0,
    max_in_flight: int = 20_000,
    model_threads: int = 1,
    max_loaded_models: int = 8,
    name: str | None = None,
) -> Any:
    """Register an agent on `app` that predicts every event of `input_topic`.

    Each event (the feature-event JSON the Kafka worker reads) ends as one prediction on
    `output_topic`, keyed like the input, or one dead letter on `dlq_topic` with the
    worker's headers. An event is acknowledged only after that output is acknowledged by
    the broker, so the app's commits are at-least-once.

    Args:
        app: The ``faust.App``; its ``processing_guarantee`` must be ``at_least_once``.
        input_topic: A topic name, or a Faust topic (its records are read as raw bytes).
        output_topic: Where predictions go.
        models: The model store directory.
        dlq_topic: Where dead letters go; by default `output_topic` + ``.dlq``.
        default_model: The model for events that name none.
        max_batch_size: Rows per inference batch, and events per take, at most.
        max_wait_ms: How long the take waits for a batch to fill.
        max_in_flight: Events taken and not yet acknowledged before the agent waits.
        model_threads: ONNX Runtime intra-op threads per session.
        max_loaded_models: Sessions kept loaded (least recently used go first).
        name: The agent's name; by default ``predict-<input topic>``.

    Returns:
        The Faust agent.

    Raises:
        ConfigError: faust-streaming is not installed, the app uses ``exactly_once``, a
            setting is out of range, or `models` is not a directory.
    """
    require("faust", extra="faust", purpose="a Faust prediction agent")
    _refuse_exactly_once(app)
    settings = EngineSettings(
        models=Path(models),
        default_model=default_model,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        model_threads=model_threads,
        max_loaded_models=max_loaded_models,
    )
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
        raise ConfigError(f"max_in_flight must be an integer, got {max_in_flight!r}")
    if max_in_flight < max_batch_size:
        raise ConfigError(
            f"max_in_flight must be at least max_batch_size ({max_batch_size}), got {max_in_flight}"
        )
    plan = _Plan(
        output_topic=output_topic,
        dlq_topic=dlq_topic or f"{output_topic}.dlq",
        settings=settings,
        max_in_flight=max_in_flight,
        engine=_engine(settings),
    )
    source = _raw_topic(app, input_topic) if isinstance(input_topic, str) else input_topic

    async def predict(stream: Any) -> None:
        await _run(app, stream, plan)

    agent_name = name or f"predict-{source.get_topic_name()}"
    return app.agent(source, name=agent_name)(predict)


def _refuse_exactly_once(app: Any) -> None:
    guarantee = app.conf.processing_guarantee
    if getattr(guarantee, "value", guarantee) == "exactly_once":
        raise ConfigError(
            "predict_agent needs processing_guarantee='at_least_once', got 'exactly_once': "
            "Faust sends each output in the transaction of the partition its key falls in "
            "on the output topic, not of the input partition whose offset it pays for, so "
            "outputs and offsets would not commit together; use `pipeline run --guarantee "
            "exactly-once` where exactly-once is needed"
        )


def _engine(settings: EngineSettings) -> Engine[Any]:
    """An engine of its own that runs each batch as soon as it is cut (the take waited)."""
    cache = ModelCache(
        ModelStore(settings.models),
        max_loaded=settings.max_loaded_models,
        intra_op_threads=settings.model_threads,
    )
    return Engine(cache, max_batch_size=settings.max_batch_size, max_wait_ms=0)


def _raw_topic(app: Any, name: str) -> Any:
    return app.topic(name, key_serializer="raw", value_serializer="raw")


async def _run(app: Any, stream: Any, plan: _Plan) -> None:
    """The agent's body: start up, then one `Predictor.take` per batch until stopped."""
    await _start_up(app, plan)
    runner = EngineLoop(plan.engine)
    runner.start()
    predictor = Predictor(
        plan.engine,
        EventDecoder(catalog=plan.engine.models, default_model=plan.settings.default_model),
        Sender(app.producer, output_topic=plan.output_topic, dlq_topic=plan.dlq_topic),
        ack=stream.ack,
        on_failure=app.crash,
        max_in_flight=plan.max_in_flight,
    )
    # `within` 0 would make Faust wait for a full batch however long that takes.
    within_s = max(plan.settings.max_wait_ms, 0.1) / 1000
    try:
        async for events in stream.noack_take(plan.settings.max_batch_size, within=within_s):
            await predictor.take(events)
    except asyncio.CancelledError:  # the app stops: let the outputs in flight land
        left = await predictor.drain(DRAIN_TIMEOUT_S)
        if left:
            log.warning("stopping with %d events unacknowledged: they are redone", left)
        raise
    finally:
        predictor.close()
        runner.stop()


async def _start_up(app: Any, plan: _Plan) -> None:
    """Create the output topics if missing; load the default model off the event loop."""
    for topic in (plan.output_topic, plan.dlq_topic):
        await _raw_topic(app, topic).maybe_declare()
    default = plan.settings.default_model
    if default is not None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, plan.engine.models.resolve, default, None
            )
        except ModelError as exc:  # its events become dead letters, as in the worker
            log.warning("the default model %s is not served: %s", default, exc)
    log.info(
        "predicting into %s (dead letters into %s) with the models in %s",
        plan.output_topic,
        plan.dlq_topic,
        plan.settings.models,
    )
