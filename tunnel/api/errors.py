"""Error handlers: every error the API answers is JSON ``{"error": "..."}``, never a traceback.

Translation happens here and only here (docs/architecture.md §5):

- ``HTTPException`` (404, 405, 401, ``abort(404, "Session not found")``...) keeps its status and
  headers (``Allow`` on 405); the message is the description given to ``abort`` or, when none was,
  the standard reason phrase ("Not Found", "Method Not Allowed", "Unauthorized").
- marshmallow ``ValidationError`` is 400 ``Invalid <field>: <message>``.
- ``TunnelError`` carries its own status in an ``http_status`` attribute when it has one, else 500;
  its message is for humans and goes out as it is.
- Anything else is a bug: logged with its traceback, answered 500 ``Internal Server Error``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, Response, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from tunnel.api.schemas import ErrorSchema
from tunnel.protocol import TunnelError

__all__ = ["error_response", "register_error_handlers", "validation_message"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorBody:
    error: str


def error_response(status: int, message: str) -> Response:
    """A JSON error response: ``{"error": message}`` with ``status``."""
    response = jsonify(ErrorSchema().dump(ErrorBody(error=message)))
    response.status_code = status
    return response


def validation_message(exc: ValidationError) -> str:
    """One line from marshmallow's nested messages: ``Invalid <field>: <first message>``."""
    messages: object = exc.messages
    path: list[str] = []
    while isinstance(messages, dict) and messages:
        key, messages = next(iter(messages.items()))
        if key != "_schema":
            path.append(str(key))
    while isinstance(messages, list) and messages:
        messages = messages[0]
    text = str(messages).rstrip(".") if messages else "invalid input"
    return f"Invalid {'.'.join(path)}: {text}" if path else f"Invalid input: {text}"


def _handle_http_exception(exc: HTTPException) -> HTTPException | Response:
    if exc.code is None or exc.code < 400:
        return exc  # redirects (e.g. RequestRedirect) go out as they are
    described = exc.description is not None and exc.description != type(exc).description
    message = str(exc.description) if described else exc.name
    response = error_response(exc.code, message)
    for name, value in exc.get_headers():
        if name.lower() not in ("content-type", "content-length"):
            response.headers[name] = value
    return response


def _handle_validation_error(exc: ValidationError) -> Response:
    return error_response(400, validation_message(exc))


def _handle_tunnel_error(exc: TunnelError) -> Response:
    status = getattr(exc, "http_status", None)
    if not isinstance(status, int) or not 400 <= status <= 599:
        status = 500
    if status >= 500:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
    return error_response(status, str(exc) or type(exc).__name__)


def _handle_unexpected(exc: Exception) -> Response:
    # The boundary: the traceback goes to the log, never to the client.
    log.exception("unhandled error in request")
    return error_response(500, "Internal Server Error")


def register_error_handlers(app: Flask) -> None:
    """Install the JSON error handlers on ``app``."""
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(ValidationError, _handle_validation_error)
    app.register_error_handler(TunnelError, _handle_tunnel_error)
    app.register_error_handler(Exception, _handle_unexpected)
