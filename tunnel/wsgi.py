"""The WSGI entry point gunicorn and the Procfile load: ``tunnel.wsgi:app``.

The one module allowed a module-level app. gunicorn imports it in the worker after the gevent
worker has patched (no ``preload_app``), so nothing here runs before patching.
"""

from __future__ import annotations

from tunnel.app import create_app

app = create_app()
