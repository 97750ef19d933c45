"""The public names: `pipeline.__all__` pinned, every module's `__all__` importable and sorted."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import pipeline

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline.")
    if not info.name.endswith(".__main__")  # importing one runs the command
    and hasattr(importlib.import_module(info.name), "__all__")
)
# These order `__all__` the way ruff's RUF022 does (constants, then classes, then
# functions), which is not plain `sorted()`; they are checked against that order instead.
RUF022_ORDERED = {
    "pipeline.config",
    "pipeline.errortypes",
    "pipeline.exitcodes",
    "pipeline.dev.bench.contenders",
    "pipeline.dev.bench.doorservers",
    "pipeline.dev.bench.doorsuite",
    "pipeline.dev.bench.runner",
    "pipeline.dev.bench.suite",
    "pipeline.engine.codec",
    "pipeline.engine.framing",
    "pipeline.dev.localkafka",
    "pipeline.engine.models",
    "pipeline.engine.rollout",
    "pipeline.engine.signature",
    "pipeline.engine.spec",
    "pipeline.engine.values",
    "pipeline.kafka.clientlog",
    "pipeline.kafka.deadletter",
    "pipeline.metrics.tracing",
    "pipeline.metrics.prometheus",
    "pipeline.metrics.sensor",
    "pipeline.metrics",
}


def module_all(name: str) -> list[str]:
    module: ModuleType = importlib.import_module(name)
    return list(module.__all__)


def isort_style_key(name: str) -> tuple[int, str]:
    """RUF022's order: SCREAMING_CASE first, then CamelCase, then everything else."""
    if len(name) > 1 and name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_package_exports_are_pinned() -> None:
    assert pipeline.__all__ == [
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


def test_package_exports_are_the_defining_modules_objects() -> None:
    for name in pipeline.__all__:
        obj = getattr(pipeline, name)
        home = importlib.import_module(obj.__module__)
        assert getattr(home, name) is obj


def test_the_package_errors_all_derive_from_pipeline_error() -> None:
    errors = importlib.import_module("pipeline.errors")
    for name in errors.__all__:
        assert issubclass(getattr(pipeline, name), pipeline.PipelineError)


def _loaded_by(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """The modules under `prefixes` that importing `modules` loads, in a fresh interpreter."""
    import ast
    import subprocess
    import sys

    code = (
        f"import sys; [__import__(m) for m in {modules!r}]; "
        f"print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded: list[str] = ast.literal_eval(done.stdout)  # a printed list of module names
    return loaded


def test_importing_the_core_does_not_import_kafka() -> None:
    engine = [m for m in MODULES if m.startswith(("pipeline.engine", "pipeline.metrics"))]
    loaded = _loaded_by(["pipeline", *engine], ("confluent_kafka",))
    assert loaded == [], f"pipeline.engine must not import a Kafka client: {loaded}"


def test_a_worker_without_a_registry_does_not_import_the_registry_client() -> None:
    """Its client takes about a third of a second of every worker's start
    (`pipeline.kafka.registryparts`)."""
    kafka = [m for m in MODULES if m.startswith("pipeline.kafka")]
    loaded = _loaded_by(["pipeline.cli", *kafka],
                        ("confluent_kafka.schema_registry", "pipeline.schemaregistry"))  # fmt: skip
    assert loaded == [], loaded


def test_the_module_walk_finds_the_modules() -> None:
    for name in (
        "pipeline.config",
        "pipeline.kafka.deadletter",
        "pipeline.kafka.offsets",
        "pipeline.engine.engine",
        "pipeline.metrics.statsline",
    ):
        assert name in MODULES


@pytest.mark.parametrize("name", ["pipeline", *MODULES])
def test_every_exported_name_is_importable_and_listed_once(name: str) -> None:
    module = importlib.import_module(name)
    exported = module_all(name)

    assert exported, f"{name}.__all__ is empty"
    assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
    missing = [member for member in exported if not hasattr(module, member)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec(f"from {name} import *", namespace)
    assert set(exported) <= set(namespace)


@pytest.mark.parametrize("name", [m for m in ["pipeline", *MODULES] if m not in RUF022_ORDERED])
def test_all_is_sorted(name: str) -> None:
    exported = module_all(name)

    assert exported == sorted(exported)


@pytest.mark.parametrize("name", sorted(RUF022_ORDERED))
def test_all_is_in_ruff_order_where_not_plainly_sorted(name: str) -> None:
    exported = module_all(name)

    assert exported == sorted(exported, key=isort_style_key)
