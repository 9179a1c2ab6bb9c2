"""HTTP mode, the pure part (tunnel/server/http_messages.py): forwarding headers, request checks,
error pages, Accept negotiation, request serialization, access-log paths."""

from __future__ import annotations

import json

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel.metrics import HTTP_ERROR_CAUSES
from tunnel.server import http_messages as m


def _fwd(headers: list[tuple[bytes, bytes]], **kwargs: object) -> dict[bytes, list[bytes]]:
    options: dict[str, object] = {"peer_ip": "10.0.0.5", "port": 8080, "host_header": None, "default_host": "kit:8080"}
    options.update(kwargs)
    out: dict[bytes, list[bytes]] = {}
    for name, value in m.forwarding_headers(headers, **options):  # type: ignore[arg-type]
        out.setdefault(name.lower(), []).append(value)
    return out


def test_forwarding_headers_added_from_the_kits_view() -> None:
    out = _fwd([(b"Host", b"app.test"), (b"Accept", b"*/*")])
    assert out[b"x-forwarded-for"] == [b"10.0.0.5"]
    assert out[b"x-forwarded-proto"] == [b"http"]
    assert out[b"x-forwarded-host"] == [b"app.test"]
    assert out[b"x-forwarded-port"] == [b"8080"]
    assert out[b"forwarded"] == [b"for=10.0.0.5;host=app.test;proto=http"]
    assert out[b"host"] == [b"app.test"] and out[b"accept"] == [b"*/*"]


def test_existing_x_forwarded_for_and_forwarded_get_the_peer_appended() -> None:
    out = _fwd(
        [
            (b"Host", b"a"),
            (b"X-Forwarded-For", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3"),
            (b"Forwarded", b"for=1.1.1.1;proto=https"),
        ]
    )
    assert out[b"x-forwarded-for"] == [b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.5"]
    assert out[b"forwarded"] == [b"for=1.1.1.1;proto=https, for=10.0.0.5;host=a;proto=http"]


def test_router_set_proto_host_port_are_kept() -> None:
    out = _fwd([(b"Host", b"a"), (b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Host", b"ext"), (b"X-Forwarded-Port", b"443")])
    assert (out[b"x-forwarded-proto"], out[b"x-forwarded-host"], out[b"x-forwarded-port"]) == ([b"https"], [b"ext"], [b"443"])


def test_ipv6_peer_and_host_with_port_are_quoted_in_forwarded() -> None:
    out = _fwd([(b"Host", b"app.test:8443")], peer_ip="2001:db8::1")
    assert out[b"forwarded"] == [b'for="[2001:db8::1]";host="app.test:8443";proto=http']
    assert out[b"x-forwarded-for"] == [b"2001:db8::1"]


def test_host_header_replaces_host_and_the_original_goes_to_x_forwarded_host() -> None:
    out = _fwd([(b"Host", b"public.example")], host_header="127.0.0.1:3000")
    assert out[b"host"] == [b"127.0.0.1:3000"]
    assert out[b"x-forwarded-host"] == [b"public.example"]


def test_http10_request_without_host_gets_one() -> None:
    out = _fwd([])
    assert out[b"host"] == [b"kit:8080"] and out[b"x-forwarded-host"] == [b"kit:8080"]


def test_h2c_upgrade_is_stripped_websocket_is_not() -> None:
    out = _fwd([(b"Host", b"a"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAA")])
    assert b"upgrade" not in out and b"http2-settings" not in out and b"connection" not in out
    out = _fwd([(b"Host", b"a"), (b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", b"h2c, websocket")])
    assert out[b"upgrade"] == [b"websocket"] and out[b"connection"] == [b"keep-alive, Upgrade"]
    out = _fwd([(b"Host", b"a"), (b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    assert out[b"upgrade"] == [b"websocket"] and out[b"connection"] == [b"Upgrade"]


def test_forwarded_headers_are_valid_for_h11() -> None:
    headers = m.forwarding_headers(
        [(b"Host", b"a:1"), (b"Forwarded", b'for="[::1]"')], peer_ip="::1", port=1, host_header=None, default_host="x"
    )
    h11.Request(method="GET", target="/", headers=headers)  # validates every name and value


@pytest.mark.parametrize(
    ("version", "headers", "status"),
    [
        (b"1.1", [(b"Host", b"a"), (b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")], 400),
        (b"1.1", [(b"Host", b"a"), (b"Host", b"b")], 400),
        (b"2.0", [(b"Host", b"a")], 505),
    ],
)
def test_check_request_refuses(version: bytes, headers: list[tuple[bytes, bytes]], status: int) -> None:
    error = m.check_request(version, headers)
    assert error is not None and error.status == status and error.cause == "bad_request"


def test_check_request_accepts_plain_requests() -> None:
    assert m.check_request(b"1.1", [(b"Host", b"a"), (b"Content-Length", b"3")]) is None
    assert m.check_request(b"1.0", []) is None


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        (b"*/*", False),
        (b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        (b"application/json", True),
        (b"application/json, text/plain, */*", True),
        (b"application/problem+json", True),
        (b"text/html;q=0.5, application/json;q=0.9", True),
        (b"application/json;q=0, */*", False),
        (b"application/*", True),
        (b"text/html, application/json", False),
    ],
)
def test_wants_json(accept: bytes | None, expected: bool) -> None:
    assert m.wants_json(accept) is expected


def test_render_error_html_with_header_and_retry_after() -> None:
    error = m.ErrorPage(503, "max_streams", "The tunnel is busy <now>.", 1)
    raw = m.render_error(error, accept=b"text/html")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    assert b"x-hoody-tunnel-error: max_streams" in lines
    assert b"Retry-After: 1" in lines and b"Connection: close" in lines
    assert f"Content-Length: {len(body)}".encode() in lines
    assert b"&lt;now&gt;" in body and b"<now>" not in body


def test_render_error_json_and_head() -> None:
    error = m.ErrorPage(502, "connect_failed", "Nothing is listening on 127.0.0.1:3000 on the connected machine.")
    raw = m.render_error(error, accept=b"application/json")
    body = raw.partition(b"\r\n\r\n")[2]
    assert json.loads(body) == {"error": error.message, "cause": "connect_failed", "status": 502}
    head_only = m.render_error(error, accept=b"application/json", head_only=True)
    assert head_only.endswith(b"\r\n\r\n") and f"Content-Length: {len(body)}".encode() in head_only


def test_every_cause_renders_and_parses_with_h11() -> None:
    for cause in HTTP_ERROR_CAUSES:
        raw = m.render_error(m.ErrorPage(503, cause, "x"), accept=None)
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(raw)
        event = conn.next_event()
        assert isinstance(event, h11.Response) and event.status_code == 503
        assert (b"x-hoody-tunnel-error", cause.encode()) in list(event.headers)


@pytest.mark.parametrize(
    ("code", "reason", "cause", "text"),
    [
        ("connect_failed", "127.0.0.1:3000: connection refused", "connect_failed", "Nothing is listening on 127.0.0.1:3000 on the connected machine."),
        ("connect_failed", "[::1]:3000: timed out", "connect_failed", "could not reach [::1]:3000: timed out"),
        ("connect_failed", "local connection write failed: Broken pipe", "upstream_reset", "Broken pipe"),
        ("not_found", "unknown binding 4", "connect_failed", "no target"),
        ("protocol_error", "", "upstream_reset", "failed before a whole response"),
    ],
)
def test_connect_error(code: str, reason: str, cause: str, text: str) -> None:
    error = m.connect_error(code, reason)
    assert error.status == 502 and error.cause == cause and text in error.message


def test_request_head_round_trips_through_llhttp_and_h11() -> None:
    from tunnel.server.http_heads import parse_request_head

    headers = [(b"Host", b"a"), (b"Transfer-Encoding", b"chunked"), (b"X-Forwarded-For", b"1.2.3.4")]
    for version in (b"1.1", b"1.0"):
        head = m.request_head(b"POST", b"/up?x=1", version, headers)
        assert head.startswith(b"POST /up?x=1 HTTP/" + version + b"\r\n") and head.endswith(b"\r\n\r\n")
        parsed = parse_request_head(head)
        assert (parsed.method, parsed.target, parsed.version, parsed.headers) == (b"POST", b"/up?x=1", version, headers)
        server = h11.Connection(h11.SERVER)
        server.receive_data(head)
        request = server.next_event()
        assert isinstance(request, h11.Request) and request.headers.raw_items() == headers


def test_method_label_and_access_path() -> None:
    assert m.method_label(b"GET") == "GET" and m.method_label(b"BREW") == "OTHER"
    assert m.access_path(b"/a/b?token=secret#f") == "/a/b"
    assert m.access_path(b"/a\x01b") == "/a%01b"
    assert m.access_path(b"/a\nb c") == "/a%0Ab%20c"  # never a line break in the access log
    assert len(m.access_path(b"/" + b"x" * 500)) == m.MAX_LOGGED_PATH


@given(st.binary(max_size=200))
def test_forwarded_headers_never_break_h11_for_parsed_input(raw: bytes) -> None:
    # Whatever h11 accepts as a request, the forwarded head is a request h11 accepts too.
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: " + raw + b"\r\n\r\n")
    try:
        request = server.next_event()
    except h11.RemoteProtocolError:
        return
    if not isinstance(request, h11.Request):
        return
    headers = m.forwarding_headers(request.headers.raw_items(), peer_ip="1.2.3.4", port=80, host_header=None, default_host="k")
    again = h11.Connection(h11.SERVER)
    again.receive_data(m.request_head(request.method, request.target, b"1.1", headers))
    assert isinstance(again.next_event(), h11.Request)

