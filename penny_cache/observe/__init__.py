"""What the cache counted and how it is reported: shared counters in Redis, the exporter's
collector, per-process metrics and rate-limited logs. Imports only the vocabulary."""
