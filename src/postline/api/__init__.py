"""api: the HTTP door. A small HTTP/1.1 server, a router, auth, and one module per endpoint."""
