"""The Kafka adapter: the stream worker, its offsets, commits, dead letters and topics."""
