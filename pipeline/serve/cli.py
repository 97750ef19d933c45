"""`pipeline serve`: the engine and its HTTP and gRPC doors, without Kafka."""

from __future__ import annotations

import argparse

from pipeline.config import DISPATCHES, ServeConfig
from pipeline.flags import add_config_flag, add_door_flags, add_engine_flags, add_output_flags
from pipeline.startup import (
    print_config,
    remember_early_stop,
    settings_from_args,
    start_logging,
)

__all__ = ["add_serve_parser"]


def _serve(args: argparse.Namespace) -> int:
    remember_early_stop()
    settings = settings_from_args(ServeConfig, args)
    if args.print_config:
        return print_config(settings)
    start_logging(settings)
    from pipeline.serve.server import serve

    return serve(settings)


def add_serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `pipeline serve` to the subcommands."""
    parser = sub.add_parser(
        "serve",
        help="answer prediction requests over HTTP and gRPC (no Kafka)",
        description="Serve the model store over HTTP (POST /predict, /v1/models/<m>:predict, "
        "the Open Inference Protocol v2) and gRPC (/Predictor/Predict, "
        "inference.GRPCInferenceService), batching concurrent callers together. Flags win "
        "over environment (PIPELINE_<SETTING>), which wins over the --config TOML file.",
        argument_default=argparse.SUPPRESS,
    )
    engine = parser.add_argument_group("engine")
    add_engine_flags(engine.add_argument)
    engine.add_argument(
        "--dispatch",
        choices=DISPATCHES,
        help="when the rows that wait run: when-idle (the default): as soon as the engine is "
        "free and as many rows wait as half the requests lately in flight (the oldest "
        "waiting no longer than --max-wait-ms), so a lone caller is answered at once and "
        "many callers' rows go out together; when-due: once a batch is full or its oldest "
        "row has waited --max-wait-ms. --latency-target-ms sizes batches itself, as when-due",
    )
    add_door_flags(
        parser.add_argument_group("doors").add_argument, http_default=8080, grpc_default=50051
    )
    settings = parser.add_argument_group("settings and output")
    add_config_flag(settings.add_argument)
    add_output_flags(settings.add_argument)
    parser.set_defaults(handler=_serve)
