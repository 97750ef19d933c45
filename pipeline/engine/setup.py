"""Building an engine from its settings, and warming the store's models before traffic
comes, so the first events and requests do not pay for loading and readiness can wait."""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.config import EngineSettings
from pipeline.engine.engine import Engine
from pipeline.engine.models import ModelCache, ModelStore
from pipeline.engine.rollout import Rollouts
from pipeline.errors import ModelError
from pipeline.metrics import Sensor

__all__ = ["build_engine", "unready_reason", "warm_up", "warm_up_models"]

log = logging.getLogger("pipeline.engine")


def build_engine(settings: EngineSettings, sensor: Sensor, *, max_queue: int | None) -> Engine[Any]:
    """The engine of `settings`: its model cache, batcher, shadows and canaries; `sensor`
    hears them all.

    Raises:
        ConfigError: a ``--shadow`` or ``--canary`` names a version the store lacks.
    """
    store = ModelStore(settings.models)
    cache = ModelCache(
        store,
        max_loaded=settings.max_loaded_models,
        intra_op_threads=settings.model_threads,
        sensor=sensor,
        pins=settings.pinned(),
    )
    rollouts = Rollouts(
        store,
        shadows=settings.shadowed(),
        canaries=settings.canaried(),
        shadow_fraction=settings.shadow_fraction,
    )
    rollouts.check()
    return Engine(
        cache,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_queue_rows=max_queue,
        sensor=sensor,
        latency_target_ms=settings.latency_target_ms or None,
        rollouts=rollouts,
    )


def warm_up(engine: Engine[Any], *, default_model: str | None, max_loaded: int) -> list[str]:
    """Load and warm the newest version of each model in the store: the default model
    first, at most `max_loaded`. A model that fails to load is logged and does not hold the
    others back (its events and requests get the reason when they ask for it).

    Returns:
        ``name/version`` of each model loaded.
    """
    return warm_up_models(engine, default_model=default_model, max_loaded=max_loaded)[0]


def warm_up_models(
    engine: Engine[Any], *, default_model: str | None, max_loaded: int
) -> tuple[list[str], dict[str, str]]:
    """`warm_up`, also returning the models that failed to load, with their reasons."""
    cache = engine.models
    names = cache.store.names()
    if default_model in names:
        names.remove(default_model)
        names.insert(0, default_model)
    started = time.monotonic()
    loaded: list[str] = []
    failed: dict[str, str] = {}
    for name in names[:max_loaded]:
        try:
            spec = cache.resolve(name, None)
        except ModelError as exc:
            log.warning("model %s is not served: %s", name, exc)
            failed[name] = str(exc)
            continue
        loaded.append(f"{spec.name}/{spec.version}")
        loaded += _candidates(engine, spec.name, spec.version)
    log.info("models loaded and warmed in %.2f s: %s", time.monotonic() - started,
             ", ".join(loaded) or "none")  # fmt: skip
    return loaded, failed


def _candidates(engine: Engine[Any], name: str, served: str) -> list[str]:
    """Warm the model's shadow and canary versions too, so their first rows do not pay for
    loading; one that fails is logged (its rows say why when they meet it)."""
    rollouts = engine.rollouts
    if rollouts is None:
        return []
    canary = rollouts.canary_of(name)
    wanted = {v for v in (rollouts.shadow_of(name), canary and canary.version) if v}
    warmed = []
    for version in sorted(wanted - {served}):
        try:
            engine.models.get(name, version)
        except ModelError as exc:
            log.warning("model %s version %s (a shadow or canary) is not served: %s",
                        name, version, exc)  # fmt: skip
            continue
        warmed.append(f"{name}/{version}")
    return warmed


def unready_reason(
    loaded: list[str], failed: dict[str, str], default_model: str | None
) -> str | None:
    """Why a server that warmed these models cannot serve what it was asked for (None if
    it can): its default model failed, or no model loaded at all."""
    if default_model is not None and default_model in failed:
        return f"the default model {default_model} cannot be loaded: {failed[default_model]}"
    if not loaded:
        if failed:
            names = ", ".join(sorted(failed))
            return f"no model could be loaded ({names}): {next(iter(failed.values()))}"
        return "the model store holds no model"
    return None
