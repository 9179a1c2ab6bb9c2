"""Request and response heads through llhttp, and the body framing decided from them."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.server.http_framing import BodyKind
from tunnel.server.http_heads import HeadError, parse_request_head, parse_response_head


def test_a_plain_request_keeps_names_values_order_and_casing() -> None:
    head = parse_request_head(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Thing: A b\r\naccept: */*\r\n\r\n")
    assert (head.method, head.target, head.version) == (b"GET", b"/a?b=1", b"1.1")
    assert head.headers == [(b"Host", b"x"), (b"X-Thing", b"A b"), (b"accept", b"*/*")]
    assert head.keep_alive
    assert (head.body, head.length) == (BodyKind.NONE, 0)


@pytest.mark.parametrize(
    ("raw", "body", "length", "keep_alive"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n", BodyKind.LENGTH, 12, True),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", BodyKind.NONE, 0, True),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n", BodyKind.CHUNKED, 0, True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n", BodyKind.NONE, 0, False),
        (b"GET / HTTP/1.0\r\n\r\n", BodyKind.NONE, 0, False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", BodyKind.NONE, 0, True),
    ],
)
def test_request_framing_and_keep_alive(raw: bytes, body: BodyKind, length: int, keep_alive: bool) -> None:
    head = parse_request_head(raw)
    assert (head.body, head.length, head.keep_alive) == (body, length, keep_alive)


def test_upgrade_and_connect_requests() -> None:
    upgrade = parse_request_head(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert (b"Upgrade", b"websocket") in upgrade.headers and upgrade.body is BodyKind.NONE
    connect = parse_request_head(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
    assert connect.method == b"CONNECT" and connect.target == b"db:5432" and connect.body is BodyKind.NONE


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\x01b\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n", 501),
        (b"BREW METHOD / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / RTSP/1.0\r\nHost: x\r\n\r\n", 505),
    ],
)
def test_refused_requests(raw: bytes, status: int) -> None:
    with pytest.raises(HeadError) as caught:
        parse_request_head(raw)
    assert caught.value.status == status
    assert "\r" not in caught.value.detail and len(caught.value.detail) <= 120


@pytest.mark.parametrize(
    ("raw", "method", "status", "body", "length", "keep_alive", "switched"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"GET", 200, BodyKind.LENGTH, 5, True, False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", 200, BodyKind.NONE, 0, True, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET", 200, BodyKind.CHUNKED, 0, True, False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", b"GET", 200, BodyKind.CLOSE, 0, False, False),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"GET", 200, BodyKind.CLOSE, 0, False, False),
        (b"HTTP/1.1 200\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", b"GET", 200, BodyKind.LENGTH, 0, False, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", b"GET", 200, BodyKind.LENGTH, 2, False, False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"DELETE", 204, BodyKind.NONE, 0, True, False),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"GET", 304, BodyKind.NONE, 0, True, False),
        (b"HTTP/1.1 100 Continue\r\n\r\n", b"POST", 100, BodyKind.NONE, 0, True, False),
        (b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", b"GET", 101, BodyKind.NONE, 0, True, True),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"GET", 101, BodyKind.NONE, 0, True, True),
        (b"HTTP/1.1 200 Connection established\r\n\r\n", b"CONNECT", 200, BodyKind.NONE, 0, True, True),
        (b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n", b"CONNECT", 407, BodyKind.LENGTH, 0, True, False),
    ],
)
def test_response_framing(
    raw: bytes, method: bytes, status: int, body: BodyKind, length: int, keep_alive: bool, switched: bool
) -> None:
    head = parse_response_head(raw, method)
    assert (head.status, head.body, head.length, head.keep_alive, head.switched) == (
        status, body, length, keep_alive, switched,
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTQ/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 99 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 1\n\n",
    ],
)
def test_refused_responses(raw: bytes) -> None:
    with pytest.raises(HeadError):
        parse_response_head(raw, b"GET")


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)
_VALUE = st.text(alphabet="".join(chr(c) for c in range(0x21, 0x7F)) + " ", max_size=30).map(str.strip)


@given(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/?=&%-._~", max_size=40).map(lambda t: "/" + t),
    st.lists(st.tuples(_TOKEN, _VALUE), max_size=8),
)
def test_what_h11_accepts_llhttp_reads_the_same(method: str, target: str, fields: list[tuple[str, str]]) -> None:
    fields = [(n, v) for n, v in fields if n.lower() not in ("content-length", "transfer-encoding", "connection", "upgrade", "host")]
    raw = f"{method} {target} HTTP/1.1\r\nHost: a\r\n".encode() + b"".join(
        f"{n}: {v}\r\n".encode() for n, v in fields
    ) + b"\r\n"
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    expected = server.next_event()
    assert isinstance(expected, h11.Request)
    head = parse_request_head(raw)
    assert head.method == expected.method and head.target == expected.target
    assert head.headers == expected.headers.raw_items()


@given(st.binary(max_size=300))
def test_garbage_heads_raise_only_head_error(raw: bytes) -> None:
    for data in (raw + b"\r\n\r\n", b"GET / HTTP/1.1\r\n" + raw + b"\r\n\r\n"):
        try:
            parse_request_head(data)
        except HeadError as exc:
            assert exc.status in (400, 501, 505)
        try:
            parse_response_head(b"HTTP/1.1 200 OK\r\n" + data, b"GET")
        except HeadError:
            pass
