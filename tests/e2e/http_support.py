"""Support for the HTTP-mode tests (e2e and integration): a real local HTTP server and small clients.

- :func:`target_app`: a WSGI app served by gevent's pywsgi with gevent-websocket's handler (the
  local target behind an ``--expose .../http``): ``/headers`` answers the request's headers as
  JSON, ``/upload`` hashes the body as it streams in, ``/download`` streams pattern bytes
  (Content-Length or chunked), ``/echo`` streams the body back chunked while reading it, ``/close``
  answers with ``Connection: close``, ``/slow?s=N`` answers after N seconds, ``/ws`` is a WebSocket
  echo. Nothing is buffered whole.
- ``python -m tests.e2e.http_support FD``: serve it on an inherited listening socket
  (e2e tests start it as a subprocess, so the test process stays unpatched).
- :class:`HttpClient`: one client connection driven by h11 (keep-alive, chunked, streaming);
  it works on stdlib sockets (e2e) and gevent sockets (integration) alike.
- :func:`ws_handshake` / :func:`ws_send` / :func:`ws_recv`: a minimal RFC 6455 client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import h11

from tests.e2e.loopback import recv_exactly, recv_until
from tests.e2e.wire import ws_client_frame, ws_key, ws_upgrade_request

BLOCK_SIZE = 1 << 20


def pattern_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK_SIZE)


def pattern_chunks(seed: int, size: int, chunk_size: int = BLOCK_SIZE) -> Iterator[bytes]:
    """``size`` deterministic bytes (one random MiB repeated), in pieces of ``chunk_size``."""
    block = pattern_block(seed)
    sent = 0
    while sent < size:
        start = sent % BLOCK_SIZE
        piece = block[start : start + min(chunk_size, size - sent, BLOCK_SIZE - start)]
        sent += len(piece)
        yield piece


def pattern_sha256(seed: int, size: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern_chunks(seed, size):
        digest.update(piece)
    return digest.hexdigest()


# -- the target --------------------------------------------------------------------------------


def target_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    websocket = environ.get("wsgi.websocket")
    if websocket is not None:
        while (message := websocket.receive()) is not None:
            websocket.send(message, binary=isinstance(message, (bytes, bytearray)))
        return []
    stream = environ["wsgi.input"]
    if path == "/upload":
        digest = hashlib.sha256()
        size = 0
        while data := stream.read(256 * 1024):
            digest.update(data)
            size += len(data)
        return _json(start_response, {"size": size, "sha256": digest.hexdigest()})
    if path == "/download":
        size = int(query.get("size", "0"))
        headers = [("Content-Type", "application/octet-stream")]
        if query.get("chunked") != "1":
            headers.append(("Content-Length", str(size)))
        start_response("200 OK", headers)
        if environ["REQUEST_METHOD"] == "HEAD":
            return []  # pywsgi would send the body of a HEAD response as it is
        return pattern_chunks(int(query.get("seed", "0")), size, 256 * 1024)
    if path == "/slow":
        import gevent

        gevent.sleep(float(query.get("s", "1")))
        return _json(start_response, {"slept": True})
    if path == "/echo":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _echo(stream)
    body = stream.read()
    headers_seen = [
        [key[5:].replace("_", "-").lower(), value] for key, value in environ.items() if key.startswith("HTTP_")
    ]
    answer = {
        "method": environ["REQUEST_METHOD"],
        "path": path,
        "query": environ.get("QUERY_STRING", ""),
        "headers": dict(sorted(headers_seen)),
        "body_size": len(body),
        "peer": environ.get("REMOTE_ADDR"),
    }
    extra = [("Connection", "close")] if path == "/close" else []
    return _json(start_response, answer, extra)


def _echo(stream: Any) -> Iterator[bytes]:
    while data := stream.read(256 * 1024):
        yield data


def _json(start_response: Callable[..., Any], obj: object, extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    body = json.dumps(obj).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *(extra or [])],
    )
    return [body]


def serve_target(listener: socket.socket) -> Any:
    """Start the target on a listening gevent socket; returns the started WSGIServer."""
    from gevent.pywsgi import WSGIServer
    from geventwebsocket.handler import WebSocketHandler

    server = WSGIServer(listener, target_app, handler_class=WebSocketHandler, log=None, error_log=None)
    server.start()
    return server


def main(argv: list[str]) -> int:
    from gevent import socket as gsocket

    listener = gsocket.socket(fileno=int(argv[0]))
    server = serve_target(listener)
    print("serving", flush=True)
    server.serve_forever()
    return 0


# -- an h11 client -------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lowercased names; repeated ones joined with ", "
    body: bytes
    raw_headers: list[tuple[bytes, bytes]]

    def json(self) -> Any:
        return json.loads(self.body)


class HttpClient:
    """One keep-alive connection, driven by h11."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        self.closed_by_server = False

    @classmethod
    def connect(cls, port: int, timeout_s: float, create: Callable[..., socket.socket] = socket.create_connection) -> HttpClient:
        sock = create(("127.0.0.1", port), timeout=timeout_s)
        return cls(sock)

    def send_request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None) -> None:
        all_headers = [("Host", "tunnel.test"), *(headers or [])]
        self.sock.sendall(self.conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b"")

    def send_body(self, data: bytes) -> None:
        self.sock.sendall(self.conn.send(h11.Data(data=data)) or b"")

    def end_request(self) -> None:
        self.sock.sendall(self.conn.send(h11.EndOfMessage()) or b"")

    def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(256 * 1024))
                continue
            return event

    def read_response(self, on_data: Callable[[bytes], None] | None = None) -> Reply:
        """Read one response; body pieces go to ``on_data`` when given (else collected)."""
        event = self._next()
        while isinstance(event, h11.InformationalResponse):
            event = self._next()
        assert isinstance(event, h11.Response), f"expected a response, got {event!r}"
        response = event
        parts: list[bytes] = []
        while True:
            event = self._next()
            if isinstance(event, h11.Data):
                if on_data is not None:
                    on_data(bytes(event.data))
                else:
                    parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        headers: dict[str, str] = {}
        for name, value in response.headers:
            key = name.decode().lower()
            headers[key] = f"{headers[key]}, {value.decode()}" if key in headers else value.decode()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        else:
            self.closed_by_server = True
        return Reply(response.status_code, headers, b"".join(parts), response.headers.raw_items())

    def read_response_hashed(self) -> tuple[Reply, str, int]:
        """Read one response, hashing its body as it streams in (nothing kept): returns the reply
        (with an empty body), the body's sha256 and its size."""
        digest = hashlib.sha256()
        size = 0

        def take(data: bytes) -> None:
            nonlocal size
            digest.update(data)
            size += len(data)

        reply = self.read_response(on_data=take)
        return reply, digest.hexdigest(), size

    def request(self, method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> Reply:
        hdrs = list(headers or [])
        if body and not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in hdrs):
            hdrs.append(("Content-Length", str(len(body))))
        self.send_request(method, target, hdrs)
        if body:
            self.send_body(body)
        self.end_request()
        return self.read_response()

    def close(self) -> None:
        self.sock.close()


def read_raw_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """A whole response read with a fresh h11 parser (for hand-written requests)."""
    conn = h11.Connection(h11.CLIENT)
    # Tell h11 a request went out so it accepts a response (the bytes were sent by hand).
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    status = 0
    headers: dict[str, str] = {}
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = {n.decode().lower(): v.decode() for n, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, headers, bytes(body)


# -- a minimal WebSocket client ---------------------------------------------------------------------


def ws_handshake(sock: socket.socket, path: str = "/ws") -> bytes:
    """Send the upgrade; return the response head (raises unless it is a 101)."""
    key = ws_key()
    sock.sendall(ws_upgrade_request(path, "tunnel.test", key))
    head = recv_until(sock, b"\r\n\r\n", chunk_size=1)  # not a byte more: frames follow
    assert head.startswith(b"HTTP/1.1 101"), head
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
    assert accept in head, head
    return head


def ws_send(sock: socket.socket, payload: bytes, opcode: int = 0x2) -> None:
    sock.sendall(ws_client_frame(opcode, payload, os.urandom(4)))


def ws_recv(sock: socket.socket) -> tuple[int, bytes]:
    b0, b1 = recv_exactly(sock, 2)
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack("!H", recv_exactly(sock, 2))[0]
    elif length == 127:
        length = struct.unpack("!Q", recv_exactly(sock, 8))[0]
    return b0 & 0x0F, recv_exactly(sock, length)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
