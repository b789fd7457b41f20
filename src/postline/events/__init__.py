"""events: the durable event log and its consumers."""
