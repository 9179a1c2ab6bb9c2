"""Test doubles for the driver layer's unit tests (runner, pumps, the kit's sessions).

Everything here runs in memory or on ``socketpair()``/AF_UNIX sockets: no TCP, no network.

* :class:`FakeClock`: the runner's injectable clock; a test moves it with :meth:`FakeClock.advance`
  and may pause the runner's timer greenlet inside it (:meth:`FakeClock.pause_timer`), so that
  nothing but the code under test can wake the writer.
* :class:`LocalSocket` / :func:`local_pair`: one end of a ``socketpair()`` standing in for a
  pump's local TCP connection. AF_UNIX has no TCP options, so those are recorded and not applied;
  SO_LINGER is recorded *and* applied. Writes can be held back (``send_limit``), like a local app
  that stops reading.
* :class:`UnixListener` / :class:`FakeNetwork`: stand-ins for the kit's EXPOSE listeners and PULL
  dials (``tunnel.server.bindings.open_listener`` / ``dial``), on AF_UNIX sockets.
* :class:`WirePeer`: the far end of a transport driven by hand (a client Session whose messages
  the test carries), for exact control over what the runner under test receives.
* :class:`ClientPeer`: a client Session driven by its own SessionRunner: a whole client, for the
  kit's tests.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.queue import Empty, Queue

from tests.waiting import scaled_s
from tests.memory_transport import MemoryTransport
from tunnel.mux.pump import StreamPump
from tunnel.mux.runner import ConnectionEnd, EndKind, SessionRunner
from tunnel.mux.transport import ConnectionClosed
from tunnel.protocol import (
    MAX_FRAME_SIZE_LIMIT,
    BindAccepted,
    BindFailed,
    BindKind,
    BindMode,
    BindRequest,
    Event as ProtocolEvent,
    Frame,
    Hello,
    Role,
    Session,
    SessionConfig,
    StreamOpened,
    WelcomeReceived,
    decode_message,
)

TOKEN = "driver-test-token-0123456789"
LINGER_ABORT = struct.pack("ii", 1, 0)
E = TypeVar("E", bound=ProtocolEvent)


def settle(rounds: int = 50) -> None:
    """Let every ready greenlet run a few times (zero-length yields: no time passes)."""
    for _ in range(rounds):
        gevent.sleep(0)


# -- the clock -----------------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves by hand.

    ``pause_timer()`` makes any call from the runner's timer loop block until ``resume_timer()``:
    the timer then cannot run ``handle_timer`` or flush, so a frame that reaches the wire was
    sent by whoever queued it (the reader and the commands call the clock without blocking).
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.calls = 0
        self._timer_gate = Event()
        self._timer_gate.set()
        self.timer_waiting = Event()

    def __call__(self) -> float:
        self.calls += 1
        if not self._timer_gate.is_set() and sys._getframe(1).f_code.co_name == "_timer_loop":
            self.timer_waiting.set()
            self._timer_gate.wait()
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def pause_timer(self) -> None:
        self._timer_gate.clear()

    def resume_timer(self) -> None:
        self._timer_gate.set()


# -- local sockets -------------------------------------------------------------------------------


class LocalSocket(gsocket.socket):
    """A gevent socket on one end of a ``socketpair()``, standing in for a local TCP connection.

    Records every ``setsockopt``; TCP-level options (TCP_NODELAY) are not applied (AF_UNIX has
    none). ``written`` counts bytes the kernel really took. With ``send_limit`` set, sends stop
    (block) once that many bytes were written in total, like a local app that stopped reading,
    until :meth:`unblock`; ``send_blocked`` is set while a send waits there.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options: list[tuple[int, int, object]] = []
        self.written = 0
        self.send_limit: int | None = None
        self.send_blocked = Event()
        self._unblocked = Event()

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        self.options.append((level, option, value))
        if level == socket.IPPROTO_TCP:
            return
        super().setsockopt(level, option, value, *rest)

    @property
    def aborted(self) -> bool:
        """SO_LINGER (on, 0 s) was set: closing it sends a reset (TCP RST on a real connection)."""
        return (socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT) in self.options

    def unblock(self) -> None:
        self.send_limit = None
        self._unblocked.set()

    def send(self, data: Any, flags: int = 0, timeout: Any = None) -> int:
        """As gevent's ``send``; ``timeout=0.0`` raises BlockingIOError instead of waiting, at
        the send limit too."""
        view = memoryview(data).cast("B")
        while self.send_limit is not None and self.written >= self.send_limit:
            if timeout == 0.0:
                raise BlockingIOError(11, "Resource temporarily unavailable")
            self.send_blocked.set()
            self._unblocked.wait()
        if self.send_limit is not None:
            view = view[: self.send_limit - self.written]
        sent = super().send(view, flags) if timeout is None else super().send(view, flags, timeout=timeout)
        self.written += sent
        return sent

    def sendall(self, data: Any, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        while view:
            sent = self.send(view, flags)
            view = view[sent:]


def local_pair() -> tuple[LocalSocket, gsocket.socket]:
    """(the pump's side, the local app's side) of a connected socketpair."""
    ours, theirs = socket.socketpair()
    return LocalSocket(fileno=ours.detach()), gsocket.socket(fileno=theirs.detach())


def recv_exactly(sock: gsocket.socket, size: int, timeout_s: float = 5.0) -> bytes:
    """Read ``size`` bytes (fails on EOF or timeout)."""
    data = bytearray()
    with gevent.Timeout(scaled_s(timeout_s)):
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            assert chunk, f"EOF after {len(data)} of {size} bytes"
            data += chunk
    return bytes(data)


def recv_to_eof(sock: gsocket.socket, timeout_s: float = 5.0) -> bytes:
    data = bytearray()
    with gevent.Timeout(scaled_s(timeout_s)):
        while chunk := sock.recv(65536):
            data += chunk
    return bytes(data)


_listener_names = itertools.count(1)


class UnixListener(gsocket.socket):
    """A listening AF_UNIX socket standing in for an EXPOSE listener: ``accept`` hands out
    :class:`LocalSocket` connections with an IPv4 origin, and counts them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.accepted = 0

    def accept(self) -> tuple[LocalSocket, tuple[str, int]]:
        conn, _ = super().accept()
        self.accepted += 1
        return LocalSocket(fileno=conn.detach()), ("198.51.100.7", 40000 + self.accepted)


class FakeNetwork:
    """Replaces ``tunnel.server.bindings.open_listener`` and ``dial`` (install with monkeypatch).

    ``listeners[port]`` is the last listener opened for ``port``; ``targets`` receives the local
    app's side of every PULL dial, in order.
    """

    def __init__(self) -> None:
        self.listeners: dict[int, UnixListener] = {}
        self.addresses: dict[int, str] = {}
        self.targets: Queue[gsocket.socket] = Queue()
        self.dialed: list[tuple[str, int]] = []
        self.refuse_listen: dict[int, Exception] = {}  # port -> what open_listener raises

    def open_listener(self, host: str, port: int) -> socket.socket:
        if port in self.refuse_listen:
            raise self.refuse_listen[port]
        listener = UnixListener(socket.AF_UNIX, socket.SOCK_STREAM)
        address = f"\0hoody-tunnel-test-{os.getpid()}-{next(_listener_names)}-{port}"
        listener.bind(address)
        listener.listen(16)
        self.listeners[port] = listener
        self.addresses[port] = address
        return listener

    def dial(self, host: str, port: int, *, timeout_s: float) -> socket.socket:
        self.dialed.append((host, port))
        ours, theirs = local_pair()
        self.targets.put(theirs)
        return ours

    def connect(self, port: int) -> gsocket.socket:
        """A local connection to the EXPOSE listener of ``port`` (an outside client)."""
        client = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(self.addresses[port])
        return client

    def next_target(self, timeout_s: float = 5.0) -> gsocket.socket:
        return self.targets.get(timeout=scaled_s(timeout_s))


# -- peers ---------------------------------------------------------------------------------------


def client_config(version: int = 2, *, window: int = 64 * 1024, heartbeat_s: float = 10.0) -> SessionConfig:
    return SessionConfig(
        role=Role.CLIENT,
        version=version,
        receive_window_size=window,
        max_frame_size=MAX_FRAME_SIZE_LIMIT,
        max_streams=100,
        heartbeat_interval_s=heartbeat_s,
    )


class WirePeer:
    """The far end of a transport, driven by hand: a client Session whose messages the test
    carries, and a log of every frame received."""

    def __init__(self, transport: MemoryTransport, session: Session | None = None, *, version: int = 2) -> None:
        self.transport = transport
        self.session = session or Session(client_config(version))
        self.frames: list[Frame] = []
        self.events: list[ProtocolEvent] = []
        self.now = 0.0

    def send(self) -> None:
        """Write everything the client session has queued."""
        messages = self.session.messages_to_send()
        if messages:
            self.transport.send_messages(messages)

    def receive(self, timeout_s: float = 5.0) -> list[Frame]:
        """Read one message; the client session processes it. Returns its frames."""
        with gevent.Timeout(scaled_s(timeout_s), AssertionError("no message arrived")):
            message = self.transport.receive_message()
        frames = decode_message(message, max_frame_size=MAX_FRAME_SIZE_LIMIT, version=self.session.version)
        self.frames.extend(frames)
        self.session.receive_message(message, self.now)
        self.events.extend(self.session.events_received())
        return frames

    def receive_frame(self, frame_type: type, timeout_s: float = 5.0) -> Any:
        """Read messages until a frame of ``frame_type`` arrives; return it."""
        while True:
            for frame in self.receive(timeout_s):
                if isinstance(frame, frame_type):
                    return frame

    def pending(self) -> int:
        """Messages delivered to this end and not read yet."""
        return self.transport.inbox.qsize()

    def wait_closed(self, timeout_s: float = 5.0) -> ConnectionClosed:
        """Read (and keep) messages until the connection ends; return how it ended."""
        try:
            while True:
                self.receive(timeout_s)
        except ConnectionClosed as exc:
            return exc

    def handshake(self, token: str = TOKEN) -> None:
        self.session.send_hello(Hello(token=token, client="wire-peer/1.0"))
        self.send()
        while not any(isinstance(e, WelcomeReceived) for e in self.events):
            self.receive()


class ClientPeer:
    """A whole client: a client Session driven by its own SessionRunner over ``transport``.

    It is the runner's delegate: every event goes to ``events``; streams the kit opens wait in
    ``opened`` for the test to accept (or not).
    """

    def __init__(self, transport: MemoryTransport, *, version: int = 2, window: int = 64 * 1024, park: bool = False) -> None:
        self.session = Session(client_config(version, window=window))
        self.runner = SessionRunner(self.session, transport, self, name="client")
        self.events: Queue[ProtocolEvent] = Queue()
        self.seen: list[ProtocolEvent] = []
        self.opened: Queue[tuple[StreamOpened, StreamPump]] = Queue()
        self.finished: list[StreamPump] = []
        self.ends: list[ConnectionEnd] = []
        self.park = park
        self.welcome: WelcomeReceived | None = None
        self.greenlet: gevent.Greenlet[..., ConnectionEnd] | None = None
        self._req_ids = itertools.count(1)

    # RunnerDelegate
    def stream_opened(self, event: StreamOpened, pump: StreamPump) -> None:
        self.opened.put((event, pump))

    def stream_finished(self, pump: StreamPump) -> None:
        self.finished.append(pump)

    def event_received(self, event: ProtocolEvent) -> None:
        self.seen.append(event)
        self.events.put(event)

    def connection_ended(self, end: ConnectionEnd) -> bool:
        self.ends.append(end)
        return self.park and end.kind in (EndKind.PEER_CLOSED, EndKind.DEAD, EndKind.SEND_FAILED)

    # driving
    @property
    def transport(self) -> MemoryTransport:
        transport = self.runner.transport
        assert isinstance(transport, MemoryTransport)
        return transport

    def start(self, token: str = TOKEN) -> WelcomeReceived:
        """HELLO, run, and wait for the WELCOME."""
        self.runner.send_hello(Hello(token=token, client="client-peer/1.0"))
        self.greenlet = gevent.spawn(self.runner.run)
        self.welcome = self.wait_for(WelcomeReceived)
        return self.welcome

    def wait_for(self, event_type: type[E], timeout_s: float = 5.0) -> E:
        """The next event of ``event_type`` (others are skipped; all stay in ``seen``)."""
        deadline = gevent.get_hub().loop.now() + scaled_s(timeout_s)
        while True:
            remaining = deadline - gevent.get_hub().loop.now()
            try:
                event = self.events.get(timeout=max(remaining, 0.0))
            except Empty:
                raise AssertionError(f"no {event_type.__name__} within {timeout_s} s; seen {self.seen}") from None
            if isinstance(event, event_type):
                return event

    def bind(self, kind: BindKind, port: int, mode: BindMode = BindMode.TCP) -> BindAccepted | BindFailed:
        """BIND and wait for the answer."""
        req_id = next(self._req_ids)
        self.runner.send_bind(BindRequest(req_id=req_id, kind=kind, port=port, mode=mode))
        while True:
            answer = self.wait_for(ProtocolEvent)
            if isinstance(answer, (BindAccepted, BindFailed)):
                answer_req = answer.result.req_id if isinstance(answer, BindAccepted) else answer.req_id
                assert answer_req == req_id, answer
                return answer

    def next_opened(self, timeout_s: float = 5.0) -> tuple[StreamOpened, StreamPump]:
        return self.opened.get(timeout=scaled_s(timeout_s))

    def stop(self) -> None:
        """Tear down (test cleanup): close the connection and every stream."""
        self.transport.close()
        if self.greenlet is not None:
            self.greenlet.join(timeout=scaled_s(5))
            self.greenlet.kill()
        self.runner.stop()
