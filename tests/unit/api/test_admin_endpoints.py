"""The admin endpoints through Flask's test client, with real KitSession objects in the kit.

Auth (401 everywhere but health, metrics, openapi.json), the DELETE order (token, grace_ms,
lookup), the reference's exact strings, and the OpenAPI document against every answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft4Validator
from openapi_spec_validator import validate as validate_spec

from tests.unit.api.admin_kit import ADMIN_TOKEN, AUTH, CLIENT_TOKEN, add_session, kit_of, make_app
from tunnel.api.auth import admin_token_matches
from tunnel.protocol import BindKind, BindMode
from tunnel.server.kit import Kit
from tunnel.server.kit_session import KitSession, KitSessionState

API = "/api/v1/tunnel"
INVALID_GRACE = {"error": "Invalid grace_ms: must be between 0 and 5000"}
NOT_FOUND = {"error": "Session not found"}
UNAUTHORIZED = {"error": "Unauthorized"}
PROTECTED = [("GET", "/sessions"), ("GET", "/bindings"), ("GET", "/tunnels"), ("DELETE", "/sessions/sess_0")]


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path, fd_budget=100)


@pytest.fixture
def kit(app: Flask) -> Kit:
    return kit_of(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def populated(kit: Kit) -> tuple[KitSession, KitSession]:
    first = add_session(
        kit,
        bindings=((BindKind.EXPOSE, 3000, BindMode.HTTP), (BindKind.PULL, 5432, BindMode.TCP)),
        created_at=1.0,
    )
    second = add_session(kit, protocol="hoody-tunnel.v1", state=KitSessionState.ORPHANED, created_at=2.0)
    return first, second


# -- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nope", f"Bearer {CLIENT_TOKEN}", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN, "Bearer", "Bearer é"],
)
def test_protected_endpoints_refuse_without_the_admin_token(
    client: FlaskClient, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.open(f"{API}{path}?grace_ms=-1", method=method, headers=headers)
    assert response.status_code == 401
    assert response.get_json() == UNAUTHORIZED
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("path", ["/health", "/metrics", "/openapi.json"])
def test_public_endpoints(client: FlaskClient, path: str) -> None:
    assert client.get(f"{API}{path}").status_code == 200


def test_token_matching() -> None:
    assert admin_token_matches(f"Bearer {ADMIN_TOKEN}", ADMIN_TOKEN)
    assert admin_token_matches(f"bearer   {ADMIN_TOKEN} ", ADMIN_TOKEN)
    assert not admin_token_matches(f"Bearer {ADMIN_TOKEN}x", ADMIN_TOKEN)
    assert not admin_token_matches(f"Bearer {ADMIN_TOKEN[:-1]}", ADMIN_TOKEN)
    assert not admin_token_matches(f"Bearer {ADMIN_TOKEN}", None)
    assert not admin_token_matches(None, ADMIN_TOKEN)
    assert not admin_token_matches("Bearer ", "")


def test_refusals_never_log_the_token(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    client.get(f"{API}/sessions", headers={"Authorization": "Bearer some-secret-guess"})
    client.get(f"{API}/sessions", headers=AUTH)
    assert "some-secret-guess" not in caplog.text and ADMIN_TOKEN not in caplog.text
    assert "admin request refused" in caplog.text


# -- the views -----------------------------------------------------------------------------------


def test_sessions_bindings_tunnels(client: FlaskClient, populated: tuple[KitSession, KitSession]) -> None:
    first, second = populated
    sessions = client.get(f"{API}/sessions", headers=AUTH).get_json()
    assert sessions["total"] == 2
    one = sessions["sessions"][0]
    assert list(one)[:7] == [
        "sessionId", "peerAddr", "isV2", "connectionsGranted", "activeStreams", "maxStreams", "bindings"
    ]
    assert one["sessionId"] == first.session_id and one["isV2"] is True
    assert one["bindings"] == [
        {"bindId": 1, "containerPort": 3000, "kind": "EXPOSE", "mode": "http"},
        {"bindId": 2, "containerPort": 5432, "kind": "PULL", "mode": "tcp"},
    ]
    assert [s["state"] for s in sessions["sessions"]] == ["active", "orphaned"]

    bindings = client.get(f"{API}/bindings", headers=AUTH).get_json()
    assert bindings == {
        "bindings": [
            {"bindId": 1, "kind": "EXPOSE", "mode": "http", "port": 3000, "sessionId": first.session_id},
            {"bindId": 2, "kind": "PULL", "mode": "tcp", "port": 5432, "sessionId": first.session_id},
        ],
        "total": 2,
    }

    tunnels = client.get(f"{API}/tunnels", headers=AUTH).get_json()
    assert {k: v for k, v in tunnels.items() if k != "sessions"} == {
        "fdPermitsAvailable": 97,
        "orphanedSessions": 1,
        "totalBindings": 2,
        "totalStreams": 0,
        "fdBudget": 100,
    }
    assert tunnels["sessions"][0]["exposeBindings"] == [{"bindId": 1, "containerPort": 3000, "mode": "http"}]
    assert tunnels["sessions"][0]["pullBindings"] == [{"bindId": 2, "containerPort": 5432, "mode": "tcp"}]
    assert tunnels["sessions"][1]["protocol"] == "hoody-tunnel.v1"
    assert second.session_id == tunnels["sessions"][1]["sessionId"]


# -- DELETE ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["-1", "5001", "abc", "1.5", "+5", "", " 5", "5 ", "1e3", "0x10", "５", "99999999999999999999999"],
)
def test_invalid_grace_ms_is_400_before_the_lookup(
    client: FlaskClient, populated: tuple[KitSession, KitSession], query: str
) -> None:
    first, _ = populated
    for session_id in ("sess_unknown", first.session_id):
        response = client.delete(f"{API}/sessions/{session_id}", query_string={"grace_ms": query}, headers=AUTH)
        assert (response.status_code, response.get_json()) == (400, INVALID_GRACE)
    assert first.state is KitSessionState.ACTIVE


def test_unknown_session_is_404(client: FlaskClient) -> None:
    response = client.delete(f"{API}/sessions/sess_unknown?grace_ms=10", headers=AUTH)
    assert (response.status_code, response.get_json()) == (404, NOT_FOUND)


def test_kill_passes_the_grace_in_seconds_and_repeats_as_closing(
    client: FlaskClient, kit: Kit, populated: tuple[KitSession, KitSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = populated
    calls: list[tuple[str, float]] = []
    real_kill = kit.kill_session

    def spy(session_id: str, grace_s: float) -> KitSession | None:
        calls.append((session_id, grace_s))
        return real_kill(session_id, grace_s)

    monkeypatch.setattr(kit, "kill_session", spy)
    expected = {"sessionId": first.session_id, "status": "closing"}
    response = client.delete(f"{API}/sessions/{first.session_id}?grace_ms=200", headers=AUTH)
    assert (response.status_code, response.get_json()) == (200, expected)
    assert first.state is KitSessionState.CLOSING
    again = client.delete(f"{API}/sessions/{first.session_id}", headers=AUTH)
    assert (again.status_code, again.get_json()) == (200, expected)
    assert calls == [(first.session_id, 0.2), (first.session_id, 0.05)]
    states = [s["state"] for s in client.get(f"{API}/sessions", headers=AUTH).get_json()["sessions"]]
    assert states == ["closing", "orphaned"]


# -- the OpenAPI document -------------------------------------------------------------------------


def _validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft4Validator:
    def fold(node: Any) -> Any:  # OpenAPI 3.0 ``nullable`` -> JSON Schema
        if isinstance(node, dict):
            node = {key: fold(value) for key, value in node.items()}
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
            return node
        if isinstance(node, list):
            return [fold(item) for item in node]
        return node

    return Draft4Validator({**fold(schema), "components": fold(spec["components"])})


def test_openapi_document_is_valid_and_matches_every_answer(
    client: FlaskClient, populated: tuple[KitSession, KitSession]
) -> None:
    spec = client.get(f"{API}/openapi.json").get_json()
    validate_spec(spec)
    first, _ = populated
    cases = [
        ("GET", "/health", "/health", {}, 200),
        ("GET", "/sessions", "/sessions", AUTH, 200),
        ("GET", "/sessions", "/sessions", {}, 401),
        ("GET", "/bindings", "/bindings", AUTH, 200),
        ("GET", "/tunnels", "/tunnels", AUTH, 200),
        ("DELETE", "/sessions/x?grace_ms=x", "/sessions/{session_id}", AUTH, 400),
        ("DELETE", "/sessions/x", "/sessions/{session_id}", AUTH, 404),
        ("DELETE", f"/sessions/{first.session_id}", "/sessions/{session_id}", AUTH, 200),
        ("DELETE", "/sessions/x", "/sessions/{session_id}", {}, 401),
    ]
    for method, path, template, headers, status in cases:
        response = client.open(f"{API}{path}", method=method, headers=headers)
        assert response.status_code == status, path
        operation = spec["paths"][f"{API}{template}"][method.lower()]
        schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
        errors = [e.message for e in _validator(spec, schema).iter_errors(response.get_json())]
        assert errors == [], (method, path, errors)


def test_an_undocumented_field_would_break_the_schema(client: FlaskClient) -> None:
    spec = client.get(f"{API}/openapi.json").get_json()
    schema = {"$ref": "#/components/schemas/BindingDetail"}
    good = {"bindId": 1, "kind": "PULL", "mode": "tcp", "port": 1, "sessionId": "sess_0"}
    assert _validator(spec, schema).is_valid(good)
    assert not _validator(spec, schema).is_valid({**good, "extra": 1})
    assert not _validator(spec, schema).is_valid({**good, "kind": "pull"})
