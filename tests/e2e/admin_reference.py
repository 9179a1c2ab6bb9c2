"""The customer's API reference (docs/admin-api.md), as data: every object, field and JSON type.

This is the ONE place the admin e2e tests take expected fields and types from. Each object lists
its fields as ``(name, json_type, required, nullable)``; ``REFERENCE`` holds exactly what the
reference tables and examples give (the names and types there are binding), ``OURS`` the extra
fields we add (docs/admin-api.md §1: ``state``; bytes, RTT, user agent,
created time). A nested object or array names the object it holds.

JSON types: "string", "integer", "number", "boolean", "object", "array".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast


@dataclass(frozen=True)
class Field:
    name: str
    json_type: str
    required: bool = True
    nullable: bool = False
    items: str | None = None  # the object an array holds, or a nested object's name


def _f(name: str, json_type: str, *, nullable: bool = False, items: str | None = None) -> Field:
    return Field(name, json_type, True, nullable, items)


# docs/admin-api.md, field by field. "Required: No" in the health table means "may be null" there:
# the kit always sends the key (tests/e2e/test_server_start.py checks the health keys).
REFERENCE: dict[str, tuple[Field, ...]] = {
    "Health": (
        _f("status", "string"),
        _f("service", "string"),
        _f("built", "string", nullable=True),
        _f("started", "string"),
        _f("memory", "object", nullable=True, items="Memory"),
        _f("fds", "integer", nullable=True),
        _f("pid", "integer"),
        _f("ip", "string"),
        _f("userAgent", "string"),
    ),
    "Memory": (_f("heap", "integer"), _f("rss", "integer")),
    "SessionList": (_f("sessions", "array", items="SessionInfo"), _f("total", "integer")),
    "SessionInfo": (
        _f("sessionId", "string"),
        _f("peerAddr", "string"),
        _f("isV2", "boolean"),
        _f("connectionsGranted", "integer"),
        _f("activeStreams", "integer"),
        _f("maxStreams", "integer"),
        _f("bindings", "array", items="BindingInfo"),
    ),
    "BindingInfo": (
        _f("bindId", "integer"),
        _f("containerPort", "integer"),
        _f("kind", "string"),
        _f("mode", "string"),
    ),
    "BindingList": (_f("bindings", "array", items="BindingDetail"), _f("total", "integer")),
    "BindingDetail": (
        _f("bindId", "integer"),
        _f("kind", "string"),
        _f("mode", "string"),
        _f("port", "integer"),
        _f("sessionId", "string"),
    ),
    "TunnelsOverview": (
        _f("fdPermitsAvailable", "integer"),
        _f("orphanedSessions", "integer"),
        _f("totalBindings", "integer"),
        _f("totalStreams", "integer"),
        _f("sessions", "array", items="TunnelSessionView"),
    ),
    "TunnelSessionView": (
        _f("sessionId", "string"),
        _f("peerAddr", "string"),
        _f("protocol", "string"),
        _f("connectionsGranted", "integer"),
        _f("activeStreams", "integer"),
        _f("exposeBindings", "array", items="TunnelBindingView"),
        _f("pullBindings", "array", items="TunnelBindingView"),
    ),
    "TunnelBindingView": (_f("bindId", "integer"), _f("containerPort", "integer")),
    "SessionClosing": (_f("sessionId", "string"), _f("status", "string")),
    "Error": (_f("error", "string"),),
}

# Ours, on top of the reference's (never replacing one).
OURS: dict[str, tuple[Field, ...]] = {
    "SessionInfo": (
        _f("state", "string"),
        _f("protocol", "string"),
        _f("client", "string"),
        _f("userAgent", "string"),
        _f("createdAt", "string"),
        _f("bytesIn", "integer"),
        _f("bytesOut", "integer"),
        _f("rttMs", "number", nullable=True),
        _f("bytesRetransmitted", "integer"),
    ),
    "TunnelSessionView": (_f("state", "string"),),
    "TunnelBindingView": (_f("mode", "string"),),
    "TunnelsOverview": (_f("fdBudget", "integer"),),
}

# Which object each endpoint answers with (docs/admin-api.md §2), and the exact texts it fixes.
ENDPOINT_OBJECTS = {
    "/api/v1/tunnel/health": "Health",
    "/api/v1/tunnel/sessions": "SessionList",
    "/api/v1/tunnel/bindings": "BindingList",
    "/api/v1/tunnel/tunnels": "TunnelsOverview",
}
PROTECTED_ENDPOINTS = (
    ("GET", "/api/v1/tunnel/sessions"),
    ("GET", "/api/v1/tunnel/bindings"),
    ("GET", "/api/v1/tunnel/tunnels"),
    ("DELETE", "/api/v1/tunnel/sessions/sess_000000000000"),
)
PUBLIC_ENDPOINTS = (
    "/api/v1/tunnel/health",
    "/api/v1/tunnel/metrics",
    "/api/v1/tunnel/openapi.json",
)
UNAUTHORIZED = {"error": "Unauthorized"}
SESSION_NOT_FOUND = {"error": "Session not found"}
INVALID_GRACE_MS = {"error": "Invalid grace_ms: must be between 0 and 5000"}
# docs/admin-api.md §7: each of these is invalid, and so is an empty value.
INVALID_GRACE_MS_VALUES = ("-1", "5001", "abc", "1.5", "+5", "")
VALID_STATES = ("active", "orphaned", "closing")
REFERENCE_GAUGES = {
    "hoody_tunnel_sessions_active": "Number of active tunnel sessions",
    "hoody_tunnel_bindings_active": "Number of active bindings",
    "hoody_tunnel_fd_permits_available": "Available file descriptor permits",
}


def fields_of(name: str) -> tuple[Field, ...]:
    return REFERENCE[name] + OURS.get(name, ())


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def type_errors(name: str, value: Any, where: str | None = None) -> list[str]:
    """Every way ``value`` differs from object ``name``: missing, unexpected or mistyped fields.

    Walks nested objects and arrays. Returns an empty list when ``value`` matches.
    """
    where = where or name
    if not isinstance(value, dict):
        return [f"{where}: not an object: {value!r}"]
    errors: list[str] = []
    expected = fields_of(name)
    known = {field.name for field in expected}
    for key in value:
        if key not in known:
            errors.append(f"{where}: unexpected field {key!r}")
    for field in expected:
        if field.name not in value:
            if field.required:
                errors.append(f"{where}: missing field {field.name!r}")
            continue
        item = value[field.name]
        path = f"{where}.{field.name}"
        if item is None:
            if not field.nullable:
                errors.append(f"{path}: null")
            continue
        types = _PYTHON_TYPES[field.json_type]
        # JSON true/false are not integers, whatever Python thinks.
        if not isinstance(item, types) or (isinstance(item, bool) and field.json_type != "boolean"):
            errors.append(f"{path}: expected {field.json_type}, got {type(item).__name__}")
            continue
        if field.json_type == "object" and field.items:
            errors.extend(type_errors(field.items, item, path))
        if field.json_type == "array" and field.items:
            elements = cast("list[Any]", item)
            for index, element in enumerate(elements):
                errors.extend(type_errors(field.items, element, f"{path}[{index}]"))
    return errors
