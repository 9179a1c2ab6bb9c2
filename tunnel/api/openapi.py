"""GET /api/v1/tunnel/openapi.json: the admin API's OpenAPI 3 document, generated.

Built by apispec's MarshmallowPlugin from the very schemas the views dump
(tunnel.api.schemas), so a field cannot change in a response without changing here too.
Schemas keep ``unknown = RAISE``, which apispec renders as ``additionalProperties: false``: a
response with an undocumented field breaks its own schema, and the tests check that.

Public, like health and metrics: the document describes shapes only, holds no secret, and a
client generator or a fuzzer needs it before it has a token. The operations that need the admin
token say so (``security: adminToken``).
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from tunnel import __version__
from tunnel.api import API_PREFIX
from tunnel.api.schemas import (
    BindingDetailSchema,
    BindingInfoSchema,
    BindingListSchema,
    ErrorSchema,
    HealthSchema,
    KillQuerySchema,
    MemorySchema,
    SessionClosingSchema,
    SessionInfoSchema,
    SessionListSchema,
    TunnelBindingViewSchema,
    TunnelSessionViewSchema,
    TunnelsOverviewSchema,
)

__all__ = ["OPENAPI_VERSION", "SECURITY_SCHEME", "bp", "build_openapi"]

bp = Blueprint("openapi", __name__, url_prefix=API_PREFIX)

OPENAPI_VERSION = "3.0.3"
SECURITY_SCHEME = "adminToken"

# Component name -> schema class. The names are the reference's object names.
_COMPONENTS = (
    ("Error", ErrorSchema),
    ("Memory", MemorySchema),
    ("Health", HealthSchema),
    ("BindingInfo", BindingInfoSchema),
    ("SessionInfo", SessionInfoSchema),
    ("SessionList", SessionListSchema),
    ("BindingDetail", BindingDetailSchema),
    ("BindingList", BindingListSchema),
    ("TunnelBindingView", TunnelBindingViewSchema),
    ("TunnelSessionView", TunnelSessionViewSchema),
    ("TunnelsOverview", TunnelsOverviewSchema),
    ("SessionClosing", SessionClosingSchema),
)

_DESCRIPTION = (
    "Management surface of the hoody-tunnel kit: sessions, bindings, the FD budget, health, "
    "Prometheus metrics, and the admin kill. Every endpoint except health, metrics, this "
    "document and connect needs `Authorization: Bearer <admin token>`."
)


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _unauthorized() -> dict[str, Any]:
    return {
        "description": "No admin token, or a wrong one: `Unauthorized`",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": {"application/json": {"schema": "Error"}},
    }


def _admin_get(summary: str, schema: str, operation_id: str) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "security": [{SECURITY_SCHEME: []}],
            "responses": {"200": _json(schema, "OK"), "401": _unauthorized()},
        }
    }


def build_openapi() -> dict[str, Any]:
    """The OpenAPI document of this API, as a JSON-ready dict."""
    spec = APISpec(
        title="hoody-tunnel",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": _DESCRIPTION},
    )
    spec.components.security_scheme(
        SECURITY_SCHEME,
        {"type": "http", "scheme": "bearer", "description": "The kit's admin token"},
    )
    for name, schema in _COMPONENTS:
        spec.components.schema(name, schema=schema)

    spec.path(
        path=f"{API_PREFIX}/health",
        operations={
            "get": {
                "operationId": "healthCheck",
                "summary": "Kit health: status, build, start time, memory, FDs, PID, IP",
                "security": [],
                "responses": {"200": _json("Health", "OK")},
            }
        },
    )
    spec.path(
        path=f"{API_PREFIX}/metrics",
        operations={
            "get": {
                "operationId": "getMetrics",
                "summary": "Prometheus text-format metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus exposition format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    )
    spec.path(
        path=f"{API_PREFIX}/sessions",
        operations=_admin_get("Every live tunnel session", "SessionList", "listSessions"),
    )
    spec.path(
        path=f"{API_PREFIX}/sessions/{{session_id}}",
        operations={
            "delete": {
                "operationId": "killSession",
                "summary": 'Close a session: GOAWAY(0x0001, "closed by admin"), drain, close',
                "security": [{SECURITY_SCHEME: []}],
                "parameters": [
                    {
                        "name": "session_id",
                        "in": "path",
                        "required": True,
                        "description": "Session ID as returned by GET /sessions",
                        "schema": {"type": "string", "minLength": 1},
                    },
                    {"in": "query", "schema": KillQuerySchema},
                ],
                "responses": {
                    "200": _json("SessionClosing", "Close initiated (or already under way)"),
                    "400": _json("Error", "Invalid grace_ms (or an unknown query parameter)"),
                    "401": _unauthorized(),
                    "404": _json("Error", "Session not found"),
                },
            }
        },
    )
    spec.path(
        path=f"{API_PREFIX}/bindings",
        operations=_admin_get("Every EXPOSE and PULL binding", "BindingList", "listBindings"),
    )
    spec.path(
        path=f"{API_PREFIX}/tunnels",
        operations=_admin_get(
            "Sessions with their bindings, totals and the FD budget", "TunnelsOverview", "listTunnels"
        ),
    )
    spec.path(
        path=f"{API_PREFIX}/openapi.json",
        operations={
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    )
    spec.path(
        path=f"{API_PREFIX}/connect",
        operations={
            "get": {
                "operationId": "tunnelConnect",
                "summary": "WebSocket upgrade for a tunnel session (wire protocol: docs/protocol.md)",
                "description": (
                    "Request subprotocol hoody-tunnel.v2 and/or hoody-tunnel.v1; the first binary "
                    "message must be a HELLO. Refusals carry x-hoody-tunnel-versions."
                ),
                "security": [],
                "responses": {
                    "101": {"description": "Switching Protocols"},
                    "400": _json("Error", "No supported subprotocol, or an invalid upgrade"),
                    "426": _json("Error", "Not a WebSocket upgrade request"),
                    "503": _json("Error", "The kit is shutting down"),
                },
            }
        },
    )
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(build_openapi())
