"""Real TCP targets, the real ``hoody-tunnel`` CLI, and a raw protocol client, for e2e tests.

- pattern bytes and hashed transfers; :class:`TcpTarget` (echo / transfer / blackhole);
- :class:`ClientProcess` (``hoody-tunnel connect`` as a subprocess, its output collected),
  :func:`launch_with_expose` (retried on an EXPOSE port clash), :func:`run_cli` (any other CLI
  command, run to completion);
- :class:`RawClient`: the tunnel protocol by hand over a hand-written WebSocket.

Everything here uses plain blocking sockets and threads (the test process is not monkeypatched).
Waits are bounded by deadlines scaled with TUNNEL_TEST_TIMEOUT_FACTOR; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from tests.e2e.harness import REPO_ROOT, KitProcess
from tests.e2e.loopback import TcpServer, free_port_candidate, recv_until
from tests.e2e.wire import (
    BIND,
    BIND_ERR,
    BIND_OK,
    GOAWAY,
    HELLO,
    NORMAL,
    OPEN,
    PING,
    PONG,
    WELCOME,
    Frame,
    code_payload,
    encode_frame,
    split_frames,
    ws_client_frame,
    ws_key,
    ws_upgrade_request,
)
from tests.waiting import scaled_s

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


class TcpTarget(TcpServer):
    """A threaded TCP server on 127.0.0.1 with a per-connection behaviour.

    ``mode``: ``"echo"`` echoes until EOF then closes; ``"transfer"`` sends ``size`` pattern
    bytes (seed ``seed``) while hashing what it receives, recording a :class:`TransferRecord`;
    ``"blackhole"`` accepts and never reads.
    """

    def __init__(self, mode: str, *, size: int = 0, seed: int = 0, port: int = 0) -> None:
        self.mode = mode
        self.size = size
        self.seed = seed
        self.records: list[TransferRecord] = []
        super().__init__(port=port, backlog=512)

    def serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "echo":
                while data := conn.recv(CHUNK_SIZE):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            elif self.mode == "transfer":
                sent, received, count = bidirectional_transfer(conn, self.seed, self.size)
                with self.lock:
                    self.records.append(TransferRecord(sent, received, count))
                    self.lock.notify_all()
            elif self.mode == "blackhole":
                return  # keep the socket open, never read
        except OSError:
            pass
        finally:
            if self.mode != "blackhole":
                conn.close()

    def wait_records(self, count: int, timeout_s: float) -> list[TransferRecord]:
        with self.lock:
            ok = self.lock.wait_for(lambda: len(self.records) >= count, timeout_s)
            assert ok, f"only {len(self.records)} of {count} transfers finished on the target"
            return list(self.records)


def cli_env(kit: KitProcess | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: the caller's without any HOODY_TUNNEL_*, HOME in ``kit``'s test
    directory (when given), unbuffered output, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOODY_TUNNEL_")}
    if kit is not None:
        env["HOME"] = str(kit.state_dir.parent)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


SUMMARY_PULL = re.compile(r"pull\s+\S+:(\d+) -> container :(\d+)")


@dataclass
class ClientProcess:
    """``python -m tunnel.client connect ...`` as a subprocess, with its output collected."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def launch(cls, kit: KitProcess, *args: str, token: str | None = None, env: dict[str, str] | None = None) -> ClientProcess:
        full_env = cli_env(kit, env)
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


# == A raw protocol client ======================================================================
#
# Written from docs/protocol.md and RFC 6455 alone (blocking stdlib sockets, tests.e2e.wire, no
# tunnel.* import): it checks the kit against the binding spec the way an independent client
# (the customer's SDK) would, and it can misbehave on purpose (text messages, garbage,
# oversized frames and messages, silence).

CONNECT_PATH = "/api/v1/tunnel/connect"


class WsClosed(Exception):
    """The server ended the WebSocket: a close frame (``code``) or EOF/reset (``code`` None)."""

    def __init__(self, code: int | None, reason: str = "", detail: str = "") -> None:
        super().__init__(f"WebSocket closed: code={code} reason={reason!r} {detail}".strip())
        self.code = code
        self.reason = reason


class RawClient:
    """One WebSocket to the kit's connect endpoint, driven frame by frame from the test thread.

    Protocol PINGs from the kit are answered with PONG while reading (``answer_pings``); every
    frame read is kept in ``frames`` for failure messages.
    """

    def __init__(self, sock: socket.socket, subprotocol: str, buffered: bytes) -> None:
        self.sock = sock
        self.subprotocol = subprotocol
        self._buffer = bytearray(buffered)
        self._pending: deque[Frame] = deque()
        self.frames: list[Frame] = []
        self.answer_pings = True
        self.pings_received = 0
        self.closed_with: WsClosed | None = None
        self.welcome: dict[str, Any] | None = None

    # -- connecting -------------------------------------------------------------------------

    @classmethod
    def connect(cls, kit: KitProcess, version: str = "v2", timeout_s: float = 10.0) -> RawClient:
        sock = socket.create_connection((kit.host, kit.port), timeout=scaled_s(timeout_s))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        protocol = f"hoody-tunnel.{version}"
        sock.sendall(
            ws_upgrade_request(
                CONNECT_PATH,
                f"{kit.host}:{kit.port}",
                ws_key(),
                {"Sec-WebSocket-Protocol": protocol, "User-Agent": "e2e-raw-client"},
            )
        )
        data = recv_until(sock, b"\r\n\r\n")
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].split()[1] == "101", f"upgrade refused: {data!r}"
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert headers.get("sec-websocket-protocol") == protocol, headers
        return cls(sock, protocol, rest)

    # -- sending ----------------------------------------------------------------------------

    def send_ws(self, opcode: int, payload: bytes) -> None:
        """One whole WebSocket message (masked with a random key)."""
        self.sock.sendall(ws_client_frame(opcode, payload, os.urandom(4)))

    def send_message(self, payload: bytes) -> None:
        self.send_ws(0x2, payload)

    def send_frame(self, frame_type: int, stream_id: int = 0, payload: bytes = b"", flags: int = 0) -> None:
        self.send_message(encode_frame(frame_type, stream_id, payload, flags))

    def send_json(self, frame_type: int, body: dict[str, Any]) -> None:
        self.send_frame(frame_type, 0, json.dumps(body).encode())

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
                length = struct.unpack("!H", self._take(2, deadline))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._take(8, deadline))[0]
            payload = self._take(length, deadline)
            if op == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
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

    def recv_frame(self, timeout_s: float = 10.0) -> Frame:
        """The next protocol frame (a v2 message may hold several)."""
        deadline = time.monotonic() + scaled_s(timeout_s)
        while not self._pending:
            remaining = (deadline - time.monotonic()) / max(scaled_s(1.0), 1e-9)
            opcode, message = self.recv_ws(max(remaining, 0.001))
            assert opcode == 0x2, f"the kit sent a non-binary message (opcode {opcode}): {message[:100]!r}"
            self._pending.extend(split_frames(message))
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

    def expect(self, *types: int, stream_id: int | None = None, timeout_s: float = 10.0) -> Frame:
        """Read until a frame of one of ``types`` (and ``stream_id``) arrives; skip the others."""
        deadline = time.monotonic() + scaled_s(timeout_s)
        while True:
            remaining = (deadline - time.monotonic()) / max(scaled_s(1.0), 1e-9)
            frame = self.recv_frame(max(remaining, 0.001))
            if frame.type in types and (stream_id is None or frame.stream_id == stream_id):
                return frame

    def read_until_closed(self, timeout_s: float = 10.0) -> tuple[list[Frame], WsClosed]:
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

    def hello(self, token: str | None, **extra: Any) -> dict[str, Any]:
        """HELLO, then WELCOME (returned as a dict); anything else is an assertion error."""
        body: dict[str, Any] = {"client": "e2e-raw/1.0", **extra}
        if token is not None:
            body["token"] = token
        self.send_json(HELLO, body)
        frame = self.expect(WELCOME, GOAWAY)
        assert frame.type == WELCOME, f"expected WELCOME, got {frame} ({frame.reason!r})"
        self.welcome = frame.json()
        return self.welcome

    def bind(self, kind: str, port: int, mode: str = "tcp", req_id: int = 1) -> Frame:
        """BIND; returns the BIND_OK or BIND_ERR frame answering ``req_id``."""
        self.send_json(BIND, {"reqId": req_id, "kind": kind, "port": port, "mode": mode})
        while True:
            frame = self.expect(BIND_OK, BIND_ERR)
            if frame.json().get("reqId") == req_id:
                return frame

    def open_stream(self, stream_id: int, bind_id: int) -> None:
        self.send_frame(OPEN, stream_id, struct.pack("!I", bind_id))

    def close(self) -> None:
        """Leave: GOAWAY(NORMAL) once welcomed (so a v2 session ends instead of being parked),
        then close 1000; best effort."""
        try:
            self.sock.settimeout(1.0)
            if self.welcome is not None and self.closed_with is None:
                self.send_frame(GOAWAY, 0, code_payload(NORMAL, "test done"))
            self.send_ws(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()

    def abort(self) -> None:
        """Drop the TCP connection without GOAWAY or close frame."""
        self.sock.close()


def launch_with_expose(
    kit: KitProcess, make_args: Callable[[int], list[str]], *, attempts: int = 3, **kwargs: Any
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


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def run_cli(
    kit: KitProcess | None, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> CliResult:
    """``python -m tunnel.client ARGS`` run to completion, with a clean HOODY_TUNNEL_* environment
    (:func:`cli_env`) plus ``env``. ``kit`` only places HOME; usage errors need none."""
    result = subprocess.run(
        [sys.executable, "-m", "tunnel.client", *args],
        cwd=REPO_ROOT,
        env=cli_env(kit, env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=scaled_s(timeout_s),
    )
    return CliResult(result.returncode, result.stdout, result.stderr)
