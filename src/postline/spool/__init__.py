"""The durable store of messages and their delivery state (interface + conformance suite)."""
