"""gunicorn settings for hoody-tunnel, loaded by gunicorn.conf.py (Procfile, make run) and by
`hoody-tunnel serve` (`gunicorn -c python:tunnel.gunicorn_conf`), so both run the same server.

This is the one module of the package that reads its configuration at import: gunicorn imports it
in the master, and nothing else does.

Plain settings from the environment with defaults. gunicorn executes this file in the master at
start-up, so the whole configuration is validated here, before any worker forks: a bad value
prints one line, ``hoody-tunnel: config error: HOODY_TUNNEL_WINDOW: ...``, and exits with
status 2 (SystemExit passes through gunicorn's config loader, which only catches Exception, so no
traceback is printed). Generated tokens are made and stored here too, once, in the master.

Command-line options override this file (tests pass ``--bind fd://N``).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

from tunnel.config import ConfigError, Settings
from tunnel.credentials import ensure_credentials

CONFIG_ERROR_EXIT_STATUS = 2


def _load_settings() -> Settings:
    try:
        return ensure_credentials(Settings.from_env(os.environ))
    except ConfigError as exc:
        print(f"hoody-tunnel: config error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_ERROR_EXIT_STATUS) from None


_settings = _load_settings()

proc_name = "hoody-tunnel"
bind = [f"0.0.0.0:{_settings.port}"]

# One worker: every session, binding and orphan lives in one process's memory (the kit's
# registry, the FD budget). gevent gives that worker thousands of concurrent connections.
workers = 1
# gevent-websocket's worker with our handler: the 101 waits until the view accepts with a chosen
# subprotocol, so refusals (400 + x-hoody-tunnel-versions) go out as plain HTTP
# (docs/gevent-websocket.md §3).
worker_class = "tunnel.server.handler.TunnelWorker"
# A full worker_connections pool leaves new connections hanging unanswered
# (docs/gevent-websocket.md §12); keep it above the FD budget so admin/health requests still get
# through when every permit is taken.
worker_connections = _settings.fd_budget + 256
# Recycling a worker would kill every tunnel it holds (docs/gevent-websocket.md §12).
max_requests = 0
max_requests_jitter = 0
# How long a SIGTERM'd worker drains its sessions before the master SIGKILLs it
# (docs/gevent-websocket.md §11).
graceful_timeout = max(1, math.ceil(_settings.graceful_timeout_s))
# The gevent worker heartbeats from its own loop every second, so a busy but healthy worker is
# not killed by the default.
timeout = 30
# gunicorn >= 25.1 creates a control socket under $XDG_RUNTIME_DIR or ~/.gunicorn by default;
# two instances would share it, and we never use it (docs/gevent-websocket.md §12).
control_socket_disable = True
# Never import the app in the master: it would run before the worker's gevent patch_all().
preload_app = False

# LogRecord skips looking up the thread and process names (no format here uses them): under
# gevent that lookup was a third of every log line's cost, and HTTP mode logs a line per request.
logging.logThreads = False
logging.logMultiprocessing = False

accesslog = "-"
# gunicorn's default format without %(u)s: a client that wrongly sends a token as a Basic user
# name must not find it in the log.
access_log_format = '%(h)s %(l)s - %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
errorlog = "-"
loglevel = _settings.log_level
# Everything goes to stderr (gunicorn's own "-" would send the access log to stdout), and the
# kit's loggers ("tunnel.*") get a handler at the configured level: gunicorn configures only its
# own loggers, so without this every INFO line of the kit would be dropped.
_LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "generic": {"format": _LOG_FORMAT, "datefmt": "[%Y-%m-%d %H:%M:%S %z]"},
        "gunicorn": {
            "format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
        },
        "access": {"format": "%(message)s"},
        # The access log's lines come batched, several per record (tunnel/log_lines.py): each
        # is formatted as a line of its own, exactly as "generic" would.
        "access_lines": {
            "()": "tunnel.log_lines.LineFormatter",
            "fmt": _LOG_FORMAT,
            "datefmt": "[%Y-%m-%d %H:%M:%S %z]",
        },
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "generic",
            "stream": "ext://sys.stderr",
        },
        "gunicorn": {
            "class": "logging.StreamHandler",
            "formatter": "gunicorn",
            "stream": "ext://sys.stderr",
        },
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "access",
            "stream": "ext://sys.stderr",
        },
        # HTTP mode's access log (a line per request).
        "http_access": {
            "class": "logging.StreamHandler",
            "formatter": "access_lines",
            "stream": "ext://sys.stderr",
        },
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["gunicorn"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
        "tunnel": {"level": loglevel.upper(), "handlers": ["stderr"], "propagate": False},
        "tunnel.http.access": {"level": loglevel.upper(), "handlers": ["http_access"], "propagate": False},
    },
}


def post_worker_init(worker: Any) -> None:
    """Drain sessions on SIGTERM instead of letting the master SIGKILL them (docs/gevent-websocket.md §11).

    SIGTERM only sets ``worker.alive = False``; the gevent worker then stops accepting and waits
    up to graceful_timeout for open connections. A watcher greenlet turns that into
    ``kit.shutdown(grace_s)`` (GOAWAY(SHUTDOWN) + close 1001 to every session, then drain), with
    a margin so the sessions end before the master's SIGKILL.
    """
    import gc

    import gevent  # in the worker, after its patch_all(); never in the master

    # What start-up built (modules, the app, the metrics) lives as long as the worker: out of
    # the collector's sight, a full collection no longer walks it (a profile of a 64-byte round
    # trip had 7 % of the worker's CPU in the cyclic collector).
    gc.freeze()
    kit = getattr(worker.wsgi, "extensions", {}).get("tunnel")
    shutdown = getattr(kit, "shutdown", None)
    if shutdown is None:
        worker.log.warning("hoody-tunnel: no kit.shutdown(); sessions will not drain on SIGTERM")
        return
    grace_s = max(0.0, worker.cfg.graceful_timeout - 2.0)

    def watch_alive() -> None:
        while worker.alive:
            gevent.sleep(0.2)
        worker.log.info("hoody-tunnel: draining sessions for up to %.1f s", grace_s)
        shutdown(grace_s)

    watcher = gevent.spawn(watch_alive)
    watcher.link_exception(
        lambda greenlet: worker.log.error(
            "hoody-tunnel: shutdown watcher failed: %r", greenlet.exception
        )
    )
