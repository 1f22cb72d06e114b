"""pgnats-worker: hands NATS messages to the SQL functions subscribed to their subjects."""
