"""Process-level primitives every layer may use: host locks, durable flushes, logging, metrics, shutdown, file watches, repository creation, times."""
