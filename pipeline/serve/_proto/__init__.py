"""Generated gRPC code of the front doors (see pipeline.dev.protos)."""
