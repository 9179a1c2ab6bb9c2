"""GET /api/v1/tunnel/tunnels: sessions with expose/pull bindings, totals and the FD budget.

``fdPermitsAvailable + sum(connectionsGranted) == fdBudget`` within one answer
(docs/protocol.md §12; ``fdBudget`` is our extra field): the view is one snapshot of the kit.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from tunnel.api import API_PREFIX, current_kit
from tunnel.api.auth import protect
from tunnel.api.schemas import TunnelsOverviewSchema
from tunnel.server.views import take_snapshot, tunnels_view

__all__ = ["bp"]

bp = protect(Blueprint("tunnels", __name__, url_prefix=API_PREFIX))


@bp.get("/tunnels")
def list_tunnels() -> Response:
    return jsonify(TunnelsOverviewSchema().dump(tunnels_view(take_snapshot(current_kit()))))
