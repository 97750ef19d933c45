"""The Kafka-free engine: decode events into rows, batch them, run ONNX Runtime, encode outputs.

Nothing in this package imports a Kafka client, so every front door (the Kafka worker, the
HTTP and gRPC servers, a Faust agent) and every benchmark can use it on its own.
"""
