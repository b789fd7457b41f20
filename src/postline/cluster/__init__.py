"""Cluster mode: nodes sharing one NATS JetStream cluster and one PostgreSQL database.

``backends.py`` chooses the backends from ``[cluster]`` (the node, its pipeline worker and
``postline keys`` all open them there); ``status.py`` is ``postline status`` on a cluster
node.
"""
