"""Predictions inside an existing Faust app, on the same engine as the Kafka worker.

`predict_agent` registers an agent on a ``faust.App`` (faust-streaming, the ``[faust]``
extra) that decodes feature events with `pipeline.EventDecoder`, batches and runs them
with `pipeline.Engine`, encodes predictions like ``pipeline run`` and sends them, and
dead letters with the worker's headers, with the app's own producer.

Guarantee: at-least-once. An event is acknowledged to Faust only after its prediction or
dead letter is acknowledged by the broker, and events are acknowledged in arrival order
per partition, so no commit passes an event whose output is not delivered; after a crash
the events past the last commit are predicted again (duplicates, never losses). Faust's
own ``exactly_once`` guarantee cannot be combined with it and is refused.

Modules::

    agent.py      predict_agent: the Faust wiring, start-up and stop
    predictor.py  the data path: decode, engine, encode, send, acknowledge
    sender.py     predictions and dead letters through the app's producer
    acks.py       acknowledging in arrival order per partition
"""

from pipeline.faust.agent import predict_agent

__all__ = ["predict_agent"]
