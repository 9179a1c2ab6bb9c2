"""HTTP mode, the response side: relaying a response from the stream to the HTTP client.

:class:`ResponseRelay` is held by :class:`~tunnel.server.http_connection.HttpConnection`, one per
external connection; it relays what one request's response needs (see :mod:`tunnel.server.http_mode` for the theory of
operation). Every response head is parsed by llhttp (:mod:`tunnel.server.http_heads`) before
any of it goes out, so an invalid head never reaches the HTTP client in part; the body's bytes
then go out as the target sent them, while :class:`~tunnel.server.http_framing.BodyScanner`
tells where the response ends (bytes after it are not relayed, and the stream is not reused).
"""

from __future__ import annotations

import enum
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import gevent
from gevent.event import Event

from tunnel.mux.dialing import send_all
from tunnel.protocol import ErrorCode, code_name
from tunnel.server import http_messages as messages
from tunnel.server.http_framing import MAX_HEAD_SIZE, BodyKind, BodyScanner, FramingError, append_bytes, head_end
from tunnel.server.http_heads import HeadError, parse_response_head
from tunnel.server.http_messages import ErrorPage
from tunnel.server.http_stream import HttpStream, StreamGone
from tunnel.protocol import TunnelError

log = logging.getLogger("tunnel.http")

RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_RECONNECTING_S = 5
#: While a response head is awaited, how often the kit checks that the HTTP client is still there
#: (a client that closed its connection gets its stream reset, as nginx does with a 499).
CLIENT_CHECK_S = 1.0


class ClientGone(TunnelError):
    """Writing to the external socket failed: the HTTP client left."""


class BadUpstream(TunnelError):
    """The target's bytes are not a valid HTTP response, or ended before one was whole."""

    def __init__(self, message: str, *, eof: bool) -> None:
        super().__init__(message)
        self.eof = eof  # the target had closed its side: a cut, rather than garbage


class Outcome(enum.Enum):
    PENDING = "pending"
    COMPLETE = "complete"  # the whole response went out
    SWITCHED = "switched"  # 101 (or 2xx to CONNECT): the stream is a byte relay now
    FAILED = "failed"  # an error page went out, or the connection is beyond saving


@dataclass(eq=False, slots=True)
class Cycle:
    """One request and its response."""

    started: float
    method: bytes
    target: bytes
    accept: bytes | None = None
    head_only: bool = False
    status: int = 0
    error: ErrorPage | None = None  # the kit answered itself
    request_error: ErrorPage | None = None  # the request body turned out malformed
    bytes_in: int = 0
    bytes_out: int = 0
    final_started: bool = False  # a final (or 101) response head went out: no error page now
    request_done: bool = False
    saw_eof: bool = False  # the target closed its side of the stream
    held: bool = False
    outcome: Outcome = Outcome.PENDING
    client_keep_alive: bool = True  # the HTTP client may send another request after this one
    target_keep_alive: bool = True  # the target keeps the stream's connection after this one
    done: Event | None = None  # set when the response is over; only when a responder runs
    responder: gevent.Greenlet[..., object] | None = None
    recorded: bool = False


class ResponseRelay:
    """The response half of one HTTP connection: from the stream to the external socket.

    Args:
        sock: the external connection.
        answer: writes the kit's own error page for a cycle (the connection's, so the page and
            the connection's other answers are made one way); the connection closes after it.
    """

    def __init__(self, sock: socket.socket, answer: Callable[[Cycle, ErrorPage], None]) -> None:
        self.sock = sock
        self._answer = answer
        #: The response came before the whole request: read and drop what the client still
        #: sends when the connection closes, so the response is not destroyed by a TCP reset.
        self.drain_on_close = False

    def respond(self, stream: HttpStream, cycle: Cycle) -> None:
        """Relay the response from the stream to the external socket, or answer for the target."""
        error: ErrorPage | None = None
        try:
            self._relay_response(stream, cycle)
        except StreamGone:
            error = cycle.request_error or stream_error(stream)
        except BadUpstream as exc:
            error = ErrorPage(
                502,
                "upstream_reset" if exc.eof else "bad_response",
                "The local service on the connected machine closed the connection before a whole "
                "response." if exc.eof else
                f"The local service on the connected machine sent an invalid HTTP response ({exc}).",
            )
            stream.abort("http: invalid response")
        except ClientGone:
            stream.abort("http: the HTTP client went away")
        finally:
            if cycle.outcome is Outcome.PENDING:
                cycle.outcome = Outcome.FAILED
                if error is not None:
                    self._answer_failure(cycle, error)
            if cycle.done is not None:
                cycle.done.set()

    def _relay_response(self, stream: HttpStream, cycle: Cycle) -> None:
        """Heads (1xx ones included) are gathered and parsed whole before they go out; the
        final response's body goes out piece by piece as it comes, each piece acknowledged to
        the stream only once written (so the WINDOW the client gets reflects bytes written)."""
        buf: bytes | bytearray = b""  # received, not written: a head being gathered (bounded)
        searched = 0
        unacked = 0
        while True:
            end = head_end(buf, searched) if buf else -1
            if end < 0:
                if len(buf) > MAX_HEAD_SIZE:
                    raise BadUpstream("its head is larger than 64 KiB", eof=False)
                if unacked:
                    stream.consumed(unacked)  # a head part is held here, bounded: acknowledged
                while not stream.wait_inbound(CLIENT_CHECK_S):
                    # A slow answer (a long poll): is anybody still waiting for it?
                    if cycle.request_done and client_left(self.sock):
                        raise ClientGone()
                chunk = stream.next_inbound()
                if chunk is None:
                    cycle.saw_eof = True
                    raise BadUpstream("the target closed the connection", eof=True)
                unacked = len(chunk)
                searched = len(buf)
                buf = append_bytes(buf, chunk)
                continue
            try:
                head = parse_response_head(buf[:end] if end < len(buf) else buf, cycle.method)
            except HeadError as exc:
                raise BadUpstream(exc.detail, eof=False) from None
            if head.switched:
                cycle.status = head.status
                cycle.final_started = True
                self._send(buf, cycle)  # the head and the target's first bytes after it
                stream.consumed(unacked)
                cycle.outcome = Outcome.SWITCHED
                return
            if head.status < 200:
                # 100 Continue (or another 1xx): out at once; the final response follows.
                self._send(buf[:end], cycle)
                buf, searched = buf[end:], 0
                continue
            break
        cycle.status = head.status
        cycle.final_started = True
        rest_size = len(buf) - end
        if head.body is BodyKind.LENGTH and rest_size >= head.length:
            # The whole response is here (most small responses): no scanner needed.
            scanner = None
            taken = head.length
        else:
            scanner = BodyScanner(head.body, head.length)
            taken = self._scan(scanner, memoryview(buf)[end:], cycle)
        leftover = rest_size - taken
        self._send(buf if not leftover else buf[: end + taken], cycle)
        while scanner is not None and not scanner.done:
            stream.consumed(unacked)
            data = stream.next_inbound()
            if data is None:
                cycle.saw_eof = True
                unacked = 0
                try:
                    scanner.end_of_input()
                except FramingError:
                    raise BadUpstream("the target closed the connection mid-body", eof=True) from None
                break
            unacked = len(data)
            taken = self._scan(scanner, data, cycle)
            leftover = len(data) - taken
            if taken:
                self._send(data if not leftover else memoryview(data)[:taken], cycle)
        stream.consumed(unacked)
        # Bytes after the response's end: the target is talking out of turn. They stay out,
        # and the stream is not used again.
        stream.tainted = leftover > 0
        cycle.target_keep_alive = head.keep_alive and not cycle.saw_eof
        self._complete(stream, cycle)

    @staticmethod
    def _scan(scanner: BodyScanner, data: bytes | memoryview, cycle: Cycle) -> int:
        try:
            return scanner.scan(data)
        except FramingError as exc:
            raise BadUpstream(str(exc), eof=False) from None

    def _complete(self, stream: HttpStream, cycle: Cycle) -> None:
        cycle.outcome = Outcome.COMPLETE
        if not cycle.request_done:
            # Answered before the whole request came: the rest cannot be forwarded any more,
            # nor the connection reused. What the client still sends is read and dropped at the
            # close, so the response is not destroyed by a TCP reset.
            stream.abort("http: response complete before the request")
            self.drain_on_close = True
            shutdown_write(self.sock)

    def _send(self, data: bytes | bytearray | memoryview, cycle: Cycle) -> None:
        """Write ``data`` to the external socket."""
        if not data:
            return
        try:
            send_all(self.sock, data)
        except OSError:
            raise ClientGone() from None
        cycle.bytes_out += len(data)

    def _answer_failure(self, cycle: Cycle, error: ErrorPage) -> None:
        """The response failed: an error page if nothing of a final response went out yet,
        else a TCP reset, so the client cannot take a cut response for a whole one."""
        if cycle.final_started:
            cycle.error = error
            abort_socket(self.sock)
            return
        self._answer(cycle, error)


def closed_error() -> ErrorPage:
    return ErrorPage(
        503,
        "tunnel_closed",
        "The tunnel is closing: the connected machine is no longer serving this port.",
        RETRY_AFTER_RECONNECTING_S,
    )


def stream_error(stream: HttpStream) -> ErrorPage:
    """What to answer for a stream reset before its response."""
    code = stream.reset_code
    if code is None:
        return closed_error()  # the session ended under it
    if code in (ErrorCode.REFUSED, ErrorCode.RESOURCE_EXHAUSTED, ErrorCode.SHUTDOWN):
        return ErrorPage(
            503,
            "tunnel_closed" if code == ErrorCode.SHUTDOWN else "max_streams",
            f"The connected machine refused the connection ({stream.reset_reason or 'busy'}). "
            "Try again shortly.",
            RETRY_AFTER_BUSY_S,
        )
    return messages.connect_error((code_name(code) or "unknown").lower(), stream.reset_reason)


def client_left(sock: socket.socket) -> bool:
    """True when the HTTP client closed its side (or reset it); never blocks, consumes nothing.

    Bytes waiting (a pipelined request) say nothing either way: False.
    """
    # A non-blocking peek (gevent's socket raises instead of waiting when its timeout is 0);
    # select() would fail on descriptors above FD_SETSIZE, which a large kit reaches.
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False  # nothing to read: still there
    except OSError:
        return True  # reset, or already closed
    finally:
        try:
            sock.setblocking(True)
        except OSError:
            pass  # closed meanwhile: nothing to restore


def shutdown_write(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already closed by the client: nothing to signal


def abort_socket(sock: socket.socket) -> None:
    """Close with a TCP reset: the client must not take a cut response for a whole one."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass  # already dead: close() below is all that is left
    sock.close()
