"""EXPOSE bindings on the kit: accepting external connections, one stream each.

:func:`accept_loop` runs in the session's group for each EXPOSE listener. A tcp binding's
connections become plain streams here; an http binding's are served by HTTP mode
(:mod:`tunnel.server.http_mode`). Both see their session only as an
:class:`~tunnel.server.bindings.ExposeHost`.

A tcp binding waits rather than refuses: while the session is parked, at maxStreams, or out of
FD permits, new connections wait in the kernel backlog (docs/protocol.md §13 and "FD budget").
"""

from __future__ import annotations

import logging
import socket

from tunnel.protocol import BindMode, UpstreamError
from tunnel.server import bindings as binding_io
from tunnel.server import http_mode
from tunnel.server.bindings import Binding, ExposeHost

log = logging.getLogger("tunnel.session")


def accept_loop(host: ExposeHost, binding: Binding) -> None:
    """Accept connections on ``binding``'s listener until it is closed or the session ends."""
    if binding.mode is BindMode.HTTP:
        # HTTP mode parses requests: it answers 503 where tcp mode waits.
        http_mode.accept_loop(host, binding)
    else:
        _tcp_accept_loop(host, binding)


def _tcp_accept_loop(host: ExposeHost, binding: Binding) -> None:
    """One stream per accepted connection, within maxStreams and the FD budget."""
    runner = host.runner
    listener = binding.listener
    assert listener is not None  # an EXPOSE binding's loop starts once its listener is open
    metrics = host.metrics
    while not binding.closed and not runner.ended:
        conn: socket.socket | None = None
        permit = False
        try:
            # While parked, stop accepting: new connections wait in the backlog.
            host.attached.wait()
            # Take a permit only once a connection is waiting, so an idle listener holds
            # just its own permit (connectionsGranted counts what is really open).
            try:
                binding_io.wait_acceptable(listener)
            except UpstreamError:
                return  # the listener was closed (unbind, kill, end of session)
            host.attached.wait()
            if binding.closed:
                return
            permit = host.take_permit()
            if not permit:
                metrics.fd_permit_exhausted_total.labels(path="expose").inc()
                # Out of permits: stop accepting; connections wait in the kernel backlog.
                permit = host.take_permit(wait=True)
            try:
                conn, origin = binding_io.accept(listener)
            except UpstreamError as exc:
                if not binding.closed:
                    log.warning("expose listener on port %d failed: %s", binding.port, exc)
                return
            # At maxStreams the accepted connection waits here for a slot (later ones wait in
            # the backlog), rather than being refused. While parked it waits for the resume.
            if not _wait_slot(host, binding):
                return
            pump = host.open_expose_stream(binding, origin, holds_permit=True)
            permit = False  # now owned by the stream: given back when it finishes
            pump.connect(conn)
            conn = None
        finally:
            # Killed (unbind, session end) or failed while holding a socket or a permit.
            if conn is not None:
                conn.close()
            if permit:
                host.give_permit()


def _wait_slot(host: ExposeHost, binding: Binding) -> bool:
    """Wait until a stream may be opened for ``binding``; False once it never can."""
    runner = host.runner
    while True:
        if binding.closed or host.closing:
            return False
        host.attached.wait()  # parked: until the resume (or the end, which sets it too)
        if runner.wait_stream_slot() and not binding.closed:
            return True
        if not runner.detached:
            return False  # the connection ended for good


__all__ = ["accept_loop"]
