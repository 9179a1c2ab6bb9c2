"""The client's WebSocket handshake: ``connect(url, subprotocols, ...) -> SocketTransport``.

TCP (or TLS for wss://), the HTTP/1.1 upgrade written and read with h11, checks of the 101
(accept key, a subprotocol we offered), then the same :class:`~tunnel.mux.transport.SocketTransport`
the kit uses, masking what it sends (RFC 6455 §5.3). h11's trailing bytes (anything the server
sent after the 101) are handed to the frame reader, so nothing is lost.
"""

from __future__ import annotations

import base64
import os
import socket as stdlib_socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Final, cast
from urllib.parse import urlsplit

import gevent
import gevent.socket
import gevent.ssl
import h11

from tunnel.mux.transport import (
    HandshakeRejected,
    SocketTransport,
    TransportError,
    _BufferedByteReader,
    format_address,
)
from tunnel.mux.websocket import MAX_MESSAGE_SIZE, PrefixedReader, check_switching_headers

__all__ = ["DEFAULT_CONNECT_PATH", "HeaderItems", "connect"]

#: docs/protocol.md §1.1: implied when the URL has no path.
DEFAULT_CONNECT_PATH: Final = "/api/v1/tunnel/connect"
_MAX_REJECTION_BODY_SIZE: Final = 64 * 1024
_MAX_HANDSHAKE_HEADER_SIZE: Final = 64 * 1024

HeaderItems = Mapping[str, str] | Sequence[tuple[str, str]]


def connect(
    url: str,
    subprotocols: Sequence[str],
    *,
    timeout_s: float,
    headers: HeaderItems | None = None,
    ssl_context: ssl.SSLContext | None = None,
    send_timeout_s: float = 30.0,
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> SocketTransport:
    """Open a client WebSocket (RFC 6455 §4.1) and return its transport.

    Args:
        url: ``ws://`` or ``wss://``; an empty path or ``/`` means ``/api/v1/tunnel/connect``.
        subprotocols: offered in Sec-WebSocket-Protocol; the server must choose one of them.
        timeout_s: bound on the whole TCP + TLS + HTTP handshake.
        headers: extra request headers (e.g. User-Agent).
        ssl_context: for wss; default ``ssl.create_default_context()``.

    Raises:
        HandshakeRejected: a non-101 answer (``body`` read, at most 64 KiB), or a 101 with a wrong
            Sec-WebSocket-Accept or a subprotocol that was not offered (or none at all).
        TransportError: DNS, TCP, TLS or HTTP failure, or the timeout.
        ValueError: a URL that is not ws:// or wss://.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    secure = parts.scheme == "wss"
    host = parts.hostname
    port = parts.port or (443 if secure else 80)
    path = parts.path if parts.path not in ("", "/") else DEFAULT_CONNECT_PATH
    target = path + (f"?{parts.query}" if parts.query else "")
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{port}"
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request_headers = [
        ("Host", host_header),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    if subprotocols:
        request_headers.append(("Sec-WebSocket-Protocol", ", ".join(subprotocols)))
    extra = headers.items() if isinstance(headers, Mapping) else (headers or ())
    request_headers.extend((name, value) for name, value in extra)

    sock: gevent.socket.socket | None = None
    timer = gevent.Timeout(timeout_s)
    timer.start()
    try:
        sock = gevent.socket.create_connection((host, port))
        sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        if secure:
            sock = _wrap_tls(sock, host, ssl_context)
        trailing, chosen = _handshake(sock, target, request_headers, key, subprotocols)
    except BaseException as exc:
        if sock is not None:
            sock.close()
        if exc is timer:
            raise TransportError(f"WebSocket handshake with {url} timed out after {timeout_s} s") from None
        if isinstance(exc, (OSError, h11.ProtocolError)):
            raise TransportError(f"WebSocket connection to {url} failed: {exc}") from exc
        raise  # HandshakeRejected, or a foreign gevent.Timeout
    finally:
        timer.close()
    # The bytes h11 read past the 101 are the first frames: serve them first.
    reader = PrefixedReader(trailing, cast(_BufferedByteReader, sock.makefile("rb", buffering=64 * 1024)))
    return SocketTransport(
        reader,
        sock,
        mask_outgoing=True,
        subprotocol=chosen,
        peer_address=format_address(sock.getpeername()),
        local_address=format_address(sock.getsockname()),
        send_timeout_s=send_timeout_s,
        max_message_size=max_message_size,
    )


def _wrap_tls(sock: gevent.socket.socket, host: str, context: ssl.SSLContext | None) -> gevent.socket.socket:
    context = context or ssl.create_default_context()
    # Not context.wrap_socket(): in an unpatched process ssl.create_default_context() (even
    # gevent.ssl's) returns a stdlib context whose wrap_socket builds a blocking ssl.SSLSocket
    # over our non-blocking gevent fd. gevent's SSLSocket takes any context; this is exactly what
    # gevent.ssl.SSLContext.wrap_socket does.
    return gevent.ssl.SSLSocket(sock=sock, server_hostname=host, _context=context)


def _handshake(
    sock: gevent.socket.socket,
    target: str,
    request_headers: list[tuple[str, str]],
    key: str,
    subprotocols: Sequence[str],
) -> tuple[bytes, str]:
    """Send the upgrade request, read the answer; return (bytes after the 101, subprotocol)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HANDSHAKE_HEADER_SIZE)
    sock.sendall(
        conn.send(h11.Request(method="GET", target=target, headers=request_headers))
        + conn.send(h11.EndOfMessage())
    )
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                break  # other 1xx (100 Continue) are skipped
        elif isinstance(event, h11.Response):
            raise HandshakeRejected(event.status_code, _decode_headers(event.headers), _read_body(conn, sock))
        elif isinstance(event, h11.ConnectionClosed):
            raise TransportError("server closed the connection during the WebSocket handshake")
    response_headers = _decode_headers(event.headers)
    try:
        chosen = check_switching_headers(response_headers, key, subprotocols)
    except ValueError as exc:
        raise HandshakeRejected(101, response_headers, b"", str(exc)) from None
    trailing, _closed = conn.trailing_data
    return bytes(trailing), chosen


def _decode_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(bytes(name).decode("latin-1"), bytes(value).decode("latin-1")) for name, value in headers]


def _read_body(conn: h11.Connection, sock: gevent.socket.socket) -> bytes:
    """Read the rejection body up to 64 KiB (the caller's timeout bounds the wait)."""
    parts: list[bytes] = []
    size = 0
    while size < _MAX_REJECTION_BODY_SIZE:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Data):
            parts.append(bytes(event.data))
            size += len(event.data)
        else:  # EndOfMessage, ConnectionClosed, PAUSED
            break
    return b"".join(parts)[:_MAX_REJECTION_BODY_SIZE]
