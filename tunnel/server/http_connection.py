"""HTTP mode, one external connection: requests, the stream, the kit's own answers.

See :mod:`tunnel.server.http_mode` for the theory of operation; the response side is in
:mod:`tunnel.server.http_response`.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable

import gevent
from gevent.event import Event

from tunnel.log_lines import LineBatch
from tunnel.metrics import Metrics
from tunnel.mux.dialing import send_all
from tunnel.protocol import SessionState
from tunnel.server import http_messages as messages
from tunnel.server.bindings import Binding, ExposeHost
from tunnel.server.http_framing import (
    MAX_HEAD_SIZE,
    BodyKind,
    BodyScanner,
    FramingError,
    append_bytes,
    head_end,
    skip_empty_lines,
)
from tunnel.server.http_heads import HeadError, RequestHead, parse_request_head
from tunnel.server.http_messages import ErrorPage
from tunnel.server.http_response import (
    RETRY_AFTER_BUSY_S,
    RETRY_AFTER_RECONNECTING_S,
    Cycle,
    Outcome,
    ResponseRelay,
    closed_error,
)
from tunnel.server.http_stream import HttpStream, StreamGone

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


class Recorder:
    """Metrics (:class:`tunnel.metrics.HttpStats`) and the access log of one http binding.

    The access log's lines are batched per turn of the event loop (:class:`LineBatch`): one
    record carries the lines of one turn, and the kit's LineFormatter writes each as a log line.
    """

    def __init__(self, metrics: Metrics, bind_id: int) -> None:
        self.stats = metrics.http
        self.bind_id = bind_id
        self.access = LineBatch(access_log)

    def record(self, cycle: Cycle) -> None:
        duration_s = time.monotonic() - cycle.started
        status = cycle.status
        error = cycle.error
        self.stats.observe(
            messages.method_label(cycle.method),
            _STATUS_CLASSES[status // 100] if 100 <= status < 600 else "none",
            duration_s,
            cycle.bytes_in,
            cycle.bytes_out,
            None if error is None else error.cause,
        )
        if self.access.enabled():
            self.access.add(
                "http request: bind=%d method=%s path=%s status=%s bytes_in=%d bytes_out=%d "
                "duration_ms=%.1f%s"
                % (
                    self.bind_id,
                    cycle.method.decode("ascii", "replace")[:16],
                    messages.access_path(cycle.target),
                    status or "-",
                    cycle.bytes_in,
                    cycle.bytes_out,
                    duration_s * 1000,
                    "" if error is None else f" error={error.cause}",
                )
            )


_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


class HttpConnection:
    """One accepted connection of an http binding, request by request; its
    :class:`ResponseRelay` relays each response."""

    def __init__(
        self,
        host: ExposeHost,
        binding: Binding,
        sock: socket.socket,
        origin: str,
        *,
        refusal: ErrorPage | None = None,
        idle_timeout_s: float = KEEPALIVE_IDLE_S,
        recorder: Recorder | None = None,
    ) -> None:
        self.host = host
        self.runner = host.runner
        self.binding = binding
        self.sock = sock
        self.origin = origin
        self.peer_ip = origin.rpartition(":")[0].strip("[]") or origin
        self.metrics = host.metrics
        self.recorder = recorder or Recorder(self.metrics, binding.bind_id)
        self.hold_s = host.settings.http_hold_s
        self.relay = ResponseRelay(sock, self._answer_failed_response)
        self.buffer: bytes | bytearray = b""  # received from the client, not forwarded yet
        self._forwarding_cache: dict[bytes | None, tuple[bytes, bytes]] = {}  # see forwarding_headers
        self.stream: HttpStream | None = None
        self.cycle: Cycle | None = None
        self._refusal = refusal  # answer every request with this (no FD permit: 503)
        self._idle_timeout_s = idle_timeout_s
        self._stream_idle_timer: gevent.Timeout | None = None  # made at first use, then reused
        self._keepalive_timer: gevent.Timeout | None = None
        self._drain_on_close = False
        self._handed_over = False  # the stream owns the socket (relay after a 101)
        try:
            address, port = sock.getsockname()[:2]
            self.default_host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        except OSError:
            self.default_host = f"localhost:{binding.port}"

    def run(self, on_closed: Callable[[], None]) -> None:
        """Serve the connection until it closes; then ``on_closed()`` (gives the permit back)."""
        try:
            try:
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                return  # reset by the peer before we even started: nothing to serve
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

    def _next_request(self) -> RequestHead | None:
        """Read and parse the next request head. None: the connection is over (closed by the
        client, idle too long, or answered 400/431/501/505)."""
        buf = self.buffer
        searched = 0
        while True:
            if buf[:2] == b"\r\n":
                buf = buf[skip_empty_lines(buf) :]  # ignored before a request (RFC 9112 §2.2)
                searched = 0
            end = head_end(buf, searched) if buf else -1
            if end >= 0:
                break
            if len(buf) > MAX_HEAD_SIZE:
                cycle = self._new_cycle(b"-", b"-", None, head_only=False)
                self._reply(cycle, messages.bad_request("the request head is larger than 64 KiB", 431))
                return None
            data = self._read_between_requests()
            if not data:
                return None  # closed (mid-head or not: nobody is left to answer), reset, idle
            searched = len(buf)
            buf = append_bytes(buf, data)
        if end == len(buf):
            head, self.buffer = buf, b""
        else:
            head, self.buffer = buf[:end], buf[end:]
        try:
            return parse_request_head(head)
        except HeadError as exc:
            method = bytes(head[:64]).partition(b" ")[0]
            cycle = self._new_cycle(method if method.isalpha() else b"-", b"-", None, head_only=False)
            self._reply(cycle, messages.bad_request(exc.detail, exc.status))
            return None

    def _read_between_requests(self) -> bytes | None:
        """Wait for the next request's bytes: give the stream back after STREAM_IDLE_S, close
        after the keep-alive timeout. None: closed, failed or timed out."""
        idle_s = self._idle_timeout_s
        try:
            if self.stream is not None and idle_s > STREAM_IDLE_S:
                if self._stream_idle_timer is None:
                    self._stream_idle_timer = gevent.Timeout(STREAM_IDLE_S)
                data = self._recv_within(self._stream_idle_timer)
                if data is not None:
                    return data
                self._release_stream()
                with gevent.Timeout(idle_s - STREAM_IDLE_S) as rest:  # rare: a timer of its own
                    return self._recv_within(rest)
            if self._keepalive_timer is None:
                self._keepalive_timer = gevent.Timeout(idle_s)
            return self._recv_within(self._keepalive_timer)  # b"": the client closed
        except OSError:
            return None  # reset

    def _recv_within(self, timer: gevent.Timeout) -> bytes | None:
        """One read, or None when ``timer`` runs out first. The connection keeps its timers
        from request to request: a socket timeout would make a new one for every wait. Under
        load the next request is usually there already: a first non-blocking try needs no timer.
        """
        sock = self.sock
        sock.setblocking(False)
        try:
            return sock.recv(HEAD_READ_SIZE)
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
        if not timer.pending:
            timer.start()
        try:
            return sock.recv(HEAD_READ_SIZE)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return None
        finally:
            timer.cancel()

    def _new_cycle(self, method: bytes, target: bytes, accept: bytes | None, *, head_only: bool) -> Cycle:
        self.cycle = Cycle(time.monotonic(), method, target, accept, head_only)
        return self.cycle

    def _serve_request(self, request: RequestHead) -> bool:
        """Forward one request and relay its response. False: the connection is over."""
        headers = request.headers
        accept = b",".join(value for name, value in headers if name.lower() == b"accept") or None
        method = request.method
        cycle = self._new_cycle(method, request.target, accept, head_only=method == b"HEAD")
        refusal = self._refusal or messages.check_request(request.version, headers)
        if refusal is not None:
            self._reply(cycle, refusal)
            return False
        forwarded = messages.forwarding_headers(
            headers,
            peer_ip=self.peer_ip,
            port=self.binding.port,
            host_header=self.binding.host_header,
            default_host=self.default_host,
            cache=self._forwarding_cache,
        )
        cycle.client_keep_alive = request.keep_alive
        scanner = None if request.body is BodyKind.NONE else BodyScanner(request.body, request.length)
        first: bytes | bytearray = b""
        if scanner is not None and self.buffer:
            try:
                taken = scanner.scan(self.buffer)
            except FramingError as exc:
                self._reply(cycle, messages.bad_request(str(exc)))
                return False
            first, self.buffer = self.buffer[:taken], self.buffer[taken:]
        stream = self._stream_for(cycle)
        if stream is None:
            return False
        head = messages.request_head(method, request.target, request.version, forwarded)
        if scanner is None or scanner.done:
            # The whole request is here (most requests: no body): send it all and read the
            # response in this greenlet.
            try:
                cycle.bytes_in += stream.send_within_credit(head + first if first else head)
                cycle.request_done = True
            except StreamGone:
                pass  # the relay answers for it
            self.relay.respond(stream, cycle)
        else:
            # A body still to come: it streams up while a responder greenlet relays the response
            # (which may come early, or be a 100 Continue the client waits for).
            cycle.done = Event()
            cycle.responder = self.runner.spawn(self.relay.respond, stream, cycle)
            self._forward_body(stream, cycle, head + first, scanner)
            cycle.done.wait()
        return self._after_response(stream, cycle)

    def _forward_body(self, stream: HttpStream, cycle: Cycle, head: bytes, scanner: BodyScanner) -> None:
        """The request head, then its body as it comes, within credit. The body's bytes go as
        the client sent them; the scanner only finds where the body ends (what follows is the
        next request, kept in ``self.buffer``)."""
        sock = self.sock
        read_size = stream.read_size
        try:
            cycle.bytes_in += stream.send_within_credit(head)
            while cycle.outcome is Outcome.PENDING:
                try:
                    data = sock.recv(read_size)
                except OSError:
                    data = b""  # reset by the client: as good as EOF for the body
                if not data:
                    scanner.end_of_input()  # raises: the body was cut short
                taken = scanner.scan(data)
                if taken < len(data):
                    self.buffer = data[taken:]
                    data = data[:taken]
                if data:
                    cycle.bytes_in += stream.send_within_credit(data)
                if scanner.done:
                    cycle.request_done = True
                    return
        except FramingError as exc:
            # A malformed body (or the client left mid-body): the target must not get the rest.
            cycle.request_error = messages.bad_request(str(exc))
            stream.abort("http: malformed request body")
        except StreamGone:
            pass  # the responder answers for it (502/503), or already did

    def _after_response(self, stream: HttpStream, cycle: Cycle) -> bool:
        self._record(cycle)
        if cycle.outcome is Outcome.SWITCHED:
            self._relay(stream)
            return False
        if cycle.outcome is not Outcome.COMPLETE or not cycle.request_done:
            return False
        if not (cycle.client_keep_alive and cycle.target_keep_alive):
            return False  # Connection: close (from either side), or HTTP/1.0
        if not stream.reusable():
            self._release_stream()  # the target closes after this response: next time, a new one
        return True

    def _relay(self, stream: HttpStream) -> None:
        trailing, self.buffer = self.buffer, b""  # what the client sent after the upgrade request
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

    def _stream_for(self, cycle: Cycle) -> HttpStream | None:
        """The stream for this request: the connection's, or a new one. None: answered 503."""
        if not self.host.attached.is_set() and not self._hold(cycle):
            return None
        stream = self.stream
        if stream is not None:
            if stream.reusable():
                return stream
            self._release_stream()
        runner = self.runner
        if not runner.can_open_stream() and cycle.held:
            # Right after a resume the OPENs re-sent by the session go first: wait for them.
            remaining_s = cycle.started + self.hold_s - time.monotonic()
            if remaining_s > 0:
                runner.wait_stream_slot(remaining_s)
        if not runner.can_open_stream():
            self._reply(cycle, self._no_stream_error())
            return None
        new = self.host.open_expose_stream(self.binding, self.origin, pump_class=HttpStream)
        assert isinstance(new, HttpStream)  # made by the pump_class given
        self.stream = new
        return new

    def _hold(self, cycle: Cycle) -> bool:
        """The session is parked: wait for its resume, up to the hold time. False: answered."""
        host = self.host
        cycle.held = True
        deadline = cycle.started + self.hold_s
        log.info(
            "http request held: id=%s bind=%d session parked, waiting up to %.1f s",
            host.session_id,
            self.binding.bind_id,
            self.hold_s,
        )
        while not host.attached.is_set():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0 or not host.attached.wait(remaining_s):
                break
        held = self.metrics.http_requests_held_total
        if host.attached.is_set() and host.active:
            held.labels(outcome="served").inc()
            return True
        held.labels(outcome="timed_out").inc()
        if host.attached.is_set():
            error = closed_error()  # woken because the session ended
        else:
            error = ErrorPage(
                503,
                "reconnecting",
                "The tunnel is reconnecting: the connected machine lost its connection to the "
                f"kit and has not come back within {self.hold_s:g} s. Try again shortly.",
                RETRY_AFTER_RECONNECTING_S,
            )
        self._reply(cycle, error)
        return False

    def _no_stream_error(self) -> ErrorPage:
        runner = self.runner
        if self.host.active and runner.state is SessionState.OPEN:
            return ErrorPage(
                503,
                "max_streams",
                f"The tunnel is busy: all {runner.max_streams} of its streams are in use. "
                "Try again shortly.",
                RETRY_AFTER_BUSY_S,
            )
        return closed_error()

    def _release_stream(self) -> None:
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.release()

    # -- kit answers, records, closing ------------------------------------------------------

    def _reply(self, cycle: Cycle, error: ErrorPage, *, record: bool = True) -> None:
        """Answer ``error`` ourselves; the connection closes after it."""
        cycle.error = error
        cycle.status = error.status
        cycle.final_started = True
        data = messages.render_error(error, accept=cycle.accept, head_only=cycle.head_only)
        try:
            send_all(self.sock, data)
            cycle.bytes_out += len(data)
        except OSError as exc:
            log.debug("http error page not delivered: bind=%d %s", self.binding.bind_id, exc)
        self._drain_on_close = True
        if record:
            self._record(cycle)

    def _answer_failed_response(self, cycle: Cycle, error: ErrorPage) -> None:
        """The relay's answer when a response failed before any of it went out (recorded by
        the connection once the cycle is over)."""
        self._reply(cycle, error, record=False)

    def _record(self, cycle: Cycle) -> None:
        """Metrics and the access-log line, once per request."""
        if not cycle.recorded:
            cycle.recorded = True
            self.recorder.record(cycle)

    def _answer_on_exit(self) -> None:
        """Killed (the session ended) with a request unanswered: a last 503, without blocking."""
        cycle = self.cycle
        if cycle is None or cycle.recorded or cycle.final_started:
            return
        error = closed_error()
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
        for timer in (self._stream_idle_timer, self._keepalive_timer):
            if timer is not None:
                timer.close()
        cycle = self.cycle
        if cycle is not None and cycle.responder is not None and not cycle.responder.dead:
            cycle.responder.kill(block=False)
        stream, self.stream = self.stream, None
        if stream is not None and not self._handed_over:
            if cycle is not None and cycle.outcome is Outcome.PENDING:
                stream.abort("http: the connection closed mid-request")
            else:
                stream.release()
        sock = self.sock
        if (self._drain_on_close or self.relay.drain_on_close) and not self._handed_over:
            _drain(sock)
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


__all__ = ["HttpConnection"]
