"""GET /api/v1/tunnel/connect: the WebSocket control plane (docs/admin-api.md §8,
docs/protocol.md §1.1).

Two rules on one path (docs/gevent-websocket.md §2). Werkzeug 3 routes a WebSocket upgrade
request only to a rule declared ``websocket=True``; without one it raises WebsocketMismatch. A
plain rule on the same path catches every other request, so a plain GET gets its 426 from this
view too.

The view decides before anything is sent. Our gunicorn handler (tunnel.server.handler) validates
the upgrade and puts ``environ["hoody_tunnel.websocket_accept"]``, a callable
``accept(subprotocol) -> Transport`` that sends the 101; nothing reaches the client until the
view calls it. Refusals are therefore plain HTTP responses:

- kit draining (SIGTERM): 503 ``server shutting down``, before any 101;
- no supported subprotocol offered: 400 + ``x-hoody-tunnel-versions``, never 101 (docs/protocol.md §1.1);
- an ``Upgrade`` header but no accept callable (the handler found the upgrade invalid): 400;
- no upgrade at all: 426 with ``Upgrade: websocket``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from flask import Blueprint, Response, request

from tunnel.api import API_PREFIX, current_kit
from tunnel.api.errors import error_response
from tunnel.protocol.versions import VERSIONS_HEADER, VERSIONS_HEADER_VALUE, choose_subprotocol

if TYPE_CHECKING:
    from tunnel.mux.transport import Transport

__all__ = ["WEBSOCKET_ACCEPT_ENVIRON_KEY", "bp"]

bp = Blueprint("connect", __name__, url_prefix=API_PREFIX)

WEBSOCKET_ACCEPT_ENVIRON_KEY = "hoody_tunnel.websocket_accept"

NO_SUBPROTOCOL_MESSAGE = f"no supported subprotocol offered (supported: {VERSIONS_HEADER_VALUE})"


def _refusal(status: int, message: str) -> Response:
    response = error_response(status, message)
    response.headers[VERSIONS_HEADER] = VERSIONS_HEADER_VALUE
    return response


@bp.route("/connect", methods=["GET"], websocket=True, endpoint="upgrade")
@bp.route("/connect", methods=["GET"], endpoint="connect")
def connect() -> Response:
    if current_kit().draining:
        return _refusal(503, "server shutting down")

    accept = cast(
        "Callable[[str], Transport] | None",
        request.environ.get(WEBSOCKET_ACCEPT_ENVIRON_KEY),
    )
    if accept is None and "Upgrade" not in request.headers:
        response = _refusal(426, "WebSocket upgrade required")
        response.headers["Upgrade"] = "websocket"
        response.headers["Connection"] = "Upgrade"
        return response

    # Several Sec-WebSocket-Protocol lines are one comma-separated list (RFC 6455 §11.3.4).
    offered = ", ".join(request.headers.getlist("Sec-WebSocket-Protocol"))
    subprotocol = choose_subprotocol(offered)
    if subprotocol is None:
        return _refusal(400, NO_SUBPROTOCOL_MESSAGE)
    if accept is None:
        return _refusal(400, "invalid WebSocket upgrade request")

    transport = accept(subprotocol)  # sends the 101
    current_kit().serve(
        transport,
        peer_address=transport.peer_address,
        user_agent=request.headers.get("User-Agent", ""),
    )
    # The handler ignores the response of an accepted upgrade; the session has ended.
    return Response(status=200)
