"""A session's bindings, what an EXPOSE binding needs from its session, and the socket calls
behind them: EXPOSE listeners and PULL dialing, the kit's only contact with the container's network.

``OSError`` becomes :class:`~tunnel.protocol.UpstreamError` here and nowhere else, carrying the
wire error code a caller should answer with.

:class:`ExposeHost` is the interface the accept loops (``server/expose.py``, and HTTP mode's in
``server/http_mode.py``) see of their session; :class:`~tunnel.server.kit_session.KitSession`
implements it. It keeps those modules free of the session's own module.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass, field
from typing import Protocol

from gevent import socket as gsocket
from gevent.event import Event
from gevent.socket import wait_read

from tunnel.config import Settings
from tunnel.metrics import Metrics
from tunnel.mux.dialing import connect_tcp
from tunnel.mux.pump import StreamPump
from tunnel.mux.runner import PumpClass, SessionRunner
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


class ExposeHost(Protocol):
    """What an EXPOSE binding's accept loop and connections need from their session."""

    session_id: str
    settings: Settings
    metrics: Metrics
    runner: SessionRunner
    #: Set while a connection serves the session; cleared while it is parked (accept loops and
    #: held HTTP requests wait on it). Set again when the session ends, to wake them.
    attached: Event

    @property
    def active(self) -> bool:
        """Welcomed and serving (not parked, not closing)."""

    @property
    def closing(self) -> bool:
        """Closing or closed: no stream will be opened for it any more."""

    def take_permit(self, *, wait: bool = False) -> bool:
        """Take an FD permit for this session (``wait``: until one is free)."""

    def give_permit(self) -> None:
        """Give back a permit taken with :meth:`take_permit`."""

    def open_expose_stream(
        self, binding: Binding, origin: str, *, pump_class: PumpClass = StreamPump, holds_permit: bool = False
    ) -> StreamPump:
        """Open a stream for a connection accepted on ``binding``, and count it.

        Args:
            holds_permit: the stream takes over an FD permit the caller took, given back when
                the stream finishes.
        """


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
