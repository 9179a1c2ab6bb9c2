"""The server's WebSocket handler and gunicorn worker: the 101 waits for the view
(docs/gevent-websocket.md §3).

gevent-websocket's `WebSocketHandler.run_application` sends ``101 Switching Protocols`` before the
application runs and picks a subprotocol by substring (``hoody-tunnel.v10`` matches ``v1``), so
a view can neither choose the protocol nor refuse with a plain HTTP answer (docs/protocol.md §1.1:
400 + ``x-hoody-tunnel-versions``, never a 101). `TunnelWebSocketHandler` instead:

1. on a valid upgrade request (GET, HTTP/1.1, ``Upgrade: websocket``, ``Connection`` containing
   ``upgrade``, ``Sec-WebSocket-Version: 13``, a base64 key of 16 bytes, no request body) sends
   nothing and puts ``environ["hoody_tunnel.websocket_accept"] = accept(subprotocol) ->
   SocketTransport`` (and the offered list at ``"hoody_tunnel.websocket_subprotocols"``);
2. runs the WSGI application as plain pywsgi would;
3. if the application called ``accept``, the 101 went out then with exactly that subprotocol, and
   whatever the application returns afterwards is discarded: no HTTP is written after a 101, the
   transport is closed (1000; 1011 if the application raised or answered 5xx; 1001 if its
   greenlet was killed, e.g. by the worker's shutdown) and the connection ends;
4. otherwise the application's own response (400, 426, ...) goes out as ordinary HTTP, with
   ``Connection: close`` added (unless the application set a Connection header) and the
   connection closed after it.

Anything else, an invalid upgrade included, is handled as plain HTTP without an ``accept``
callable, so the application answers it (e.g. 400). gevent-websocket's own `WebSocket` object is
never created: the session runs over `tunnel.mux.transport.SocketTransport`, reading through the
handler's buffered ``rfile`` (bytes it already buffered are not lost) and writing to its socket.
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket as stdlib_socket
from collections.abc import Callable
from typing import Any, Final

import gevent
from gevent.pywsgi import WSGIHandler
from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
from geventwebsocket.handler import WebSocketHandler
from gunicorn.workers.ggevent import PyWSGIHandler  # type: ignore[import-untyped, unused-ignore]

from tunnel.mux.transport import ConnectionClosed, SocketTransport, format_address
from tunnel.mux.websocket import CloseCode, compute_accept_key

__all__ = [
    "ACCEPT_ENVIRON_KEY",
    "SEND_TIMEOUT_ENVIRON_KEY",
    "SUBPROTOCOLS_ENVIRON_KEY",
    "TunnelWebSocketHandler",
    "TunnelWorker",
    "WebSocketAccept",
]

log = logging.getLogger(__name__)

#: environ key of the ``accept(subprotocol: str) -> SocketTransport`` callable.
ACCEPT_ENVIRON_KEY: Final = "hoody_tunnel.websocket_accept"
#: environ key of the offered subprotocols, in the client's order (list[str]).
SUBPROTOCOLS_ENVIRON_KEY: Final = "hoody_tunnel.websocket_subprotocols"
#: optional environ key the application may set (float seconds) before calling accept.
SEND_TIMEOUT_ENVIRON_KEY: Final = "hoody_tunnel.send_timeout_s"
DEFAULT_SEND_TIMEOUT_S: Final = 30.0

WebSocketAccept = Callable[[str], SocketTransport]


def _header_tokens(value: str) -> list[str]:
    return [token.strip().lower() for token in value.split(",") if token.strip()]


class TunnelWebSocketHandler(WebSocketHandler, PyWSGIHandler):  # type: ignore[misc]
    """pywsgi handler that defers the 101 until the application accepts (module docstring).

    It also derives from gunicorn's `PyWSGIHandler` (gevent-websocket's worker does not), so under
    gunicorn the access log and ``gunicorn.sock``/``RAW_URI`` environ keys keep working.
    """

    _transport: SocketTransport | None = None
    _upgraded = False  # the 101 went out (or started to): the HTTP response is over
    _close_code: int = CloseCode.NORMAL  # for the close after an accepted application returns
    headers_sent: bool

    # -- request classification ----------------------------------------------------------------

    def _websocket_key(self) -> str | None:
        """The Sec-WebSocket-Key of a valid upgrade request (RFC 6455 §4.2.1), else None."""
        environ = self.environ
        if environ.get("REQUEST_METHOD") != "GET" or self.request_version != "HTTP/1.1":
            return None
        if "websocket" not in _header_tokens(environ.get("HTTP_UPGRADE", "")):
            return None
        if "upgrade" not in _header_tokens(environ.get("HTTP_CONNECTION", "")):
            return None
        if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
            return None
        # A body on an upgrade request would make the bytes after the headers ambiguous
        # (body or frames?): not a valid upgrade.
        if environ.get("CONTENT_LENGTH", "0").strip() not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ:
            return None
        key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                return None
        except (binascii.Error, ValueError):
            return None
        return str(key)

    # -- running the application ---------------------------------------------------------------

    def run_application(self) -> None:
        key = self._websocket_key()
        if key is None:
            # Plain HTTP (or an invalid upgrade the app will refuse): skip WebSocketHandler.
            WSGIHandler.run_application(self)
            return
        offered = _header_tokens_preserving_case(self.environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", ""))
        self.environ[SUBPROTOCOLS_ENVIRON_KEY] = offered

        def accept(subprotocol: str) -> SocketTransport:
            return self._accept(key, offered, subprotocol)

        self.environ[ACCEPT_ENVIRON_KEY] = accept
        self._close_code = CloseCode.NORMAL
        try:
            self.result = self.application(self.environ, self.start_response)
            self._process_result_unless_accepted()
        except gevent.GreenletExit:
            self._close_code = CloseCode.GOING_AWAY  # killed: the worker is shutting down
            raise
        except BaseException:
            self._close_code = CloseCode.INTERNAL_ERROR
            raise
        finally:
            close = getattr(self.result, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                self.result = None
                if self._transport is not None:
                    # Nothing more goes out as HTTP after a 101; end the WebSocket properly.
                    self._transport.close(self._close_code)
                    self.close_connection = True

    def _process_result_unless_accepted(self) -> None:
        """pywsgi's process_result, except that nothing is written once accept() was called
        (possibly while the result was being iterated)."""
        for data in self.result:
            if not self._upgraded and data:
                self.write(data)
        if self._upgraded:
            return
        if self.status and not self.headers_sent:
            self.write(b"")  # an empty body: flush the headers
        if self.response_use_chunked:
            self._sendall(b"0\r\n\r\n")

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if self._upgraded:
            # The view returned (e.g. Flask's response to the websocket route) after the 101:
            # write nothing; a 5xx (Flask turned an exception into a 500) closes with 1011.
            if status.startswith("5"):
                self._close_code = CloseCode.INTERNAL_ERROR
            return self._discard
        if "websocket" in _header_tokens(self.environ.get("HTTP_UPGRADE", "")) and not any(
            name.lower() == "connection" for name, _ in headers
        ):
            # A refused upgrade ends the connection: the client has nothing more to say on it,
            # and it need not parse the body to know where the response ends.
            headers = [*headers, ("Connection", "close")]
        # gevent-websocket's start_response asserts on state we manage ourselves: bypass it.
        writer: Callable[[bytes], None] = WSGIHandler.start_response(self, status, headers, exc_info)
        return writer

    def write(self, data: bytes) -> None:
        if self._upgraded:
            return  # never HTTP bytes into a WebSocket stream
        WSGIHandler.write(self, data)

    @staticmethod
    def _discard(data: bytes) -> None:
        del data

    def _accept(self, key: str, offered: list[str], subprotocol: str) -> SocketTransport:
        """Send the 101 with ``subprotocol`` (``""``: no Sec-WebSocket-Protocol header) and
        return the transport. Called by the application, at most once."""
        if self._upgraded:
            raise RuntimeError("the WebSocket was already accepted")
        if self.headers_sent:
            raise RuntimeError("an HTTP response was already sent")
        if subprotocol and subprotocol not in offered:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered (offered: {offered})")
        send_timeout_s = float(self.environ.get(SEND_TIMEOUT_ENVIRON_KEY, DEFAULT_SEND_TIMEOUT_S))
        headers = [
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Accept", compute_accept_key(key).encode("ascii")),
        ]
        if subprotocol:
            headers.append((b"Sec-WebSocket-Protocol", subprotocol.encode("latin-1")))
        response = b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in headers
        ) + b"\r\n"
        # From here on no HTTP byte may be written, even if the 101 fails half-way.
        self._upgraded = True
        # pywsgi's bookkeeping, so logging and handle_one_request see a sent 101 response.
        self.status = b"101 Switching Protocols"
        self._orig_status = "101 Switching Protocols"
        self.code = 101
        self.response_headers = headers
        self.headers_sent = True
        self.connection_upgraded = True
        self.response_use_chunked = False
        self.close_connection = True  # after the session the TCP connection ends
        sock = self.socket
        try:
            sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not TCP (a unix socket): nothing to tune
        timer = gevent.Timeout(send_timeout_s)
        timer.start()
        try:
            self._sendall(response)
        except (OSError, gevent.Timeout) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            raise ConnectionClosed(None, f"could not send the 101: {exc}") from None
        finally:
            timer.close()
        transport = SocketTransport(
            self.rfile,
            sock,
            mask_outgoing=False,
            subprotocol=subprotocol,
            peer_address=format_address(self.client_address),
            local_address=_local_address(sock),
            send_timeout_s=send_timeout_s,
        )
        self._transport = transport
        return transport

    # -- logging -------------------------------------------------------------------------------

    def log_request(self) -> None:
        # gevent-websocket skips every 101; gunicorn's PyWSGIHandler needs gunicorn's logger.
        if hasattr(self.server.log, "access"):
            PyWSGIHandler.log_request(self)
        else:
            WSGIHandler.log_request(self)


def _header_tokens_preserving_case(value: str) -> list[str]:
    return [token.strip() for token in value.split(",") if token.strip()]


def _local_address(sock: Any) -> str:
    try:
        return format_address(sock.getsockname())
    except OSError:
        return ""


class TunnelWorker(GeventWebSocketWorker):  # type: ignore[misc]
    """gunicorn worker: gevent-websocket's, with the deferred-101 handler.

    gunicorn's gevent worker passes ``handler_class=self.wsgi_handler`` to its PyWSGIServer in
    ``run()``, so the class attribute is all it takes (``worker_class =
    "tunnel.server.handler.TunnelWorker"``).
    """

    wsgi_handler = TunnelWebSocketHandler

