"""The Flask surface: one Blueprint per module, all under ``/api/v1/tunnel``.

Per-app objects live in ``app.extensions`` (never in module globals); views reach them through
the accessors below, which read ``current_app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from flask import current_app

if TYPE_CHECKING:
    from tunnel.config import Settings
    from tunnel.metrics import Metrics
    from tunnel.server.kit import Kit

__all__ = [
    "API_PREFIX",
    "KIT_EXTENSION",
    "METRICS_EXTENSION",
    "SETTINGS_EXTENSION",
    "current_kit",
    "current_metrics",
    "current_settings",
]

API_PREFIX = "/api/v1/tunnel"
# Keys of app.extensions set by tunnel.app.create_app. "tunnel" is the Kit.
KIT_EXTENSION = "tunnel"
METRICS_EXTENSION = "tunnel.metrics"
SETTINGS_EXTENSION = "tunnel.settings"


def current_kit() -> Kit:
    """The Kit of the app handling the current request."""
    return cast("Kit", current_app.extensions[KIT_EXTENSION])


def current_metrics() -> Metrics:
    """The Metrics (and so the CollectorRegistry) of the current app."""
    return cast("Metrics", current_app.extensions[METRICS_EXTENSION])


def current_settings() -> Settings:
    """The Settings the current app was built with (tokens filled in)."""
    return cast("Settings", current_app.extensions[SETTINGS_EXTENSION])
