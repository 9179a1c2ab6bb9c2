"""The server as the Procfile starts it: gunicorn, gunicorn.conf.py, tunnel.wsgi:app."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Callable

import psutil

from tests.e2e.harness import KitProcess
from tests.e2e.loopback import recv_until
from tests.e2e.wire import ws_upgrade_request
from tests.waiting import scaled_s

MakeKit = Callable[..., KitProcess]

CONNECT = "/api/v1/tunnel/connect"
VERSIONS = "hoody-tunnel.v2, hoody-tunnel.v1"


def test_health_answers_with_every_field_of_the_right_type(kit: KitProcess) -> None:
    reply = kit.get("/api/v1/tunnel/health", headers={"User-Agent": "hoody-cli/1.0.0"})

    assert reply.status == 200, kit.output()
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == {
        "status", "service", "built", "started", "memory", "fds", "pid", "ip", "userAgent"
    }
    assert body["status"] == "ok"
    assert body["service"] == "hoody-tunnel"
    assert body["built"] is None
    assert isinstance(body["started"], str) and body["started"].endswith("Z")
    assert isinstance(body["memory"]["heap"], int) and body["memory"]["heap"] > 0
    assert isinstance(body["memory"]["rss"], int) and body["memory"]["rss"] > 0
    assert isinstance(body["fds"], int) and body["fds"] > 0
    assert body["userAgent"] == "hoody-cli/1.0.0"
    # The local address of this connection (not SERVER_NAME, which would be a host name).
    assert body["ip"] == "127.0.0.1"
    # The pid is the worker's, the process holding the sessions: a child of the master.
    assert isinstance(body["pid"], int)
    assert body["pid"] != kit.process.pid
    assert psutil.Process(body["pid"]).ppid() == kit.process.pid


def test_built_is_reported_from_the_environment(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_BUILT="2024-01-15T10:30:00Z")
    assert kit.get("/api/v1/tunnel/health").json()["built"] == "2024-01-15T10:30:00Z"


def test_metrics_serve_the_reference_gauges(kit: KitProcess) -> None:
    reply = kit.get("/api/v1/tunnel/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = reply.body.decode()
    assert "# HELP hoody_tunnel_sessions_active Number of active tunnel sessions\n" in text
    assert "# HELP hoody_tunnel_bindings_active Number of active bindings\n" in text
    assert "# HELP hoody_tunnel_fd_permits_available Available file descriptor permits\n" in text
    assert "hoody_tunnel_fd_permits_available 512.0\n" in text


def test_bad_config_exits_non_zero_with_one_line_naming_the_variable(make_kit: MakeKit) -> None:
    kit = make_kit(ready=False, HOODY_TUNNEL_WINDOW="abc")
    status = kit.wait_exit()

    assert status == 2, kit.output()
    assert kit.stderr().splitlines() == [
        "hoody-tunnel: config error: HOODY_TUNNEL_WINDOW: "
        "must be an integer from 16384 to 16777216, got 'abc'"
    ], kit.output()
    assert "Traceback" not in kit.stdout()


def test_bad_port_is_refused_the_same_way(make_kit: MakeKit) -> None:
    kit = make_kit(ready=False, PORT="http")
    assert kit.wait_exit() == 2
    lines = kit.stderr().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hoody-tunnel: config error: PORT: "), lines


def _raw_request(kit: KitProcess, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection; read until the server closes or the headers and
    declared body are in."""
    with socket.create_connection((kit.host, kit.port), timeout=scaled_s(10.0)) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                if len(body) >= length:
                    return data


def _upgrade_request(kit: KitProcess, subprotocols: str) -> bytes:
    # The sample nonce of RFC 6455 §1.3, whose accept value the test checks literally.
    return ws_upgrade_request(
        CONNECT, f"{kit.host}:{kit.port}", "dGhlIHNhbXBsZSBub25jZQ==", {"Sec-WebSocket-Protocol": subprotocols}
    )


def _parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_unsupported_subprotocol_gets_400_and_never_101(kit: KitProcess) -> None:
    response = _raw_request(kit, _upgrade_request(kit, "hoody-tunnel.v10"))

    assert b"101 Switching Protocols" not in response
    status, headers, body = _parse(response)
    assert status == 400, response
    assert headers["x-hoody-tunnel-versions"] == VERSIONS
    assert json.loads(body) == {
        "error": "no supported subprotocol offered (supported: hoody-tunnel.v2, hoody-tunnel.v1)"
    }


def test_supported_subprotocol_gets_101_with_exactly_that_protocol(kit: KitProcess) -> None:
    response = _raw_request_until_headers(kit, _upgrade_request(kit, "hoody-tunnel.v1, hoody-tunnel.v2"))
    status, headers, _ = _parse(response)
    assert status == 101, response
    assert headers["sec-websocket-protocol"] == "hoody-tunnel.v2"
    assert headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _raw_request_until_headers(kit: KitProcess, request: bytes) -> bytes:
    with socket.create_connection((kit.host, kit.port), timeout=scaled_s(10.0)) as sock:
        sock.sendall(request)
        return recv_until(sock, b"\r\n\r\n")


def test_plain_get_on_connect_is_426(kit: KitProcess) -> None:
    reply = kit.get(CONNECT)
    assert reply.status == 426
    assert reply.headers["upgrade"] == "websocket"
    assert reply.headers["x-hoody-tunnel-versions"] == VERSIONS
    assert reply.json() == {"error": "WebSocket upgrade required"}


def test_generated_tokens_are_stored_owner_only_and_printed_once(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_TOKENS="", HOODY_TUNNEL_ADMIN_TOKEN="")
    path = kit.state_dir / "credentials.json"

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(kit.state_dir).st_mode) == 0o700
    stored = json.loads(path.read_text())
    assert set(stored) == {"token", "adminToken"}
    client_token, admin_token = stored["token"], stored["adminToken"]
    assert isinstance(client_token, str) and len(client_token) >= 43
    assert isinstance(admin_token, str) and len(admin_token) >= 43
    output = kit.stderr() + kit.stdout()
    assert output.count(client_token) == 1, kit.output()
    assert output.count(admin_token) == 1, kit.output()

    # A restart on the same state directory reuses the tokens and does not print them again.
    kit.stop()
    again = make_kit(
        HOODY_TUNNEL_TOKENS="", HOODY_TUNNEL_ADMIN_TOKEN="", HOODY_TUNNEL_STATE_DIR=str(kit.state_dir)
    )
    assert json.loads(path.read_text()) == stored
    assert client_token not in again.stderr() + again.stdout()
    assert admin_token not in again.stderr() + again.stdout()


def test_sigterm_stops_the_server_cleanly(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_GRACEFUL_TIMEOUT_S="3")
    status = kit.stop(timeout_s=scaled_s(15.0))
    assert status == 0, kit.output()
    assert "Shutting down: Master" in kit.stderr(), kit.output()
