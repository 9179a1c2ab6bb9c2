"""The WebSocket seam: `Transport`, its errors, and `SocketTransport` (the client handshake is in ws_client.py).

`SocketTransport` speaks RFC 6455 itself (framing in `tunnel.mux.websocket`) over a buffered
reader and a gevent socket, for both ends: the server handler (tunnel/server/handler.py) builds one
after its deferred 101, the client builds one with `connect()`. It replaces gevent-websocket's
WebSocket object, whose traps it fixes (comments cite the sections of docs/gevent-websocket.md):

* every raw write (data messages, automatic pongs, close frames) passes through one
  `gevent.lock.Semaphore`, inside `gevent.Timeout(send_timeout_s)`
  (docs/gevent-websocket.md §6, §7);
* close frames carry ``!H`` code + reason and the received code is kept
  (docs/gevent-websocket.md §5);
* message sizes are checked from headers before payloads are read (docs/gevent-websocket.md §9);
* the receiver yields after a budget of bytes or messages read back to back
  (docs/gevent-websocket.md §10);
* masking uses numpy (docs/gevent-websocket.md §4, §13).

Concurrency: one greenlet reads (`receive_message`), any number may send. `close` may be called
from any greenlet; it wakes a blocked reader by shutting the socket down.
"""

from __future__ import annotations

import os
import socket as stdlib_socket
import ssl
from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

import gevent
import gevent.lock
import gevent.socket
import gevent.ssl

from tunnel.mux.dialing import send_all
from tunnel.mux.websocket import (
    MAX_MESSAGE_SIZE,
    CloseCode,
    FrameReader,
    WebSocketFramingError,
    IncompleteReadError,
    Opcode,
    OversizeMessageError,
    apply_mask,
    compute_accept_key,
    encode_frame_header,
    is_valid_close_code,
    pack_close_payload,
    parse_close_payload,
)
from tunnel.protocol import TunnelError

__all__ = [
    "CloseCode",
    "ConnectionClosed",
    "HandshakeRejected",
    "MessageTooBig",
    "ProtocolViolation",
    "SendTimeout",
    "SocketTransport",
    "TextMessageReceived",
    "Transport",
    "TransportError",
    "compute_accept_key",
    "format_address",
]

_IOV_MAX: Final = 1024  # iovecs per sendmsg() call (Linux IOV_MAX)
_MSG_DONTWAIT: Final = stdlib_socket.MSG_DONTWAIT  # gevent's sendmsg raises instead of waiting
_DEFAULT_CLOSE_TIMEOUT_S: Final = 5.0


# == Errors ====================================================================================


#: Fairness budget (docs/gevent-websocket.md §10): yield to other greenlets after this much read
#: back to back.
YIELD_AFTER_BYTES = 256 * 1024
YIELD_AFTER_MESSAGES = 32


class TransportError(TunnelError):
    """Root of everything the transport raises on purpose (connect failures included)."""


class ConnectionClosed(TransportError):
    """The connection is over: a close frame came in (``code`` is the peer's, None when the frame
    had no code), or EOF / reset / local close (``code`` None)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed (code={code}, reason={reason!r})")
        self.code = code
        self.reason = reason


class ProtocolViolation(ConnectionClosed):
    """The peer broke RFC 6455; the transport already sent close ``close_code_sent``."""

    def __init__(self, close_code_sent: int, reason: str) -> None:
        super().__init__(None, reason)
        self.close_code_sent = close_code_sent


class TextMessageReceived(TransportError):
    """A text message arrived (docs/protocol.md §1.2: only binary messages are valid). The
    connection is still open; the caller decides how to end it."""

    def __init__(self, message_size: int) -> None:
        super().__init__(f"text message of {message_size} bytes received")
        self.message_size = message_size


class MessageTooBig(TransportError):
    """A message over the limit was announced; close 1009 was sent, the payload never read."""

    def __init__(self, message_size: int, max_message_size: int) -> None:
        super().__init__(f"message of at least {message_size} bytes exceeds {max_message_size} bytes")
        self.message_size = message_size
        self.max_message_size = max_message_size


class SendTimeout(TransportError):
    """A send did not complete within ``send_timeout_s`` (docs/gevent-websocket.md §7). The
    connection is dead (a frame may be half written) and has been aborted."""

    def __init__(self, send_timeout_s: float) -> None:
        super().__init__(f"send did not complete within {send_timeout_s} s")
        self.send_timeout_s = send_timeout_s


class HandshakeRejected(TransportError):
    """The server did not switch protocols, or its 101 was invalid.

    ``headers`` are (lower-case name, value) pairs; ``body`` is at most 64 KiB.
    """

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, detail: str = "") -> None:
        super().__init__(f"WebSocket handshake rejected: HTTP {status}" + (f": {detail}" if detail else ""))
        self.status = status
        self.headers = headers
        self.body = body
        self.detail = detail

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)


# == The seam ==================================================================================


@runtime_checkable
class Transport(Protocol):
    """What a session runner needs from a WebSocket."""

    @property
    def subprotocol(self) -> str: ...
    @property
    def peer_address(self) -> str: ...  # "ip:port"
    @property
    def local_address(self) -> str: ...
    @property
    def close_code_received(self) -> int | None: ...

    def receive_message(self) -> bytes | bytearray:
        """Block for one whole binary message. Raises TextMessageReceived, MessageTooBig,
        ConnectionClosed. Answers pings; yields to other greenlets after each message."""
        ...

    def send_messages(self, messages: list[bytes]) -> None:
        """Send binary messages under the write lock. Raises ConnectionClosed, SendTimeout."""
        ...

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Idempotent: send close (code, reason) if not yet sent, then close the socket."""
        ...

    def abort(self) -> None:
        """Idempotent: close the socket without a close frame (dead peer)."""
        ...


class _BufferedByteReader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def close(self) -> None: ...


def format_address(address: object) -> str:
    """``"ip:port"`` for an (ip, port, ...) tuple (IPv6 in brackets), ``str()`` otherwise."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address)


class SocketTransport:
    """`Transport` over a buffered reader and a gevent socket (either end).

    Args:
        reader: buffered reader of the socket (``read``, ``readinto``, ``close``); it may already
            hold bytes that follow the handshake.
        sock: the gevent socket (or gevent SSL socket) to write to.
        mask_outgoing: True on the client: outgoing frames are masked and incoming ones must not
            be; False on the server: the reverse (RFC 6455 §5.1).
        send_timeout_s: bound on every write, including the wait for the write lock.
        close_timeout_s: bound on sending a close frame from `close` (never above send_timeout_s).
    """

    def __init__(
        self,
        reader: _BufferedByteReader,
        sock: gevent.socket.socket,
        *,
        mask_outgoing: bool,
        subprotocol: str,
        peer_address: str,
        local_address: str,
        send_timeout_s: float = 30.0,
        close_timeout_s: float = _DEFAULT_CLOSE_TIMEOUT_S,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self._reader = reader
        self._sock = sock
        self._mask_outgoing = mask_outgoing
        self.subprotocol = subprotocol
        self.peer_address = peer_address
        self.local_address = local_address
        self.send_timeout_s = send_timeout_s
        self.close_timeout_s = min(close_timeout_s, send_timeout_s)
        self._frame_reader = FrameReader(
            reader.read,
            readinto=reader.readinto,
            expect_masked=not mask_outgoing,
            max_message_size=max_message_size,
        )
        # docs/gevent-websocket.md §6: the one lock that every raw write goes through.
        self._write_lock = gevent.lock.Semaphore(1)
        # SSL sockets have no sendmsg(); they get one joined buffer instead.
        self._use_sendmsg = hasattr(sock, "sendmsg") and not isinstance(sock, (ssl.SSLSocket, gevent.ssl.SSLSocket))
        self._close_code_received: int | None = None
        self.close_reason_received = ""
        self._close_sent = False  # no frame may follow a close frame (RFC 6455 §5.5.1)
        self._aborted = False  # socket shut down and closed
        self._unyielded_bytes = 0
        self._unyielded_messages = 0
        self._reading = False
        self._closed_locally = False  # close() or abort() was called
        self._ended: ConnectionClosed | None = None  # what later calls raise

    @property
    def close_code_received(self) -> int | None:
        """The code of the peer's close frame (None: no close frame, or one without a code)."""
        return self._close_code_received

    @property
    def closed(self) -> bool:
        return self._aborted

    # -- receiving -----------------------------------------------------------------------------

    def receive_message(self) -> bytes | bytearray:
        """Block until one whole binary message arrives and return it.

        Pings are answered and pongs ignored on the way. Only one greenlet may call this at a
        time.

        Raises:
            TextMessageReceived: a text message (read wholly and dropped); still connected.
            MessageTooBig: a message over the limit; close 1009 sent, connection closed.
            ConnectionClosed: close frame (``code`` is the peer's, echoed once), EOF, reset,
                local close; `ProtocolViolation` when the peer broke RFC 6455.
        """
        while True:
            if self._ended is not None:
                raise self._ended
            self._reading = True
            try:
                message = self._frame_reader.read_message()
            except OversizeMessageError as exc:
                self._end(ConnectionClosed(None, "message too big"))
                self._fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
                raise MessageTooBig(exc.message_size, exc.max_message_size) from None
            except WebSocketFramingError as exc:
                violation = self._end(ProtocolViolation(exc.close_code, str(exc)))
                self._fail(exc.close_code, str(exc))
                raise violation from None
            except (IncompleteReadError, OSError, ValueError) as exc:
                # ValueError: the reader was closed under us by a local close().
                ended = self._end(ConnectionClosed(self._close_code_received, f"connection lost: {exc}"))
                self._abort()
                raise ended from None
            finally:
                self._reading = False
                if self._aborted:
                    self._close_reader()
            opcode = message.opcode
            self._maybe_yield(len(message.payload))
            if opcode == Opcode.BINARY:
                return message.payload
            if opcode == Opcode.PING:
                if not self._close_sent:
                    try:
                        pong = self._control_frame(Opcode.PONG, message.payload)  # RFC 6455 §5.5.3
                        self._write([pong])
                    except SendTimeout:
                        raise self._end(ConnectionClosed(None, "pong send timed out")) from None
            elif opcode == Opcode.CLOSE:
                self._on_close_frame(message.payload)
            elif opcode == Opcode.TEXT:
                raise TextMessageReceived(len(message.payload))

    def _maybe_yield(self, size: int) -> None:
        """Fairness (docs/gevent-websocket.md §10): a peer that keeps the socket full must not
        starve the worker's other connections. A read that blocks yields anyway; this yields
        after a budget of bytes or messages read back to back (a hub round trip per tiny control
        message cost more than it bought: it showed in connection-setup latency)."""
        self._unyielded_bytes += size
        self._unyielded_messages += 1
        if self._unyielded_bytes >= YIELD_AFTER_BYTES or self._unyielded_messages >= YIELD_AFTER_MESSAGES:
            self._unyielded_bytes = 0
            self._unyielded_messages = 0
            gevent.sleep(0)

    def _on_close_frame(self, payload: bytes | bytearray) -> None:
        try:
            code, reason = parse_close_payload(payload)
        except WebSocketFramingError as exc:
            violation = self._end(ProtocolViolation(exc.close_code, str(exc)))
            self._fail(exc.close_code, str(exc))
            raise violation from None
        self._close_code_received = code
        self.close_reason_received = reason
        ended = ConnectionClosed(code, reason)
        if not self._closed_locally:
            # The peer's code beats an earlier local failure (e.g. a send that hit the RST
            # following the peer's close 1009): it says why the connection ended.
            self._ended = ended
        if not self._close_sent:
            # RFC 6455 §5.5.1: echo the status code once (empty payload if it had none).
            self._send_close_frame(code, "")
        self._abort()
        raise ended

    def _end(self, exc: ConnectionClosed) -> ConnectionClosed:
        """Record why the connection ended (the first reason wins) and return that record."""
        if self._ended is None:
            self._ended = exc
        return self._ended

    # -- sending -------------------------------------------------------------------------------

    def send_messages(self, messages: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send binary messages, all in one sendall/sendmsg under the write lock.

        Raises:
            ConnectionClosed: the connection is closed or the write failed.
            SendTimeout: not done within ``send_timeout_s``; the connection was aborted.
        """
        if not messages:
            return
        self._write(self._encode_messages(messages))

    def _encode_messages(self, payloads: Sequence[bytes | bytearray | memoryview]) -> list[bytes | bytearray | memoryview]:
        if not self._mask_outgoing:
            # Server: headers and payloads as separate iovecs, no copy of the payloads.
            buffers: list[bytes | bytearray | memoryview] = []
            for payload in payloads:
                buffers.append(encode_frame_header(Opcode.BINARY, len(payload)))
                if len(payload):
                    buffers.append(payload)
            return buffers
        # Client: the masked copy is unavoidable; write every frame into one buffer.
        mask_keys = os.urandom(4 * len(payloads))
        headers = [
            encode_frame_header(Opcode.BINARY, len(payload), mask_key=mask_keys[4 * i : 4 * i + 4])
            for i, payload in enumerate(payloads)
        ]
        out = bytearray(sum(len(h) for h in headers) + sum(len(p) for p in payloads))
        offset = 0
        with memoryview(out) as view:
            for i, (header, payload) in enumerate(zip(headers, payloads)):
                view[offset : offset + len(header)] = header
                offset += len(header)
                size = len(payload)
                apply_mask(payload, mask_keys[4 * i : 4 * i + 4], out=view[offset : offset + size])
                offset += size
        return [out]

    def _control_frame(self, opcode: Opcode, payload: bytes | bytearray) -> bytes:
        key = os.urandom(4) if self._mask_outgoing else None
        masked = apply_mask(payload, key) if key is not None else payload
        return encode_frame_header(opcode, len(payload), mask_key=key) + bytes(masked or b"")

    def _write(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        """Write ``buffers`` under the write lock within send_timeout_s
        (docs/gevent-websocket.md §6, §7).

        Fast path: when the lock is free and the kernel takes everything at once (a small
        message to a peer that reads), the write costs one non-blocking ``sendmsg`` and no
        timer; a timer is armed only for what the kernel could not take.
        """
        if self._close_sent:  # also set by _abort
            raise self._ended or ConnectionClosed(self._close_code_received, "connection is closed")
        if self._use_sendmsg and self._write_lock.acquire(blocking=False):
            try:
                try:
                    rest = self._send_nowait(buffers)
                except OSError as exc:
                    ended = self._end(ConnectionClosed(None, f"send failed: {exc}"))
                    self._abort()
                    raise ended from None
                if rest:
                    self._send_timed(rest, locked=True)
            finally:
                self._write_lock.release()
            return
        self._send_timed(buffers, locked=False)

    def _send_nowait(self, buffers: list[bytes | bytearray | memoryview]) -> list[memoryview]:
        """Send what the kernel takes now without blocking; return the rest (empty: all sent)."""
        assert self._write_lock.locked()  # docs/architecture.md §4.2: callers hold the write lock
        views = [memoryview(b).cast("B") for b in buffers]
        index = 0
        while index < len(views):
            try:
                sent = self._sock.sendmsg(views[index : index + _IOV_MAX], (), _MSG_DONTWAIT)
            except BlockingIOError:
                break
            index = _skip_sent(views, index, sent)
        return views[index:]

    def _send_timed(self, buffers: Sequence[bytes | bytearray | memoryview], *, locked: bool) -> None:
        """Send ``buffers`` blocking, within send_timeout_s (``locked``: the caller holds the
        write lock; else it is taken here, within the same deadline)."""
        timer = gevent.Timeout(self.send_timeout_s)
        timer.start()
        try:
            if locked:
                self._sendall(list(buffers))
            else:
                with self._write_lock:
                    if self._close_sent:  # a close went out while we waited for the lock
                        raise self._ended or ConnectionClosed(self._close_code_received, "connection is closed")
                    self._sendall(list(buffers))
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._end(ConnectionClosed(None, "send timed out"))
            self._abort()  # a frame may be half written: the connection is unusable
            raise SendTimeout(self.send_timeout_s) from None
        except OSError as exc:
            ended = self._end(ConnectionClosed(None, f"send failed: {exc}"))
            self._abort()
            raise ended from None
        finally:
            timer.close()

    def _sendall(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        assert self._write_lock.locked()  # docs/architecture.md §4.2: callers hold the write lock
        if len(buffers) == 1:
            send_all(self._sock, buffers[0])
            return
        if not self._use_sendmsg:
            send_all(self._sock, b"".join(buffers))
            return
        views = [memoryview(b).cast("B") for b in buffers]
        index = 0
        while index < len(views):
            sent = self._sock.sendmsg(views[index : index + _IOV_MAX])
            index = _skip_sent(views, index, sent)

    # -- closing -------------------------------------------------------------------------------

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send close (``code`` packed ``!H`` + reason cut to 123 bytes) unless a close was
        already sent, then shut down and close the socket. Idempotent; never blocks longer than
        ``close_timeout_s``. Later receive/send calls raise ConnectionClosed.

        Raises:
            ValueError: ``code`` may not be sent (e.g. 1005, 1006, 2000).
        """
        if not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent")
        if self._aborted:
            return
        self._closed_locally = True
        self._end(ConnectionClosed(self._close_code_received, "closed locally"))
        if not self._close_sent:
            self._send_close_frame(code, reason)
        self._abort()

    def abort(self) -> None:
        """Drop the connection without a close frame (a dead peer, heartbeat timeout,
        docs/protocol.md §10). Idempotent; later calls raise ConnectionClosed."""
        self._closed_locally = True
        self._end(ConnectionClosed(self._close_code_received, "aborted locally"))
        self._abort()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: close frame (best effort), then abort (RFC 6455 §7.1.7)."""
        if not self._close_sent and not self._aborted:
            self._send_close_frame(code, reason)
        self._abort()

    def _send_close_frame(self, code: int | None, reason: str) -> None:
        """Best effort, bounded by close_timeout_s; marks the close as sent either way."""
        frame = self._control_frame(Opcode.CLOSE, pack_close_payload(code, reason))
        self._close_sent = True
        # A sender stuck on a dead peer holds the lock: do not wait longer than close_timeout_s.
        if not self._write_lock.acquire(timeout=self.close_timeout_s):
            return
        timer = gevent.Timeout(self.close_timeout_s)
        timer.start()
        try:
            self._sendall([frame])
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
        except OSError:
            pass  # the peer is gone; aborting is all that is left
        finally:
            timer.close()
            self._write_lock.release()

    def _abort(self) -> None:
        """Shut the socket down (waking a blocked reader with EOF) and close it."""
        if self._aborted:
            return
        self._aborted = True
        self._close_sent = True
        self._end(ConnectionClosed(self._close_code_received, "connection is closed"))
        try:
            self._sock.shutdown(stdlib_socket.SHUT_RDWR)
        except OSError:
            pass  # already disconnected
        self._sock.close()  # the fd itself goes once the reader (a makefile) is closed too
        if not self._reading:
            self._close_reader()

    def _close_reader(self) -> None:
        # Closing a BufferedReader that another greenlet is blocked in raises "reentrant call",
        # so the reading greenlet closes it itself when it wakes up (see receive_message).
        try:
            self._reader.close()
        except (OSError, RuntimeError):
            pass


def _skip_sent(views: list[memoryview], index: int, sent: int) -> int:
    """Drop what ``sendmsg`` took (``sent`` bytes from ``views[index:]``); return the new index
    (a partly sent view is cut in place)."""
    while sent and index < len(views):
        first = views[index]
        if sent >= len(first):
            sent -= len(first)
            index += 1
        else:
            views[index] = first[sent:]
            sent = 0
    return index
