"""GET /api/v1/tunnel/sessions and DELETE /api/v1/tunnel/sessions/{session_id}
(docs/admin-api.md §6.1, §7).

DELETE, in this order (docs/admin-api.md §7):

1. the admin token (401), like every admin endpoint (tunnel.api.auth);
2. ``grace_ms``: validated before the session is looked up, so an invalid value is 400
   ``Invalid grace_ms: must be between 0 and 5000`` even for an unknown id;
3. unknown session: 404 ``Session not found``;
4. 200 ``{"sessionId": ..., "status": "closing"}``: :meth:`Kit.kill_session` has sent
   GOAWAY(ADMIN_CLOSE, "closed by admin"), stopped the EXPOSE listeners and started the bounded
   drain; it does not block. A session already closing answers the same 200 again.

The id is matched as a ``path``, so an id holding a ``/`` is still "Session not found" (after
the token check) rather than an unrouted 404.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, request

from tunnel.api import API_PREFIX, current_kit
from tunnel.api.auth import protect
from tunnel.api.schemas import KillQuery, KillQuerySchema, SessionClosingSchema, SessionListSchema
from tunnel.server.views import closing_view, sessions_view, take_snapshot

__all__ = ["SESSION_NOT_FOUND", "bp"]

bp = protect(Blueprint("sessions", __name__, url_prefix=API_PREFIX))

SESSION_NOT_FOUND = "Session not found"


@bp.get("/sessions")
def list_sessions() -> Response:
    return jsonify(SessionListSchema().dump(sessions_view(take_snapshot(current_kit()))))


@bp.delete("/sessions/<path:session_id>")
def kill_session(session_id: str) -> Response:
    query: KillQuery = KillQuerySchema().load(request.args)
    kit_session = current_kit().kill_session(session_id, query.grace_ms / 1000.0)
    if kit_session is None:
        abort(404, SESSION_NOT_FOUND)
    return jsonify(SessionClosingSchema().dump(closing_view(kit_session)))
