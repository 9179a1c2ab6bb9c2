"""HTTP mode in one process: the kit (create_app under pywsgi with our handler), the real
TunnelClient, and the real local target (tests/e2e/http_support.target_app under pywsgi with
gevent-websocket), over loopback sockets. The tests see the kit's objects, so they can check what
never reached the client's side, which streams exist, and the metrics.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import h11
import pytest
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from tests.waiting import scaled_s, wait_until
from tests.e2e.http_support import (
    HttpClient,
    pattern_chunks,
    pattern_sha256,
    read_raw_response,
    serve_target,
    ws_handshake,
    ws_recv,
    ws_send,
)
from tunnel.app import create_app
from tunnel.client import connector
from tunnel.client.connector import ClientOptions, TunnelClient
from tunnel.client.specs import apply_host_header, parse_expose
from tunnel.config import Settings
from tunnel.server import http_connection
from tunnel.server.handler import TunnelWebSocketHandler
from tunnel.server.kit import Kit
from tunnel.server.kit_session import KitSession

TOKEN = "http-inprocess-token"


def _free_port() -> int:
    probe = gsocket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()  # the kit listens there next (same process, nobody else binds it meanwhile)
    return port


@dataclass
class Harness:
    kit: Kit
    url: str
    target_port: int
    clients: list[tuple[TunnelClient, gevent.Greenlet[..., Any]]] = field(default_factory=list)

    def start_client(
        self, *, target_port: int | None = None, host_header: str | None = None, protocol: str | None = None
    ) -> int:
        """A TunnelClient exposing a fresh container port, mode http; returns that port."""
        port = _free_port()
        exposes = [parse_expose(f"{port}:{target_port or self.target_port}/http")]
        if host_header is not None:
            exposes = apply_host_header(exposes, host_header)
        client = TunnelClient(
            ClientOptions(url=self.url, token=TOKEN, protocol=protocol, exposes=exposes),
            out=io.StringIO(),
            err=io.StringIO(),
        )
        greenlet = gevent.spawn(client.run)
        assert client.ready.wait(scaled_s(10)), client.err.getvalue()  # type: ignore[attr-defined]
        self.clients.append((client, greenlet))
        return port

    def session(self) -> KitSession:
        sessions = list(self.kit.registry)
        assert len(sessions) == 1, sessions
        return sessions[0]

    def http(self, port: int) -> HttpClient:
        return HttpClient.connect(port, scaled_s(30), create=gsocket.create_connection)

    def metric(self, name: str, **labels: str) -> float:
        value = self.kit.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


MakeHarness = Callable[..., Harness]


@pytest.fixture
def make_harness(tmp_path: Path) -> Iterator[MakeHarness]:
    servers: list[WSGIServer] = []
    harnesses: list[Harness] = []

    def make(**overrides: object) -> Harness:
        settings = Settings.from_env(
            {
                "HOODY_TUNNEL_TOKENS": TOKEN,
                "HOODY_TUNNEL_ADMIN_TOKEN": "admin",
                "HOODY_TUNNEL_STATE_DIR": str(tmp_path / "state"),
                "HOODY_TUNNEL_EXPOSE_HOST": "127.0.0.1",
                "HOODY_TUNNEL_FD_BUDGET": "64",
            }
        )
        if overrides:
            settings = settings.replace(**overrides)
        app = create_app(settings)
        server = WSGIServer(("127.0.0.1", 0), app, handler_class=TunnelWebSocketHandler, spawn=Pool(200), log=None)
        server.start()
        listener = gsocket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        target = serve_target(listener)
        servers.extend([server, target])
        harness = Harness(app.extensions["tunnel"], f"ws://127.0.0.1:{server.server_port}", listener.getsockname()[1])
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        for client, greenlet in harness.clients:
            client.stop()
            greenlet.join(timeout=scaled_s(10))
    for server in servers:
        server.stop(timeout=scaled_s(5))


@pytest.fixture
def harness(make_harness: MakeHarness) -> Harness:
    return make_harness()



def _streams(harness: Harness) -> int:
    runner = harness.session().runner
    assert runner is not None
    return runner.stream_count


# -- forwarding ----------------------------------------------------------------------------------


def test_forwarding_headers_on_keep_alive_requests_of_one_connection(harness: Harness) -> None:
    port = harness.start_client()
    client = harness.http(port)
    for index in range(3):
        reply = client.request(
            "GET",
            f"/headers?i={index}&secret=1",
            headers=[("X-Forwarded-For", "203.0.113.7"), ("Forwarded", "for=203.0.113.7;proto=https")],
        )
        assert reply.status == 200
        seen = reply.json()["headers"]
        assert seen["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
        assert seen["forwarded"] == "for=203.0.113.7;proto=https, for=127.0.0.1;host=tunnel.test;proto=http"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "tunnel.test"
        assert seen["x-forwarded-port"] == str(port)
        assert seen["host"] == "tunnel.test"
        assert reply.json()["query"] == f"i={index}&secret=1"
    binding = next(iter(harness.session().bindings.values()))
    assert binding.streams_opened == 1, "keep-alive requests share one stream"
    client.close()


def test_existing_forwarded_proto_host_port_are_kept(harness: Harness) -> None:
    port = harness.start_client()
    client = harness.http(port)
    reply = client.request(
        "GET",
        "/headers",
        headers=[("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "app.example"), ("X-Forwarded-Port", "443")],
    )
    seen = reply.json()["headers"]
    assert (seen["x-forwarded-proto"], seen["x-forwarded-host"], seen["x-forwarded-port"]) == (
        "https",
        "app.example",
        "443",
    )
    client.close()


@pytest.mark.parametrize(("value", "expected"), [("rewrite", None), ("api.internal:9000", "api.internal:9000")])
def test_host_header_rewrite_and_literal(harness: Harness, value: str, expected: str | None) -> None:
    port = harness.start_client(host_header=value)
    client = harness.http(port)
    seen = client.request("GET", "/headers").json()["headers"]
    assert seen["host"] == (expected or f"127.0.0.1:{harness.target_port}")
    assert seen["x-forwarded-host"] == "tunnel.test"
    client.close()


def test_h2c_upgrade_is_refused_by_serving_http11(harness: Harness) -> None:
    port = harness.start_client()
    client = harness.http(port)
    reply = client.request(
        "GET",
        "/headers",
        headers=[("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")],
    )
    assert reply.status == 200
    seen = reply.json()["headers"]
    assert "upgrade" not in seen and "http2-settings" not in seen
    assert "upgrade" not in seen.get("connection", "").lower()
    assert client.request("GET", "/headers").status == 200  # still HTTP/1.1 on the same connection
    client.close()


# -- bodies ----------------------------------------------------------------------------------------


def test_chunked_bodies_both_ways_byte_exact(harness: Harness) -> None:
    port = harness.start_client()
    client = harness.http(port)
    size = 8 * 1024 * 1024
    client.send_request("POST", "/echo", [("Transfer-Encoding", "chunked")])
    received: dict[str, Any] = {}

    def read() -> None:
        reply, received["sha256"], received["size"] = client.read_response_hashed()
        assert reply.status == 200
        assert reply.headers.get("transfer-encoding") == "chunked"

    reader = gevent.spawn(read)
    for piece in pattern_chunks(7, size, 100_003):
        client.send_body(piece)
    client.end_request()
    reader.get(timeout=scaled_s(60))
    assert received["size"] == size
    assert received["sha256"] == pattern_sha256(7, size)
    assert client.request("GET", "/headers").status == 200  # the connection is still good
    client.close()


@pytest.mark.parametrize("chunked", [False, True])
def test_large_upload_and_download_byte_exact(harness: Harness, chunked: bool) -> None:
    port = harness.start_client()
    client = harness.http(port)
    size = 48 * 1024 * 1024
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
    client.send_request("POST", "/upload", [framing])
    for piece in pattern_chunks(3, size):
        client.send_body(piece)
    client.end_request()
    reply = client.read_response()
    assert reply.json() == {"size": size, "sha256": pattern_sha256(3, size)}

    client.send_request("GET", f"/download?size={size}&seed=5&chunked={int(chunked)}")
    client.end_request()
    reply, sha256, received = client.read_response_hashed()
    assert reply.status == 200 and received == size
    assert sha256 == pattern_sha256(5, size)
    assert harness.metric("hoody_tunnel_http_bytes_total", direction="request") > size
    assert harness.metric("hoody_tunnel_http_bytes_total", direction="response") > size
    client.close()


def test_head_and_expect_100_continue(harness: Harness) -> None:
    port = harness.start_client()
    client = harness.http(port)
    reply = client.request("HEAD", "/download?size=1000")
    assert reply.status == 200 and reply.headers["content-length"] == "1000" and reply.body == b""
    reply = client.request("POST", "/upload", headers=[("Expect", "100-continue")], body=b"x" * 5000)
    assert reply.json()["size"] == 5000
    client.close()


def test_pipelined_requests_are_answered_in_order(harness: Harness) -> None:
    port = harness.start_client()
    sock = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    sock.sendall(b"".join(f"GET /headers?n={n} HTTP/1.1\r\nHost: p\r\n\r\n".encode() for n in range(3)))
    client = HttpClient(sock)
    queries = []
    for _ in range(3):
        # The requests went out by hand above: tell h11 so it reads one response each.
        client.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "p")]))
        client.conn.send(h11.EndOfMessage())
        queries.append(client.read_response().json()["query"])
    assert queries == ["n=0", "n=1", "n=2"]
    sock.close()


def test_target_closing_after_a_response_gets_a_new_stream_for_the_next(harness: Harness) -> None:
    port = harness.start_client()
    client = harness.http(port)
    first = client.request("GET", "/close")
    assert first.status == 200 and first.headers["connection"] == "close"
    assert client.closed_by_server  # the target's Connection: close reaches the HTTP client
    client.close()
    client = harness.http(port)
    assert client.request("GET", "/headers").status == 200
    client.close()


# -- upgrade ------------------------------------------------------------------------------------


def test_websocket_echo_through_the_binding(harness: Harness) -> None:
    port = harness.start_client()
    sock = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    ws_handshake(sock)
    for size in (5, 200, 70_000, 1_000_000):
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        ws_send(sock, payload)
        opcode, echoed = ws_recv(sock)
        assert opcode == 0x2 and echoed == payload
    sock.close()
    assert harness.metric("hoody_tunnel_http_requests_total", method="GET", status_class="1xx") == 1


# -- the kit's own answers ------------------------------------------------------------------------


def test_502_when_nothing_listens_on_the_target(harness: Harness) -> None:
    dead = gsocket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, not listening: connects are refused
    dead_port = dead.getsockname()[1]
    port = harness.start_client(target_port=dead_port)
    client = harness.http(port)
    reply = client.request("GET", "/")
    assert reply.status == 502
    assert reply.headers["x-hoody-tunnel-error"] == "connect_failed"
    assert reply.headers["content-type"].startswith("text/html")
    assert f"Nothing is listening on 127.0.0.1:{dead_port} on the connected machine" in reply.body.decode()
    client.close()
    client = harness.http(port)
    reply = client.request("GET", "/", headers=[("Accept", "application/json")])
    assert reply.status == 502 and reply.json()["cause"] == "connect_failed"
    assert f"127.0.0.1:{dead_port}" in reply.json()["error"]
    client.close()
    dead.close()
    assert harness.metric("hoody_tunnel_http_error_responses_total", cause="connect_failed") == 2


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
        (b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ],
)
def test_malformed_requests_get_400_and_never_reach_the_client_side(harness: Harness, raw: bytes, status: int) -> None:
    port = harness.start_client()
    sock = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    sock.sendall(raw)
    got, headers, body = read_raw_response(sock)
    assert got == status, body
    assert headers["x-hoody-tunnel-error"] == "bad_request"
    assert headers["connection"] == "close"
    sock.close()
    binding = next(iter(harness.session().bindings.values()))
    assert binding.streams_opened == 0, "a malformed request must not open a stream"


def test_503_at_max_streams_instead_of_waiting(make_harness: MakeHarness) -> None:
    harness = make_harness(max_streams=2)
    port = harness.start_client()
    holders = [harness.http(port) for _ in range(2)]
    for holder in holders:  # each keep-alive connection keeps its stream
        assert holder.request("GET", "/headers").status == 200
    client = harness.http(port)
    reply = client.request("GET", "/headers")
    assert reply.status == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["x-hoody-tunnel-error"] == "max_streams"
    client.close()
    holders[0].close()
    wait_until(lambda: _streams(harness) < 2, 10, "a stream slot to come back")
    client = harness.http(port)
    assert client.request("GET", "/headers").status == 200
    client.close()
    holders[1].close()


def test_503_when_out_of_fd_permits(make_harness: MakeHarness) -> None:
    # Budget: the WebSocket, the listener, and one connection.
    harness = make_harness(fd_budget=3)
    port = harness.start_client()
    holder = harness.http(port)
    assert holder.request("GET", "/headers").status == 200
    client = harness.http(port)
    reply = client.request("GET", "/headers")
    assert reply.status == 503 and reply.headers["x-hoody-tunnel-error"] == "fd_exhausted"
    assert reply.headers["retry-after"] == "1"
    client.close()
    holder.close()
    accounting = harness.kit.fd_accounting()
    wait_until(lambda: harness.kit.fd_accounting().available == 1, 10, "the permit to come back")
    assert accounting.available + accounting.granted == accounting.budget


def test_idle_keep_alive_connection_gives_its_stream_back(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_connection, "STREAM_IDLE_S", 0.2)
    port = harness.start_client()
    client = harness.http(port)
    assert client.request("GET", "/headers").status == 200
    assert _streams(harness) == 1
    wait_until(lambda: _streams(harness) == 0, 10, "the idle stream to be released")
    assert client.request("GET", "/headers").status == 200  # a new stream for the same connection
    client.close()


# -- parking ----------------------------------------------------------------------------------------


def _cut_client_connection(harness: Harness) -> KitSession:
    """Abort the client's WebSocket without GOAWAY: the kit parks the v2 session."""
    client, _ = harness.clients[-1]
    assert client.runner is not None
    session = harness.session()
    client.runner.transport.abort()
    wait_until(lambda: not session.attached.is_set(), 10, "the session to be parked")
    return session


def test_request_during_parking_is_held_and_served_after_the_resume(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connector, "backoff_delay_s", lambda attempt, rng: 0.5)
    port = harness.start_client()
    warm = harness.http(port)
    assert warm.request("GET", "/headers").status == 200  # a keep-alive request in flight later too
    session = _cut_client_connection(harness)
    client = harness.http(port)
    reply = client.request("GET", "/headers?held=1")
    assert reply.status == 200 and reply.json()["query"] == "held=1"
    assert session.attached.is_set()
    assert harness.metric("hoody_tunnel_http_requests_held_total", outcome="served") >= 1
    assert warm.request("GET", "/headers").status == 200
    client.close()
    warm.close()


def test_hold_runs_out_503_reconnecting(make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connector, "backoff_delay_s", lambda attempt, rng: 3600.0)  # never comes back
    harness = make_harness(http_hold_s=0.3, orphan_ttl_s=60.0)
    port = harness.start_client()
    _cut_client_connection(harness)
    client = harness.http(port)
    started = gevent.get_hub().loop.now()
    reply = client.request("GET", "/headers", headers=[("Accept", "application/json")])
    waited_s = gevent.get_hub().loop.now() - started
    assert reply.status == 503
    assert reply.headers["retry-after"] == "5"
    assert reply.headers["x-hoody-tunnel-error"] == "reconnecting"
    assert "reconnecting" in reply.json()["error"]
    assert waited_s >= 0.25
    assert harness.metric("hoody_tunnel_http_requests_held_total", outcome="timed_out") == 1
    client.close()


# -- metrics and the access log ----------------------------------------------------------------------


def test_metrics_and_one_access_log_line_per_request(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    port = harness.start_client()
    client = harness.http(port)
    with caplog.at_level(logging.INFO, logger="tunnel.http.access"):
        assert client.request("GET", "/headers?token=SECRET", headers=[("Authorization", "Bearer SECRET")]).status == 200
        assert client.request("POST", "/upload", body=b"abc").status == 200

    def access_lines() -> list[str]:
        # Lines are logged batched, one record per turn of the event loop (LineBatch).
        return [line for r in caplog.records if r.name == "tunnel.http.access" for line in r.getMessage().split("\n")]

    with caplog.at_level(logging.INFO, logger="tunnel.http.access"):
        wait_until(lambda: len(access_lines()) == 2, 10, "two access-log lines")
    lines = access_lines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("http request: bind=") and "method=GET path=/headers status=200" in lines[0]
    assert "duration_ms=" in lines[0] and "bytes_out=" in lines[0]
    assert all("SECRET" not in line for line in lines)
    assert "method=POST path=/upload status=200" in lines[1]
    assert harness.metric("hoody_tunnel_http_requests_total", method="GET", status_class="2xx") == 1
    assert harness.metric("hoody_tunnel_http_requests_total", method="POST", status_class="2xx") == 1
    assert harness.metric("hoody_tunnel_http_request_duration_seconds_count") == 2
    client.close()


def test_connections_and_permits_are_released(harness: Harness) -> None:
    port = harness.start_client()
    for _ in range(5):
        client = harness.http(port)
        assert client.request("GET", "/headers").status == 200
        client.close()
    wait_until(lambda: _streams(harness) == 0, 10, "streams to finish")
    session = harness.session()
    wait_until(lambda: session.permits_held == 2, 10, "permits back to WebSocket + listener")


def test_http10_request_goes_on_as_http10_so_the_response_is_not_chunked(harness: Harness) -> None:
    port = harness.start_client()
    sock = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(10))
    sock.sendall(b"GET /download?size=100000&seed=1&chunked=1 HTTP/1.0\r\n\r\n")
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()  # an HTTP/1.0 client cannot take chunks
    assert len(body) == 100_000 and hashlib.sha256(body).hexdigest() == pattern_sha256(1, 100_000)


def test_session_ending_under_a_request_answers_503(harness: Harness) -> None:
    port = harness.start_client(protocol="v1")  # v1: no parking, the session ends with its WebSocket
    client = harness.http(port)
    client.send_request("GET", "/slow?s=30")
    client.end_request()
    wait_until(lambda: _streams(harness) == 1, 10, "the request to be forwarded")
    tunnel_client, _ = harness.clients[-1]
    assert tunnel_client.runner is not None
    tunnel_client.runner.transport.abort()
    reply = client.read_response()
    assert reply.status == 503
    assert reply.headers["x-hoody-tunnel-error"] == "tunnel_closed"
    client.close()
