"""PostgreSQL for cluster mode's shared state (issue 15 item 4): the only asyncpg importer.

``migrations`` holds the numbered schema changes, ``migrate`` applies them on start under an
advisory lock (several nodes starting at once apply each exactly once), ``keys`` is the
API key store every node shares, served from an in-memory mirror kept fresh by
LISTEN/NOTIFY (``mirror``) on a private event loop thread (``loop``).
"""
