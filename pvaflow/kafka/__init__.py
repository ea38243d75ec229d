"""The one Kafka layer: client settings, topics, and the produce-with-backpressure policy."""
