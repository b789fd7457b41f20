"""Spool + EventLog on NATS JetStream (cluster mode; ARCHITECTURE.md "Backend interfaces")."""
