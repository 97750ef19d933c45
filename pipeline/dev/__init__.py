"""Developer tooling: the local broker, the demo, the produce/consume clients, the benchmark."""
