"""EXPOSE listeners and PULL dialing: the kit's only contact with the container's network.

``OSError`` becomes :class:`~tunnel.protocol.UpstreamError` here and nowhere else
(house style §4), carrying the wire error code a caller should answer with.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field

from gevent import socket as gsocket
from gevent.socket import wait_read

from tunnel.mux.dialing import connect_tcp
from tunnel.protocol import BindKind, BindMode, ErrorCode, UpstreamError

#: Kernel backlog for EXPOSE listeners: while a session is at maxStreams, out of FD permits or
#: (later) parked, new connections wait here (docs/protocol.md §12, §13.1).
LISTEN_BACKLOG = 128


@dataclass(slots=True)
class Binding:
    """One BIND of a session."""

    bind_id: int
    kind: BindKind
    port: int
    mode: BindMode
    host_header: str | None = None  # HTTP mode: the Host the kit sets (BIND "hostHeader")
    listener: socket.socket | None = None  # EXPOSE only
    streams_opened: int = 0
    closed: bool = False
    accept_greenlet: object | None = field(default=None, repr=False)


def open_listener(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` for an EXPOSE binding.

    Raises:
        UpstreamError: with ``error_code`` PORT_IN_USE (address in use, or any other refusal
            to listen) or FORBIDDEN (permission denied), and a message naming the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise UpstreamError(
                f"port {port}: permission denied to listen on {host}", error_code=ErrorCode.FORBIDDEN
            ) from exc
        if exc.errno == errno.EADDRINUSE:
            message = f"port {port}: address already in use on {host}"
        else:
            message = f"port {port}: cannot listen on {host}: {exc.strerror or exc}"
        raise UpstreamError(message, error_code=ErrorCode.PORT_IN_USE) from exc
    return sock


def dial(host: str, port: int, *, timeout_s: float) -> socket.socket:
    """Connect to a PULL target.

    Raises:
        UpstreamError: CONNECT_FAILED with a message naming ``host:port`` and the OS reason.
    """
    try:
        sock = connect_tcp(host, port, timeout_s=timeout_s)
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise UpstreamError(
            f"{host}:{port}: {reason.lower()}", error_code=ErrorCode.CONNECT_FAILED
        ) from exc
    return sock


def wait_acceptable(listener: socket.socket) -> None:
    """Block until a connection waits in ``listener``'s backlog (or the listener is closed).

    Raises:
        UpstreamError: the listener was closed meanwhile.
    """
    try:
        wait_read(listener.fileno())
    except (OSError, ValueError) as exc:  # closed: fileno() is -1 or the watcher was cancelled
        raise UpstreamError(f"listener closed: {exc}") from exc


def accept(listener: socket.socket) -> tuple[socket.socket, str]:
    """Accept one connection; returns it with its ``"ip:port"`` origin.

    Raises:
        UpstreamError: the listener failed (closed, or the OS refused: e.g. EMFILE).
    """
    try:
        conn, address = listener.accept()
    except OSError as exc:
        raise UpstreamError(f"accept failed: {exc.strerror or exc}") from exc
    host, port = address[0], address[1]
    origin = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return conn, origin
