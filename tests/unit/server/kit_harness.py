"""A Kit serving in-memory connections to ClientPeers, for the kit's unit tests.

``Kit.serve`` runs each connection exactly as the WebSocket view does, on a MemoryTransport; the
kit's EXPOSE listeners and PULL dials go to :class:`~tests.driver_support.FakeNetwork` (AF_UNIX
sockets), so nothing touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gevent
import pytest
from gevent import socket as gsocket
from prometheus_client import CollectorRegistry

from tests.waiting import scaled_s, wait_until
from tests.driver_support import ClientPeer, FakeNetwork, LocalSocket, local_pair
from tests.memory_transport import MemoryTransport, transport_pair
from tunnel.config import Settings
from tunnel.metrics import Metrics
from tunnel.mux.pump import StreamPump
from tunnel.protocol import BindAccepted, BindKind, StreamAccepted, StreamOpened
from tunnel.server import bindings
from tunnel.server.kit import Kit
from tunnel.server.kit_session import KitSession

V1 = "hoody-tunnel.v1"
V2 = "hoody-tunnel.v2"
WAIT_S = 5.0


@dataclass
class Connection:
    """One client connected through ``Kit.serve``."""

    peer: ClientPeer
    serve: gevent.Greenlet[..., None]
    kit_end: MemoryTransport
    session: KitSession

    @property
    def client_end(self) -> MemoryTransport:
        return self.peer.transport

    def cut(self) -> None:
        """The WebSocket drops under both ends (no close frame, no GOAWAY): a network cut."""
        self.client_end.abort()
        self.serve.join(timeout=scaled_s(WAIT_S))
        assert self.serve.dead, "Kit.serve did not return after the cut"
        self.serve.get()  # re-raise what it raised, if anything


@dataclass
class PullStream:
    """A PULL stream: the client's local app socket and the kit's dialled target socket."""

    pump: StreamPump  # the client's
    app: gsocket.socket  # the local app on the client's side
    target: gsocket.socket  # the PULL target on the kit's side


class KitHarness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **overrides: object) -> None:
        values: dict[str, object] = {
            "tokens": ("driver-test-token-0123456789",),
            "state_dir": str(tmp_path),
            "expose_host": "127.0.0.1",
            "fd_budget": 16,
        }
        values.update(overrides)
        self.settings = Settings(**values)  # type: ignore[arg-type]
        self.metrics = Metrics(CollectorRegistry())
        self.kit = Kit(self.settings, self.metrics)
        self.net = FakeNetwork()
        monkeypatch.setattr(bindings, "open_listener", self.net.open_listener)
        monkeypatch.setattr(bindings, "dial", self.net.dial)
        self.connections: list[Connection] = []
        self.sockets: list[gsocket.socket] = []

    # -- connections ---------------------------------------------------------------------------

    def serve(self, protocol: str = V2) -> tuple[MemoryTransport, gevent.Greenlet[..., None]]:
        """A new WebSocket handed to Kit.serve; returns (client end, serve greenlet)."""
        client_end, kit_end = transport_pair(protocol)
        serve = gevent.spawn(self.kit.serve, kit_end, peer_address="203.0.113.9:50000", user_agent="unit/1")
        return client_end, serve

    def connect(self, protocol: str = V2, *, park: bool = False) -> Connection:
        """A client through HELLO/WELCOME; its KitSession is listed."""
        client_end, serve = self.serve(protocol)
        peer = ClientPeer(client_end, version=2 if protocol == V2 else 1, park=park)
        welcome = peer.start()
        session = self.kit.registry.get(welcome.welcome.session_id)
        assert session is not None
        connection = Connection(peer, serve, client_end.peer, session)  # type: ignore[arg-type]
        self.connections.append(connection)
        return connection

    def bind(self, connection: Connection, kind: BindKind, port: int) -> int:
        answer = connection.peer.bind(kind, port)
        assert isinstance(answer, BindAccepted), answer
        return answer.result.bind_id

    def open_pull(self, connection: Connection, bind_id: int) -> PullStream:
        """The client opens a PULL stream; the kit dials the target and accepts."""
        pump = connection.peer.runner.open_stream(bind_id, "127.0.0.1:6000")
        local, app = local_pair()
        pump.connect(local)
        target = self.net.next_target()
        connection.peer.wait_for(StreamAccepted)
        self.sockets += [app, target]
        return PullStream(pump, app, target)

    def accept_expose(self, connection: Connection) -> tuple[StreamOpened, StreamPump, gsocket.socket]:
        """The client accepts the next stream the kit opened; returns (the OPEN, the client's
        pump, its local app)."""
        event, pump = connection.peer.next_opened()
        local, app = local_pair()
        pump.connect(local)
        connection.peer.runner.accept_stream(event.stream_id)
        self.sockets.append(app)
        return event, pump, app

    def resume(self, connection: Connection) -> tuple[MemoryTransport, gevent.Greenlet[..., None]]:
        """The (parked) client comes back on a new WebSocket with HELLO.resume."""
        client_end, serve = self.serve()
        runner = connection.peer.runner
        runner.send_resume(self.settings.tokens[0], "client-peer/1.0")
        runner.attach(client_end)
        connection.peer.greenlet = gevent.spawn(runner.run)
        connection.serve = serve
        connection.kit_end = client_end.peer  # type: ignore[assignment]
        return client_end, serve

    def outside_client(self, port: int) -> gsocket.socket:
        """Someone connects to the kit's EXPOSE listener of ``port``."""
        sock = self.net.connect(port)
        self.sockets.append(sock)
        return sock

    # -- views ---------------------------------------------------------------------------------

    def check_invariant(self) -> None:
        """docs/protocol.md §12: available + sum(permits held by listed sessions) == budget."""
        accounting = self.kit.fd_accounting()
        assert accounting.available + accounting.granted == accounting.budget, accounting

    def counter(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def wait_permits(self, session: KitSession, held: int, what: str) -> None:
        wait_until(lambda: session.permits_held == held, 5.0, f"{what} (permits_held {session.permits_held}, want {held})")

    # -- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        self.kit.draining = True  # nothing parks during teardown
        for connection in self.connections:
            connection.peer.stop()
        for connection in self.connections:
            connection.serve.join(timeout=scaled_s(WAIT_S))
        for session in list(self.kit.registry):
            session.release_all()
            if session.permits_held:
                session.give_permit()
            self.kit.registry.remove(session)
        for sock in self.sockets:
            sock.close()
        for listener in self.net.listeners.values():
            listener.close()


def is_closed(sock: LocalSocket | gsocket.socket) -> bool:
    return sock.fileno() == -1
