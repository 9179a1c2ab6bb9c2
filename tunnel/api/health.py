"""GET /api/v1/tunnel/health: the kit's health report. No authentication (docs/admin-api.md §4).

Every figure describes the process that serves the request, which is the one gunicorn worker
holding every session (gunicorn.conf.py: ``workers = 1``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import psutil
from flask import Blueprint, Response, jsonify, request

from tunnel.api import API_PREFIX, current_kit, current_settings
from tunnel.api.schemas import HealthSchema

__all__ = ["HealthReport", "MemoryUsage", "bp", "local_ip", "process_report"]

bp = Blueprint("health", __name__, url_prefix=API_PREFIX)

SERVICE_NAME = "hoody-tunnel"
# Keys under which WSGI servers hand the application the connection's socket:
# gunicorn's gevent handler (PyWSGIHandler.get_environ), gunicorn's sync/gthread workers,
# and Werkzeug's development server.
_SOCKET_ENVIRON_KEYS = ("gunicorn.sock", "gunicorn.socket", "werkzeug.socket")


@dataclass(frozen=True, slots=True)
class MemoryUsage:
    heap: int  # bytes: data segment size
    rss: int  # bytes: resident set size


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: str
    service: str
    built: str | None
    started: str
    memory: MemoryUsage | None
    fds: int | None
    pid: int
    ip: str
    user_agent: str


@dataclass(frozen=True, slots=True)
class ProcessFigures:
    started: str
    memory: MemoryUsage | None
    fds: int | None
    pid: int


def process_report() -> ProcessFigures:
    """Start time (ISO-8601 UTC), memory and open FDs of this process, from psutil.

    ``memory`` is None where the platform has no data-segment figure (psutil gives
    ``memory_info().data`` on Linux and the BSDs); ``fds`` is None where psutil cannot count them.
    """
    process = psutil.Process(os.getpid())
    with process.oneshot():
        created = datetime.fromtimestamp(process.create_time(), tz=timezone.utc)
        memory: MemoryUsage | None = None
        try:
            info = process.memory_info()
            data_size = getattr(info, "data", None)
            if isinstance(data_size, int):
                memory = MemoryUsage(heap=data_size, rss=int(info.rss))
        except psutil.Error:
            memory = None
        fds: int | None
        try:
            fds = process.num_fds()
        except (psutil.Error, AttributeError):  # AttributeError: no num_fds() on Windows
            fds = None
    return ProcessFigures(
        started=created.strftime("%Y-%m-%dT%H:%M:%SZ"), memory=memory, fds=fds, pid=process.pid
    )


def local_ip(environ: Mapping[str, object]) -> str:
    """The local address of the connection this request arrived on.

    ``SERVER_NAME`` is not that: gevent's pywsgi fills it once per listener with
    ``socket.getfqdn()`` of the bound address (a host name, or ``0.0.0.0``'s). The connection's
    own socket is in the environ under a server-specific key (``gunicorn.sock`` from gunicorn's
    gevent handler); its ``getsockname()`` gives the address the client actually reached.
    Falls back to ``SERVER_NAME`` when no socket is exposed (e.g. Flask's test client).
    """
    for key in _SOCKET_ENVIRON_KEYS:
        sock = environ.get(key)
        getsockname = getattr(sock, "getsockname", None)
        if getsockname is None:
            continue
        try:
            address = getsockname()
        except OSError:
            continue
        if isinstance(address, tuple) and address and isinstance(address[0], str):
            return _unmap_ipv4(address[0])
    return str(environ.get("SERVER_NAME", ""))


def _unmap_ipv4(host: str) -> str:
    # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; report the IPv4 address.
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return host


@bp.get("/health")
def health() -> Response:
    figures = process_report()
    report = HealthReport(
        status="draining" if current_kit().draining else "ok",
        service=SERVICE_NAME,
        built=current_settings().built,
        started=figures.started,
        memory=figures.memory,
        fds=figures.fds,
        pid=figures.pid,
        ip=local_ip(request.environ),
        user_agent=request.headers.get("User-Agent", ""),
    )
    return jsonify(HealthSchema().dump(report))
