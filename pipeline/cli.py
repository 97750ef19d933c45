"""The `pipeline` command: assembles the subcommands each package defines, and runs one.

Subcommands:
    run                       the stream worker (pipeline.kafka.cli)
    serve                     the HTTP and gRPC doors, no Kafka (pipeline.serve.cli)
    produce                   send events to a topic (pipeline.dev.cli)
    consume                   print a topic's records (pipeline.dev.cli)
    replay                    a topic's range through a candidate version, with a diff
    kafka start|stop|status   the embedded local broker (pipeline.dev.cli)
    bench                     the side-by-side benchmark (pipeline.dev.bench.cli)
    models                    import, list, show, validate models (pipeline.importer.cli)
    completion bash|zsh       a shell completion script (pipeline.completion)

The exit code says what went wrong (`pipeline.exitcodes`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pipeline.completion import add_completion_parser
from pipeline.dev.bench.cli import add_bench_parser
from pipeline.dev.cli import (
    add_client_parsers,
    add_cluster_parsers,
    add_kafka_parser,
    add_replay_parser,
)
from pipeline.dev.registrycli import add_registry_parser
from pipeline.errors import PipelineError
from pipeline.exitcodes import exit_code
from pipeline.importer.cli import add_models_parser
from pipeline.kafka.cli import add_run_parser
from pipeline.logs import report_error, setup_logging
from pipeline.serve.cli import add_serve_parser
from pipeline.version import VersionAction

__all__ = ["build_parser", "main", "setup_logging"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the `pipeline` command."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Kafka-native prediction pipeline: feature events in, ONNX predictions out.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage, 3 configuration, 4 broker unreachable, "
        "5 delivery failed, 6 other Kafka error, 7 schema registry unreachable, 130 interrupted.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    add_run_parser(sub)
    add_serve_parser(sub)
    add_client_parsers(sub)
    add_cluster_parsers(sub)
    add_replay_parser(sub)
    add_kafka_parser(sub)
    add_registry_parser(sub)
    add_bench_parser(sub)
    add_models_parser(sub)
    add_completion_parser(sub, build_parser)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its help line as one, so that
    ``pipeline <command> --help`` always says what the command does."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, child in action.choices.items():
            if not child.description and helps.get(name):
                text = str(helps[name])
                child.description = text[0].upper() + text[1:] + "."
            _describe(child)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pipeline` command; return its exit code (see `pipeline.exitcodes`)."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
    except BrokenPipeError:  # `pipeline ... | head -1`: the reader has what it wanted
        _discard_stdout()
        code = 0
    except (PipelineError, KeyboardInterrupt) as exc:
        if isinstance(exc, PipelineError):
            report_error(str(exc))
        code = exit_code(exc)
    worker = sys.modules.get("pipeline.kafka.worker")  # loaded only if this command ran one
    if worker is not None:
        worker.exit_if_abandoned(code)
    return code


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of output nobody
    reads raises nothing (the way Unix tools end quietly when their reader goes)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
