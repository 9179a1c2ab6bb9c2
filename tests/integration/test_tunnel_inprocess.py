"""The kit (create_app under gevent's pywsgi with our handler) and the real TunnelClient in one
process, over real loopback sockets: byte-exact transfers, stream cleanup, the FD invariant.

Faster and more precise than the e2e tests (they see the kit's objects directly), slower than the
unit tests. Nothing is monkeypatched: the kit and the client use gevent sockets explicitly, and so
do these tests.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent
import pytest
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from tests.waiting import scaled_s, wait_until
from tunnel.app import create_app
from tunnel.client.connector import ClientOptions, TunnelClient
from tunnel.client.specs import parse_expose, parse_pull
from tunnel.config import Settings
from tunnel.server.handler import TunnelWebSocketHandler
from tunnel.server.kit import Kit

TOKEN = "inprocess-token"


@dataclass
class Harness:
    kit: Kit
    url: str
    echo_port: int


def _echo_server() -> tuple[gsocket.socket, int]:
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)

    def serve(conn: gsocket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            gevent.spawn(serve, conn)

    gevent.spawn(accept_loop)
    return listener, listener.getsockname()[1]


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    base = Settings.from_env(
        {
            "HOODY_TUNNEL_TOKENS": TOKEN,
            "HOODY_TUNNEL_ADMIN_TOKEN": "admin",
            "HOODY_TUNNEL_STATE_DIR": str(tmp_path / "state"),
            "HOODY_TUNNEL_EXPOSE_HOST": "127.0.0.1",
            "HOODY_TUNNEL_FD_BUDGET": "64",
        }
    )
    return base.replace(**overrides) if overrides else base


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    app = create_app(_settings(tmp_path))
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=TunnelWebSocketHandler, spawn=Pool(100), log=None)
    server.start()
    echo, echo_port = _echo_server()
    kit: Kit = app.extensions["tunnel"]
    try:
        yield Harness(kit, f"ws://127.0.0.1:{server.server_port}", echo_port)
    finally:
        server.stop(timeout=scaled_s(5))
        echo.close()


def _start_client(h: Harness, *, pulls: list[str] = (), exposes: list[str] = (), protocol: str | None = None) -> tuple[TunnelClient, gevent.Greenlet]:
    client = TunnelClient(
        ClientOptions(
            url=h.url,
            token=TOKEN,
            protocol=protocol,
            pulls=[parse_pull(p) for p in pulls],
            exposes=[parse_expose(e) for e in exposes],
        ),
        out=io.StringIO(),
        err=io.StringIO(),
    )
    greenlet = gevent.spawn(client.run)
    ready = client.ready.wait(scaled_s(10))
    assert ready, f"client not ready: {client.err.getvalue()} {greenlet.value if greenlet.dead else ''}"  # type: ignore[attr-defined]
    return client, greenlet


def _stop_client(client: TunnelClient, greenlet: gevent.Greenlet) -> int:
    client.stop()
    code = greenlet.get(timeout=scaled_s(10))
    assert isinstance(code, int)
    return code



def _fd_invariant(kit: Kit) -> None:
    accounting = kit.fd_accounting()
    assert accounting.available + accounting.granted == accounting.budget, accounting


def _transfer(port: int, payload: bytes) -> bytes:
    """Send payload to an echo target through the tunnel while reading the echo back."""
    sock = gsocket.create_connection(("127.0.0.1", port), timeout=scaled_s(30))
    received = bytearray()

    def reader() -> None:
        while data := sock.recv(262144):
            received.extend(data)

    reading = gevent.spawn(reader)
    sock.sendall(payload)
    sock.shutdown(gsocket.SHUT_WR)
    reading.get(timeout=scaled_s(60))
    sock.close()
    return bytes(received)


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_pull_and_expose_echo_byte_exact_and_resources_released(harness: Harness, protocol: str) -> None:
    expose_listener = gsocket.socket()
    expose_listener.bind(("127.0.0.1", 0))
    container_port = expose_listener.getsockname()[1]
    expose_listener.close()  # the kit listens there next (same process, no other user)
    client, greenlet = _start_client(
        harness, pulls=[f"0:{harness.echo_port}"], exposes=[f"{container_port}:{harness.echo_port}"], protocol=protocol
    )
    kit = harness.kit
    [kit_session] = list(kit.registry)
    assert kit_session.protocol == f"hoody-tunnel.{protocol}"
    assert kit_session.permits_held == 2  # the WebSocket and the EXPOSE listener
    _fd_invariant(kit)
    pull_port = client._pulls[0].spec.local_port
    payload = os.urandom(3 * 1024 * 1024 + 17)
    jobs = [gevent.spawn(_transfer, pull_port, payload), gevent.spawn(_transfer, container_port, payload)]
    for job in jobs:
        assert hashlib.sha256(job.get(timeout=scaled_s(60))).digest() == hashlib.sha256(payload).digest()
    # Both streams finished: their sockets are closed and their permits are back.
    wait_until(lambda: kit_session.permits_held == 2 and not kit_session.runner.stream_count, 10, "streams to close")
    assert kit_session.runner.statistics().active_streams == 0
    _fd_invariant(kit)
    assert _stop_client(client, greenlet) == 0
    wait_until(lambda: len(kit.registry) == 0, 10, "the session to end")
    assert kit.registry.budget.available == kit.registry.budget.size


def test_many_concurrent_streams_each_byte_exact(harness: Harness) -> None:
    client, greenlet = _start_client(harness, pulls=[f"0:{harness.echo_port}"])
    pull_port = client._pulls[0].spec.local_port
    payloads = [os.urandom(32 * 1024 + i) for i in range(60)]
    jobs = [gevent.spawn(_transfer, pull_port, payload) for payload in payloads]
    gevent.joinall(jobs, timeout=scaled_s(60), raise_error=True)
    assert [job.value for job in jobs] == payloads
    _fd_invariant(harness.kit)
    assert _stop_client(client, greenlet) == 0


def test_pull_to_a_dead_port_resets_the_local_connection_and_frees_the_permit(harness: Harness) -> None:
    dead = gsocket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    client, greenlet = _start_client(harness, pulls=[f"0:{dead_port}"])
    sock = gsocket.create_connection(("127.0.0.1", client._pulls[0].spec.local_port), timeout=scaled_s(10))
    sock.settimeout(scaled_s(10))
    with pytest.raises(ConnectionResetError):
        sock.sendall(b"x")
        assert sock.recv(10) == b""  # an orderly EOF would be wrong: the target is unreachable
        raise AssertionError("expected a reset")
    [kit_session] = list(harness.kit.registry)
    wait_until(lambda: kit_session.permits_held == 1, 10, "the stream permit to be released")
    _fd_invariant(harness.kit)
    assert _stop_client(client, greenlet) == 0


def test_v1_client_reconnects_as_a_new_session_and_serves_connections_made_meanwhile(harness: Harness) -> None:
    client, greenlet = _start_client(harness, pulls=[f"0:{harness.echo_port}"], protocol="v1")
    kit = harness.kit
    [first] = list(kit.registry)
    pull_port = client._pulls[0].spec.local_port
    assert _transfer(pull_port, b"before") == b"before"
    # Drop the WebSocket under the session (no GOAWAY): a network cut, seen from the kit.
    assert first.runner is not None
    first.runner.transport.abort()
    wait_until(lambda: first.session_id not in {s.session_id for s in kit.registry}, 10, "the old session to end")
    # A local connection made now waits for the next session instead of being refused.
    during = gevent.spawn(_transfer, pull_port, b"made during the outage")
    wait_until(lambda: len(kit.registry) == 1, 20, "the client to reconnect")
    assert during.get(timeout=scaled_s(20)) == b"made during the outage"
    [second] = list(kit.registry)
    assert second.session_id != first.session_id
    assert "reconnected as " + second.session_id in client.out.getvalue()  # type: ignore[attr-defined]
    _fd_invariant(kit)
    assert _stop_client(client, greenlet) == 0


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    import random

    from tunnel.client.connector import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff_delay_s

    rng = random.Random(7)
    for attempt in range(30):
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)
        delays = [backoff_delay_s(attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spans the whole range, not a fixed step


def test_v2_cut_mid_transfer_resumes_the_same_session_byte_exact(harness: Harness) -> None:
    client, greenlet = _start_client(harness, pulls=[f"0:{harness.echo_port}"])
    kit = harness.kit
    [session] = list(kit.registry)
    pull_port = client._pulls[0].spec.local_port
    payloads = [os.urandom(2 * 1024 * 1024 + i) for i in range(3)]
    jobs = [gevent.spawn(_transfer, pull_port, payload) for payload in payloads]
    # Cut the WebSocket under the session twice while the transfers run.
    for _ in range(2):
        wait_until(lambda: session.runner.statistics().data_bytes_received > 0, 10, "traffic")
        assert session.runner is not None
        session.runner.transport.abort()
        wait_until(lambda: session.state.value == "orphaned" or "resumed" in client.err.getvalue(), 10, "parking")  # type: ignore[attr-defined]
        wait_until(lambda: session.state.value == "active", 20, "the resume")
    results = [job.get(timeout=scaled_s(60)) for job in jobs]
    assert [hashlib.sha256(r).digest() for r in results] == [hashlib.sha256(p).digest() for p in payloads]
    assert [s.session_id for s in kit.registry] == [session.session_id]  # the same session
    assert "resumed " + session.session_id in client.err.getvalue()  # type: ignore[attr-defined]
    wait_until(lambda: not session.runner.stream_count, 10, "streams to close")
    _fd_invariant(kit)
    assert _stop_client(client, greenlet) == 0
    wait_until(lambda: len(kit.registry) == 0, 10, "the session to end")
    assert kit.registry.budget.available == kit.registry.budget.size
