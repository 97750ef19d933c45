"""`pipeline serve`: the engine and its HTTP and gRPC doors, without Kafka."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import ServeConfig, load_settings
from pipeline.flags import add_door_flags, add_engine_flags
from pipeline.logs import setup_logging

__all__ = ["add_serve_parser"]


def _serve(args: argparse.Namespace) -> int:
    flags = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "config")}
    if "pins" in flags:
        flags["pins"] = tuple(flags["pins"])
    settings = load_settings(ServeConfig, flags, config_file=args.config)
    setup_logging()
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
        "over environment (PIPELINE_<FLAG>), which wins over the --config TOML file.",
        argument_default=argparse.SUPPRESS,
    )
    add = parser.add_argument
    add_engine_flags(add)
    add_door_flags(add, http_default=8080, grpc_default=50051)
    add("--config", type=Path, default=None, metavar="FILE", help="TOML settings file")
    parser.set_defaults(handler=_serve)
