"""Predictions inside a Faust app: `predict_agent` beside agents of your own.

Against the local broker (`pipeline kafka start`, 127.0.0.1:9092; set
KAFKA_BOOTSTRAP_SERVERS for another), from the repository's root::

    .venv/bin/python examples/faust_predict.py worker --without-web -l warn
    .venv/bin/pipeline produce --synthetic breast-cancer-mlp --count 1000   # another shell

`predict_agent` reads feature events from ``features`` and writes one prediction per
event to ``predictions`` (dead letters to ``predictions.dlq``), with the same engine,
records and dead-letter headers as ``pipeline run``. The two agents below stand for the
rest of your app: one prints every 250th prediction, the other every dead letter with
the headers that say why. Stop it with Ctrl-C.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import faust
import orjson

from pipeline.faust import predict_agent

BROKER = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
ROOT = Path(__file__).resolve().parents[1]
DATADIR = ROOT / ".cache" / "faust-predict-example"  # Faust's own files, out of git
DATADIR.parent.mkdir(exist_ok=True)  # Faust makes only the last directory

app = faust.App(
    "faust-predict-example",
    broker=f"kafka://{BROKER}",
    datadir=DATADIR,
    topic_partitions=4,
    topic_replication_factor=1,
)

predict_agent(
    app, "features", "predictions", models=ROOT / "models", default_model="breast-cancer-mlp"
)


@app.agent(app.topic("predictions", key_serializer="raw", value_serializer="raw"))
async def show_predictions(stream: Any) -> None:
    """Print every 250th prediction."""
    n = 0
    async for event in stream.events():
        n += 1
        if n % 250 == 0:
            p = orjson.loads(event.value)
            late = p["predicted_at"] - p["ts"]
            print(f"prediction {n}: key={event.key.decode()} id={p['id']} {p['label']} "
                  f"{p['score']:.4f} ({late} ms after the event)")  # fmt: skip


@app.agent(app.topic("predictions.dlq", key_serializer="raw", value_serializer="raw"))
async def show_dead_letters(stream: Any) -> None:
    """Print every dead letter and why it is one."""
    async for event in stream.events():
        why = {k: v.decode() for k, v in event.message.headers if k.startswith("pipeline.")}
        print(f"dead letter key={event.key!r}: {why['pipeline.error.stage']} "
              f"{why['pipeline.error.type']}: {why['pipeline.error.message']}")  # fmt: skip


if __name__ == "__main__":
    app.main()
