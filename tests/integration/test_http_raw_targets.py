"""HTTP mode against hand-written local targets (raw sockets), for what a well-behaved WSGI app
never does: answering before the request body is complete, CONNECT, bytes after a response, and a
chunked body whose extensions and trailers must arrive unchanged. The kit, the real TunnelClient
and the sockets are the ones of tests/integration/test_http_inprocess.py's harness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gevent
import pytest
from gevent import socket as gsocket
from gevent.event import Event
from gevent.queue import Queue
from gevent.server import StreamServer

from tests.e2e.http_support import read_raw_response
from tests.e2e.loopback import recv_until_eof
from tests.integration.test_http_inprocess import Harness, _streams
from tests.integration.test_http_inprocess import harness, make_harness  # noqa: F401 (fixtures)
from tests.waiting import holds_for, scaled_s, wait_until

Handler = Callable[[gsocket.socket], None]


@pytest.fixture
def raw_target() -> Iterator[Callable[[Handler], int]]:
    servers: list[StreamServer] = []

    def start(handler: Handler) -> int:
        server = StreamServer(("127.0.0.1", 0), lambda sock, _address: handler(sock))
        server.start()
        servers.append(server)
        return int(server.server_port)

    yield start
    for server in servers:
        server.stop(timeout=scaled_s(5))


def _read_head(sock: gsocket.socket) -> tuple[bytes, bytes]:
    """The request head and whatever came after it in the same reads."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the kit closed before a whole head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _read_until(sock: gsocket.socket, suffix: bytes) -> bytes:
    """Everything received until it ends with ``suffix`` (the peer must not close first)."""
    data = b""
    while not data.endswith(suffix):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def test_a_response_before_the_request_body_ends_is_relayed(harness: Harness, raw_target: Callable[[Handler], int]) -> None:
    received = Queue()

    def refuse_upload(sock: gsocket.socket) -> None:
        head, rest = _read_head(sock)
        received.put(head)
        sock.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
        # A lingering close, as servers do: closing with unread bytes would be a TCP reset,
        # which can destroy the response before the tunnel client reads it.
        sock.shutdown(gsocket.SHUT_WR)
        recv_until_eof(sock)
        sock.close()

    port = harness.start_client(target_port=raw_target(refuse_upload))
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    client.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 104857600\r\n\r\n" + b"x" * 65536)
    status, headers, body = read_raw_response(client)
    assert (status, body) == (413, b"too large"), headers
    assert "x-hoody-tunnel-error" not in headers  # the app's own answer, relayed
    assert received.get(timeout=scaled_s(5)).startswith(b"POST /upload HTTP/1.1\r\n")
    # The rest of the body is not wanted: the kit closes the connection (after reading and
    # dropping what the client still sends), and gives the stream back.
    assert recv_until_eof(client) == b""
    client.close()
    wait_until(lambda: _streams(harness) == 0, 10, "the stream to be given back")


def test_connect_becomes_a_byte_relay_after_its_2xx(harness: Harness, raw_target: Callable[[Handler], int]) -> None:
    def tunnel(sock: gsocket.socket) -> None:
        head, rest = _read_head(sock)
        assert head.startswith(b"CONNECT db.internal:5432 HTTP/1.1\r\n")
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + rest)
        while data := sock.recv(65536):
            sock.sendall(data.upper())
        sock.close()

    port = harness.start_client(target_port=raw_target(tunnel))
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    client.sendall(b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\nfirst;")
    assert _read_until(client, b"FIRST;") == b"HTTP/1.1 200 Connection established\r\n\r\nFIRST;"
    for word in (b"ping", b"pong" * 10000):
        client.sendall(word)
        echoed = b""
        while len(echoed) < len(word):
            echoed += client.recv(65536)
        assert echoed == word.upper()
    client.close()


def test_bytes_after_a_response_are_not_relayed_and_the_stream_is_not_reused(
    harness: Harness, raw_target: Callable[[Handler], int]
) -> None:
    connections = Queue()

    def chatty(sock: gsocket.socket) -> None:
        connections.put(sock)
        while True:
            try:
                _read_head(sock)
            except AssertionError:
                return
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nforged")

    port = harness.start_client(target_port=raw_target(chatty))
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    for _ in range(2):
        client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        status, _, body = read_raw_response(client)
        assert (status, body) == (200, b"ok")
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    # What came after the first response never reached the client: the next bytes it gets are
    # the third response, whole, and each request went to a new local connection.
    assert read_raw_response(client)[2] == b"ok"
    assert connections.qsize() == 3
    client.close()


def test_chunked_request_reaches_the_target_byte_exact_with_extensions_and_trailers(
    harness: Harness, raw_target: Callable[[Handler], int]
) -> None:
    body = b"5;name=value\r\nhello\r\n6;q=\"a b\"\r\n world\r\n0\r\nX-Checksum: abc\r\nX-More: 1\r\n\r\n"
    got: Queue = Queue()
    done = Event()

    def record(sock: gsocket.socket) -> None:
        head, rest = _read_head(sock)
        while not rest.endswith(b"\r\n\r\n") or len(rest) < len(body):
            rest += sock.recv(65536)
        got.put((head, rest))
        sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        done.wait(scaled_s(10))
        sock.close()

    port = harness.start_client(target_port=raw_target(record))
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    client.sendall(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in (body[:3], body[3:20], body[20:]):  # split inside a size line and inside data
        client.sendall(piece)
        gevent.idle()
    assert read_raw_response(client)[0] == 204
    head, forwarded = got.get(timeout=scaled_s(10))
    done.set()
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head and b"X-Forwarded-For: 127.0.0.1" in head
    assert forwarded == body
    client.close()


def test_a_response_to_head_has_no_body_even_with_content_length(harness: Harness, raw_target: Callable[[Handler], int]) -> None:
    def head_then_get(sock: gsocket.socket) -> None:
        head, _ = _read_head(sock)
        assert head.startswith(b"HEAD ")
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        head, _ = _read_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        recv_until_eof(sock)

    port = harness.start_client(target_port=raw_target(head_then_get))
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    client.sendall(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")  # pipelined
    data = _read_until(client, b"abc")
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    client.close()


@pytest.mark.parametrize(
    ("response", "status", "cause"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 502, "bad_response"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n", None, "bad_response"),  # reset
        (b"NOT HTTP AT ALL\r\n\r\n", 502, "bad_response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", None, "upstream_reset"),  # cut mid-body
    ],
)
def test_invalid_or_cut_responses(
    harness: Harness, raw_target: Callable[[Handler], int], response: bytes, status: int | None, cause: str | None
) -> None:
    def answer(sock: gsocket.socket) -> None:
        _read_head(sock)
        sock.sendall(response)
        sock.close()

    port = harness.start_client(target_port=raw_target(answer))
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    client.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    if status is None:
        # The head went out, then the body turned out invalid or cut: the client must not take
        # the cut response for a whole one, so the connection is reset rather than closed.
        # (A reset may destroy what was not read yet: the head may or may not be seen.)
        data = b""
        with pytest.raises(ConnectionResetError):
            while chunk := client.recv(65536):
                data += chunk
        assert response.startswith(data)
    else:
        got, headers, _ = read_raw_response(client)
        assert (got, headers["x-hoody-tunnel-error"]) == (status, cause)
    client.close()
    wait_until(lambda: harness.metric("hoody_tunnel_http_error_responses_total", cause=cause) == 1, 10, "the metric")


def test_a_client_that_leaves_while_waiting_gets_its_stream_reset(
    harness: Harness, raw_target: Callable[[Handler], int]
) -> None:
    target_saw_the_end = Event()

    def long_poll(sock: gsocket.socket) -> None:
        _read_head(sock)  # ... and never answer
        try:
            recv_until_eof(sock)
        except OSError:
            pass  # a reset is an end too
        target_saw_the_end.set()

    port = harness.start_client(target_port=raw_target(long_poll))
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    client.sendall(b"GET /poll HTTP/1.1\r\nHost: a\r\n\r\n")
    wait_until(lambda: _streams(harness) == 1, 10, "the request to be forwarded")
    client.close()
    # Checked about once a second while the answer is awaited: the stream is reset, which closes
    # the local connection on the connected machine.
    wait_until(lambda: _streams(harness) == 0, 10, "the stream to be reset")
    assert target_saw_the_end.wait(scaled_s(10))
    wait_until(lambda: harness.metric("hoody_tunnel_http_requests_total", method="GET", status_class="none") == 1, 10, "the record")


def test_a_pipelined_request_is_not_taken_for_a_client_that_left(
    harness: Harness, raw_target: Callable[[Handler], int]
) -> None:
    answer = Event()

    def slow(sock: gsocket.socket) -> None:
        _read_head(sock)
        answer.wait(scaled_s(20))
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        _read_head(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
        recv_until_eof(sock)

    port = harness.start_client(target_port=raw_target(slow))
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(20))
    client.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    wait_until(lambda: _streams(harness) == 1, 10, "the first request to be forwarded")
    # Let the kit look at the client a few times (CLIENT_CHECK_S) while the second request
    # waits unread: the stream must live through all of them.
    session = harness.session()
    holds_for(
        lambda: _streams(harness) == 1,
        2.5,
        "one stream (it was reset while the client was still there)",
        interval_s=0.1,
    )
    answer.set()
    assert _read_until(client, b"next").endswith(b"slow" + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext")
    assert session.runner is not None
    client.close()


def test_empty_lines_before_a_request_are_skipped_however_many(harness: Harness) -> None:
    port = harness.start_client()
    client = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    client.sendall(b"\r\n" * 20_000 + b"GET /headers HTTP/1.1\r\nHost: a\r\n\r\n")
    status, _, body = read_raw_response(client)
    assert status == 200 and b'"path": "/headers"' in body
    client.close()
