"""HTTP mode end to end: a real gunicorn kit, the real ``hoody-tunnel connect`` CLI exposing
``.../http``, and a real local HTTP server (tests/e2e/http_support.py: a WSGI app under
gevent's pywsgi with gevent-websocket) in its own process. HTTP clients: h11 over plain sockets,
and curl through the container port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from tests.e2e.admin_support import metric
from tests.e2e.conftest import MakeKit
from tests.e2e.harness import REPO_ROOT, KitProcess
from tests.e2e.http_support import (
    HttpClient,
    pattern_chunks,
    pattern_sha256,
    read_raw_response,
    ws_handshake,
    ws_recv,
    ws_send,
)
from tests.e2e.loopback import listen_loopback
from tests.e2e.tunnel_support import ClientProcess, launch_with_expose
from tests.waiting import scaled_s, wait_until

MIB = 1024 * 1024


@dataclass
class Target:
    process: subprocess.Popen[bytes]
    port: int


@pytest.fixture
def target() -> Iterator[Target]:
    listener = listen_loopback(backlog=512)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.http_support", str(listener.fileno())],
            cwd=REPO_ROOT,
            pass_fds=(listener.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        port = listener.getsockname()[1]
    finally:
        listener.close()
    assert process.stdout is not None
    line = process.stdout.readline()  # "serving", printed after listen: no polling needed
    assert b"serving" in line, line
    yield Target(process, port)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def expose_http(kit: KitProcess, target_port: int, *extra: str) -> tuple[ClientProcess, int]:
    """The CLI with ``--expose PORT:TARGET/http`` on a free container port (retried on a clash)."""
    return launch_with_expose(kit, lambda port: ["--expose", f"{port}:{target_port}/http", *extra])


@pytest.fixture
def clients() -> Iterator[list[ClientProcess]]:
    started: list[ClientProcess] = []
    yield started
    for client in started:
        if client.process.poll() is None:
            try:
                os.killpg(client.process.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        client.kill()


def http(port: int) -> HttpClient:
    return HttpClient.connect(port, scaled_s(60))


def kit_worker(kit: KitProcess) -> psutil.Process:
    children = psutil.Process(kit.process.pid).children()
    assert len(children) == 1, children
    return children[0]


class RssSampler:
    """The kit worker's peak RSS while a block runs (sampled every 20 ms in a thread)."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- forwarding ------------------------------------------------------------------------------------


def test_forwarding_headers_on_keep_alive_requests_and_summary_line(
    kit: KitProcess, target: Target, clients: list[ClientProcess]
) -> None:
    client, port = expose_http(kit, target.port)
    clients.append(client)
    assert f"container :{port} -> 127.0.0.1:{target.port} (http)" in client.output()
    connection = http(port)
    peers = set()
    for index in range(4):
        reply = connection.request("GET", f"/headers?n={index}", headers=[("X-Forwarded-For", "198.51.100.9")])
        assert reply.status == 200
        body = reply.json()
        seen = body["headers"]
        assert seen["x-forwarded-for"] == "198.51.100.9, 127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == "tunnel.test"
        assert seen["x-forwarded-port"] == str(port)
        assert seen["forwarded"] == "for=127.0.0.1;host=tunnel.test;proto=http"
        assert body["query"] == f"n={index}"
        peers.add(body["peer"])
    connection.close()
    # One stream for the keep-alive connection: the target saw a single TCP connection.
    assert len(peers) == 1
    assert metric(kit, "hoody_tunnel_streams_opened_total", absent=0.0, kind="expose") == 1
    assert metric(kit, "hoody_tunnel_http_requests_total", absent=0.0, method="GET", status_class="2xx") == 4
    log = kit.stderr()
    assert log.count("http request: bind=") >= 4 and "path=/headers status=200" in log
    assert "n=0" not in log.split("http request:")[1].split("\n")[0]  # no query string logged


def test_host_header_rewrite(kit: KitProcess, target: Target, clients: list[ClientProcess]) -> None:
    client, port = expose_http(kit, target.port, "--host-header", "rewrite")
    clients.append(client)
    assert f"(http, Host: 127.0.0.1:{target.port})" in client.output()
    connection = http(port)
    seen = connection.request("GET", "/headers").json()["headers"]
    assert seen["host"] == f"127.0.0.1:{target.port}"
    assert seen["x-forwarded-host"] == "tunnel.test"
    connection.close()


# -- bodies ------------------------------------------------------------------------------------------


def _upload(port: int, size: int, *, chunked: bool, seed: int) -> dict[str, Any]:
    connection = http(port)
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
    connection.send_request("POST", "/upload", [framing])
    for piece in pattern_chunks(seed, size):
        connection.send_body(piece)
    connection.end_request()
    reply = connection.read_response()
    connection.close()
    assert reply.status == 200
    return dict(reply.json())


def _download(port: int, size: int, *, chunked: bool, seed: int) -> tuple[str, int]:
    connection = http(port)
    connection.send_request("GET", f"/download?size={size}&seed={seed}&chunked={int(chunked)}")
    connection.end_request()
    reply, sha256, received = connection.read_response_hashed()
    connection.close()
    assert reply.status == 200
    assert ("transfer-encoding" in reply.headers) == chunked
    return sha256, received


@pytest.mark.timeout(600)
def test_256_mib_both_ways_byte_exact_and_kit_rss_flat(kit: KitProcess, target: Target, clients: list[ClientProcess]) -> None:
    client, port = expose_http(kit, target.port)
    clients.append(client)
    worker = kit_worker(kit)
    _upload(port, 1 * MIB, chunked=False, seed=1)  # warm-up: imports, buffers, first stream
    with RssSampler(worker) as small:
        assert _upload(port, 16 * MIB, chunked=False, seed=2)["size"] == 16 * MIB
        assert _download(port, 16 * MIB, chunked=False, seed=3)[1] == 16 * MIB
    # 256 MiB in CI; TUNNEL_HTTP_BIG_MIB=1024 runs the 1 GiB by hand.
    size = int(os.environ.get("TUNNEL_HTTP_BIG_MIB", "256")) * MIB
    with RssSampler(worker) as big:
        assert _upload(port, size, chunked=False, seed=4) == {"size": size, "sha256": pattern_sha256(4, size)}
        assert _download(port, size, chunked=False, seed=5) == (pattern_sha256(5, size), size)
    grown = big.peak - small.peak
    print(f"kit RSS peak: {small.peak / MIB:.1f} MiB (16 MiB each way), {big.peak / MIB:.1f} MiB ({size // MIB} MiB each way)")
    # 16x the bytes, and the kit's memory does not follow: nothing is buffered whole.
    assert grown < 32 * MIB, f"kit RSS grew by {grown / MIB:.1f} MiB for {size // MIB} MiB each way"


@pytest.mark.timeout(300)
def test_chunked_bodies_both_ways_byte_exact(kit: KitProcess, target: Target, clients: list[ClientProcess]) -> None:
    client, port = expose_http(kit, target.port)
    clients.append(client)
    size = 64 * MIB
    assert _upload(port, size, chunked=True, seed=6) == {"size": size, "sha256": pattern_sha256(6, size)}
    assert _download(port, size, chunked=True, seed=7) == (pattern_sha256(7, size), size)
    # Chunked both ways on one request: the target echoes the chunked body as it reads it.
    connection = http(port)
    connection.send_request("POST", "/echo", [("Transfer-Encoding", "chunked")])
    done: dict[str, Any] = {}

    def read() -> None:
        done["reply"], done["sha256"], done["size"] = connection.read_response_hashed()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    echo_size = 16 * MIB
    for piece in pattern_chunks(8, echo_size, 65_537):
        connection.send_body(piece)
    connection.end_request()
    reader.join(scaled_s(120))
    assert done["reply"].headers["transfer-encoding"] == "chunked"
    assert (done["sha256"], done["size"]) == (pattern_sha256(8, echo_size), echo_size)
    connection.close()


# -- upgrade --------------------------------------------------------------------------------------------


def test_websocket_echo_through_the_binding(kit: KitProcess, target: Target, clients: list[ClientProcess]) -> None:
    client, port = expose_http(kit, target.port)
    clients.append(client)
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled_s(20))
    ws_handshake(sock)
    for payload in (b"hello", os.urandom(100_000), b"x" * 3_000_000):
        ws_send(sock, payload)
        assert ws_recv(sock) == (0x2, payload)
    ws_send(sock, "text ✓".encode(), opcode=0x1)
    assert ws_recv(sock) == (0x1, "text ✓".encode())
    sock.close()


# -- the kit's answers ------------------------------------------------------------------------------------


def test_502_with_the_target_down(kit: KitProcess, clients: list[ClientProcess]) -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    dead_port = dead.getsockname()[1]
    client, port = expose_http(kit, dead_port)
    clients.append(client)
    connection = http(port)
    reply = connection.request("GET", "/")
    assert reply.status == 502
    assert reply.headers["x-hoody-tunnel-error"] == "connect_failed"
    assert f"Nothing is listening on 127.0.0.1:{dead_port} on the connected machine." in reply.body.decode()
    connection.close()
    dead.close()


def test_503_at_max_streams(make_kit: MakeKit, target: Target, clients: list[ClientProcess]) -> None:
    kit = make_kit(HOODY_TUNNEL_MAX_STREAMS="2")
    client, port = expose_http(kit, target.port)
    clients.append(client)
    holders = [http(port) for _ in range(2)]
    for holder in holders:
        assert holder.request("GET", "/headers").status == 200
    connection = http(port)
    reply = connection.request("GET", "/headers", headers=[("Accept", "application/json")])
    assert reply.status == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.headers["x-hoody-tunnel-error"] == "max_streams"
    assert reply.json()["cause"] == "max_streams"
    connection.close()
    for holder in holders:
        holder.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /nope HTTP/1.1 extra\r\nHost: a\r\n\r\n",  # malformed request line
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nsmug",
    ],
    ids=["request-line", "conflicting-content-length"],
)
def test_400_never_forwarded(kit: KitProcess, target: Target, clients: list[ClientProcess], raw: bytes) -> None:
    client, port = expose_http(kit, target.port)
    clients.append(client)
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled_s(20))
    sock.sendall(raw)
    status, headers, body = read_raw_response(sock)
    sock.close()
    assert status == 400, body
    assert headers["x-hoody-tunnel-error"] == "bad_request"
    assert metric(kit, "hoody_tunnel_streams_opened_total", absent=0.0, kind="expose") == 0  # never reached the client
    assert metric(kit, "hoody_tunnel_http_error_responses_total", absent=0.0, cause="bad_request") == 1


# -- parking ---------------------------------------------------------------------------------------------


def _stop_and_wait_parked(kit: KitProcess, client: ClientProcess) -> None:
    os.killpg(client.process.pid, signal.SIGSTOP)  # silent: the kit's heartbeat declares it dead
    wait_until(lambda: "session parked" in kit.stderr(), 20, "the kit to park the session")


def test_request_during_parking_is_held_then_served(make_kit: MakeKit, target: Target, clients: list[ClientProcess]) -> None:
    kit = make_kit(HOODY_TUNNEL_HEARTBEAT_MS="300", HOODY_TUNNEL_HTTP_HOLD_MS="20000")
    client, port = expose_http(kit, target.port)
    clients.append(client)
    _stop_and_wait_parked(kit, client)
    result: dict[str, Any] = {}

    def request() -> None:
        connection = http(port)
        result["reply"] = connection.request("GET", "/headers?during=parking")
        result["at"] = time.monotonic()
        connection.close()

    sender = threading.Thread(target=request, daemon=True)
    sender.start()
    wait_until(lambda: "http request held" in kit.stderr(), 20, "the request to be held")
    resumed_at = time.monotonic()
    os.killpg(client.process.pid, signal.SIGCONT)
    sender.join(scaled_s(30))
    reply = result["reply"]
    assert reply.status == 200 and reply.json()["query"] == "during=parking"
    assert result["at"] >= resumed_at
    wait_until(lambda: "session resumed" in kit.stderr(), 10, "the resume in the kit's log")
    assert metric(kit, "hoody_tunnel_http_requests_held_total", absent=0.0, outcome="served") == 1


def test_hold_runs_out_503_retry_after(make_kit: MakeKit, target: Target, clients: list[ClientProcess]) -> None:
    kit = make_kit(HOODY_TUNNEL_HEARTBEAT_MS="300", HOODY_TUNNEL_HTTP_HOLD_MS="700")
    client, port = expose_http(kit, target.port)
    clients.append(client)
    _stop_and_wait_parked(kit, client)
    connection = http(port)
    started = time.monotonic()
    reply = connection.request("GET", "/headers")
    waited_s = time.monotonic() - started
    connection.close()
    assert reply.status == 503
    assert reply.headers["retry-after"] == "5"
    assert reply.headers["x-hoody-tunnel-error"] == "reconnecting"
    assert "The tunnel is reconnecting" in reply.body.decode()
    assert waited_s >= 0.6


# -- curl -------------------------------------------------------------------------------------------------


def test_curl_headers_and_pages(kit: KitProcess, target: Target, clients: list[ClientProcess]) -> None:
    client, port = expose_http(kit, target.port)
    clients.append(client)
    done = subprocess.run(
        ["curl", "-sS", "-H", "X-Forwarded-For: 203.0.113.1", f"http://127.0.0.1:{port}/headers?x=1"],
        capture_output=True, timeout=scaled_s(30), check=True,
    )
    seen = json.loads(done.stdout)["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.1, 127.0.0.1"
    assert seen["host"] == f"127.0.0.1:{port}" and seen["x-forwarded-host"] == f"127.0.0.1:{port}"
    assert seen["user-agent"].startswith("curl/")
    # The kit's own page, as curl shows it: status, the error header, HTML.
    done = subprocess.run(
        ["curl", "-sS", "-i", "--http1.1", "-X", "GARBAGE METHOD", f"http://127.0.0.1:{port}/"],
        capture_output=True, timeout=scaled_s(30),
    )
    text = done.stdout.decode()
    assert text.startswith("HTTP/1.1 400 Bad Request"), text
    assert "x-hoody-tunnel-error: bad_request" in text and "<!DOCTYPE html>" in text
