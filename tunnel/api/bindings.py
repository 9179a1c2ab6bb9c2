"""GET /api/v1/tunnel/bindings: every EXPOSE and PULL binding of every session
(docs/admin-api.md §6.2)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from tunnel.api import API_PREFIX, current_kit
from tunnel.api.auth import protect
from tunnel.api.schemas import BindingListSchema
from tunnel.server.views import bindings_view, take_snapshot

__all__ = ["bp"]

bp = protect(Blueprint("bindings", __name__, url_prefix=API_PREFIX))


@bp.get("/bindings")
def list_bindings() -> Response:
    return jsonify(BindingListSchema().dump(bindings_view(take_snapshot(current_kit()))))
