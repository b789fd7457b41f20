"""schedule: per-destination queues, traffic shaping, backoff, concurrency feedback."""
