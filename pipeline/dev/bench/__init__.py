"""Benchmarks: measured figures, never pass/fail tests.

`micro` times the codec and ONNX Runtime without Kafka. The side-by-side benchmark
(``python -m pipeline.dev.bench``, `cli`) runs the worker, its peers (`peers`) and the
ceilings on a real broker: `suite` plans the run, `runner` runs one contender and
measures it (`procstats` for CPU and memory), `latency` drives the worker open loop,
and `report` writes the table, the JSON and the plot.

The front-door benchmark (``python -m pipeline.dev.bench.doors``, `doors`) puts
``pipeline serve``'s HTTP and gRPC doors beside per-request peers (`doorpeers`: the
seed's Flask app, a FastAPI app): `doorsuite` plans the run, `doorservers` starts each
contender, `doorload` builds and runs the Go load generator (``loadgen/``), and
`doorreport` writes the table, the JSON and the plot.
"""
