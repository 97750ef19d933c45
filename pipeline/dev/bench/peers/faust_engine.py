"""The Faust adapter peer: `pipeline.faust.predict_agent` in a Faust app, beside the plain
``take()`` agent (`pipeline.dev.bench.peers.faust_agent`).

The app has the Faust peer's settings (`faust_settings`), so the two Faust rows differ
only in the agent: this one decodes with the project's codec, batches and runs the model
on its engine (256 rows, events taken within 5 ms), and acknowledges each event after the
broker acknowledged its prediction, in order per partition. It writes dead letters to the
run's ``--dlq`` topic. It runs until the benchmark stops it with SIGTERM once every
output is there (``--count`` is accepted and not needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.dev.bench.peers.common import PeerArgs, parse_peer_args
from pipeline.dev.bench.peers.faust_agent import faust_app, run_app
from pipeline.faust import predict_agent

__all__ = ["build_app", "main"]

MAX_BATCH = 256
WITHIN_MS = 5.0


def build_app(args: PeerArgs, datadir: str) -> Any:
    """The Faust app with `predict_agent` on the run's topics, its state in `datadir`."""
    app = faust_app(args, datadir)
    predict_agent(
        app,
        args.input,
        args.output,
        models=args.model_dir.parents[1],
        default_model=args.model_dir.parent.name,
        dlq_topic=args.dlq,
        max_batch_size=MAX_BATCH,
        max_wait_ms=WITHIN_MS,
    )
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run the Faust worker until SIGTERM; return 0."""
    args = parse_peer_args("python -m pipeline.dev.bench.peers.faust_engine", __doc__ or "", argv)
    run_app(lambda datadir: build_app(args, datadir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
