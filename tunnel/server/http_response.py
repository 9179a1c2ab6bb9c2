"""HTTP mode, the response side: relaying a response from the stream to the HTTP client.

:class:`ResponseRelay` is mixed into :class:`~tunnel.server.http_connection.HttpConnection`; it
holds what one request's response needs (see :mod:`tunnel.server.http_mode` for the theory of
operation). h11's client parses every response: boundaries, status, protocol switch, validity.
To an HTTP/1.1 client the target's bytes go out as they came, once h11 has parsed the head (an
invalid head never goes out in part); an HTTP/1.0 client gets the response re-framed by h11's
server (no chunked coding for it).
"""

from __future__ import annotations

import enum
import logging
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union, cast

import gevent
import h11
from gevent.event import Event

from tunnel.protocol import ErrorCode
from tunnel.server import http_messages as messages
from tunnel.server.http_messages import KitError
from tunnel.server.http_stream import HttpStream, StreamGone

if TYPE_CHECKING:
    from tunnel.server.bindings import Binding

log = logging.getLogger("tunnel.http")

RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_RECONNECTING_S = 5
#: Responder writes: pieces up to this size are joined into one send.
JOIN_LIMIT = 64 * 1024

NextEvent = Union[h11.Event, type[h11.NEED_DATA], type[h11.PAUSED]]
H11_DETAIL = re.compile(r":\s*(?:bytearray\(|b'|b\"|\().*$", re.DOTALL)



class ClientGone(Exception):
    """Writing to the external socket failed: the HTTP client left."""


class BadUpstream(Exception):
    """The target's bytes are not a valid HTTP response, or ended before one was whole."""

    def __init__(self, message: str, *, eof: bool) -> None:
        super().__init__(message)
        self.eof = eof  # the target had closed its side: a cut, rather than garbage



def h11_reason(exc: h11.ProtocolError) -> str:
    """h11's message without the received bytes it quotes (they could be anything)."""
    text = H11_DETAIL.sub("", str(exc)).strip() or "malformed request"
    return text[:120]




class Outcome(enum.Enum):
    PENDING = "pending"
    COMPLETE = "complete"  # the whole response went out
    SWITCHED = "switched"  # 101 (or 2xx to CONNECT): the stream is a byte relay now
    FAILED = "failed"  # an error page went out, or the connection is beyond saving


@dataclass(eq=False)
class Cycle:
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
    outcome: Outcome = Outcome.PENDING
    client_keep_alive: bool = True  # the HTTP client may send another request after this one
    target_keep_alive: bool = True  # the target keeps the stream's connection after this one
    done: Event | None = None  # set when the response is over; only when a responder runs
    responder: gevent.Greenlet[..., object] | None = None
    recorded: bool = False


class ResponseRelay:
    """The response half of an HTTP connection (a mixin of HttpConnection)."""

    sock: socket.socket
    server: h11.Connection
    binding: Binding

    def _reply(self, cycle: Cycle, error: KitError, *, record: bool = True) -> None:
        raise NotImplementedError  # HttpConnection._reply


    def _respond(self, stream: HttpStream, cycle: Cycle) -> None:
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
            error = cycle.request_error or stream_error(stream)
        except BadUpstream as exc:
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
        except ClientGone:
            stream.abort("http: the HTTP client went away")
        finally:
            if cycle.outcome is Outcome.PENDING:
                cycle.outcome = Outcome.FAILED
                if error is not None:
                    self._answer_failure(cycle, error)
            if cycle.done is not None:
                cycle.done.set()

    def _next_response_event(self, stream: HttpStream, cycle: Cycle) -> NextEvent:
        try:
            return stream.client.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadUpstream(h11_reason(exc), eof=cycle.saw_eof) from None

    def _take_inbound(self, stream: HttpStream, cycle: Cycle) -> bytes | memoryview:
        """The next DATA, fed to h11's client too; b"" at the stream's FIN."""
        chunk = stream.next_inbound()
        if chunk is None:
            cycle.saw_eof = True
            stream.client.receive_data(b"")
            return b""
        # h11 appends it to a bytearray: a memoryview slice works as it is.
        stream.client.receive_data(cast(bytes, chunk))
        return chunk

    def _respond_raw(self, stream: HttpStream, cycle: Cycle) -> None:
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
                raise BadUpstream("the target closed the connection", eof=True)

    def _respond_reframed(self, stream: HttpStream, cycle: Cycle) -> None:
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
                out.append(sent(server.send(answer)))
                if client.their_state is h11.SWITCHED_PROTOCOL:
                    cycle.status = event.status_code
                    cycle.final_started = True
                    out.append(client.trailing_data[0])  # the target's first bytes after it
                    self._write(out, cycle)
                    stream.consumed(unacked)
                    cycle.outcome = Outcome.SWITCHED
                    return
            elif isinstance(event, h11.EndOfMessage):
                out.append(sent(server.send(h11.EndOfMessage(headers=event.headers))))
                self._write(out, cycle)
                stream.consumed(unacked)
                stream.tainted = bool(client.trailing_data[0])
                # The client's side may close; h11's server re-frames, so the HTTP client's
                # connection can stay (the next request gets a new stream).
                self._complete(stream, cycle)
                return
            else:
                raise BadUpstream("the target closed the connection", eof=True)

    def _switched(
        self,
        stream: HttpStream,
        cycle: Cycle,
        pending: list[bytes | bytearray | memoryview],
        unacked: int,
    ) -> None:
        """The protocol switched: everything received goes out (the head and the target's first
        bytes after it). From now on the stream relays bytes (HttpConnection._relay)."""
        self._write(pending, cycle)
        stream.consumed(unacked)
        cycle.outcome = Outcome.SWITCHED

    def _complete(self, stream: HttpStream, cycle: Cycle) -> None:
        cycle.outcome = Outcome.COMPLETE
        if not cycle.request_done:
            # Answered before the whole request came: the rest cannot be forwarded any more,
            # nor the connection reused.
            stream.abort("http: response complete before the request")
            shutdown_write(self.sock)

    def _write(self, out: list[bytes | bytearray | memoryview], cycle: Cycle, keep: int = 0) -> None:
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
            raise ClientGone() from None
        cycle.bytes_out += size
        if not keep:
            out.clear()

    def _answer_failure(self, cycle: Cycle, error: KitError) -> None:
        """The response failed: an error page if nothing of a final response went out yet,
        else a TCP reset, so the client cannot take a cut response for a whole one."""
        if cycle.final_started:
            cycle.error = error
            abort_socket(self.sock)
            return
        self._reply(cycle, error, record=False)



def sent(data: bytes | None) -> bytes:
    assert data is not None  # h11 returns None only for ConnectionClosed
    return data


def closed_error() -> KitError:
    return KitError(
        503,
        "tunnel_closed",
        "The tunnel is closing: the connected machine is no longer serving this port.",
        RETRY_AFTER_RECONNECTING_S,
    )


def stream_error(stream: HttpStream) -> KitError:
    """What to answer for a stream reset before its response."""
    code = stream.reset_code
    if code is None:
        return closed_error()  # the session ended under it
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
