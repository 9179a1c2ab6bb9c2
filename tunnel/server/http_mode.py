"""HTTP mode of EXPOSE bindings: the kit parses HTTP/1.1 between the external socket and the stream.

Theory of operation
-------------------
One external TCP connection is one :class:`HttpConnection`: a greenlet in the session's group that
holds the connection's FD permit and, while it carries requests, one stream, an
:class:`HttpStream` registered in the runner's ``pumps`` in place of the plain
:class:`~tunnel.mux.pump.StreamPump` that ``open_stream`` made. Keep-alive requests share the
stream. The client's side does not change: it dials its target for the stream and relays bytes.
Everything HTTP-aware happens here (docs/http-mode.md).

Two h11 state machines per connection:

* ``HttpConnection.server`` (h11 SERVER) parses the external client's requests and frames the
  responses for it (its HTTP version, keep-alive, HEAD);
* ``HttpStream.client`` (h11 CLIENT, one per stream) frames the forwarded requests and parses
  what comes back over the stream: where each response ends (keep-alive), its status (metrics,
  access log), and a 101 (or a 2xx to CONNECT) after which the stream is a plain byte relay.

Per request, the connection greenlet reads the head and checks it (a malformed request gets 400
and nothing reaches the client's side), holds it while the session is parked (up to
``HOODY_TUNNEL_HTTP_HOLD_MS``), takes a stream (none free: 503 at once, where tcp mode waits),
writes the head with the forwarding headers, then the body chunks as they come, each within the
stream's send credit. A *responder* greenlet spawned for the request takes the stream's DATA,
feeds the h11 client, writes what h11 frames to the external socket and only then acknowledges
the DATA, so the WINDOW the client gets reflects bytes really written (wire-protocol §5). Memory
per connection is bounded by one read and one window, whatever the body size.

One writer per direction: while a responder runs it is the only one writing to the external
socket, its own error pages included (a 502 when the stream is reset before a response); the
connection greenlet writes error pages only when no responder runs. Every response the kit makes
itself says ``Connection: close`` and the connection closes after it.

The runner calls :meth:`HttpStream.reset` on RST. In the HTTP phase that only finishes the stream
and wakes the responder, which answers 502 with the client's reason (``KitSession.event_received``
hands it over right after), instead of aborting the external socket as a tcp pump does. After a
101 the stream becomes what a StreamPump is: ``connect(sock)`` starts its byte movers.
"""

from __future__ import annotations

import enum
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union, cast

import gevent
import h11
from gevent.event import Event

from tunnel.protocol import ErrorCode, SessionState as ProtocolState, UpstreamError
from tunnel.server import bindings as binding_io
from tunnel.server import http_messages as messages
from tunnel.server.http_messages import KitError
from tunnel.server.http_stream import MAX_HEAD_SIZE, HttpStream, StreamGone

if TYPE_CHECKING:
    from prometheus_client import Counter

    from tunnel.metrics import Metrics
    from tunnel.server.bindings import Binding
    from tunnel.server.kit_session import KitSession

log = logging.getLogger("tunnel.http")
#: One line per request: method, path without the query, status, bytes, duration, binding.
access_log = logging.getLogger("tunnel.http.access")

#: Reads of the external socket while no stream exists yet (request heads).
HEAD_READ_SIZE = 64 * 1024
#: A keep-alive connection idle this long gives its stream back (the next request opens a new
#: one), so idle browser connections do not hold the session's maxStreams slots.
STREAM_IDLE_S = 5.0
#: A keep-alive connection idle this long between requests is closed.
KEEPALIVE_IDLE_S = 75.0
#: After an error page: how long, and how much, the kit reads and drops of what the HTTP client
#: still sends, so the close does not turn into a TCP reset that destroys the page in flight.
DRAIN_S = 2.0
DRAIN_MAX_BYTES = 1 << 20
#: Out of FD permits, at most this many connections are accepted anyway to be answered 503
#: (each for at most OVERFLOW_HEAD_TIMEOUT_S + DRAIN_S); beyond, accepting waits as in tcp mode.
OVERFLOW_LIMIT = 32
OVERFLOW_HEAD_TIMEOUT_S = 2.0
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_RECONNECTING_S = 5
#: Responder writes: pieces up to this size are joined into one send.
JOIN_LIMIT = 64 * 1024

_NextEvent = Union[h11.Event, type[h11.NEED_DATA], type[h11.PAUSED]]
_H11_DETAIL = re.compile(r":\s*(?:bytearray\(|b'|b\"|\().*$", re.DOTALL)


class _ClientGone(Exception):
    """Writing to the external socket failed: the HTTP client left."""


class _BadUpstream(Exception):
    """The target's bytes are not a valid HTTP response, or ended before one was whole."""

    def __init__(self, message: str, *, eof: bool) -> None:
        super().__init__(message)
        self.eof = eof  # the target had closed its side: a cut, rather than garbage



def _h11_reason(exc: h11.ProtocolError) -> str:
    """h11's message without the received bytes it quotes (they could be anything)."""
    text = _H11_DETAIL.sub("", str(exc)).strip() or "malformed request"
    return text[:120]


# -- one external connection ----------------------------------------------------------------------


class _Outcome(enum.Enum):
    PENDING = "pending"
    COMPLETE = "complete"  # the whole response went out
    SWITCHED = "switched"  # 101 (or 2xx to CONNECT): the stream is a byte relay now
    FAILED = "failed"  # an error page went out, or the connection is beyond saving


@dataclass(eq=False)
class _Cycle:
    """One request and its response."""

    started: float
    method: bytes
    target: bytes
    accept: bytes | None = None
    head_only: bool = False
    status: int = 0
    error: KitError | None = None  # the kit answered itself
    request_error: KitError | None = None  # the request body turned out malformed
    bytes_in: int = 0
    bytes_out: int = 0
    final_started: bool = False  # a final (or 101) response head went out: no error page now
    request_done: bool = False
    chunked: bool = False  # the request body is chunked (and is forwarded chunked)
    relayed_raw: bool = False  # the response went out as the target sent it
    saw_eof: bool = False  # the target closed its side of the stream
    held: bool = False
    outcome: _Outcome = _Outcome.PENDING
    client_keep_alive: bool = True  # the HTTP client may send another request after this one
    target_keep_alive: bool = True  # the target keeps the stream's connection after this one
    done: Event | None = None  # set when the response is over; only when a responder runs
    responder: gevent.Greenlet[..., object] | None = None
    recorded: bool = False


class _Recorder:
    """Metrics of one http binding, with the labelled children looked up once (labels() takes
    a lock each time), and the access log."""

    def __init__(self, metrics: Metrics, bind_id: int) -> None:
        self.metrics = metrics
        self.bind_id = bind_id
        self._requests: dict[tuple[str, str], Counter] = {}
        self.request_bytes = metrics.http_bytes_total.labels(direction="request")
        self.response_bytes = metrics.http_bytes_total.labels(direction="response")

    def record(self, cycle: _Cycle) -> None:
        duration_s = time.monotonic() - cycle.started
        status = cycle.status
        key = (messages.method_label(cycle.method), f"{status // 100}xx" if status else "none")
        requests = self._requests.get(key)
        if requests is None:
            requests = self._requests[key] = self.metrics.http_requests_total.labels(
                method=key[0], status_class=key[1]
            )
        requests.inc()
        self.metrics.http_request_duration_seconds.observe(duration_s)
        if cycle.bytes_in:
            self.request_bytes.inc(cycle.bytes_in)
        if cycle.bytes_out:
            self.response_bytes.inc(cycle.bytes_out)
        if cycle.error is not None:
            self.metrics.http_error_responses_total.labels(cause=cycle.error.cause).inc()
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "http request: bind=%d method=%s path=%s status=%s bytes_in=%d bytes_out=%d "
                "duration_ms=%.1f%s",
                self.bind_id,
                cycle.method.decode("ascii", "replace")[:16],
                messages.access_path(cycle.target),
                status or "-",
                cycle.bytes_in,
                cycle.bytes_out,
                duration_s * 1000,
                f" error={cycle.error.cause}" if cycle.error is not None else "",
            )


class HttpConnection:
    """One accepted connection of an http binding, request by request."""

    def __init__(
        self,
        kit_session: KitSession,
        binding: Binding,
        sock: socket.socket,
        origin: str,
        *,
        refusal: KitError | None = None,
        idle_timeout_s: float = KEEPALIVE_IDLE_S,
        recorder: _Recorder | None = None,
    ) -> None:
        runner = kit_session.runner
        assert runner is not None
        self.kit_session = kit_session
        self.runner = runner
        self.binding = binding
        self.sock = sock
        self.origin = origin
        self.peer_ip = origin.rpartition(":")[0].strip("[]") or origin
        self.metrics = kit_session.kit.metrics
        self.recorder = recorder or _Recorder(self.metrics, binding.bind_id)
        self.hold_s = kit_session.settings.http_hold_s
        self.server = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
        self.stream: HttpStream | None = None
        self.cycle: _Cycle | None = None
        self._refusal = refusal  # answer every request with this (no FD permit: 503)
        self._idle_timeout_s = idle_timeout_s
        self._drain_on_close = False
        self._handed_over = False  # the stream owns the socket (relay after a 101)
        try:
            host, port = sock.getsockname()[:2]
            self.default_host = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except OSError:
            self.default_host = f"localhost:{binding.port}"

    def run(self, on_closed: Callable[[], None]) -> None:
        """Serve the connection until it closes; then ``on_closed()`` (gives the permit back)."""
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve()
        except gevent.GreenletExit:
            self._answer_on_exit()
            raise
        finally:
            try:
                self._close()
            finally:
                on_closed()

    # -- requests -------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            request = self._next_request()
            if request is None or not self._serve_request(request):
                return

    def _next_request(self) -> h11.Request | None:
        server = self.server
        while True:
            try:
                event: _NextEvent = server.next_event()
            except h11.RemoteProtocolError as exc:
                cycle = self._new_cycle(b"-", b"-", None, head_only=False)
                self._reply(cycle, messages.bad_request(_h11_reason(exc), exc.error_status_hint))
                return None
            if event is h11.NEED_DATA:
                data = self._read_between_requests()
                if data is None:
                    return None
                server.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                return event
            return None  # ConnectionClosed: the client is done

    def _read_between_requests(self) -> bytes | None:
        """Wait for the next request's bytes: give the stream back after STREAM_IDLE_S, close
        after the keep-alive timeout. None: closed, failed or timed out."""
        sock = self.sock
        idle_s = self._idle_timeout_s
        try:
            if self.stream is not None and idle_s > STREAM_IDLE_S:
                sock.settimeout(STREAM_IDLE_S)
                try:
                    return sock.recv(HEAD_READ_SIZE)
                except TimeoutError:
                    self._release_stream()
                idle_s -= STREAM_IDLE_S
            sock.settimeout(idle_s)
            return sock.recv(HEAD_READ_SIZE)  # b"" (EOF) goes to h11: ConnectionClosed
        except OSError:
            return None  # reset, or idle too long
        finally:
            sock.settimeout(None)

    def _new_cycle(self, method: bytes, target: bytes, accept: bytes | None, *, head_only: bool) -> _Cycle:
        self.cycle = _Cycle(time.monotonic(), method, target, accept, head_only)
        return self.cycle

    def _serve_request(self, request: h11.Request) -> bool:
        """Forward one request and relay its response. False: the connection is over."""
        accept = b",".join(value for name, value in request.headers if name == b"accept") or None
        cycle = self._new_cycle(request.method, request.target, accept, head_only=request.method == b"HEAD")
        raw = request.headers.raw_items()
        refusal = self._refusal or messages.check_request(request.http_version, raw)
        if refusal is not None:
            self._reply(cycle, refusal)
            return False
        headers = messages.forwarding_headers(
            raw,
            peer_ip=self.peer_ip,
            port=self.binding.port,
            host_header=self.binding.host_header,
            default_host=self.default_host,
        )
        cycle.chunked = any(name.lower() == b"transfer-encoding" for name, _ in raw)
        cycle.client_keep_alive = request.http_version == b"1.1" and not any(
            name == b"connection" and b"close" in value.lower() for name, value in request.headers
        )
        try:
            first = self.server.next_event()  # the body's first event, or its end
        except h11.RemoteProtocolError as exc:
            self._reply(cycle, messages.bad_request(_h11_reason(exc)))
            return False
        stream = self._stream_for(cycle)
        if stream is None:
            return False
        # The kit writes the head and frames the body itself; h11's client is told only what it
        # needs to read the response right (method, keep-alive, upgrade). The values are h11's
        # own, already validated: hence _parsed.
        client = stream.client
        client.send(h11.Request(
            method=request.method, target=b"/", headers=messages.state_headers(headers), _parsed=True
        ))
        client.send(h11.EndOfMessage())
        head = messages.request_head(request.method, request.target, headers)
        if isinstance(first, h11.EndOfMessage):
            # No body (most requests): send it all and read the response in this greenlet.
            try:
                cycle.bytes_in += stream.send_within_credit(
                    head + messages.last_chunk(first.headers) if cycle.chunked else head
                )
                cycle.request_done = True
            except StreamGone:
                pass  # _respond answers for it
            self._respond(stream, cycle)
        else:
            # A body: it streams up while a responder greenlet relays the response (which may
            # come early, or be a 100 Continue the client waits for).
            cycle.done = Event()
            cycle.responder = self.runner.spawn(self._respond, stream, cycle)
            self._forward_body(stream, cycle, head, first)
            cycle.done.wait()
        return self._after_response(stream, cycle)

    def _forward_body(self, stream: HttpStream, cycle: _Cycle, head: bytes, first: _NextEvent) -> None:
        """The request head, then its body chunks as they come, within credit."""
        server = self.server
        sock = self.sock
        read_size = stream.read_size
        chunked = cycle.chunked
        event = first
        try:
            cycle.bytes_in += stream.send_within_credit(head)
            while cycle.outcome is _Outcome.PENDING:
                if event is h11.NEED_DATA:
                    try:
                        data = sock.recv(read_size)
                    except OSError:
                        data = b""  # reset by the client: as good as EOF for the body
                    server.receive_data(data)
                elif isinstance(event, h11.Data):
                    body = event.data
                    cycle.bytes_in += stream.send_within_credit(messages.chunk(body) if chunked else body)
                elif isinstance(event, h11.EndOfMessage):
                    if chunked:
                        cycle.bytes_in += stream.send_within_credit(messages.last_chunk(event.headers))
                    cycle.request_done = True
                    return
                else:
                    return  # cannot happen mid-request (h11 gives PAUSED only after EOM)
                event = server.next_event()
        except h11.RemoteProtocolError as exc:
            # A malformed body (or the client left mid-body): the target must not get the rest.
            cycle.request_error = messages.bad_request(_h11_reason(exc))
            stream.abort("http: malformed request body")
        except StreamGone:
            pass  # the responder answers for it (502/503), or already did

    def _after_response(self, stream: HttpStream, cycle: _Cycle) -> bool:
        self._record(cycle)
        if cycle.outcome is _Outcome.SWITCHED:
            self._relay(stream)
            return False
        if cycle.outcome is not _Outcome.COMPLETE or not cycle.request_done:
            return False
        if not (cycle.client_keep_alive and cycle.target_keep_alive):
            return False  # Connection: close (from either side), or HTTP/1.0
        server = self.server
        if cycle.relayed_raw:
            # h11's server never saw the response (its bytes went out as they came): a fresh
            # one reads the next request, from what the client already sent (pipelining).
            pipelined, closed = server.trailing_data
            server = self.server = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_SIZE)
            if pipelined:
                server.receive_data(pipelined)
            if closed:
                server.receive_data(b"")
        elif server.our_state is h11.DONE and server.their_state is h11.DONE:
            server.start_next_cycle()
        else:
            return False
        client = stream.client
        if client.our_state is h11.DONE and client.their_state is h11.DONE and not stream.tainted:
            client.start_next_cycle()
        else:
            self._release_stream()  # the target closes after this response: next time, a new one
        return True

    def _relay(self, stream: HttpStream) -> None:
        trailing, _ = self.server.trailing_data  # what the client sent after the upgrade request
        try:
            if trailing:
                stream.send_within_credit(trailing)
        except StreamGone:
            return
        self._handed_over = True
        self.stream = None
        stream.start_relay(self.sock)
        stream.wait_finished()

    # -- the stream -----------------------------------------------------------------------------

    def _stream_for(self, cycle: _Cycle) -> HttpStream | None:
        """The stream for this request: the connection's, or a new one. None: answered 503."""
        kit_session = self.kit_session
        if not kit_session.attached.is_set() and not self._hold(cycle):
            return None
        stream = self.stream
        if stream is not None:
            if stream.reusable():
                return stream
            self._release_stream()
        session = self.runner.session
        if not session.can_open_stream() and cycle.held:
            # Right after a resume the OPENs re-sent by the session go first: wait for them.
            remaining_s = cycle.started + self.hold_s - time.monotonic()
            if remaining_s > 0:
                self.runner.wait_stream_slot(remaining_s)
        if not session.can_open_stream():
            self._reply(cycle, self._no_stream_error())
            return None
        pump = kit_session.open_expose_stream(self.binding, self.origin)
        stream = HttpStream.adopt(kit_session, pump)
        self.stream = stream
        return stream

    def _hold(self, cycle: _Cycle) -> bool:
        """The session is parked: wait for its resume, up to the hold time. False: answered."""
        from tunnel.server.kit_session import SessionState

        kit_session = self.kit_session
        cycle.held = True
        deadline = cycle.started + self.hold_s
        log.info(
            "http request held: id=%s bind=%d session parked, waiting up to %.1f s",
            kit_session.session_id,
            self.binding.bind_id,
            self.hold_s,
        )
        while not kit_session.attached.is_set():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0 or not kit_session.attached.wait(remaining_s):
                break
        held = self.metrics.http_requests_held_total
        if kit_session.attached.is_set() and kit_session.state is SessionState.ACTIVE:
            held.labels(outcome="served").inc()
            return True
        held.labels(outcome="timed_out").inc()
        if kit_session.attached.is_set():
            error = _closed_error()  # woken because the session ended
        else:
            error = KitError(
                503,
                "reconnecting",
                "The tunnel is reconnecting: the connected machine lost its connection to the "
                f"kit and has not come back within {self.hold_s:g} s. Try again shortly.",
                RETRY_AFTER_RECONNECTING_S,
            )
        self._reply(cycle, error)
        return False

    def _no_stream_error(self) -> KitError:
        from tunnel.server.kit_session import SessionState

        session = self.runner.session
        if self.kit_session.state is SessionState.ACTIVE and session.state is ProtocolState.OPEN:
            return KitError(
                503,
                "max_streams",
                f"The tunnel is busy: all {session.max_streams} of its streams are in use. "
                "Try again shortly.",
                RETRY_AFTER_BUSY_S,
            )
        return _closed_error()

    def _release_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.release()

    # -- the response (the responder greenlet) ------------------------------------------------

    def _respond(self, stream: HttpStream, cycle: _Cycle) -> None:
        """Relay the response from the stream to the external socket, or answer for the target.

        h11's client parses every response (boundaries, status, protocol switch, validity). To an
        HTTP/1.1 client the target's bytes go out as they came, once h11 has parsed the head;
        an HTTP/1.0 client gets the response re-framed by h11's server (no chunked coding).
        """
        error: KitError | None = None
        try:
            if self.server.their_http_version == b"1.1":
                self._respond_raw(stream, cycle)
            else:
                self._respond_reframed(stream, cycle)
        except StreamGone:
            error = cycle.request_error or _stream_error(stream)
        except _BadUpstream as exc:
            error = KitError(
                502,
                "upstream_reset" if exc.eof else "bad_response",
                "The local service on the connected machine closed the connection before a whole "
                "response." if exc.eof else
                f"The local service on the connected machine sent an invalid HTTP response ({exc}).",
            )
            stream.abort("http: invalid response")
        except h11.LocalProtocolError as exc:
            # The response cannot be framed for this client (h11 refuses it): give up on both.
            log.info("http response refused by h11: bind=%d reason=%s", self.binding.bind_id, exc)
            error = KitError(502, "bad_response", "The local service's response cannot be relayed.")
            stream.abort("http: response cannot be relayed")
        except _ClientGone:
            stream.abort("http: the HTTP client went away")
        finally:
            if cycle.outcome is _Outcome.PENDING:
                cycle.outcome = _Outcome.FAILED
                if error is not None:
                    self._answer_failure(cycle, error)
            if cycle.done is not None:
                cycle.done.set()

    def _next_response_event(self, stream: HttpStream, cycle: _Cycle) -> _NextEvent:
        try:
            return stream.client.next_event()
        except h11.RemoteProtocolError as exc:
            raise _BadUpstream(_h11_reason(exc), eof=cycle.saw_eof) from None

    def _take_inbound(self, stream: HttpStream, cycle: _Cycle) -> bytes | memoryview:
        """The next DATA, fed to h11's client too; b"" at the stream's FIN."""
        chunk = stream.next_inbound()
        if chunk is None:
            cycle.saw_eof = True
            stream.client.receive_data(b"")
            return b""
        # h11 appends it to a bytearray: a memoryview slice works as it is.
        stream.client.receive_data(cast(bytes, chunk))
        return chunk

    def _respond_raw(self, stream: HttpStream, cycle: _Cycle) -> None:
        client = stream.client
        pending: list[bytes | bytearray | memoryview] = []  # received, not written yet
        unacked = 0
        informational = False
        while True:
            event = self._next_response_event(stream, cycle)
            if event is h11.NEED_DATA:
                if pending and cycle.final_started:
                    self._write(pending, cycle)
                elif pending and informational:
                    # A 100 Continue must reach the client now; a final head still incomplete
                    # stays back (an invalid one must not go out in part).
                    self._write(pending, cycle, keep=len(client.trailing_data[0]))
                stream.consumed(unacked)
                chunk = self._take_inbound(stream, cycle)
                unacked = len(chunk)
                if chunk:
                    pending.append(chunk)
            elif isinstance(event, h11.Response):
                cycle.status = event.status_code
                cycle.final_started = True
                if client.their_state is h11.SWITCHED_PROTOCOL:  # a 2xx to CONNECT
                    self._switched(stream, cycle, pending, unacked)
                    return
            elif isinstance(event, h11.InformationalResponse):
                informational = True
                if client.their_state is h11.SWITCHED_PROTOCOL:  # 101
                    cycle.status = event.status_code
                    cycle.final_started = True
                    self._switched(stream, cycle, pending, unacked)
                    return
            elif isinstance(event, h11.EndOfMessage):
                # Bytes after the response's end: the target is talking out of turn. They stay
                # out, and the stream is not used again.
                leftover = len(client.trailing_data[0])
                self._write(pending, cycle, keep=leftover)
                stream.consumed(unacked)
                stream.tainted = leftover > 0
                cycle.target_keep_alive = client.their_state is h11.DONE and client.our_state is h11.DONE
                cycle.relayed_raw = True
                self._complete(stream, cycle)
                return
            elif not isinstance(event, h11.Data):  # Data: its bytes are in pending already
                raise _BadUpstream("the target closed the connection", eof=True)

    def _respond_reframed(self, stream: HttpStream, cycle: _Cycle) -> None:
        client = stream.client
        server = self.server
        out: list[bytes | bytearray | memoryview] = []
        unacked = 0
        while True:
            event = self._next_response_event(stream, cycle)
            if event is h11.NEED_DATA:
                self._write(out, cycle)
                stream.consumed(unacked)
                unacked = len(self._take_inbound(stream, cycle))
            elif isinstance(event, h11.Data):
                out.extend(server.send_with_data_passthrough(event) or ())
            elif isinstance(event, (h11.Response, h11.InformationalResponse)):
                if isinstance(event, h11.Response):
                    cycle.status = event.status_code
                    cycle.final_started = True
                    answer: h11.Event = h11.Response(
                        status_code=event.status_code, headers=event.headers.raw_items(), reason=event.reason
                    )
                else:
                    answer = h11.InformationalResponse(
                        status_code=event.status_code, headers=event.headers.raw_items(), reason=event.reason
                    )
                out.append(_sent(server.send(answer)))
                if client.their_state is h11.SWITCHED_PROTOCOL:
                    cycle.status = event.status_code
                    cycle.final_started = True
                    out.append(client.trailing_data[0])  # the target's first bytes after it
                    self._write(out, cycle)
                    stream.consumed(unacked)
                    cycle.outcome = _Outcome.SWITCHED
                    return
            elif isinstance(event, h11.EndOfMessage):
                out.append(_sent(server.send(h11.EndOfMessage(headers=event.headers))))
                self._write(out, cycle)
                stream.consumed(unacked)
                stream.tainted = bool(client.trailing_data[0])
                # The client's side may close; h11's server re-frames, so the HTTP client's
                # connection can stay (the next request gets a new stream).
                self._complete(stream, cycle)
                return
            else:
                raise _BadUpstream("the target closed the connection", eof=True)

    def _switched(
        self,
        stream: HttpStream,
        cycle: _Cycle,
        pending: list[bytes | bytearray | memoryview],
        unacked: int,
    ) -> None:
        """The protocol switched: everything received goes out (the head and the target's first
        bytes after it). From now on the stream relays bytes (HttpConnection._relay)."""
        self._write(pending, cycle)
        stream.consumed(unacked)
        cycle.outcome = _Outcome.SWITCHED

    def _complete(self, stream: HttpStream, cycle: _Cycle) -> None:
        cycle.outcome = _Outcome.COMPLETE
        if not cycle.request_done:
            # Answered before the whole request came: the rest cannot be forwarded any more,
            # nor the connection reused.
            stream.abort("http: response complete before the request")
            _shutdown_write(self.sock)

    def _write(self, out: list[bytes | bytearray | memoryview], cycle: _Cycle, keep: int = 0) -> None:
        """Write ``out`` to the external socket, but for its last ``keep`` bytes (they stay)."""
        if not out:
            return
        sock = self.sock
        if keep:
            data = b"".join(out)
            out[:] = [data[len(data) - keep :]]
            if len(data) == keep:
                return
            pieces: list[bytes | bytearray | memoryview] = [data[: len(data) - keep]]
        else:
            pieces = out
        size = sum(len(piece) for piece in pieces)
        try:
            if len(pieces) == 1:
                sock.sendall(pieces[0])
            elif size <= JOIN_LIMIT:
                sock.sendall(b"".join(pieces))
            else:
                for piece in pieces:
                    sock.sendall(piece)
        except OSError:
            raise _ClientGone() from None
        cycle.bytes_out += size
        if not keep:
            out.clear()

    def _answer_failure(self, cycle: _Cycle, error: KitError) -> None:
        """The response failed: an error page if nothing of a final response went out yet,
        else a TCP reset, so the client cannot take a cut response for a whole one."""
        if cycle.final_started:
            cycle.error = error
            _abort_socket(self.sock)
            return
        self._reply(cycle, error, record=False)

    # -- kit answers, records, closing ------------------------------------------------------

    def _reply(self, cycle: _Cycle, error: KitError, *, record: bool = True) -> None:
        """Answer ``error`` ourselves; the connection closes after it."""
        cycle.error = error
        cycle.status = error.status
        cycle.final_started = True
        data = messages.render_error(error, accept=cycle.accept, head_only=cycle.head_only)
        try:
            self.sock.sendall(data)
            cycle.bytes_out += len(data)
        except OSError as exc:
            log.debug("http error page not delivered: bind=%d %s", self.binding.bind_id, exc)
        self._drain_on_close = True
        if record:
            self._record(cycle)

    def _record(self, cycle: _Cycle) -> None:
        """Metrics and the access-log line, once per request."""
        if not cycle.recorded:
            cycle.recorded = True
            self.recorder.record(cycle)

    def _answer_on_exit(self) -> None:
        """Killed (the session ended) with a request unanswered: a last 503, without blocking."""
        cycle = self.cycle
        if cycle is None or cycle.recorded or cycle.final_started:
            return
        error = _closed_error()
        cycle.error = error
        cycle.status = error.status
        cycle.final_started = True
        data = messages.render_error(error, accept=cycle.accept, head_only=cycle.head_only)
        try:
            self.sock.setblocking(False)
            self.sock.send(data)
            cycle.bytes_out += len(data)
        except OSError as exc:
            log.debug("http error page not delivered: bind=%d %s", self.binding.bind_id, exc)
        self._record(cycle)

    def _close(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.responder is not None and not cycle.responder.dead:
            cycle.responder.kill(block=False)
        stream, self.stream = self.stream, None
        if stream is not None and not self._handed_over:
            if cycle is not None and cycle.outcome is _Outcome.PENDING:
                stream.abort("http: the connection closed mid-request")
            else:
                stream.release()
        sock = self.sock
        if self._drain_on_close and not self._handed_over:
            _drain(sock)
        sock.close()


# -- accepting ------------------------------------------------------------------------------------


@dataclass
class _Overflow:
    """Connections accepted without an FD permit, to be answered 503."""

    count: int = 0

    def release(self) -> None:
        self.count -= 1


def accept_loop(kit_session: KitSession, binding: Binding) -> None:
    """Accept connections of an http binding; each becomes an :class:`HttpConnection`.

    Unlike tcp mode this loop keeps accepting while the session is parked (requests are held,
    then served or answered 503) and when no FD permit is left (answered 503, up to
    OVERFLOW_LIMIT at a time; beyond that the backlog waits, as in tcp mode).
    """
    runner = kit_session.runner
    listener = binding.listener
    assert runner is not None and listener is not None
    metrics = kit_session.kit.metrics
    overflow = _Overflow()
    recorder = _Recorder(metrics, binding.bind_id)
    while not binding.closed:
        try:
            binding_io.wait_acceptable(listener)
        except UpstreamError:
            return  # the listener was closed (unbind, kill, end of session)
        if binding.closed:
            return
        permit = kit_session.take_permit()
        handed_over = False
        try:
            refusal: KitError | None = None
            if not permit:
                metrics.fd_permit_exhausted_total.labels(path="expose").inc()
                if overflow.count >= OVERFLOW_LIMIT:
                    permit = kit_session.take_permit(wait=True)
                else:
                    refusal = KitError(
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
                connection = HttpConnection(kit_session, binding, conn, origin, recorder=recorder)
                on_closed = kit_session.give_permit
            else:
                overflow.count += 1
                connection = HttpConnection(
                    kit_session,
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
                kit_session.give_permit()


# -- helpers --------------------------------------------------------------------------------------


def _sent(data: bytes | None) -> bytes:
    assert data is not None  # h11 returns None only for ConnectionClosed
    return data


def _closed_error() -> KitError:
    return KitError(
        503,
        "tunnel_closed",
        "The tunnel is closing: the connected machine is no longer serving this port.",
        RETRY_AFTER_RECONNECTING_S,
    )


def _stream_error(stream: HttpStream) -> KitError:
    """What to answer for a stream reset before its response."""
    code = stream.reset_code
    if code is None:
        return _closed_error()  # the session ended under it
    if code in (ErrorCode.REFUSED, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.SHUTDOWN):
        return KitError(
            503,
            "tunnel_closed" if code == ErrorCode.SHUTDOWN else "max_streams",
            f"The connected machine refused the connection ({stream.reset_reason or 'busy'}). "
            "Try again shortly.",
            RETRY_AFTER_BUSY_S,
        )
    try:
        name = ErrorCode(code).name.lower()
    except ValueError:
        name = "unknown"
    return messages.connect_error(name, stream.reset_reason)


def _shutdown_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already closed by the client: nothing to signal


def _abort_socket(sock: socket.socket) -> None:
    """Close with a TCP reset: the client must not take a cut response for a whole one."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass  # already dead: close() below is all that is left
    sock.close()


def _drain(sock: socket.socket) -> None:
    """Half-close, then read and drop what the client still sends, briefly."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + DRAIN_S
        total = 0
        while total < DRAIN_MAX_BYTES:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            sock.settimeout(remaining_s)
            data = sock.recv(65536)
            if not data:
                break
            total += len(data)
    except OSError:
        pass  # the client is gone or slow: closing is all that is left


__all__ = ["HttpConnection", "HttpStream", "accept_loop"]
