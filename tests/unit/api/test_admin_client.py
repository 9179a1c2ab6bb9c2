"""The admin SDK (tunnel.client.admin) and CLI (tunnel.client.admin_cli), served by create_app.

``http.client.HTTPConnection`` is replaced by a stand-in that hands each request to the app's
Flask test client, so everything above the socket is the real code on both sides. The e2e tests
(tests/e2e/test_admin_cli.py) run the same against a real gunicorn.
"""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.api.admin_kit import ADMIN_TOKEN, add_session, kit_of, make_app
from tunnel.client import admin_cli
from tunnel.client.admin import (
    AdminClient,
    AdminConnectionError,
    AdminError,
    AdminResponseError,
    BindingInfo,
    parse_metrics_text,
)
from tunnel.client.cli import main
from tunnel.protocol import BindKind, BindMode
from tunnel.server.kit import Kit
from tunnel.server.kit_session import KitSession


class _FakeResponse:
    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status, self.reason, self._headers, self._body = status, reason, headers, body

    def read(self) -> bytes:
        return self._body

    def getheader(self, name: str, default: str | None = None) -> str | None:
        return self._headers.get(name, default)


class _Routes:
    """What the fake connections talk to; ``refuse`` makes every connection fail."""

    def __init__(self) -> None:
        self.client: FlaskClient | None = None
        self.refuse = False
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.override: tuple[int, bytes] | None = None


@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Routes]:
    routes = _Routes()

    class FakeConnection:
        def __init__(self, host: str, port: int | None = None, timeout: float | None = None) -> None:
            self.host, self.port = host, port
            self._response: _FakeResponse | None = None

        def request(self, method: str, url: str, headers: dict[str, str]) -> None:
            if routes.refuse:
                raise ConnectionRefusedError(111, "Connection refused")
            routes.requests.append((method, url, dict(headers)))
            if routes.override is not None:
                status, body = routes.override
                self._response = _FakeResponse(status, "OK", {"Content-Type": "application/json"}, body)
                return
            assert routes.client is not None
            reply = routes.client.open(url, method=method, headers=headers)
            self._response = _FakeResponse(
                reply.status_code, reply.status.split(" ", 1)[1], dict(reply.headers), reply.get_data()
            )

        def getresponse(self) -> _FakeResponse:
            assert self._response is not None
            return self._response

        def close(self) -> None:
            pass

    monkeypatch.setattr(http.client, "HTTPConnection", FakeConnection)
    yield routes


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path)


@pytest.fixture
def kit(app: Flask) -> Kit:
    return kit_of(app)


@pytest.fixture
def session(kit: Kit) -> KitSession:
    return add_session(kit, bindings=((BindKind.EXPOSE, 3000, BindMode.HTTP), (BindKind.PULL, 5432, BindMode.TCP)))


@pytest.fixture
def sdk(app: Flask, routes: _Routes) -> AdminClient:
    routes.client = app.test_client()
    return AdminClient("http://kit.example:8080", ADMIN_TOKEN)


def test_typed_results(sdk: AdminClient, session: KitSession, routes: _Routes) -> None:
    health = sdk.health.check()
    assert (health.status, health.service) == ("ok", "hoody-tunnel")
    assert health.user_agent.startswith("hoody-tunnel-admin/")
    assert json.loads(health.raw)["pid"] == health.pid

    sessions = sdk.list_sessions()
    assert sessions.total == 1
    (info,) = sessions.sessions
    assert (info.session_id, info.is_v2, info.state, info.connections_granted) == (
        session.session_id, True, "active", 2
    )
    assert info.bindings == (BindingInfo(1, 3000, "EXPOSE", "http"), BindingInfo(2, 5432, "PULL", "tcp"))

    bindings = sdk.list_bindings()
    assert [(b.bind_id, b.port, b.session_id) for b in bindings.bindings] == [
        (1, 3000, session.session_id), (2, 5432, session.session_id)
    ]
    tunnels = sdk.list_tunnels()
    assert (tunnels.fd_permits_available, tunnels.fd_budget, tunnels.total_bindings) == (510, 512, 2)
    assert [b.container_port for b in tunnels.sessions[0].expose_bindings] == [3000]

    metrics = sdk.get_metrics()
    assert (metrics.sessions_active, metrics.bindings_active, metrics.fd_permits_available) == (1, 2, 510)

    closing = sdk.kill_session(session.session_id, grace_ms=0)
    assert (closing.session_id, closing.status) == (session.session_id, "closing")
    method, url, headers = routes.requests[-1]
    assert (method, url) == ("DELETE", f"/api/v1/tunnel/sessions/{session.session_id}?grace_ms=0")
    assert headers["Authorization"] == f"Bearer {ADMIN_TOKEN}"
    # health and metrics go without the token.
    assert all("Authorization" not in h for m, u, h in routes.requests if u.endswith(("/health", "/metrics")))


def test_errors_carry_status_and_the_api_string(sdk: AdminClient, app: Flask, routes: _Routes) -> None:
    with pytest.raises(AdminError) as missing:
        sdk.kill_session("sess_unknown")
    assert (missing.value.status, missing.value.error) == (404, "Session not found")
    with pytest.raises(AdminError) as invalid:
        sdk.kill_session("sess_unknown", grace_ms=-1)
    assert (invalid.value.status, invalid.value.error) == (400, "Invalid grace_ms: must be between 0 and 5000")
    with pytest.raises(AdminError) as refused:
        AdminClient("http://kit.example:8080", "wrong").list_sessions()
    assert (refused.value.status, refused.value.error) == (401, "Unauthorized")
    routes.refuse = True
    with pytest.raises(AdminConnectionError) as down:
        sdk.list_tunnels()
    assert down.value.status is None
    assert down.value.error == "cannot reach the kit at http://kit.example:8080: connection refused"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"sessions": [], "total": "1"}',
        b'{"sessions": [{"sessionId": "s"}], "total": 1}',
        b'{"sessions": {}, "total": 1}',
        b'{"sessions": [], "total": true}',
    ],
)
def test_answers_outside_the_reference_are_response_errors(sdk: AdminClient, routes: _Routes, body: bytes) -> None:
    routes.override = (200, body)
    with pytest.raises(AdminResponseError):
        sdk.list_sessions()


def test_a_reference_only_kit_is_read_too(sdk: AdminClient, routes: _Routes) -> None:
    # The reference's example, without our extra fields.
    routes.override = (200, json.dumps({
        "sessions": [{"sessionId": "sess_abc123def456", "peerAddr": "192.168.1.100:54321", "isV2": True,
                      "connectionsGranted": 5, "activeStreams": 3, "maxStreams": 100,
                      "bindings": [{"bindId": 1, "containerPort": 3000, "kind": "EXPOSE", "mode": "http"}]}],
        "total": 1,
    }).encode())
    (info,) = sdk.list_sessions().sessions
    assert (info.active_streams, info.state, info.rtt_ms) == (3, None, None)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("ws://kit:80/", "http://kit:80"),
        ("wss://kit.example/base/", "https://kit.example/base"),
        ("https://kit.example", "https://kit.example"),
    ],
)
def test_server_urls(given: str, expected: str) -> None:
    assert AdminClient(given).server == expected


@pytest.mark.parametrize("given", ["ftp://kit", "http://", "http://kit:port"])
def test_bad_server_urls(given: str) -> None:
    with pytest.raises(ValueError):
        AdminClient(given)


def test_the_token_stays_out_of_the_repr() -> None:
    assert ADMIN_TOKEN not in repr(AdminClient("http://kit", ADMIN_TOKEN))


def test_metrics_parser_agrees_with_prometheus_client(app: Flask, session: KitSession) -> None:
    text = app.test_client().get("/api/v1/tunnel/metrics").get_data(as_text=True)
    ours = {(s.name, s.labels): s.value for s in parse_metrics_text(text)}
    theirs = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert ours == theirs
    assert parse_metrics_text('x{a="q\\"uote",b="back\\\\slash"} 1.5\n') [0].labels == (
        ("a", 'q"uote'), ("b", "back\\slash")
    )
    with pytest.raises(ValueError):
        parse_metrics_text("not a sample line at all {")


# -- the CLI --------------------------------------------------------------------------------------


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> tuple[int, str, str]:
    for key in ("HOODY_TUNNEL_SERVER", "HOODY_TUNNEL_ADMIN_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOODY_TUNNEL_STATE_DIR", str(tmp_path / "cli-state"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_tables_json_and_exit_codes(
    sdk: AdminClient, session: KitSession, routes: _Routes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token = {"HOODY_TUNNEL_ADMIN_TOKEN": ADMIN_TOKEN}
    code, out, _ = run(["sessions"], monkeypatch, tmp_path, **token)
    assert code == 0 and session.session_id in out and out.endswith("1 session\n")
    assert "EXPOSE 3000/http, PULL 5432/tcp" in out
    code, out, _ = run(["tunnels", "--json"], monkeypatch, tmp_path, **token)
    assert json.loads(out)["fdPermitsAvailable"] == 510
    code, out, _ = run(["bindings"], monkeypatch, tmp_path, **token)
    assert out.splitlines()[0].split() == ["BIND", "KIND", "MODE", "PORT", "SESSION"]

    assert run(["sessions"], monkeypatch, tmp_path)[0] == admin_cli.EXIT_USAGE  # no token at all
    code, _, err = run(["sessions", "--admin-token", "wrong"], monkeypatch, tmp_path)
    assert code == admin_cli.EXIT_AUTH and "admin token refused" in err
    code, _, err = run(["kill", "sess_nope"], monkeypatch, tmp_path, **token)
    assert (code, err) == (1, "hoody-tunnel: Session not found: sess_nope\n")
    code, _, err = run(["kill", session.session_id, "--grace-ms", "-5"], monkeypatch, tmp_path, **token)
    assert (code, err) == (2, "hoody-tunnel: Invalid grace_ms: must be between 0 and 5000\n")
    code, _, err = run(["kill", session.session_id, "--grace-ms", "abc"], monkeypatch, tmp_path, **token)
    assert code == 2 and "--grace-ms" in err
    code, out, _ = run(["kill", session.session_id], monkeypatch, tmp_path, **token)
    assert (code, out) == (0, f"{session.session_id}: closing\n")
    routes.refuse = True
    code, _, err = run(["health"], monkeypatch, tmp_path)
    assert code == 1 and "connection refused" in err


def test_cli_reads_the_locally_stored_admin_token(
    sdk: AdminClient, session: KitSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = tmp_path / "cli-state"
    state.mkdir()
    (state / "credentials.json").write_text(json.dumps({"token": None, "adminToken": ADMIN_TOKEN}))
    code, out, err = run(["sessions", "--json"], monkeypatch, tmp_path)
    assert code == 0, err
    assert json.loads(out)["total"] == 1


def test_table_helpers() -> None:
    assert admin_cli.human_bytes(0) == "0 B"
    assert admin_cli.human_bytes(1536) == "1.5 KiB"
    assert admin_cli.human_bytes(None) == "-"
    assert admin_cli.table(("A", "BB"), [("xyz", "1")]) == "A    BB\nxyz  1\n"


def test_the_sdk_imports_no_server_api_or_gevent_code() -> None:
    import subprocess
    import sys

    # tunnel.protocol may come along: it is stdlib-only (no I/O, no gevent), and the SDK's
    # AdminError derives from its TunnelError, the package's one error root.
    code = (
        "import sys, tunnel.client.admin\n"
        "bad = sorted(n for n in sys.modules if n.startswith(('tunnel.server', 'tunnel.api', 'tunnel.mux',"
        " 'flask', 'gevent', 'greenlet', 'marshmallow', 'prometheus_client', 'numpy', 'psutil')))\n"
        "print('bad:', bad)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[3])
    assert result.returncode == 0, result.stderr
    assert "bad: []" in result.stdout, result.stdout
