"""The supervisor: one process that owns the listeners, the public ZeroMQ
endpoints and the conversation with systemd, and runs ``--workers N``
worker processes (see docs/supervisor.md)."""
