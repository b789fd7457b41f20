"""backends: the only modules that import storage drivers (sqlite3, nats, asyncpg)."""
