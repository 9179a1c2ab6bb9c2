"""GET /api/v1/tunnel/metrics: Prometheus text exposition of the app's own registry. No auth."""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from tunnel.api import API_PREFIX, current_metrics

__all__ = ["bp"]

bp = Blueprint("metrics", __name__, url_prefix=API_PREFIX)


@bp.get("/metrics")
def metrics() -> Response:
    # text/plain; version=0.0.4: the format the customer's Prometheus scrapes
    # (docs/admin-api.md §5), and the one generate_latest() writes.
    body = generate_latest(current_metrics().registry)
    return Response(body, status=200, content_type=CONTENT_TYPE_PLAIN_0_0_4)
