"""A Faust worker that runs `pipeline.faust.predict_agent`, for the integration tests.

Run as ``python -m tests.integration.faustapp --bootstrap ... --input ... --output ...
--dlq ... --group ... --models ... --datadir ...``; it logs at INFO to stderr and stops
cleanly on SIGTERM. A killed member gives its partitions up after 6 s (the broker's
smallest session timeout), so a test that kills one does not wait 45 s for the next.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import faust
from faust.worker import Worker

from pipeline.faust import predict_agent


def build_app(args: argparse.Namespace) -> faust.App:
    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        web_enabled=False,
        datadir=args.datadir,
        topic_replication_factor=1,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.5,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
    )
    predict_agent(
        app,
        args.input,
        args.output,
        dlq_topic=args.dlq,
        models=args.models,
        default_model=args.default_model,
        max_batch_size=args.max_batch_size,
    )
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.faustapp")
    for flag in ("--bootstrap", "--input", "--output", "--dlq", "--group", "--models", "--datadir"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--default-model", default=None)
    parser.add_argument("--max-batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    Worker(build_app(args), loglevel=logging.INFO, quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
