"""marshmallow schemas of the admin API: field names and types exactly as docs/admin-api.md
gives them.

Python attributes are snake_case; ``data_key`` carries the customer's camelCase names. Schemas
keep marshmallow's default ``unknown = RAISE``: an unexpected input field is an error, never
silently dropped. Schemas of the session, binding and tunnel views go here as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from marshmallow import Schema, fields, post_load, pre_load, validate

__all__ = [
    "BIND_KINDS",
    "BIND_MODES",
    "BindingDetailSchema",
    "BindingInfoSchema",
    "BindingListSchema",
    "ErrorSchema",
    "GRACE_MS_DEFAULT",
    "GRACE_MS_ERROR",
    "GRACE_MS_MAX",
    "GRACE_MS_MIN",
    "GraceMilliseconds",
    "HealthSchema",
    "KillQuery",
    "KillQuerySchema",
    "MemorySchema",
    "PROTOCOLS",
    "SESSION_STATES",
    "SessionClosingSchema",
    "SessionInfoSchema",
    "SessionListSchema",
    "TunnelBindingViewSchema",
    "TunnelSessionViewSchema",
    "TunnelsOverviewSchema",
]


class ErrorSchema(Schema):
    """``{"error": "<human-readable message>"}``: every error response of the API."""

    error = fields.String(required=True)


class MemorySchema(Schema):
    """``memory`` of the health report, in bytes."""

    heap = fields.Integer(required=True)
    rss = fields.Integer(required=True)


class HealthSchema(Schema):
    """GET /api/v1/tunnel/health (docs/admin-api.md §4)."""

    status = fields.String(required=True)
    service = fields.String(required=True)
    built = fields.String(required=True, allow_none=True)
    started = fields.String(required=True)
    memory = fields.Nested(MemorySchema, required=True, allow_none=True)
    fds = fields.Integer(required=True, allow_none=True)
    pid = fields.Integer(required=True)
    ip = fields.String(required=True)
    user_agent = fields.String(required=True, data_key="userAgent")


# -- sessions, bindings, tunnels (docs/admin-api.md §6) ------------------------------------------
#
# The reference's fields come first, in the reference's order, with its names and JSON types.
# Fields after them are ours (docs/admin-api.md §1: ``state`` is
# required; bytes, RTT, user agent and created time are welcome). Every field of a response is
# ``required``: the OpenAPI document (tunnel.api.openapi) lists them as such, and clients may
# rely on each key being present (null where the type says so).

#: Session states the views show (docs/admin-api.md §6.4; docs/operations.md).
SESSION_STATES = ("active", "orphaned", "closing")
BIND_KINDS = ("EXPOSE", "PULL")
BIND_MODES = ("tcp", "http")
PROTOCOLS = ("hoody-tunnel.v1", "hoody-tunnel.v2")
#: DELETE /sessions/{id}?grace_ms=: the exact 400 text (docs/admin-api.md §7).
GRACE_MS_MIN = 0
GRACE_MS_MAX = 5000
GRACE_MS_DEFAULT = 50
GRACE_MS_ERROR = f"must be between {GRACE_MS_MIN} and {GRACE_MS_MAX}"


class BindingInfoSchema(Schema):
    """One binding inside a SessionInfo (GET /sessions)."""

    bind_id = fields.Integer(required=True, data_key="bindId")
    container_port = fields.Integer(required=True, data_key="containerPort")
    kind = fields.String(required=True, validate=validate.OneOf(BIND_KINDS))
    mode = fields.String(required=True, validate=validate.OneOf(BIND_MODES))


class SessionInfoSchema(Schema):
    """One session of GET /sessions."""

    session_id = fields.String(required=True, data_key="sessionId")
    peer_addr = fields.String(required=True, data_key="peerAddr")
    is_v2 = fields.Boolean(required=True, data_key="isV2")
    connections_granted = fields.Integer(required=True, data_key="connectionsGranted")
    active_streams = fields.Integer(required=True, data_key="activeStreams")
    max_streams = fields.Integer(required=True, data_key="maxStreams")
    bindings = fields.List(fields.Nested(BindingInfoSchema), required=True)
    # Ours.
    state = fields.String(required=True, validate=validate.OneOf(SESSION_STATES))
    protocol = fields.String(required=True, validate=validate.OneOf(PROTOCOLS))
    client = fields.String(
        required=True, metadata={"description": "The client name its HELLO gave (\"\" before it)"}
    )
    user_agent = fields.String(required=True, data_key="userAgent")
    created_at = fields.String(
        required=True,
        data_key="createdAt",
        metadata={"description": "When the WebSocket was accepted, ISO-8601 UTC"},
    )
    bytes_in = fields.Integer(
        required=True,
        data_key="bytesIn",
        metadata={"description": "Stream payload bytes received from the client"},
    )
    bytes_out = fields.Integer(
        required=True,
        data_key="bytesOut",
        metadata={"description": "Stream payload bytes sent to the client"},
    )
    rtt_ms = fields.Float(
        required=True,
        allow_none=True,
        data_key="rttMs",
        metadata={"description": "Round-trip time of the last heartbeat PING, null before one"},
    )
    bytes_retransmitted = fields.Integer(
        required=True,
        data_key="bytesRetransmitted",
        metadata={"description": "v2: DATA bytes sent again after resumes (extra field)"},
    )


class SessionListSchema(Schema):
    """GET /api/v1/tunnel/sessions."""

    sessions = fields.List(fields.Nested(SessionInfoSchema), required=True)
    total = fields.Integer(required=True)


class BindingDetailSchema(Schema):
    """One binding of GET /bindings: the flat, cross-session view."""

    bind_id = fields.Integer(required=True, data_key="bindId")
    kind = fields.String(required=True, validate=validate.OneOf(BIND_KINDS))
    mode = fields.String(required=True, validate=validate.OneOf(BIND_MODES))
    port = fields.Integer(required=True)
    session_id = fields.String(required=True, data_key="sessionId")


class BindingListSchema(Schema):
    """GET /api/v1/tunnel/bindings."""

    bindings = fields.List(fields.Nested(BindingDetailSchema), required=True)
    total = fields.Integer(required=True)


class TunnelBindingViewSchema(Schema):
    """One expose or pull binding of a TunnelSessionView."""

    bind_id = fields.Integer(required=True, data_key="bindId")
    container_port = fields.Integer(required=True, data_key="containerPort")
    # Ours.
    mode = fields.String(required=True, validate=validate.OneOf(BIND_MODES))


class TunnelSessionViewSchema(Schema):
    """One session of GET /tunnels."""

    session_id = fields.String(required=True, data_key="sessionId")
    peer_addr = fields.String(required=True, data_key="peerAddr")
    protocol = fields.String(required=True, validate=validate.OneOf(PROTOCOLS))
    connections_granted = fields.Integer(required=True, data_key="connectionsGranted")
    active_streams = fields.Integer(required=True, data_key="activeStreams")
    expose_bindings = fields.List(
        fields.Nested(TunnelBindingViewSchema), required=True, data_key="exposeBindings"
    )
    pull_bindings = fields.List(
        fields.Nested(TunnelBindingViewSchema), required=True, data_key="pullBindings"
    )
    # Ours.
    state = fields.String(required=True, validate=validate.OneOf(SESSION_STATES))


class TunnelsOverviewSchema(Schema):
    """GET /api/v1/tunnel/tunnels: the single-call dashboard."""

    fd_permits_available = fields.Integer(required=True, data_key="fdPermitsAvailable")
    orphaned_sessions = fields.Integer(required=True, data_key="orphanedSessions")
    total_bindings = fields.Integer(required=True, data_key="totalBindings")
    total_streams = fields.Integer(required=True, data_key="totalStreams")
    sessions = fields.List(fields.Nested(TunnelSessionViewSchema), required=True)
    # Ours: fdPermitsAvailable + sum(connectionsGranted) == fdBudget (docs/protocol.md §12).
    fd_budget = fields.Integer(
        required=True,
        data_key="fdBudget",
        metadata={"description": "Size of the FD budget (HOODY_TUNNEL_FD_BUDGET)"},
    )


class GraceMilliseconds(fields.Integer):
    """``grace_ms``: decimal digits only, 0-5000 (docs/admin-api.md §7).

    ``fields.Integer`` alone would take ``+5``, ``-1`` (then caught by the range), `` 5`` and
    ``５`` (a fullwidth digit); here the text must be ASCII digits before it becomes a number.
    Every refusal carries the one message the reference gives. Leading zeros are fine; more
    than four significant digits are refused before ``int()``, which would otherwise parse
    thousands of digits.
    """

    default_error_messages = {
        "invalid": GRACE_MS_ERROR,
        "null": GRACE_MS_ERROR,
        "required": GRACE_MS_ERROR,
        "too_large": GRACE_MS_ERROR,
    }

    def _deserialize(self, value: object, attr: object, data: object, **kwargs: object) -> int:
        if not isinstance(value, str) or not value.isascii() or not value.isdigit():
            raise self.make_error("invalid")
        significant = value.lstrip("0")
        if len(significant) > len(str(GRACE_MS_MAX)):
            raise self.make_error("invalid")
        return int(significant or "0")


class KillQuerySchema(Schema):
    """The query of DELETE /api/v1/tunnel/sessions/{session_id}."""

    grace_ms = GraceMilliseconds(
        load_default=GRACE_MS_DEFAULT,
        validate=validate.Range(min=GRACE_MS_MIN, max=GRACE_MS_MAX, error=GRACE_MS_ERROR),
        metadata={"description": "GOAWAY drain budget in ms (0-5000, default 50)"},
    )

    @pre_load
    def _single_values(self, data: object, **kwargs: object) -> object:
        # request.args is a MultiDict; a repeated key is ambiguous, so it stays a list (invalid).
        getlist = getattr(data, "getlist", None)
        if getlist is None or not isinstance(data, Mapping):
            return data
        single: dict[str, object] = {}
        for key in data:
            values = getlist(key)
            single[key] = values[0] if len(values) == 1 else values
        return single

    @post_load
    def _make_query(self, data: dict[str, int], **kwargs: object) -> KillQuery:
        return KillQuery(grace_ms=data["grace_ms"])


@dataclass(frozen=True, slots=True)
class KillQuery:
    """A validated DELETE query."""

    grace_ms: int


class SessionClosingSchema(Schema):
    """200 of DELETE /api/v1/tunnel/sessions/{session_id}: the close has been initiated."""

    session_id = fields.String(required=True, data_key="sessionId")
    status = fields.String(required=True, validate=validate.OneOf(("closing",)))
