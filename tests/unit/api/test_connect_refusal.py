"""The connect view's decisions, through Flask's test client: no real WebSocket here.

A real upgrade needs our gunicorn handler, which puts ``environ["hoody_tunnel.websocket_accept"]``;
these tests put a fake one there to see what the view does with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tunnel.app import create_app
from tunnel.config import Settings

CONNECT = "/api/v1/tunnel/connect"
VERSIONS = "hoody-tunnel.v2, hoody-tunnel.v1"
NO_SUBPROTOCOL = {
    "error": "no supported subprotocol offered (supported: hoody-tunnel.v2, hoody-tunnel.v1)"
}


def upgrade_headers(subprotocols: str | None = None) -> dict[str, str]:
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "User-Agent": "hoody-cli/1.0.0",
    }
    if subprotocols is not None:
        headers["Sec-WebSocket-Protocol"] = subprotocols
    return headers


@dataclass
class FakeTransport:
    subprotocol: str
    peer_address: str = "192.0.2.7:50000"
    local_address: str = "127.0.0.1:8080"


@dataclass
class FakeAccept:
    calls: list[str] = field(default_factory=list)

    def __call__(self, subprotocol: str) -> FakeTransport:
        self.calls.append(subprotocol)
        return FakeTransport(subprotocol)


@dataclass
class FakeKit:
    draining: bool = False
    served: list[tuple[FakeTransport, str, str]] = field(default_factory=list)

    def serve(self, transport: FakeTransport, *, peer_address: str, user_agent: str) -> None:
        self.served.append((transport, peer_address, user_agent))


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return create_app(Settings(tokens=("t",), admin_token="a", state_dir=str(tmp_path)))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def fake_kit(app: Flask) -> FakeKit:
    kit = FakeKit()
    app.extensions["tunnel"] = kit
    return kit


def test_plain_get_is_426_with_upgrade_and_versions_headers(client: FlaskClient) -> None:
    response = client.get(CONNECT)
    assert response.status_code == 426
    assert response.headers["Upgrade"] == "websocket"
    assert response.headers["x-hoody-tunnel-versions"] == VERSIONS
    assert response.get_json() == {"error": "WebSocket upgrade required"}


@pytest.mark.parametrize(
    "offer",
    [
        None,
        "",
        "chat",
        "hoody-tunnel.v10",
        "hoody-tunnel.v10, hoody-tunnel.v3",
        "HOODY-TUNNEL.V1",
    ],
)
def test_upgrade_without_a_supported_subprotocol_is_400(
    client: FlaskClient, offer: str | None
) -> None:
    accept = FakeAccept()
    response = client.get(
        CONNECT,
        headers=upgrade_headers(offer),
        environ_overrides={"hoody_tunnel.websocket_accept": accept},
    )
    assert response.status_code == 400
    assert response.headers["x-hoody-tunnel-versions"] == VERSIONS
    assert response.get_json() == NO_SUBPROTOCOL
    assert accept.calls == []  # never a 101


def test_unsupported_subprotocol_is_400_without_a_handler_too(client: FlaskClient) -> None:
    response = client.get(CONNECT, headers=upgrade_headers("hoody-tunnel.v10"))
    assert response.status_code == 400
    assert response.headers["x-hoody-tunnel-versions"] == VERSIONS
    assert response.get_json() == NO_SUBPROTOCOL


def test_invalid_upgrade_is_400_with_the_versions_header(client: FlaskClient) -> None:
    # A supported subprotocol, but the handler found the upgrade invalid: no accept callable.
    response = client.get(CONNECT, headers=upgrade_headers("hoody-tunnel.v2"))
    assert response.status_code == 400
    assert response.headers["x-hoody-tunnel-versions"] == VERSIONS
    assert response.get_json() == {"error": "invalid WebSocket upgrade request"}


def test_an_upgrade_header_alone_is_not_a_plain_get(client: FlaskClient) -> None:
    response = client.get(
        CONNECT, headers={"Upgrade": "h2c", "Sec-WebSocket-Protocol": "hoody-tunnel.v1"}
    )
    assert response.status_code == 400
    assert response.headers["x-hoody-tunnel-versions"] == VERSIONS


def test_draining_refuses_with_503_before_any_101(
    client: FlaskClient, fake_kit: FakeKit
) -> None:
    fake_kit.draining = True
    accept = FakeAccept()
    response = client.get(
        CONNECT,
        headers=upgrade_headers("hoody-tunnel.v2"),
        environ_overrides={"hoody_tunnel.websocket_accept": accept},
    )
    assert response.status_code == 503
    assert response.get_json() == {"error": "server shutting down"}
    assert accept.calls == []
    assert fake_kit.served == []


def test_the_real_kit_starts_not_draining(app: Flask) -> None:
    assert app.extensions["tunnel"].draining is False


@pytest.mark.parametrize(
    ("offer", "chosen"),
    [
        ("hoody-tunnel.v2", "hoody-tunnel.v2"),
        ("hoody-tunnel.v1", "hoody-tunnel.v1"),
        ("hoody-tunnel.v1, hoody-tunnel.v2", "hoody-tunnel.v2"),
        ("hoody-tunnel.v10, hoody-tunnel.v1", "hoody-tunnel.v1"),
    ],
)
def test_accepts_the_highest_offered_version_and_serves_it(
    client: FlaskClient, fake_kit: FakeKit, offer: str, chosen: str
) -> None:
    accept = FakeAccept()
    response = client.get(
        CONNECT,
        headers=upgrade_headers(offer),
        environ_overrides={"hoody_tunnel.websocket_accept": accept},
    )
    assert accept.calls == [chosen]
    assert len(fake_kit.served) == 1
    transport, peer_address, user_agent = fake_kit.served[0]
    assert transport.subprotocol == chosen
    assert peer_address == "192.0.2.7:50000"
    assert user_agent == "hoody-cli/1.0.0"
    assert response.status_code == 200
    assert response.data == b""


def test_other_methods_are_405_json(client: FlaskClient) -> None:
    response = client.post(CONNECT)
    assert response.status_code == 405
    assert response.get_json() == {"error": "Method Not Allowed"}
