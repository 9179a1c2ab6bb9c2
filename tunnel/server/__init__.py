"""The server kit: WebSocket handler, gunicorn worker, registry, bindings."""
