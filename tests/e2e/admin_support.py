"""Helpers of the admin e2e tests: admin API requests, /metrics, the FD invariant, a wire client.

- :func:`auth`, :func:`admin_get`, :func:`admin_delete`: the admin API with the kit's token;
- :func:`metric_samples`, :func:`metric`, :func:`gauges`: /metrics, parsed by prometheus_client;
- :func:`check_fd_invariant`: docs/protocol.md §12 on a GET /tunnels body;
- :class:`WireClient`: a tunnel client written from the wire spec (tests.e2e.wire: 10-byte
  header, JSON payloads, GOAWAY = u16 code + UTF-8 reason) over the project's WebSocket
  transport, so what a test asserts about GOAWAY is what is on the wire, not what our protocol
  package decodes.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

import gevent
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import HttpReply, KitProcess
from tests.e2e.wire import BIND, BIND_ERR, BIND_OK, HELLO, PING, PONG, WELCOME, Frame, encode_frame, split_frames
from tests.waiting import scaled_s
from tunnel.mux.transport import SocketTransport, TransportError
from tunnel.mux.ws_client import connect

API = "/api/v1/tunnel"

MetricKey = tuple[str, tuple[tuple[str, str], ...]]


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


def metric_samples(kit: KitProcess) -> dict[MetricKey, float]:
    """Every sample of /metrics by (name, sorted labels), parsed by prometheus_client's own parser."""
    reply = kit.get(f"{API}/metrics")
    assert reply.status == 200, (reply.status, reply.body[:300])
    samples: dict[MetricKey, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(kit: KitProcess, name: str, *, absent: float | None = None, **labels: str) -> float | None:
    """The sample ``name`` with exactly ``labels``; ``absent`` when /metrics does not list it (a
    labelled counter appears only once counted: pass ``absent=0.0`` to read that as 0)."""
    return metric_samples(kit).get((name, tuple(sorted(labels.items()))), absent)


def gauges(kit: KitProcess) -> dict[str, float]:
    """Every unlabelled sample of /metrics, by name."""
    return {name: value for (name, labels), value in metric_samples(kit).items() if not labels}


def check_fd_invariant(tunnels: dict[str, Any], budget: int | None = None) -> dict[str, Any]:
    """Assert docs/protocol.md §12 on a GET /tunnels body: fdPermitsAvailable + Σ connectionsGranted
    == fdBudget (== ``budget`` when given). Returns the body."""
    granted = [session["connectionsGranted"] for session in tunnels["sessions"]]
    assert isinstance(tunnels["fdPermitsAvailable"], int), tunnels
    assert all(isinstance(g, int) for g in granted), tunnels
    assert tunnels["fdPermitsAvailable"] + sum(granted) == tunnels["fdBudget"], tunnels
    if budget is not None:
        assert tunnels["fdBudget"] == budget, tunnels
    return tunnels


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


# -- the wire, by hand (docs/protocol.md §2), over the project's transport ---------------------


class WireClient:
    """A tunnel client written from the wire spec: HELLO, BIND, then it reads frames."""

    def __init__(self, kit: KitProcess, *, protocol: str = "hoody-tunnel.v2") -> None:
        self.transport: SocketTransport = connect(
            kit.ws_url, [protocol], timeout_s=scaled_s(10.0), headers={"User-Agent": "e2e-wire/1.0"}
        )
        self._pending: deque[Frame] = deque()
        self._req_id = 0

    def send(self, frame_type: int, payload: bytes = b"", stream_id: int = 0) -> None:
        self.transport.send_messages([encode_frame(frame_type, stream_id, payload)])

    def send_json(self, frame_type: int, body: dict[str, Any]) -> None:
        self.send(frame_type, json.dumps(body).encode())

    def next_frame(self, timeout_s: float) -> Frame:
        """The next frame (v2 may batch several in one message); PINGs are answered."""
        while not self._pending:
            with gevent.Timeout(scaled_s(timeout_s), TimeoutError("no frame in time")):
                message = bytes(self.transport.receive_message())
            for frame in split_frames(message):
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
