"""Helpers of the admin e2e tests: admin requests, polling, metrics, the CLI, a wire-level client.

The wire-level client speaks the frames of docs/protocol.md §2 by hand (10-byte header, JSON
payloads, GOAWAY = u16 code + UTF-8 reason) over the project's WebSocket transport, so what a
test asserts about GOAWAY is what is on the wire, not what our protocol package decodes.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gevent
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import REPO_ROOT, HttpReply, KitProcess, scaled_s
from tunnel.mux.transport import SocketTransport, TransportError
from tunnel.mux.ws_client import connect

T = TypeVar("T")

API = "/api/v1/tunnel"


def auth(kit: KitProcess, token: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token if token is not None else kit.admin_token}"}


def admin_get(kit: KitProcess, path: str) -> Any:
    """GET an admin endpoint with the admin token; asserts 200 and returns the JSON body."""
    reply = kit.get(f"{API}{path}", headers=auth(kit))
    assert reply.status == 200, (path, reply.status, reply.body)
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    return reply.json()


def admin_delete(kit: KitProcess, session_id: str, query: str = "") -> HttpReply:
    return kit.request("DELETE", f"{API}/sessions/{session_id}{query}", headers=auth(kit))


def poll(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """Call ``probe`` until it returns something other than None/False; raise after the deadline."""
    deadline = time.monotonic() + scaled_s(timeout_s)
    last: T | None = None
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # a polling interval, not a synchronisation


def gauges(kit: KitProcess) -> dict[str, float]:
    """Every unlabelled sample of /metrics, parsed by prometheus_client's own parser."""
    reply = kit.get(f"{API}/metrics")
    assert reply.status == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if not sample.labels:
                values[sample.name] = sample.value
    return values


def views_agree_with_metrics(kit: KitProcess) -> bool:
    """One pass: the views and the gauges agree (False if something moved in between)."""
    before = admin_get(kit, "/tunnels")
    values = gauges(kit)
    sessions = admin_get(kit, "/sessions")
    bindings = admin_get(kit, "/bindings")
    after = admin_get(kit, "/tunnels")
    if before != after:
        return False
    return bool(
        values["hoody_tunnel_sessions_active"] == sessions["total"] == len(after["sessions"])
        and values["hoody_tunnel_bindings_active"] == bindings["total"] == after["totalBindings"]
        and values["hoody_tunnel_fd_permits_available"] == after["fdPermitsAvailable"]
        and values["hoody_tunnel_sessions_orphaned"] == after["orphanedSessions"]
    )


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


def run_cli(kit: KitProcess | None, *args: str, env: dict[str, str] | None = None) -> CliResult:
    """``python -m tunnel.client ARGS`` with a clean HOODY_TUNNEL_* environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOODY_TUNNEL_")}
    if kit is not None:
        full_env["HOME"] = str(kit.state_dir.parent)
    full_env.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "tunnel.client", *args],
        cwd=REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=scaled_s(60),
    )
    return CliResult(result.returncode, result.stdout, result.stderr)


# -- the wire, by hand (docs/protocol.md §2) ----------------------------------------------------

HEADER = struct.Struct("!BBII")
HELLO, WELCOME, BIND, BIND_OK, BIND_ERR = 0x01, 0x02, 0x03, 0x04, 0x05
OPEN, OPEN_OK, DATA, WINDOW, RST = 0x10, 0x11, 0x12, 0x13, 0x14
PING, PONG, GOAWAY = 0x20, 0x21, 0x30
ADMIN_CLOSE = 0x0001


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def code(self) -> int:
        return int(struct.unpack("!H", self.payload[:2])[0])

    @property
    def reason(self) -> str:
        return self.payload[2:].decode("utf-8")


def encode(frame_type: int, payload: bytes = b"", stream_id: int = 0, flags: int = 0) -> bytes:
    return HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


class WireClient:
    """A tunnel client written from the wire spec: HELLO, BIND, then it reads frames."""

    def __init__(self, kit: KitProcess, *, protocol: str = "hoody-tunnel.v2") -> None:
        self.transport: SocketTransport = connect(
            kit.ws_url, [protocol], timeout_s=scaled_s(10.0), headers={"User-Agent": "e2e-wire/1.0"}
        )
        self._pending: deque[Frame] = deque()
        self._req_id = 0

    def send(self, frame_type: int, payload: bytes = b"", stream_id: int = 0) -> None:
        self.transport.send_messages([encode(frame_type, payload, stream_id)])

    def send_json(self, frame_type: int, body: dict[str, Any]) -> None:
        self.send(frame_type, json.dumps(body).encode())

    def next_frame(self, timeout_s: float) -> Frame:
        """The next frame (v2 may batch several in one message); PINGs are answered."""
        while not self._pending:
            with gevent.Timeout(scaled_s(timeout_s), TimeoutError("no frame in time")):
                message = bytes(self.transport.receive_message())
            offset = 0
            while offset < len(message):
                frame_type, flags, stream_id, length = HEADER.unpack_from(message, offset)
                start = offset + HEADER.size
                frame = Frame(frame_type, flags, stream_id, message[start : start + length])
                offset = start + length
                if frame.type == PING:
                    self.send(PONG, frame.payload)
                else:
                    self._pending.append(frame)
        return self._pending.popleft()

    def expect(self, frame_type: int, timeout_s: float = 10.0) -> Frame:
        """Skip frames until one of ``frame_type`` arrives."""
        deadline = time.monotonic() + scaled_s(timeout_s)
        while True:
            frame = self.next_frame(max(0.01, deadline - time.monotonic()))
            if frame.type == frame_type:
                return frame

    def hello(self, token: str) -> dict[str, Any]:
        self.send_json(HELLO, {"token": token, "client": "e2e-wire/1.0"})
        welcome: dict[str, Any] = self.expect(WELCOME).json()
        return welcome

    def bind(self, kind: str, port: int, mode: str = "tcp") -> dict[str, Any]:
        """BIND and wait for BIND_OK (other frames that arrive meanwhile are kept, in order)."""
        self._req_id += 1
        self.send_json(BIND, {"reqId": self._req_id, "kind": kind, "port": port, "mode": mode})
        skipped: list[Frame] = []
        deadline = time.monotonic() + scaled_s(10.0)
        try:
            while True:
                frame = self.next_frame(max(0.01, deadline - time.monotonic()))
                if frame.type == BIND_OK:
                    result: dict[str, Any] = frame.json()
                    return result
                if frame.type == BIND_ERR:
                    raise AssertionError(f"BIND refused: {frame.json()}")
                skipped.append(frame)
        finally:
            self._pending.extendleft(reversed(skipped))

    def close(self) -> None:
        try:
            self.transport.close()
        except TransportError:
            pass


def launch_shared_kit(work_dir: Any, **env: str) -> KitProcess:
    """A ready kit for a module's read-mostly tests (the caller stops it)."""
    kit = KitProcess.launch(work_dir, env)
    try:
        kit.wait_ready()
    except BaseException:
        kit.stop()
        raise
    return kit
