"""The OpenAPI document of a real gunicorn kit: valid, true to what the endpoints answer, fuzzed.

- /openapi.json validates with openapi-spec-validator and needs no token;
- each live answer (with sessions, bindings and streams) validates against the schema the
  document gives for that operation and status, and each reference object's fields are in the
  document with the reference's types (admin_reference.py);
- schemathesis, with the admin token, generates requests for every operation (positive and
  negative) against the live kit: no 500, no answer that breaks its own schema, no undocumented
  status. A few examples per operation keep it within CI time.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator
from openapi_spec_validator import validate as validate_spec

from tests.e2e.admin_reference import REFERENCE, fields_of
from tests.e2e.admin_support import API, admin_delete, auth, launch_shared_kit
from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local, free_port_candidate
from tests.e2e.tunnel_support import ClientProcess, TcpTarget
from tests.waiting import scaled_s, wait_until

OPENAPI = f"{API}/openapi.json"
MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def live_kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KitProcess]:
    """A kit with a v2 session (EXPOSE http + PULL, one stream open) and a v1 session."""
    kit = launch_shared_kit(tmp_path_factory.mktemp("admin-openapi"))
    target = TcpTarget("echo")
    clients: list[ClientProcess] = []
    sockets = []
    try:
        port = free_port_candidate()
        clients.append(
            ClientProcess.launch(kit, "--expose", f"{port}:127.0.0.1:{target.port}/http", "--pull", f"0:{target.port}")
        )
        clients.append(ClientProcess.launch(kit, "--protocol", "v1", "--pull", f"0:{target.port}"))
        for client in clients:
            client.wait_ready()
        sockets.append(connect_local(clients[0].pull_port(target.port)))
        yield kit
    finally:
        for sock in sockets:
            sock.close()
        for client in clients:
            client.kill()
        target.close()
        kit.stop()


def document(kit: KitProcess) -> dict[str, Any]:
    reply = kit.get(OPENAPI)
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = reply.json()
    return body


def response_validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft4Validator:
    # OpenAPI 3.0 schema objects are a JSON Schema draft-4 dialect; refs point into the document.
    # ``nullable`` is folded into the type first (the one 3.0 keyword draft 4 lacks).
    def fold(node: Any) -> Any:
        if isinstance(node, dict):
            node = {key: fold(value) for key, value in node.items()}
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
            if node.pop("nullable", False) and "$ref" in node:
                node = {"anyOf": [{"$ref": node.pop("$ref")}, {"type": "null"}]}
            return node
        if isinstance(node, list):
            return [fold(item) for item in node]
        return node

    components = fold(spec["components"])
    return Draft4Validator({**fold(schema), "components": components})


def declared_type(prop: dict[str, Any]) -> tuple[str, bool]:
    """(JSON type, nullable) of a property; a nested object is a $ref (apispec renders a
    nullable one as ``anyOf: [{type: object, nullable: true}, {$ref}]``)."""
    if "$ref" in prop:
        return "object", False
    if "anyOf" in prop:
        members = [declared_type(member) for member in prop["anyOf"]]
        return "object", any(nullable for _, nullable in members)
    return prop["type"], bool(prop.get("nullable"))


def test_the_document_is_valid_public_and_generated_from_the_schemas(live_kit: KitProcess) -> None:
    spec = document(live_kit)
    validate_spec(spec)
    assert spec["openapi"].startswith("3.")
    schemas = spec["components"]["schemas"]
    for name in REFERENCE:
        component = schemas[name]
        assert component["additionalProperties"] is False, name
        assert set(component["properties"]) == {field.name for field in fields_of(name)}, name
        for field in fields_of(name):
            prop = component["properties"][field.name]
            assert declared_type(prop) == (field.json_type, field.nullable), (name, field.name, prop)
            assert field.name in component.get("required", []), (name, field.name)
    kill = spec["paths"][f"{API}/sessions/{{session_id}}"]["delete"]
    (grace,) = [p for p in kill["parameters"] if p["name"] == "grace_ms"]
    assert (grace["in"], grace["schema"]) == (
        "query",
        {"type": "integer", "default": 50, "minimum": 0, "maximum": 5000},
    )
    assert set(kill["responses"]) == {"200", "400", "401", "404"}
    for path in ("sessions", "bindings", "tunnels"):
        assert spec["paths"][f"{API}/{path}"]["get"]["security"] == [{"adminToken": []}]
    for path in ("health", "metrics", "openapi.json"):
        assert spec["paths"][f"{API}/{path}"]["get"]["security"] == []


def test_live_answers_validate_against_the_document(live_kit: KitProcess) -> None:
    kit = live_kit
    spec = document(kit)
    wait_until(lambda: kit.get(f"{API}/tunnels", headers=auth(kit)).json()["totalStreams"] == 1, 10, "the stream")

    def check(method: str, path: str, template: str, status: int, headers: dict[str, str]) -> None:
        reply = kit.request(method, path, headers=headers)
        assert reply.status == status, (path, reply.status, reply.body)
        operation = spec["paths"][template][method.lower()]
        schema = operation["responses"][str(status)]["content"]["application/json"]["schema"]
        errors = list(response_validator(spec, schema).iter_errors(reply.json()))
        assert errors == [], (path, [e.message for e in errors])

    for name in ("sessions", "bindings", "tunnels"):
        check("GET", f"{API}/{name}", f"{API}/{name}", 200, auth(kit))
        check("GET", f"{API}/{name}", f"{API}/{name}", 401, {})
    check("GET", f"{API}/health", f"{API}/health", 200, {})
    check("GET", f"{API}/connect", f"{API}/connect", 426, {})
    template = f"{API}/sessions/{{session_id}}"
    check("DELETE", f"{API}/sessions/sess_000000000000?grace_ms=x", template, 400, auth(kit))
    check("DELETE", f"{API}/sessions/sess_000000000000", template, 404, auth(kit))
    check("DELETE", f"{API}/sessions/sess_000000000000", template, 401, {})
    # A real kill, last: its 200 body.
    sessions = kit.get(f"{API}/sessions", headers=auth(kit)).json()["sessions"]
    v1 = next(s["sessionId"] for s in sessions if not s["isV2"])
    check("DELETE", f"{API}/sessions/{v1}?grace_ms=0", template, 200, auth(kit))
    assert admin_delete(kit, v1).status in (200, 404)


def test_schemathesis_finds_no_500_and_no_answer_outside_the_schema(
    make_kit: Callable[..., KitProcess], tmp_path: Path
) -> None:
    """schemathesis's own runner (its CLI), every check on, against a kit with live sessions.

    Its own kit: the stateful phase infers the link GET /sessions -> DELETE /sessions/{id}
    and really kills the sessions it finds. The WebSocket operation (connect) is left out:
    a request valid by the document's HTTP description still lacks the upgrade handshake, so
    426 is right there (test_live_answers_validate_against_the_document checks its body).
    """
    kit = make_kit()
    target = TcpTarget("echo")
    clients = [
        ClientProcess.launch(kit, "--pull", f"0:{target.port}"),
        ClientProcess.launch(kit, "--protocol", "v1", "--pull", f"0:{target.port}"),
    ]
    try:
        for client in clients:
            client.wait_ready()
        result = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{kit.base_url}{OPENAPI}",
                "--header", f"Authorization: Bearer {kit.admin_token}",
                "--checks", "all",
                "--exclude-operation-id", "tunnelConnect",
                "--max-examples", str(MAX_EXAMPLES),
                # Deterministic, so a CI failure reproduces; no example database on disk.
                "--seed", "20240115",
                "--generation-database", "none",
                "--workers", "1",
                "--request-timeout", str(scaled_s(10)),
                "--no-color",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=scaled_s(300),
        )
        report = result.stdout + result.stderr
        assert result.returncode == 0, report
        assert "Tested: 6" in report, report
        assert "No issues found" in report or "failed" not in report, report
    finally:
        for client in clients:
            client.kill()
        target.close()
