"""The request/response front doors: HTTP (the seed's /predict, TF Serving's :predict, the
Open Inference Protocol v2) and gRPC (the seed's Predictor, the protocol's
GRPCInferenceService), callers of the same engine the Kafka worker uses."""
