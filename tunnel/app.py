"""create_app(): the composition root (Flask's application-factory pattern, as in flaskr).

Builds Settings (from the environment unless given), fills generated tokens, builds Metrics
against a fresh CollectorRegistry and the Kit, stores them in ``app.extensions``, registers the
blueprints and the JSON error handlers. Importing this module has no side effects: no config is
read, nothing is patched, spawned or registered until create_app() runs.
"""

from __future__ import annotations

import os

from flask import Flask
from prometheus_client import CollectorRegistry

from tunnel.api import KIT_EXTENSION, METRICS_EXTENSION, SETTINGS_EXTENSION
from tunnel.api import bindings, connect, health, openapi, sessions, tunnels
from tunnel.api import metrics as metrics_api
from tunnel.api.errors import register_error_handlers
from tunnel.config import Settings
from tunnel.credentials import ensure_credentials
from tunnel.metrics import Metrics
from tunnel.server.kit import Kit

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app.

    Args:
        settings: used as given (tests pass tokens and a temporary state_dir); when None, built
            from ``os.environ`` and completed by :func:`tunnel.credentials.ensure_credentials`.

    Raises:
        ConfigError: the environment holds a bad value, or generated tokens cannot be stored.
    """
    if settings is None:
        # Under gunicorn the master (gunicorn.conf.py) already generated or announced the
        # tokens; here they are only read back. Elsewhere a new token is still printed once.
        settings = ensure_credentials(Settings.from_env(os.environ), announce_reuse=False)

    app = Flask("tunnel")
    # JSON responses keep the schema's field order, the order of the reference's tables
    # (docs/admin-api.md §1).
    app.json.sort_keys = False  # type: ignore[attr-defined]

    metrics = Metrics(CollectorRegistry())
    kit = Kit(settings, metrics)
    # The live gauges are read from the kit at scrape time (tunnel.metrics).
    metrics.set_live_source(kit.live_gauges)

    app.extensions[SETTINGS_EXTENSION] = settings
    app.extensions[METRICS_EXTENSION] = metrics
    app.extensions[KIT_EXTENSION] = kit

    app.register_blueprint(connect.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics_api.bp)
    app.register_blueprint(sessions.bp)
    app.register_blueprint(bindings.bp)
    app.register_blueprint(tunnels.bp)
    app.register_blueprint(openapi.bp)
    register_error_handlers(app)
    return app
