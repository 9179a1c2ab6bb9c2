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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Union, cast

import gevent
import h11
from gevent.event import Event
from gevent.socket import wait_read

from tunnel.mux.pump import StreamPump
from tunnel.protocol import ErrorCode, LocalProtocolError, SessionState as ProtocolState, UpstreamError
from tunnel.server import bindings as binding_io
from tunnel.server import http_messages as messages
from tunnel.server.http_messages import KitError

if TYPE_CHECKING:
    from tunnel.mux.runner import SessionRunner
    from tunnel.server.bindings import Binding
    from tunnel.server.kit_session import KitSession

log = logging.getLogger("tunnel.http")
#: One line per request: method, path without the query, status, bytes, duration, binding.
access_log = logging.getLogger("tunnel.http.access")

#: Largest request or response head (request line or status line plus headers).
MAX_HEAD_SIZE = 64 * 1024
#: Reads of the external socket while no stream exists yet (request heads).
HEAD_READ_SIZE = 64 * 1024
#: A keep-alive connection idle this long gives its stream back (the next request opens a new
#: one), so idle browser connections do not hold the session's maxStreams slots.
STREAM_IDLE_S = 5.0
#: A keep-alive connection idle this long between requests is closed.
KEEPALIVE_IDLE_S = 75.0
#: After our FIN, how long the client's side has to close the stream before it is reset.
LINGER_S = 5.0
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


class _StreamGone(Exception):
    """The stream was reset or finished while a request still needed it."""


class _ClientGone(Exception):
    """Writing to the external socket failed: the HTTP client left."""


class _BadUpstream(Exception):
    """The target's bytes are not a valid HTTP response, or ended before one was whole."""


def _h11_reason(exc: h11.ProtocolError) -> str:
    """h11's message without the received bytes it quotes (they could be anything)."""
    text = _H11_DETAIL.sub("", str(exc)).strip() or "malformed request"
    return text[:120]


# -- the stream ----------------------------------------------------------------------------------


class HttpStream(StreamPump):
    """The stream of one HTTP connection: a StreamPump whose local side is an h11 client.

    While the connection speaks HTTP it has no socket: :class:`HttpConnection` pushes request
    bytes with :meth:`send_within_credit` and its responder pulls DATA with
    :meth:`next_inbound`. After an upgrade, :meth:`start_relay` hands it the socket and it moves
    bytes as any pump does.
    """

    def __init__(
        self,
        runner: SessionRunner,
        stream_id: int,
        *,
        on_finished: Callable[[StreamPump], None] | None,
        kit_session: KitSession,
    ) -> None:
        super().__init__(runner, stream_id, on_finished=on_finished)
        self.kit_session = kit_session
        self.client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_SIZE)
        self.reset_code: int | None = None  # from the RST (note_reset), None: the session ended
        self.reset_reason = ""
        self._reset_by_runner = False
        self._relaying = False
        self._finished_event = Event()

    @classmethod
    def adopt(cls, kit_session: KitSession, pump: StreamPump) -> HttpStream:
        """Take the place of the pump ``open_stream`` just made (no yield since, so no DATA for it
        can have arrived): same stream, same finish callback (the runner's bookkeeping)."""
        runner = pump.runner
        stream = cls(runner, pump.stream_id, on_finished=pump._on_finished, kit_session=kit_session)
        runner.pumps[pump.stream_id] = stream
        kit_session.http_streams[pump.stream_id] = stream
        return stream

    @property
    def read_size(self) -> int:
        return self._read_size

    # -- called by the runner (reader greenlet: never blocks) -------------------------------

    def reset(self) -> None:
        """RST from the client, or the session ended. In the HTTP phase: wake the responder, which
        answers 502/503; relaying: abort the socket as a tcp pump does."""
        if self._relaying:
            super().reset()
            return
        self._reset_by_runner = True
        self._finish(abort=False)

    def note_reset(self, code: int, reason: str) -> None:
        """The RST's code and text (``KitSession.event_received``, right after :meth:`reset`)."""
        self.reset_code = code
        self.reset_reason = reason

    def _finish(self, *, abort: bool) -> None:
        if self._finished:
            return
        if not self._reset_by_runner:
            # After reset() the StreamReset event still has to find it (then it is popped there).
            self.kit_session.http_streams.pop(self.stream_id, None)
        super()._finish(abort=abort)
        self._finished_event.set()

    # -- the HTTP phase -------------------------------------------------------------------------

    def reusable(self) -> bool:
        """True when the next request of the connection can go on this stream."""
        return (
            not self._finished
            and not self._peer_fin
            and not self._sent_fin
            and not self._inbound  # bytes nobody asked for: the target is not speaking HTTP
            and self.client.our_state is h11.IDLE
            and self.client.their_state is h11.IDLE
        )

    def send_within_credit(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data`` on the stream, waiting for credit as needed. Returns its size.

        Raises:
            _StreamGone: the stream was reset or finished meanwhile.
        """
        session = self.runner.session
        stream_id = self.stream_id
        # The session keeps bytes as they are and would copy a writable buffer anyway.
        rest = data if isinstance(data, bytes) else bytes(data)
        size = len(rest)
        while rest:
            if self._finished:
                raise _StreamGone()
            credit = session.outbound_credit(stream_id)
            if credit <= 0:
                self._credit_changed.clear()
                if session.outbound_credit(stream_id) <= 0 and not self._finished:
                    self._credit_changed.wait()
                continue
            if credit >= len(rest):
                self.runner.send_data(stream_id, rest)
                break
            self.runner.send_data(stream_id, rest[:credit])
            rest = rest[credit:]
        self.bytes_from_local += size
        return size

    def next_inbound(self) -> bytes | memoryview | None:
        """The next DATA from the client's side (the caller acknowledges it with
        :meth:`consumed` once written out); None at its FIN.

        Raises:
            _StreamGone: the stream was reset or finished.
        """
        inbound = self._inbound
        while True:
            if self._finished:
                raise _StreamGone()
            if inbound:
                return inbound.popleft()
            if self._peer_fin:
                return None
            self._inbound_ready.clear()
            if not inbound and not self._peer_fin and not self._finished:
                self._inbound_ready.wait()

    def consumed(self, size: int) -> None:
        """``size`` bytes from :meth:`next_inbound` are written out: give the credit back."""
        if size and not self._finished:
            self.bytes_to_local += size
            self.runner.acknowledge_data(self.stream_id, size, drained=not self._inbound)

    def abort(self, reason: str) -> None:
        """Reset the stream from our side (the request cannot go on)."""
        if self._finished:
            return
        self.runner.reset_stream(self.stream_id, ErrorCode.NORMAL, reason)
        self._finish(abort=False)

    def release(self) -> None:
        """The connection is done with the stream: FIN, then (in a greenlet) wait for the
        client's side to close it too, dropping whatever it still sends."""
        if self._finished or self._relaying:
            return
        if not self._sent_fin:
            self._sent_fin = True
            try:
                self.runner.send_data(self.stream_id, b"", end_stream=True)
            except LocalProtocolError:
                # The session dropped the stream meanwhile (it is closing): nothing left to end.
                self._finish(abort=False)
                return
        self.runner.spawn(self._linger)

    def _linger(self) -> None:
        deadline = time.monotonic() + LINGER_S
        inbound = self._inbound
        while not self._finished:
            if inbound:
                size = len(inbound.popleft())
                self.runner.acknowledge_data(self.stream_id, size, drained=not inbound)
                continue
            if self._peer_fin:
                self._finish(abort=False)
                return
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                self.abort("http: the stream was not closed in time after the connection ended")
                return
            self._inbound_ready.clear()
            if not inbound and not self._peer_fin:
                self._inbound_ready.wait(remaining_s)

    # -- after a 101 ----------------------------------------------------------------------------

    def start_relay(self, sock: socket.socket) -> None:
        """The protocol switched: move bytes between ``sock`` and the stream, as a tcp pump does.
        The stream now owns the socket and closes it when done."""
        self._relaying = True
        self.connect(sock)

    def wait_finished(self) -> None:
        self._finished_event.wait()


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
    held: bool = False
    outcome: _Outcome = _Outcome.PENDING
    done: Event = field(default_factory=Event)
    responder: gevent.Greenlet[..., object] | None = None
    recorded: bool = False


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
        if self.stream is not None:
            try:
                wait_read(sock.fileno(), timeout=STREAM_IDLE_S)
            except TimeoutError:
                self._release_stream()
            except OSError:
                return None
        sock.settimeout(self._idle_timeout_s)
        try:
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
        try:
            upstream = h11.Request(method=request.method, target=request.target, headers=headers)
        except h11.LocalProtocolError as exc:
            self._reply(cycle, messages.bad_request(_h11_reason(exc)))
            return False
        stream = self._stream_for(cycle)
        if stream is None:
            return False
        head = stream.client.send(upstream)
        assert head is not None
        cycle.responder = self.runner.spawn(self._respond, stream, cycle)
        self._forward_body(stream, cycle, head)
        cycle.done.wait()
        return self._after_response(stream, cycle)

    def _forward_body(self, stream: HttpStream, cycle: _Cycle, head: bytes) -> None:
        """The request head, then its body chunks as they come, within credit."""
        server = self.server
        client = stream.client
        sock = self.sock
        read_size = stream.read_size
        try:
            cycle.bytes_in += stream.send_within_credit(head)
            while not cycle.done.is_set():
                event: _NextEvent = server.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = sock.recv(read_size)
                    except OSError:
                        data = b""  # reset by the client: as good as EOF for the body
                    server.receive_data(data)
                elif isinstance(event, h11.Data):
                    for piece in client.send_with_data_passthrough(event) or ():
                        cycle.bytes_in += stream.send_within_credit(piece)
                elif isinstance(event, h11.EndOfMessage):
                    tail = client.send(h11.EndOfMessage(headers=event.headers))
                    if tail:
                        cycle.bytes_in += stream.send_within_credit(tail)
                    cycle.request_done = True
                    return
                else:
                    return  # cannot happen mid-request (h11 gives PAUSED only after EOM)
        except h11.RemoteProtocolError as exc:
            # A malformed body (or the client left mid-body): the target must not get the rest.
            cycle.request_error = messages.bad_request(_h11_reason(exc))
            stream.abort("http: malformed request body")
        except _StreamGone:
            pass  # the responder answers for it (502/503), or already did

    def _after_response(self, stream: HttpStream, cycle: _Cycle) -> bool:
        self._record(cycle)
        if cycle.outcome is _Outcome.SWITCHED:
            self._relay(stream)
            return False
        if cycle.outcome is not _Outcome.COMPLETE or not cycle.request_done:
            return False
        server = self.server
        if server.our_state is not h11.DONE or server.their_state is not h11.DONE:
            return False  # Connection: close (from either side), or HTTP/1.0
        server.start_next_cycle()
        client = stream.client
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
        else:
            self._release_stream()  # the target closes after this response: next time, a new one
        return True

    def _relay(self, stream: HttpStream) -> None:
        trailing, _ = self.server.trailing_data  # what the client sent after the upgrade request
        try:
            if trailing:
                stream.send_within_credit(trailing)
        except _StreamGone:
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
        """Relay the response from the stream to the external socket, or answer for the target."""
        client = stream.client
        server = self.server
        out: list[bytes | bytearray] = []
        unacked = 0
        saw_eof = False
        error: KitError | None = None
        try:
            while True:
                try:
                    event: _NextEvent = client.next_event()
                except h11.RemoteProtocolError as exc:
                    raise _BadUpstream(_h11_reason(exc)) from None
                if event is h11.NEED_DATA:
                    self._flush(out, cycle)
                    stream.consumed(unacked)
                    unacked = 0
                    chunk = stream.next_inbound()
                    if chunk is None:
                        saw_eof = True
                        client.receive_data(b"")
                    else:
                        unacked = len(chunk)
                        # h11 appends it to a bytearray: a memoryview slice works as it is.
                        client.receive_data(cast(bytes, chunk))
                elif isinstance(event, h11.Data):
                    out.extend(server.send_with_data_passthrough(event) or ())
                elif isinstance(event, h11.Response):
                    cycle.status = event.status_code
                    cycle.final_started = True
                    out.append(_sent(server.send(
                        h11.Response(status_code=event.status_code, headers=event.headers.raw_items(), reason=event.reason)
                    )))
                    if client.their_state is h11.SWITCHED_PROTOCOL:  # a 2xx to CONNECT
                        self._switch(stream, cycle, out, unacked)
                        return
                elif isinstance(event, h11.InformationalResponse):
                    out.append(_sent(server.send(
                        h11.InformationalResponse(
                            status_code=event.status_code, headers=event.headers.raw_items(), reason=event.reason
                        )
                    )))
                    if client.their_state is h11.SWITCHED_PROTOCOL:  # 101
                        cycle.status = event.status_code
                        cycle.final_started = True
                        self._switch(stream, cycle, out, unacked)
                        return
                elif isinstance(event, h11.EndOfMessage):
                    out.append(_sent(server.send(h11.EndOfMessage(headers=event.headers))))
                    self._flush(out, cycle)
                    stream.consumed(unacked)
                    cycle.outcome = _Outcome.COMPLETE
                    if not cycle.request_done:
                        # Answered before the whole request came: the rest cannot be forwarded
                        # any more, nor the connection reused.
                        stream.abort("http: response complete before the request")
                        _shutdown_write(self.sock)
                    return
                else:
                    raise _BadUpstream("the target closed the connection")
        except _StreamGone:
            error = cycle.request_error or _stream_error(stream)
        except _BadUpstream as exc:
            if saw_eof:
                error = KitError(
                    502,
                    "upstream_reset",
                    "The local service on the connected machine closed the connection before "
                    "a whole response.",
                )
            else:
                error = KitError(
                    502,
                    "bad_response",
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
            cycle.done.set()

    def _switch(self, stream: HttpStream, cycle: _Cycle, out: list[bytes | bytearray], unacked: int) -> None:
        trailing, _ = stream.client.trailing_data  # the target's first bytes after the 101
        if trailing:
            out.append(trailing)
        self._flush(out, cycle)
        stream.consumed(unacked)
        cycle.outcome = _Outcome.SWITCHED

    def _flush(self, out: list[bytes | bytearray], cycle: _Cycle) -> None:
        if not out:
            return
        sock = self.sock
        size = sum(len(piece) for piece in out)
        try:
            if len(out) == 1:
                sock.sendall(out[0])
            elif size <= JOIN_LIMIT:
                sock.sendall(b"".join(out))
            else:
                for piece in out:
                    sock.sendall(piece)
        except OSError:
            raise _ClientGone() from None
        cycle.bytes_out += size
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
        if cycle.recorded:
            return
        cycle.recorded = True
        duration_s = time.monotonic() - cycle.started
        metrics = self.metrics
        status = cycle.status
        metrics.http_requests_total.labels(
            method=messages.method_label(cycle.method),
            status_class=f"{status // 100}xx" if status else "none",
        ).inc()
        metrics.http_request_duration_seconds.observe(duration_s)
        if cycle.bytes_in:
            metrics.http_bytes_total.labels(direction="request").inc(cycle.bytes_in)
        if cycle.bytes_out:
            metrics.http_bytes_total.labels(direction="response").inc(cycle.bytes_out)
        if cycle.error is not None:
            metrics.http_error_responses_total.labels(cause=cycle.error.cause).inc()
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "http request: bind=%d method=%s path=%s status=%s bytes_in=%d bytes_out=%d "
                "duration_ms=%.1f%s",
                self.binding.bind_id,
                cycle.method.decode("ascii", "replace")[:16],
                messages.access_path(cycle.target),
                status or "-",
                cycle.bytes_in,
                cycle.bytes_out,
                duration_s * 1000,
                f" error={cycle.error.cause}" if cycle.error is not None else "",
            )

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
            if cycle is not None and not cycle.done.is_set():
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
                connection = HttpConnection(kit_session, binding, conn, origin)
                on_closed = kit_session.give_permit
            else:
                overflow.count += 1
                connection = HttpConnection(
                    kit_session, binding, conn, origin, refusal=refusal, idle_timeout_s=OVERFLOW_HEAD_TIMEOUT_S
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
