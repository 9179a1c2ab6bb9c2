"""Real TCP targets and the real ``hoody-tunnel connect`` CLI, for end-to-end tunnel tests.

Everything here uses plain blocking sockets and threads (the test process is not monkeypatched).
Waits are bounded by deadlines scaled with TUNNEL_TEST_TIMEOUT_FACTOR; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tests.e2e.harness import REPO_ROOT, KitProcess, scaled_s

CHUNK_SIZE = 256 * 1024


def pattern_bytes(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes (fast: one random block repeated with a counter)."""
    block = random.Random(seed).randbytes(64 * 1024)
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += counter.to_bytes(8, "big") + block
        counter += 1
    return bytes(out[:size])


def sha256_stream(source: Callable[[int], bytes]) -> tuple[str, int]:
    """Read until EOF from ``source(n)``; return (hex digest, byte count)."""
    digest = hashlib.sha256()
    total = 0
    while True:
        data = source(CHUNK_SIZE)
        if not data:
            return digest.hexdigest(), total
        digest.update(data)
        total += len(data)


def send_pattern(sock: socket.socket, seed: int, size: int) -> str:
    """Send ``size`` pattern bytes in chunks, then SHUT_WR; return their sha256."""
    digest = hashlib.sha256()
    sent = 0
    block = pattern_bytes(seed, 4 * 1024 * 1024)
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sock.sendall(piece)
        digest.update(piece)
        sent += len(piece)
    sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def bidirectional_transfer(sock: socket.socket, seed: int, size: int) -> tuple[str, str, int]:
    """Send ``size`` bytes while reading until EOF. Returns (sent sha, received sha, received n)."""
    result: dict[str, str] = {}
    sender = threading.Thread(target=lambda: result.update(sent=send_pattern(sock, seed, size)), daemon=True)
    sender.start()
    received_sha, received_n = sha256_stream(sock.recv)
    sender.join(scaled_s(120))
    return result.get("sent", "sender failed"), received_sha, received_n


@dataclass
class TransferRecord:
    sent_sha: str
    received_sha: str
    received_size: int


class TcpTarget:
    """A threaded TCP server on 127.0.0.1 with a per-connection behaviour.

    ``mode``: ``"echo"`` echoes until EOF then closes; ``"transfer"`` sends ``size`` pattern
    bytes (seed ``seed``) while hashing what it receives, recording a :class:`TransferRecord`;
    ``"blackhole"`` accepts and never reads.
    """

    def __init__(self, mode: str, *, size: int = 0, seed: int = 0, port: int = 0) -> None:
        self.mode = mode
        self.size = size
        self.seed = seed
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(512)
        self.port = self.listener.getsockname()[1]
        self.records: list[TransferRecord] = []
        self.accepted = 0
        self.connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._record_added = threading.Condition(self._lock)
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "echo":
                while data := conn.recv(CHUNK_SIZE):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            elif self.mode == "transfer":
                sent, received, count = bidirectional_transfer(conn, self.seed, self.size)
                with self._record_added:
                    self.records.append(TransferRecord(sent, received, count))
                    self._record_added.notify_all()
            elif self.mode == "blackhole":
                return  # keep the socket open, never read
        except OSError:
            pass
        finally:
            if self.mode != "blackhole":
                conn.close()

    def wait_records(self, count: int, timeout_s: float) -> list[TransferRecord]:
        with self._record_added:
            ok = self._record_added.wait_for(lambda: len(self.records) >= count, timeout_s)
            assert ok, f"only {len(self.records)} of {count} transfers finished on the target"
            return list(self.records)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for conn in self.connections:
                try:
                    conn.close()
                except OSError:
                    pass


def free_port_candidate() -> int:
    """A port below the ephemeral range that is free right now (EXPOSE tests retry on a clash)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise RuntimeError("no free port found")


SUMMARY_PULL = re.compile(r"pull\s+\S+:(\d+) -> container :(\d+)")


@dataclass
class ClientProcess:
    """``python -m tunnel.client connect ...`` as a subprocess, with its output collected."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def launch(cls, kit: KitProcess, *args: str, token: str | None = None, env: dict[str, str] | None = None) -> ClientProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOODY_TUNNEL_")}
        full_env["HOME"] = str(kit.state_dir.parent)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        command = [sys.executable, "-m", "tunnel.client", "connect", kit.ws_url]
        if token is None:
            token = kit.client_token
        if token:
            command += ["--token", token]
        process = subprocess.Popen(
            command + list(args),
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        client = cls(process)
        threading.Thread(target=client._read, daemon=True).start()
        return client

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout_s: float = 20.0) -> str:
        """Wait for an output line containing ``pattern`` (or the process to exit: error)."""
        deadline = time.monotonic() + scaled_s(timeout_s)
        with self._changed:
            while True:
                for line in self.lines:
                    if pattern in line:
                        return line
                if self.process.poll() is not None and self.process.stdout is not None and self.process.stdout.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.5))
        raise AssertionError(f"no line with {pattern!r}; exit={self.process.poll()}\n{self.output()}")

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        self.wait_line("ready", timeout_s)

    def pull_port(self, container_port: int) -> int:
        """The local port the summary shows for a --pull of ``container_port``."""
        for line in self.output().splitlines():
            match = SUMMARY_PULL.search(line)
            if match and int(match.group(2)) == container_port:
                return int(match.group(1))
        raise AssertionError(f"no pull line for :{container_port}\n{self.output()}")

    def interrupt(self) -> int:
        """Ctrl-C; returns the exit code."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        return self.wait_exit()

    def wait_exit(self, timeout_s: float = 20.0) -> int:
        try:
            return self.process.wait(timeout=scaled_s(timeout_s))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"client still running\n{self.output()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)


def connect_local(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled_s(timeout_s))
    sock.settimeout(scaled_s(60.0))
    return sock


# == Additions for the tunnel acceptance tests (tests/e2e/test_tunnel_*.py) ===================
#
# A raw protocol client written from docs/protocol.md and RFC 6455 alone (blocking stdlib
# sockets, no tunnel.* import): it checks the kit against the binding spec the way an
# independent client (the customer's SDK) would, and it can misbehave on purpose (text
# messages, garbage, oversized frames and messages, silence).

import base64 as _base64
import json as _json
import struct as _struct
from collections import deque as _deque
from typing import Any as _Any

from tests.e2e.harness import HttpReply

CONNECT_PATH = "/api/v1/tunnel/connect"
TUNNELS_PATH = "/api/v1/tunnel/tunnels"
METRICS_PATH = "/api/v1/tunnel/metrics"

# Frame types (docs/protocol.md §2.2).
HELLO, WELCOME, BIND, BIND_OK, BIND_ERR, UNBIND = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
OPEN, OPEN_OK, DATA, WINDOW, RST = 0x10, 0x11, 0x12, 0x13, 0x14
PING, PONG, GOAWAY = 0x20, 0x21, 0x30
FLAG_FIN = 0x01
FRAME_NAMES = {
    HELLO: "HELLO", WELCOME: "WELCOME", BIND: "BIND", BIND_OK: "BIND_OK", BIND_ERR: "BIND_ERR",
    UNBIND: "UNBIND", OPEN: "OPEN", OPEN_OK: "OPEN_OK", DATA: "DATA", WINDOW: "WINDOW",
    RST: "RST", PING: "PING", PONG: "PONG", GOAWAY: "GOAWAY",
}

# Error codes (docs/protocol.md §3.1).
NORMAL, ADMIN_CLOSE, PROTOCOL_ERROR, SHUTDOWN, AUTH_FAILED, TIMEOUT = 0, 1, 2, 3, 4, 5
REFUSED, RESOURCE_EXHAUSTED, CONNECT_FAILED, FLOW_CONTROL_ERROR = 6, 7, 8, 9
NOT_FOUND, FORBIDDEN, SUPERSEDED, RESUME_FAILED, STREAM_CLOSED, PORT_IN_USE = 10, 11, 12, 13, 14, 15

_HEADER = _struct.Struct("!BBII")
WS_MAX_MESSAGE = 4 * 1024 * 1024


def encode_frame(frame_type: int, stream_id: int = 0, payload: bytes = b"", flags: int = 0) -> bytes:
    return _HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


def code_payload(code: int, reason: str = "") -> bytes:
    return _struct.pack("!H", code) + reason.encode()


@dataclass
class RawFrame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.type, hex(self.type))

    def json(self) -> _Any:
        return _json.loads(self.payload)

    @property
    def code(self) -> int:
        """u16 code of RST / GOAWAY."""
        return int(_struct.unpack("!H", self.payload[:2])[0])

    @property
    def reason(self) -> str:
        return self.payload[2:].decode("utf-8", "replace")

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 80 else self.payload[:80] + b"..."
        return f"<{self.name} sid={self.stream_id} flags={self.flags} {shown!r}>"


class WsClosed(Exception):
    """The server ended the WebSocket: a close frame (``code``) or EOF/reset (``code`` None)."""

    def __init__(self, code: int | None, reason: str = "", detail: str = "") -> None:
        super().__init__(f"WebSocket closed: code={code} reason={reason!r} {detail}".strip())
        self.code = code
        self.reason = reason


def _mask(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def ws_frame_header(opcode: int, length: int, *, fin: bool = True, mask_key: bytes = b"\0\0\0\0") -> bytes:
    """A client (masked) WebSocket frame header announcing ``length`` payload bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = _struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = _struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = _struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask_key


class RawClient:
    """One WebSocket to the kit's connect endpoint, driven frame by frame from the test thread.

    Protocol PINGs from the kit are answered with PONG while reading (``answer_pings``); every
    frame read is kept in ``frames`` for failure messages.
    """

    def __init__(self, sock: socket.socket, subprotocol: str, buffered: bytes) -> None:
        self.sock = sock
        self.subprotocol = subprotocol
        self._buffer = bytearray(buffered)
        self._pending: _deque[RawFrame] = _deque()
        self.frames: list[RawFrame] = []
        self.answer_pings = True
        self.pings_received = 0
        self.closed_with: WsClosed | None = None
        self.welcome: dict[str, _Any] | None = None

    # -- connecting -------------------------------------------------------------------------

    @classmethod
    def connect(cls, kit: KitProcess, version: str = "v2", timeout_s: float = 10.0) -> RawClient:
        sock = socket.create_connection((kit.host, kit.port), timeout=scaled_s(timeout_s))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = _base64.b64encode(os.urandom(16)).decode()
        protocol = f"hoody-tunnel.{version}"
        sock.sendall(
            (
                f"GET {CONNECT_PATH} HTTP/1.1\r\nHost: {kit.host}:{kit.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {protocol}\r\nUser-Agent: e2e-raw-client\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed during the upgrade: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split()[1] == "101", f"upgrade refused: {data!r}"
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert headers.get("sec-websocket-protocol") == protocol, headers
        return cls(sock, protocol, rest)

    # -- sending ----------------------------------------------------------------------------

    def send_ws(self, opcode: int, payload: bytes) -> None:
        """One whole WebSocket message (masked with a random key)."""
        key = os.urandom(4)
        self.sock.sendall(ws_frame_header(opcode, len(payload), mask_key=key) + _mask(payload, key))

    def send_message(self, payload: bytes) -> None:
        self.send_ws(0x2, payload)

    def send_frame(self, frame_type: int, stream_id: int = 0, payload: bytes = b"", flags: int = 0) -> None:
        self.send_message(encode_frame(frame_type, stream_id, payload, flags))

    def send_json(self, frame_type: int, body: dict[str, _Any]) -> None:
        self.send_frame(frame_type, 0, _json.dumps(body).encode())

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- receiving --------------------------------------------------------------------------

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"nothing more from the kit in time; frames so far: {self.frames}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError(f"nothing more from the kit in time; frames so far: {self.frames}") from None
        except ConnectionError as exc:
            self.closed_with = WsClosed(None, detail=f"({exc!r})")
            raise self.closed_with from None
        if not chunk:
            self.closed_with = WsClosed(None, detail="(EOF without close frame)")
            raise self.closed_with
        self._buffer += chunk

    def _take(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            self._fill(deadline)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def recv_ws(self, timeout_s: float = 10.0) -> tuple[int, bytes]:
        """The next whole data message (opcode, payload); pings are answered, close raises."""
        if self.closed_with is not None:
            raise self.closed_with
        deadline = time.monotonic() + scaled_s(timeout_s)
        parts: list[bytes] = []
        opcode = 0
        while True:
            b0, b1 = self._take(2, deadline)
            fin, op, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            assert not b1 & 0x80, "the server masked a frame (RFC 6455 §5.1)"
            if length == 126:
                length = _struct.unpack("!H", self._take(2, deadline))[0]
            elif length == 127:
                length = _struct.unpack("!Q", self._take(8, deadline))[0]
            payload = self._take(length, deadline)
            if op == 0x8:
                code = _struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.closed_with = WsClosed(code, payload[2:].decode("utf-8", "replace"))
                raise self.closed_with
            if op == 0x9:
                try:
                    self.send_ws(0xA, payload)
                except OSError:
                    pass
                continue
            if op == 0xA:
                continue
            if op != 0:
                opcode = op
            parts.append(payload)
            if fin:
                return opcode, b"".join(parts)

    def recv_frame(self, timeout_s: float = 10.0) -> RawFrame:
        """The next protocol frame (a v2 message may hold several)."""
        deadline = time.monotonic() + scaled_s(timeout_s)
        while not self._pending:
            remaining = (deadline - time.monotonic()) / max(scaled_s(1.0), 1e-9)
            opcode, message = self.recv_ws(max(remaining, 0.001))
            assert opcode == 0x2, f"the kit sent a non-binary message (opcode {opcode}): {message[:100]!r}"
            offset = 0
            while offset < len(message):
                frame_type, flags, stream_id, length = _HEADER.unpack_from(message, offset)
                payload = message[offset + 10 : offset + 10 + length]
                assert len(payload) == length, f"truncated frame in {message[:100]!r}"
                self._pending.append(RawFrame(frame_type, flags, stream_id, payload))
                offset += 10 + length
        frame = self._pending.popleft()
        self.frames.append(frame)
        if frame.type == PING:
            self.pings_received += 1
            if self.answer_pings:
                try:
                    self.send_frame(PONG, 0, frame.payload)
                except OSError:
                    pass
        return frame

    def expect(self, *types: int, stream_id: int | None = None, timeout_s: float = 10.0) -> RawFrame:
        """Read until a frame of one of ``types`` (and ``stream_id``) arrives; skip the others."""
        deadline = time.monotonic() + scaled_s(timeout_s)
        while True:
            remaining = (deadline - time.monotonic()) / max(scaled_s(1.0), 1e-9)
            frame = self.recv_frame(max(remaining, 0.001))
            if frame.type in types and (stream_id is None or frame.stream_id == stream_id):
                return frame

    def read_until_closed(self, timeout_s: float = 10.0) -> tuple[list[RawFrame], WsClosed]:
        """Read every frame until the WebSocket ends; return them and how it ended."""
        deadline = time.monotonic() + scaled_s(timeout_s)
        start = len(self.frames)
        while True:
            remaining = (deadline - time.monotonic()) / max(scaled_s(1.0), 1e-9)
            try:
                self.recv_frame(max(remaining, 0.001))
            except WsClosed as closed:
                return self.frames[start:], closed

    # -- protocol steps ---------------------------------------------------------------------

    def hello(self, token: str | None, **extra: _Any) -> dict[str, _Any]:
        """HELLO, then WELCOME (returned as a dict); anything else is an assertion error."""
        body: dict[str, _Any] = {"client": "e2e-raw/1.0", **extra}
        if token is not None:
            body["token"] = token
        self.send_json(HELLO, body)
        frame = self.expect(WELCOME, GOAWAY)
        assert frame.type == WELCOME, f"expected WELCOME, got {frame} ({frame.reason!r})"
        self.welcome = frame.json()
        return self.welcome

    def bind(self, kind: str, port: int, mode: str = "tcp", req_id: int = 1) -> RawFrame:
        """BIND; returns the BIND_OK or BIND_ERR frame answering ``req_id``."""
        self.send_json(BIND, {"reqId": req_id, "kind": kind, "port": port, "mode": mode})
        while True:
            frame = self.expect(BIND_OK, BIND_ERR)
            if frame.json().get("reqId") == req_id:
                return frame

    def open_stream(self, stream_id: int, bind_id: int) -> None:
        self.send_frame(OPEN, stream_id, _struct.pack("!I", bind_id))

    def close(self) -> None:
        """Leave: GOAWAY(NORMAL) once welcomed (so a v2 session ends instead of being parked),
        then close 1000; best effort."""
        try:
            self.sock.settimeout(1.0)
            if self.welcome is not None and self.closed_with is None:
                self.send_frame(GOAWAY, 0, code_payload(NORMAL, "test done"))
            self.send_ws(0x8, _struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()

    def abort(self) -> None:
        """Drop the TCP connection without GOAWAY or close frame."""
        self.sock.close()


# == The admin view of the FD budget and other kit observations ================================


def admin_get(kit: KitProcess, path: str) -> HttpReply:
    return kit.get(path, headers={"Authorization": f"Bearer {kit.admin_token}"})


def tunnels_view(kit: KitProcess) -> HttpReply:
    """GET /api/v1/tunnel/tunnels with the admin token (docs/admin-api.md §6.3)."""
    return admin_get(kit, TUNNELS_PATH)


def check_fd_invariant(reply: HttpReply, budget: int) -> dict[str, _Any]:
    """Assert docs/protocol.md §12: fdPermitsAvailable + Σ connectionsGranted == budget."""
    assert reply.status == 200, f"GET {TUNNELS_PATH} answered {reply.status}: {reply.body[:300]!r}"
    body = reply.json()
    granted = [session["connectionsGranted"] for session in body["sessions"]]
    assert isinstance(body["fdPermitsAvailable"], int), body
    assert all(isinstance(g, int) for g in granted), body
    assert body["fdPermitsAvailable"] + sum(granted) == budget, body
    return dict(body)


def metric_value(kit: KitProcess, name: str) -> float | None:
    """The value of an unlabelled sample ``name`` on /metrics (None when absent)."""
    text = kit.get(METRICS_PATH).body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def wait_until(predicate: Callable[[], _Any], timeout_s: float, what: str, *, interval_s: float = 0.02) -> _Any:
    """Poll ``predicate`` until it returns something truthy, against a scaled deadline."""
    deadline = time.monotonic() + scaled_s(timeout_s)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def wait_kit_log(kit: KitProcess, pattern: str, timeout_s: float = 10.0) -> re.Match[str]:
    """Wait for a line of the kit's output matching the regex ``pattern``."""
    regex = re.compile(pattern)

    def find() -> re.Match[str] | None:
        return regex.search(kit.stderr() + kit.stdout())

    try:
        return wait_until(find, timeout_s, f"kit log {pattern!r}", interval_s=0.05)  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"no kit log line matching {pattern!r}\n{kit.output()}") from None


def launch_with_expose(
    kit: KitProcess, make_args: Callable[[int], list[str]], *, attempts: int = 3, **kwargs: _Any
) -> tuple[ClientProcess, int]:
    """Start a CLI client whose arguments expose ``free_port_candidate()``; when the kit says that
    port is taken (PORT_IN_USE / address in use), try another one. Returns (client, port)."""
    last = ""
    for _ in range(attempts):
        port = free_port_candidate()
        client = ClientProcess.launch(kit, *make_args(port), **kwargs)
        try:
            client.wait_ready()
            return client, port
        except AssertionError:
            client.kill()
            last = client.output()
            if "PORT_IN_USE" in last or "in use" in last:
                continue
            raise
    raise AssertionError(f"no free container port after {attempts} attempts\n{last}")


def run_cli(*args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tunnel.client`` to completion (usage errors need no kit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOODY_TUNNEL_")}
    return subprocess.run(
        [sys.executable, "-m", "tunnel.client", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=scaled_s(timeout_s),
    )


def reserved_dead_port() -> socket.socket:
    """A socket bound to a loopback port but not listening: connects to it are refused, and no one
    else can take the port while the socket is open. Close it when done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)
