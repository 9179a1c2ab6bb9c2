"""SocketTransport, connect() and TunnelWebSocketHandler over real gevent sockets on loopback.

No monkeypatching: the server is a gevent.pywsgi.WSGIServer with TunnelWebSocketHandler and a
small WSGI app of this module; clients are the real `connect()` or raw gevent sockets. Nothing
sleeps to synchronise: tests wait on gevent queues/events with deadlines.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
import ssl
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.pool
import gevent.pywsgi
import gevent.queue
import gevent.server
import gevent.socket
import gevent.ssl
import pytest

from tests.waiting import timeout_factor
from tunnel.mux.ws_client import connect
from tunnel.mux.transport import (
    ConnectionClosed,
    HandshakeRejected,
    MessageTooBig,
    ProtocolViolation,
    SendTimeout,
    SocketTransport,
    TextMessageReceived,
    TransportError,
    compute_accept_key,
)
from tunnel.mux.websocket import FrameReader, Message, Opcode, encode_frame, encode_frame_header, parse_close_payload
from tunnel.server.handler import (
    ACCEPT_ENVIRON_KEY,
    SEND_TIMEOUT_ENVIRON_KEY,
    SUBPROTOCOLS_ENVIRON_KEY,
    TunnelWebSocketHandler,
    TunnelWorker,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FACTOR = timeout_factor()
WAIT_S = 10.0 * FACTOR
MIB = 1024 * 1024
SUPPORTED = ("hoody-tunnel.v2", "hoody-tunnel.v1")
VERSIONS_HEADER = "x-hoody-tunnel-versions"
SEND_TIMEOUT_S = 0.5


# -- the server under test ------------------------------------------------------------------------


class TunnelApp:
    """WSGI app: picks the highest supported subprotocol or answers 400/426 like the real view.

    The path selects what the session does (``_session_<name>``); results go to ``events``.
    """

    def __init__(self) -> None:
        self.events: gevent.queue.Queue[Any] = gevent.queue.Queue()
        self.release = gevent.event.Event()
        self.paths: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ["PATH_INFO"]
        self.paths.append(path)
        accept = environ.get(ACCEPT_ENVIRON_KEY)
        if accept is None:
            if "HTTP_UPGRADE" in environ:
                return self._refuse(start_response, "400 Bad Request", "invalid WebSocket upgrade request")
            return self._refuse(start_response, "426 Upgrade Required", "WebSocket upgrade required")
        offered = environ[SUBPROTOCOLS_ENVIRON_KEY]
        chosen = next((p for p in SUPPORTED if p in offered), None)
        if chosen is None:
            return self._refuse(start_response, "400 Bad Request", "no supported subprotocol offered")
        if path in ("/flood", "/noread"):
            environ[SEND_TIMEOUT_ENVIRON_KEY] = SEND_TIMEOUT_S
        transport = accept(chosen)
        session = getattr(self, "_session_" + path.strip("/").replace("-", "_"), self._session_echo)
        session(transport)
        # Flask answers 500 when a view raised: the handler must close 1011, and write nothing.
        start_response("500 Internal Server Error" if path == "/fail500" else "200 OK", [("Content-Type", "text/plain")])
        return [b"SHOULD NOT APPEAR"]

    @staticmethod
    def _refuse(start_response: Callable[..., Any], status: str, message: str) -> list[bytes]:
        body = json.dumps({"error": message}).encode()
        start_response(
            status,
            [("Content-Type", "application/json"), (VERSIONS_HEADER, ", ".join(SUPPORTED)), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _session_echo(self, transport: SocketTransport) -> None:
        try:
            while True:
                transport.send_messages([transport.receive_message()])
        except (ConnectionClosed, TextMessageReceived, MessageTooBig) as exc:
            self.events.put(exc)

    def _session_close1001(self, transport: SocketTransport) -> None:
        transport.close(1001, "going away")
        self.events.put("closed")

    def _session_return(self, transport: SocketTransport) -> None:
        transport.send_messages([b"before return"])

    def _session_fail500(self, transport: SocketTransport) -> None:
        pass

    def _session_raise(self, transport: SocketTransport) -> None:
        raise RuntimeError("boom after accept")

    def _session_burst(self, transport: SocketTransport) -> None:
        senders = [gevent.spawn(_send_tagged, transport, sender_id, 25) for sender_id in range(20)]
        gevent.joinall(senders, raise_error=True)
        self.events.put("sent")
        self._session_echo(transport)  # until the client closes

    def _session_flood(self, transport: SocketTransport) -> None:
        message = b"f" * MIB
        while True:
            started = time.monotonic()
            try:
                transport.send_messages([message])
            except SendTimeout as exc:
                self.events.put((exc, time.monotonic() - started))
                break
        try:
            transport.send_messages([b"after"])
        except ConnectionClosed as exc:
            self.events.put(exc)

    def _session_noread(self, transport: SocketTransport) -> None:
        self.release.wait(WAIT_S)


class ErrorLog:
    """pywsgi error_log that keeps lines instead of printing them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, data: str) -> None:
        self.lines.append(data)

    def writelines(self, lines: Iterable[str]) -> None:
        self.lines.extend(lines)

    def flush(self) -> None:
        pass


class Server:
    def __init__(self, **ssl_args: Any) -> None:
        self.app = TunnelApp()
        self.error_log = ErrorLog()
        self.wsgi = gevent.pywsgi.WSGIServer(
            ("127.0.0.1", 0),
            self.app,
            spawn=gevent.pool.Pool(100),  # as gunicorn's worker does: stop() kills what is left
            handler_class=TunnelWebSocketHandler,
            log=None,
            error_log=self.error_log,
            **ssl_args,
        )
        self.wsgi.start()  # listening once start() returns: no race
        port = self.wsgi.server_port
        assert port is not None
        self.port: int = port
        self.scheme = "wss" if ssl_args else "ws"

    def url(self, path: str = "/echo") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def next_event(self) -> Any:
        return self.app.events.get(timeout=WAIT_S)


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    try:
        yield srv
    finally:
        srv.app.release.set()
        srv.wsgi.stop(timeout=WAIT_S)


@pytest.fixture
def client_factory(server: Server) -> Iterator[Callable[..., SocketTransport]]:
    opened: list[SocketTransport] = []

    def open_client(path: str = "/echo", subprotocols: tuple[str, ...] = SUPPORTED, **kwargs: Any) -> SocketTransport:
        transport = connect(server.url(path), list(subprotocols), timeout_s=WAIT_S, **kwargs)
        opened.append(transport)
        return transport

    yield open_client
    for transport in opened:
        transport.abort()


# -- helpers -------------------------------------------------------------------------------------


def _tagged(sender_id: int, seq: int) -> bytes:
    size = (sender_id * 7919 + seq * 104729) % 70000
    return struct.pack("!HI", sender_id, seq) + bytes([sender_id]) * size


def _send_tagged(transport: SocketTransport, sender_id: int, count: int) -> None:
    for seq in range(count):
        transport.send_messages([_tagged(sender_id, seq)])
        if seq % 5 == 0:
            gevent.sleep(0)  # interleave the senders (not synchronisation)


def _check_tagged(messages: list[bytes | bytearray], senders: int, count: int) -> None:
    next_seq = dict.fromkeys(range(senders), 0)
    for message in messages:
        sender_id, seq = struct.unpack_from("!HI", message)
        assert message == _tagged(sender_id, seq), f"corrupted message {sender_id}/{seq}"
        assert seq == next_seq[sender_id], "messages of one sender reordered"
        next_seq[sender_id] += 1
    assert next_seq == dict.fromkeys(range(senders), count)


class RawClient:
    """A hand-written WebSocket client over a gevent socket, for what connect() never sends."""

    def __init__(self, port: int, *, path: str = "/echo", protocols: str = "hoody-tunnel.v1", version: str = "13", extra_request_bytes: bytes = b"") -> None:
        self.sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: {version}\r\n"
            f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
        ).encode()
        self.sock.sendall(request + extra_request_bytes)  # one segment: frames pipelined
        self._buffer = bytearray()
        self.frames = FrameReader(self.read_exactly, expect_masked=False)

    def read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_response_head(self) -> bytes:
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            assert chunk, f"EOF before the end of the response head: {bytes(self._buffer)!r}"
            self._buffer += chunk
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer = bytearray(rest)
        return head

    def read_all(self) -> bytes:
        """Everything until EOF (the server closes after a refusal or a WebSocket close)."""
        while chunk := self.sock.recv(65536):
            self._buffer += chunk
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def send_frame(self, opcode: int, payload: bytes, *, masked: bool = True, fin: bool = True) -> None:
        self.sock.sendall(encode_frame(opcode, payload, fin=fin, mask_key=os.urandom(4) if masked else None))

    def read_message(self) -> Message:
        return self.frames.read_message()

    def close(self) -> None:
        self.sock.close()


def _header_value(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# -- echo and sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, MIB, 4 * MIB])
def test_echo_of_every_length_class_up_to_exactly_4_mib(client_factory: Callable[..., SocketTransport], size: int) -> None:
    client = client_factory()
    payload = os.urandom(size)
    client.send_messages([payload])
    assert client.receive_message() == payload


def test_several_messages_in_one_send_arrive_as_separate_messages(client_factory: Callable[..., SocketTransport]) -> None:
    client = client_factory()
    payloads = [b"", b"a", os.urandom(70000), b"z" * 126]
    client.send_messages(payloads)
    assert [client.receive_message() for _ in payloads] == payloads


def test_message_over_4_mib_is_closed_with_1009_without_being_buffered(
    server: Server, client_factory: Callable[..., SocketTransport]
) -> None:
    client = client_factory()
    sender = gevent.spawn(client.send_messages, [b"x" * (4 * MIB + 1)])
    with pytest.raises(ConnectionClosed) as info:
        client.receive_message()
    assert info.value.code == 1009
    assert client.close_code_received == 1009
    sender.join(WAIT_S)
    assert sender.ready() and (sender.exception is None or isinstance(sender.exception, ConnectionClosed))
    seen = server.next_event()
    assert isinstance(seen, MessageTooBig) and seen.message_size == 4 * MIB + 1


def test_header_claiming_8_gib_gets_1009_at_once(server: Server) -> None:
    raw = RawClient(server.port)
    assert raw.read_response_head().startswith(b"HTTP/1.1 101 ")
    raw.sock.sendall(encode_frame_header(Opcode.BINARY, 8 << 30, mask_key=os.urandom(4)))
    message = raw.read_message()
    assert message.opcode == Opcode.CLOSE and parse_close_payload(message.payload)[0] == 1009
    assert isinstance(server.next_event(), MessageTooBig)
    raw.close()


# -- handshake: subprotocol, refusal, deferral -----------------------------------------------------


def test_chosen_subprotocol_is_echoed_exactly(server: Server, client_factory: Callable[..., SocketTransport]) -> None:
    # docs/gevent-websocket.md §3: "hoody-tunnel.v10" must not match "hoody-tunnel.v1" by substring.
    client = client_factory(subprotocols=("hoody-tunnel.v10", "hoody-tunnel.v1"))
    assert client.subprotocol == "hoody-tunnel.v1"
    assert client_factory(subprotocols=("hoody-tunnel.v1", "hoody-tunnel.v2")).subprotocol == "hoody-tunnel.v2"
    raw = RawClient(server.port, protocols="hoody-tunnel.v1, hoody-tunnel.v2")
    head = raw.read_response_head()
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols")
    assert _header_value(head, b"Sec-WebSocket-Protocol") == b"hoody-tunnel.v2"
    assert _header_value(head, b"Sec-WebSocket-Accept") == compute_accept_key(raw.key).encode()
    raw.close()


def test_refusal_is_plain_http_400_and_never_a_101(server: Server) -> None:
    with pytest.raises(HandshakeRejected) as info:
        connect(server.url(), ["other.v1"], timeout_s=WAIT_S)
    assert info.value.status == 400
    assert info.value.header(VERSIONS_HEADER) == "hoody-tunnel.v2, hoody-tunnel.v1"
    assert json.loads(info.value.body) == {"error": "no supported subprotocol offered"}
    raw = RawClient(server.port, protocols="other.v1")
    response = raw.read_all()
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"101" not in response
    assert response.endswith(b'{"error": "no supported subprotocol offered"}')


def test_invalid_upgrade_gets_no_accept_callable_and_the_apps_400(server: Server) -> None:
    raw = RawClient(server.port, version="8")
    response = raw.read_all()
    assert response.startswith(b"HTTP/1.1 400 ")
    assert b"invalid WebSocket upgrade request" in response and b"101" not in response


def test_plain_get_gets_the_apps_426(server: Server) -> None:
    sock = gevent.socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S)
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = b""
    while chunk := sock.recv(65536):
        response += chunk
    assert response.startswith(b"HTTP/1.1 426 ")
    sock.close()


def test_connect_implies_the_tunnel_path(server: Server) -> None:
    client = connect(f"ws://127.0.0.1:{server.port}", list(SUPPORTED), timeout_s=WAIT_S)
    client.send_messages([b"ping"])
    assert client.receive_message() == b"ping"
    assert server.app.paths == ["/api/v1/tunnel/connect"]
    client.close()


def test_app_returning_after_accept_writes_no_http_and_closes_1000(server: Server) -> None:
    raw = RawClient(server.port, path="/return")
    assert raw.read_response_head().startswith(b"HTTP/1.1 101 ")
    assert raw.read_message() == Message(Opcode.BINARY, b"before return")
    close = raw.read_message()
    assert close.opcode == Opcode.CLOSE and parse_close_payload(close.payload) == (1000, "")
    rest = raw.read_all()
    assert rest == b"" and b"SHOULD NOT APPEAR" not in rest


def test_app_raising_after_accept_closes_1011(server: Server, capfd: pytest.CaptureFixture[str]) -> None:
    raw = RawClient(server.port, path="/raise")
    assert raw.read_response_head().startswith(b"HTTP/1.1 101 ")
    close = raw.read_message()
    assert close.opcode == Opcode.CLOSE and parse_close_payload(close.payload)[0] == 1011
    assert raw.read_all() == b""
    # pywsgi reports the application's error through the hub (stderr), not as an HTTP 500.
    assert "boom after accept" in capfd.readouterr().err


def test_app_answering_5xx_after_accept_closes_1011(server: Server) -> None:
    raw = RawClient(server.port, path="/fail500")
    assert raw.read_response_head().startswith(b"HTTP/1.1 101 ")
    close = raw.read_message()
    assert close.opcode == Opcode.CLOSE and parse_close_payload(close.payload)[0] == 1011
    assert raw.read_all() == b""


def test_session_killed_by_server_shutdown_closes_1001(server: Server, client_factory: Callable[..., SocketTransport]) -> None:
    client = client_factory("/noread")
    # What gunicorn does at graceful_timeout: stop() kills the handler greenlets (GreenletExit).
    stopper = gevent.spawn(server.wsgi.stop, timeout=0.01)
    with pytest.raises(ConnectionClosed) as info:
        client.receive_message()
    assert info.value.code == 1001
    stopper.join(WAIT_S)
    assert stopper.successful()


def test_frames_pipelined_behind_the_request_are_not_lost(server: Server) -> None:
    # The rfile buffers the frame together with the request headers; the transport must use it.
    frame = encode_frame(Opcode.BINARY, b"early bird", mask_key=os.urandom(4))
    raw = RawClient(server.port, extra_request_bytes=frame)
    assert raw.read_response_head().startswith(b"HTTP/1.1 101 ")
    assert raw.read_message() == Message(Opcode.BINARY, b"early bird")
    raw.close()


def test_worker_uses_the_deferring_handler() -> None:
    assert TunnelWorker.wsgi_handler is TunnelWebSocketHandler


# -- close codes ---------------------------------------------------------------------------------


def test_client_close_code_and_reason_reach_the_server(server: Server, client_factory: Callable[..., SocketTransport]) -> None:
    client = client_factory()
    client.close(4001, "bye")
    seen = server.next_event()
    assert isinstance(seen, ConnectionClosed) and (seen.code, seen.reason) == (4001, "bye")
    client.close(4001, "bye")  # idempotent
    with pytest.raises(ConnectionClosed):
        client.send_messages([b"late"])
    with pytest.raises(ConnectionClosed):
        client.receive_message()


def test_server_close_code_reaches_the_client(server: Server, client_factory: Callable[..., SocketTransport]) -> None:
    client = client_factory("/close1001")
    with pytest.raises(ConnectionClosed) as info:
        client.receive_message()
    assert (info.value.code, info.value.reason) == (1001, "going away")
    assert client.close_code_received == 1001
    assert server.next_event() == "closed"


def test_peer_close_is_echoed_once_with_its_code(server: Server) -> None:
    raw = RawClient(server.port)
    raw.read_response_head()
    raw.send_frame(Opcode.CLOSE, struct.pack("!H", 4002) + b"done")
    echo = raw.read_message()
    assert echo.opcode == Opcode.CLOSE and parse_close_payload(echo.payload) == (4002, "")
    assert raw.read_all() == b""  # exactly one close, then EOF
    seen = server.next_event()
    assert isinstance(seen, ConnectionClosed) and (seen.code, seen.reason) == (4002, "done")


def test_protocol_violation_closes_1002(server: Server) -> None:
    raw = RawClient(server.port)
    raw.read_response_head()
    raw.send_frame(Opcode.BINARY, b"unmasked", masked=False)
    close = raw.read_message()
    assert close.opcode == Opcode.CLOSE and parse_close_payload(close.payload)[0] == 1002
    seen = server.next_event()
    assert isinstance(seen, ProtocolViolation) and seen.close_code_sent == 1002


def test_local_close_wakes_a_blocked_reader(client_factory: Callable[..., SocketTransport]) -> None:
    client = client_factory()
    reader = gevent.spawn(client.receive_message)
    gevent.idle()  # let the reader block in its read
    client.close()
    reader.join(WAIT_S)
    assert isinstance(reader.exception, ConnectionClosed)


# -- pings, text, concurrency ---------------------------------------------------------------------


def test_websocket_ping_is_answered_with_a_pong_of_the_same_payload(server: Server) -> None:
    raw = RawClient(server.port)
    raw.read_response_head()
    raw.send_frame(Opcode.PING, b"are you there?")
    assert raw.read_message() == Message(Opcode.PONG, b"are you there?")
    raw.send_frame(Opcode.BINARY, b"still echoing")  # and the session goes on
    assert raw.read_message() == Message(Opcode.BINARY, b"still echoing")
    raw.close()


def test_ping_between_fragments_is_answered_and_the_message_reassembled(server: Server) -> None:
    raw = RawClient(server.port)
    raw.read_response_head()
    raw.send_frame(Opcode.BINARY, b"frag-1/", fin=False)
    raw.send_frame(Opcode.PING, b"mid")
    raw.send_frame(Opcode.CONTINUATION, b"frag-2", fin=True)
    assert raw.read_message() == Message(Opcode.PONG, b"mid")
    assert raw.read_message() == Message(Opcode.BINARY, b"frag-1/frag-2")
    raw.close()


def test_text_message_raises_text_message_received_on_the_server(server: Server) -> None:
    raw = RawClient(server.port)
    raw.read_response_head()
    raw.send_frame(Opcode.TEXT, "héllo".encode())
    seen = server.next_event()
    assert isinstance(seen, TextMessageReceived) and seen.message_size == 6
    raw.close()


def test_concurrent_sends_from_20_greenlets_on_the_server_are_not_corrupted(
    server: Server, client_factory: Callable[..., SocketTransport]
) -> None:
    client = client_factory("/burst")
    received = [client.receive_message() for _ in range(20 * 25)]
    _check_tagged(received, 20, 25)
    assert server.next_event() == "sent"


def test_concurrent_masked_sends_from_20_greenlets_are_not_corrupted(client_factory: Callable[..., SocketTransport]) -> None:
    client = client_factory()
    senders = [gevent.spawn(_send_tagged, client, sender_id, 25) for sender_id in range(20)]
    received = [client.receive_message() for _ in range(20 * 25)]
    gevent.joinall(senders, raise_error=True)
    _check_tagged(received, 20, 25)


# -- backpressure ---------------------------------------------------------------------------------


def test_server_send_to_a_peer_that_never_reads_raises_send_timeout(
    server: Server, client_factory: Callable[..., SocketTransport]
) -> None:
    client_factory("/flood")  # connected, never reads
    timeout, elapsed_s = server.next_event()
    assert isinstance(timeout, SendTimeout) and timeout.send_timeout_s == SEND_TIMEOUT_S
    assert SEND_TIMEOUT_S * 0.9 <= elapsed_s <= SEND_TIMEOUT_S + 1.0 * FACTOR
    assert isinstance(server.next_event(), ConnectionClosed)  # the connection is dead after it


def test_client_send_to_a_server_that_never_reads_raises_send_timeout(client_factory: Callable[..., SocketTransport]) -> None:
    client = client_factory("/noread", send_timeout_s=SEND_TIMEOUT_S)
    message = b"n" * MIB
    deadline = time.monotonic() + WAIT_S
    with pytest.raises(SendTimeout):
        while time.monotonic() < deadline:
            started = time.monotonic()
            client.send_messages([message])
    assert time.monotonic() - started <= SEND_TIMEOUT_S + 1.0 * FACTOR
    with pytest.raises(ConnectionClosed):
        client.send_messages([b"after"])


# -- the client against a hand-written server ------------------------------------------------------


class RawServer:
    """Answers an upgrade with whatever ``respond(key, offered) -> bytes`` builds, in one write."""

    def __init__(self, respond: Callable[[str, list[str]], bytes | None]) -> None:
        self.respond = respond
        self.release = gevent.event.Event()
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.url = f"ws://127.0.0.1:{self.server.server_port}/"

    def _handle(self, sock: gevent.socket.socket, address: object) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = sock.recv(65536)
            if not chunk:
                return
            request += chunk
        headers = {}
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        response = self.respond(headers["sec-websocket-key"], offered)
        if response is not None:
            sock.sendall(response)
        self.release.wait(WAIT_S)  # keep the connection open until the test ends
        sock.close()

    def stop(self) -> None:
        self.release.set()
        self.server.stop(timeout=WAIT_S)


def _switching(key: str, protocol: str | None) -> bytes:
    head = f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {key}\r\n"
    if protocol is not None:
        head += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    return (head + "\r\n").encode()


@pytest.fixture
def raw_server_factory() -> Iterator[Callable[[Callable[[str, list[str]], bytes | None]], RawServer]]:
    servers: list[RawServer] = []

    def make(respond: Callable[[str, list[str]], bytes | None]) -> RawServer:
        servers.append(RawServer(respond))
        return servers[-1]

    yield make
    for srv in servers:
        srv.stop()


def test_client_keeps_the_bytes_that_follow_the_101(raw_server_factory: Callable[..., RawServer]) -> None:
    def respond(key: str, offered: list[str]) -> bytes:
        # The 101 and two frames in one write: h11 reads them together.
        return (
            _switching(compute_accept_key(key), offered[0])
            + encode_frame(Opcode.BINARY, b"first")
            + encode_frame(Opcode.BINARY, b"x" * 70000)
        )

    srv = raw_server_factory(respond)
    client = connect(srv.url, ["hoody-tunnel.v1"], timeout_s=WAIT_S)
    assert client.receive_message() == b"first"
    assert client.receive_message() == b"x" * 70000
    client.abort()


@pytest.mark.parametrize(
    ("respond", "detail"),
    [
        (lambda key, offered: _switching("d3JvbmcgYWNjZXB0IGtleQ==", offered[0]), "Sec-WebSocket-Accept"),
        (lambda key, offered: _switching(compute_accept_key(key), "hoody-tunnel.v9"), "subprotocol"),
        (lambda key, offered: _switching(compute_accept_key(key), None), "subprotocol"),
    ],
    ids=["wrong accept key", "subprotocol not offered", "no subprotocol chosen"],
)
def test_client_rejects_an_invalid_101(raw_server_factory: Callable[..., RawServer], respond: Any, detail: str) -> None:
    srv = raw_server_factory(respond)
    with pytest.raises(HandshakeRejected) as info:
        connect(srv.url, ["hoody-tunnel.v1"], timeout_s=WAIT_S)
    assert info.value.status == 101 and detail in info.value.detail


def test_client_reads_a_capped_rejection_body(raw_server_factory: Callable[..., RawServer]) -> None:
    body = b"e" * (200 * 1024)
    srv = raw_server_factory(lambda key, offered: b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    with pytest.raises(HandshakeRejected) as info:
        connect(srv.url, ["hoody-tunnel.v1"], timeout_s=WAIT_S)
    assert info.value.status == 403 and info.value.body == body[: 64 * 1024]


def test_client_handshake_timeout(raw_server_factory: Callable[..., RawServer]) -> None:
    srv = raw_server_factory(lambda key, offered: None)  # accepts TCP, never answers
    started = time.monotonic()
    with pytest.raises(TransportError, match="timed out"):
        connect(srv.url, ["hoody-tunnel.v1"], timeout_s=0.3)
    assert time.monotonic() - started < 0.3 + 1.0 * FACTOR


def test_wss_echo_with_a_caller_supplied_ssl_context(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=WAIT_S,
    )  # fmt: skip
    # gevent's server needs gevent's SSLContext in an unpatched process (a stdlib one blocks the
    # hub in the TLS handshake); the client is given a stdlib one on purpose.
    server_context = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(str(cert), str(key))
    srv = Server(ssl_context=server_context)
    try:
        context = ssl.create_default_context(cafile=str(cert))  # a stdlib context, unpatched process
        client = connect(srv.url(), list(SUPPORTED), timeout_s=WAIT_S, ssl_context=context)
        payload = os.urandom(MIB + 3)
        client.send_messages([b"small", payload])
        assert client.receive_message() == b"small"
        assert client.receive_message() == payload
        client.close(4001, "bye")
        seen = srv.next_event()
        assert isinstance(seen, ConnectionClosed) and seen.code == 4001
    finally:
        srv.wsgi.stop(timeout=WAIT_S)


def test_client_refuses_non_websocket_urls() -> None:
    with pytest.raises(ValueError):
        connect("http://127.0.0.1:1/", ["hoody-tunnel.v1"], timeout_s=1.0)
