"""The admin token: ``Authorization: Bearer <admin token>`` on every admin endpoint.

Protected: sessions, bindings, tunnels (and DELETE sessions/{id}). Public: health, metrics, the
OpenAPI document and the WebSocket connect endpoint, which authenticates with client tokens in
HELLO (docs/admin-api.md §2: auth). Without the header, or with a wrong
token: **401** ``{"error": "Unauthorized"}`` and ``WWW-Authenticate: Bearer`` (RFC 6750 §3).

The comparison is constant-time (``hmac.compare_digest`` on bytes), and the token never goes to
a log line, a metric or a response: refusals are logged with their reason only.
"""

from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, request

from tunnel.api import current_settings
from tunnel.api.errors import error_response

__all__ = ["UNAUTHORIZED_MESSAGE", "admin_token_matches", "protect", "require_admin_token"]

log = logging.getLogger("tunnel.api")

UNAUTHORIZED_MESSAGE = "Unauthorized"
_BEARER = "bearer"


def admin_token_matches(authorization: str | None, admin_token: str | None) -> bool:
    """Whether an ``Authorization`` header value carries ``admin_token`` as a Bearer token.

    The scheme is case-insensitive (RFC 7235 §2.1). With no admin token configured nothing
    matches. WSGI gives header values as latin-1 text; they are compared as those bytes.
    """
    if not authorization or not admin_token:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != _BEARER:
        return False
    presented = credentials.strip().encode("latin-1", "replace")
    return hmac.compare_digest(presented, admin_token.encode("utf-8"))


def require_admin_token() -> Response | None:
    """A ``before_request`` hook: None lets the request through, else the 401 response."""
    authorization = request.headers.get("Authorization")
    if admin_token_matches(authorization, current_settings().admin_token):
        return None
    reason = "no Authorization header" if authorization is None else "wrong or malformed token"
    log.info("admin request refused: %s %s (%s)", request.method, request.path, reason)
    response = error_response(401, UNAUTHORIZED_MESSAGE)
    response.headers["WWW-Authenticate"] = 'Bearer realm="hoody-tunnel admin"'
    return response


def protect(blueprint: Blueprint) -> Blueprint:
    """Require the admin token on every route of ``blueprint``; returns it."""
    blueprint.before_request(require_admin_token)
    return blueprint
