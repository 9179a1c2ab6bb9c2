"""marshmallow schemas of the admin API: field names and types exactly as admin-api.md gives them.

Python attributes are snake_case; ``data_key`` carries the customer's camelCase names. Schemas
keep marshmallow's default ``unknown = RAISE``: an unexpected input field is an error, never
silently dropped. Schemas of the session, binding and tunnel views go here as well.
"""

from __future__ import annotations

from marshmallow import Schema, fields

__all__ = ["ErrorSchema", "HealthSchema", "MemorySchema"]


class ErrorSchema(Schema):
    """``{"error": "<human-readable message>"}``: every error response of the API."""

    error = fields.String(required=True)


class MemorySchema(Schema):
    """``memory`` of the health report, in bytes."""

    heap = fields.Integer(required=True)
    rss = fields.Integer(required=True)


class HealthSchema(Schema):
    """GET /api/v1/tunnel/health (admin-api.md, Health & Monitoring)."""

    status = fields.String(required=True)
    service = fields.String(required=True)
    built = fields.String(required=True, allow_none=True)
    started = fields.String(required=True)
    memory = fields.Nested(MemorySchema, required=True, allow_none=True)
    fds = fields.Integer(required=True, allow_none=True)
    pid = fields.Integer(required=True)
    ip = fields.String(required=True)
    user_agent = fields.String(required=True, data_key="userAgent")
