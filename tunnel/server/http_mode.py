"""HTTP mode of EXPOSE bindings: the kit parses HTTP/1.1 between the external socket and the stream.

Theory of operation
-------------------
One external TCP connection is one :class:`HttpConnection` (``server/http_connection.py``): a
greenlet in the session's group that holds the connection's FD permit and, while it carries
requests, one stream, an :class:`HttpStream` (``server/http_stream.py``), the pump the runner
makes for it when the connection opens the stream (``open_stream(..., pump_class=HttpStream)``).
Keep-alive requests share the stream; the stream is opened at the first
request, not at accept, so a malformed request never reaches the client's side. The client's
side does not change: it dials its target for the stream and relays bytes (docs/http-mode.md).

Parsing and framing (both pure): every request and response head is parsed whole by llhttp,
through httptools (``server/http_heads.py``), which also decides how the body that follows is
framed; a :class:`~tunnel.server.http_framing.BodyScanner` (``server/http_framing.py``) then tells
where that body ends in the byte stream without copying it. Heads are rebuilt only for requests
(the forwarding headers); bodies, chunked ones included, and whole responses go through as the
sender wrote them, once their head has been parsed. Bytes after a message's end are the next
request (pipelining), or, from the target, a reason not to reuse the stream.

Per request, the connection greenlet reads the head and checks it (400, nothing forwarded),
holds it while the session is parked (up to ``HOODY_TUNNEL_HTTP_HOLD_MS``), takes a stream (none
free: 503 at once, where tcp mode waits), and writes the head. A request without a body is then
answered in the same greenlet (``ResponseRelay._respond``, ``server/http_response.py``); for one
with a body a *responder* greenlet relays the response while the body streams up in chunks, each
within the stream's send credit (the response may come early, or be a 100 Continue the client
waits for). The responder takes the stream's DATA, scans it, writes the bytes out and only then
acknowledges the DATA, so the WINDOW the client gets reflects bytes really written (docs/protocol.md
§8). Memory per connection is bounded by one read and one window, whatever the body size.

A request goes on in the HTTP version it came in (an HTTP/1.0 client gets its response in
HTTP/1.0 terms from the target itself); the response goes out as the target sent it, once its
head has been parsed (an invalid head never goes out in part).

One writer per direction: while a responder runs it is the only one writing to the external
socket, its own error pages included (a 502 when the stream is reset before a response); the
connection greenlet writes error pages only when no responder runs. Every response the kit makes
itself says ``Connection: close`` and the connection closes after it.

The runner calls :meth:`HttpStream.reset` with the RST's code and text. In the HTTP phase that
only finishes the stream and wakes the responder, which answers 502 with the client's reason,
instead of aborting the external socket as a tcp pump does. After a
101 the stream becomes what a StreamPump is: ``connect(sock)`` starts its byte movers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tunnel.protocol import UpstreamError
from tunnel.server import bindings as binding_io
from tunnel.server.bindings import Binding, ExposeHost
from tunnel.server.http_connection import HttpConnection, Recorder
from tunnel.server.http_messages import ErrorPage
from tunnel.server.http_response import RETRY_AFTER_BUSY_S
from tunnel.server.http_stream import HttpStream

log = logging.getLogger("tunnel.http")

#: Out of FD permits, at most this many connections are accepted anyway to be answered 503
#: (each for at most OVERFLOW_HEAD_TIMEOUT_S + DRAIN_S); beyond, accepting waits as in tcp mode.
OVERFLOW_LIMIT = 32
OVERFLOW_HEAD_TIMEOUT_S = 2.0


@dataclass
class _Overflow:
    """Connections accepted without an FD permit, to be answered 503."""

    count: int = 0

    def release(self) -> None:
        self.count -= 1


def accept_loop(host: ExposeHost, binding: Binding) -> None:
    """Accept connections of an http binding; each becomes an :class:`HttpConnection`.

    Unlike tcp mode this loop keeps accepting while the session is parked (requests are held,
    then served or answered 503) and when no FD permit is left (answered 503, up to
    OVERFLOW_LIMIT at a time; beyond that the backlog waits, as in tcp mode).
    """
    runner = host.runner
    listener = binding.listener
    assert listener is not None  # an EXPOSE binding's loop starts once its listener is open
    metrics = host.metrics
    overflow = _Overflow()
    recorder = Recorder(metrics, binding.bind_id)
    while not binding.closed:
        try:
            binding_io.wait_acceptable(listener)
        except UpstreamError:
            return  # the listener was closed (unbind, kill, end of session)
        if binding.closed:
            return
        permit = host.take_permit()
        handed_over = False
        try:
            refusal: ErrorPage | None = None
            if not permit:
                metrics.fd_permit_exhausted_total.labels(path="expose").inc()
                if overflow.count >= OVERFLOW_LIMIT:
                    permit = host.take_permit(wait=True)
                else:
                    refusal = ErrorPage(
                        503,
                        "fd_exhausted",
                        "The tunnel kit has no connection left for this request. Try again shortly.",
                        RETRY_AFTER_BUSY_S,
                    )
            try:
                conn, origin = binding_io.accept(listener)
            except UpstreamError as exc:
                if not binding.closed:
                    log.warning("http listener on port %d failed: %s", binding.port, exc)
                return
            on_closed: Callable[[], None]
            if refusal is None:
                connection = HttpConnection(host, binding, conn, origin, recorder=recorder)
                on_closed = host.give_permit
            else:
                overflow.count += 1
                connection = HttpConnection(
                    host,
                    binding,
                    conn,
                    origin,
                    refusal=refusal,
                    idle_timeout_s=OVERFLOW_HEAD_TIMEOUT_S,
                    recorder=recorder,
                )
                on_closed = overflow.release
            runner.spawn(connection.run, on_closed)
            handed_over = True  # the connection gives the permit back when it closes
        finally:
            if permit and not handed_over:
                host.give_permit()


__all__ = ["HttpConnection", "HttpStream", "accept_loop"]
