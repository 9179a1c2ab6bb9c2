"""Resume (docs/protocol.md §13.9): a randomized two-session simulation with connection cuts at
arbitrary points, and the edges of the ``received`` bookkeeping.

The simulation wires a client and a server Session through two FIFO "wires". Each step does one
random thing: an app writes within credit (maybe ending with FIN), a side delivers some messages,
a local socket "writes" some held bytes (acknowledge_data), a side opens a stream, or the
connection is cut: both wires lose what is in flight and both sessions detach; the client then
resumes, and the cut may strike again during that handshake. At the end every stream must have
carried its exact bytes in both directions, each followed by FIN: nothing lost, duplicated or
reordered. Receivers check every byte as it arrives, so a duplicate fails at once.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import pytest

from tunnel.protocol import (
    DataReceived,
    ErrorCode,
    Hello,
    HelloFrame,
    HelloReceived,
    Role,
    Session,
    SessionConfig,
    SessionState,
    StreamAccepted,
    StreamEnded,
    StreamOffsets,
    StreamOpened,
    StreamReset,
    Welcome,
    WelcomeReceived,
    WindowUpdated,
    decode_message,
)

#: Seeds per run: 40 in CI; more by hand, e.g. TUNNEL_RESUME_SEEDS=1000.
SEEDS = int(os.environ.get("TUNNEL_RESUME_SEEDS", "40"))
#: Streams opened per run at most, so every run ends.
MAX_STREAMS_PER_RUN = 40
WINDOW = 16 * 1024
MAX_FRAME = 4 * 1024
TOKEN = "token"


def _config(role: Role) -> SessionConfig:
    return SessionConfig(
        role=role,
        version=2,
        receive_window_size=WINDOW,
        max_frame_size=MAX_FRAME,
        max_streams=6,
        heartbeat_interval_s=1000.0,
        max_message_size=16 * 1024,
    )


def _welcome(resumed: bool, token_number: int, received: dict[int, StreamOffsets] | None = None) -> Welcome:
    return Welcome(
        session_id="sess_00000000abcd",
        protocol="hoody-tunnel.v2",
        resumed=resumed,
        max_streams=6,
        window=WINDOW,
        max_frame=MAX_FRAME,
        heartbeat_ms=1_000_000,
        server="test",
        resume_token=f"resume-{token_number}",
        orphan_ttl_ms=30000,
        received=received,
    )


def _expected(stream_id: int, direction: str, size: int) -> bytes:
    return random.Random(f"{stream_id}-{direction}").randbytes(size)


@dataclass
class App:
    """One side's local sockets: what it still has to send and what it received."""

    outgoing: dict[int, bytes] = field(default_factory=dict)  # stream -> bytes not yet sent
    fin_pending: set[int] = field(default_factory=set)
    received: dict[int, bytearray] = field(default_factory=dict)
    held: dict[int, int] = field(default_factory=dict)  # received, not yet "written"
    ended: set[int] = field(default_factory=set)
    expected_in: dict[int, bytes] = field(default_factory=dict)


class Simulation:
    def __init__(self, seed: int, *, cut_rate: float) -> None:
        self.rng = random.Random(seed)
        self.cut_rate = cut_rate
        self.client = Session(_config(Role.CLIENT))
        self.server = Session(_config(Role.SERVER))
        self.apps = {Role.CLIENT: App(), Role.SERVER: App()}
        self.wires: dict[Role, list[bytes]] = {Role.CLIENT: [], Role.SERVER: []}  # to that role
        self.streams: list[int] = []
        self.cuts = 0
        self.resumes = 0
        self.token_number = 0
        self.valid_tokens = ["resume-0"]
        self.now = 0.0
        self.client.send_hello(Hello(token=TOKEN, client="sim"))
        self._flush()
        self._deliver(Role.SERVER, 10)
        self.server.send_welcome(_welcome(False, 0))
        self._flush()
        self._deliver(Role.CLIENT, 10)
        assert self.client.state is SessionState.OPEN

    def session(self, role: Role) -> Session:
        return self.client if role is Role.CLIENT else self.server

    def _flush(self) -> None:
        self.wires[Role.SERVER].extend(self.client.messages_to_send())
        self.wires[Role.CLIENT].extend(self.server.messages_to_send())

    # -- one side receiving ------------------------------------------------------------------

    def _deliver(self, to: Role, count: int) -> None:
        session = self.session(to)
        wire = self.wires[to]
        for _ in range(min(count, len(wire))):
            message = wire.pop(0)
            if to is Role.SERVER and session.state is SessionState.DETACHED:
                self._server_handshake(message)
                continue
            session.receive_message(message, self.now)
            self._handle(to, session.events_received())
        self._flush()

    def _server_handshake(self, message: bytes) -> None:
        """A new connection's first message reaches the kit: HELLO.resume for the parked session."""
        frames = decode_message(message, max_frame_size=MAX_FRAME, version=2)
        hello = frames[0]
        assert isinstance(hello, HelloFrame) and hello.hello.resume is not None, frames
        token = hello.hello.resume.resume_token
        # The kit's rule: every token issued since the last one the client acknowledged (it
        # may hold any of them: the WELCOMEs after it may or may not have been lost).
        if self.server.welcome_acknowledged:
            self.valid_tokens = [f"resume-{self.token_number}"]
        assert token in self.valid_tokens, (token, self.valid_tokens)
        self.token_number += 1
        self.valid_tokens.append(f"resume-{self.token_number}")
        self.server.resume(_welcome(True, self.token_number), hello.hello.resume.received, self.now)
        self._handle(Role.SERVER, self.server.events_received())
        assert len(frames) == 1, "nothing may follow HELLO.resume before WELCOME"

    def _handle(self, role: Role, events: list[object]) -> None:
        app = self.apps[role]
        session = self.session(role)
        direction = "c2s" if role is Role.SERVER else "s2c"
        for event in events:
            if isinstance(event, StreamOpened):
                session.accept_stream(event.stream_id)
                self._start_sending(role, event.stream_id)
                app.expected_in[event.stream_id] = _expected(event.stream_id, direction, self.sizes[event.stream_id])
                app.received[event.stream_id] = bytearray()
            elif isinstance(event, DataReceived):
                buffer = app.received[event.stream_id]
                start = len(buffer)
                buffer.extend(event.data)
                expected = app.expected_in[event.stream_id][start : len(buffer)]
                assert bytes(buffer[start:]) == expected, f"stream {event.stream_id}: wrong bytes at {start}"
                app.held[event.stream_id] = app.held.get(event.stream_id, 0) + len(event.data)
            elif isinstance(event, StreamEnded):
                assert event.stream_id not in app.ended, f"FIN twice on {event.stream_id}"
                app.ended.add(event.stream_id)
            elif isinstance(event, StreamReset):
                raise AssertionError(f"{role.value}: unexpected reset {event}")
            elif isinstance(event, (WindowUpdated, StreamAccepted, WelcomeReceived, HelloReceived)):
                pass
            else:
                raise AssertionError(f"{role.value}: unexpected event {event}")

    # -- apps -------------------------------------------------------------------------------

    sizes: dict[int, int] = {}

    def open_stream(self, role: Role) -> None:
        session = self.session(role)
        if not session.can_open_stream() or len(self.streams) >= MAX_STREAMS_PER_RUN:
            return
        stream_id = session.open_stream(1)
        self.sizes[stream_id] = self.rng.choice([0, 1, 100, 5000, 40000, 70000])
        self.streams.append(stream_id)
        app = self.apps[role]
        direction = "s2c" if role is Role.CLIENT else "c2s"
        app.expected_in[stream_id] = _expected(stream_id, direction, self.sizes[stream_id])
        app.received[stream_id] = bytearray()
        self._start_sending(role, stream_id)

    def _start_sending(self, role: Role, stream_id: int) -> None:
        direction = "c2s" if role is Role.CLIENT else "s2c"
        self.apps[role].outgoing[stream_id] = _expected(stream_id, direction, self.sizes[stream_id])
        self.apps[role].fin_pending.add(stream_id)

    def write(self, role: Role) -> None:
        session = self.session(role)
        app = self.apps[role]
        for stream_id in list(app.outgoing):
            credit = session.outbound_credit(stream_id)
            data = app.outgoing[stream_id]
            if credit and data:
                size = self.rng.randint(1, min(credit, len(data)))
                end = size == len(data) and self.rng.random() < 0.5
                session.send_data(stream_id, data[:size], end_stream=end)
                app.outgoing[stream_id] = data[size:]
                if end:
                    app.fin_pending.discard(stream_id)
            elif not data and stream_id in app.fin_pending and session.is_open(stream_id):
                if session.stream_state(stream_id).name not in ("OPEN_RECEIVED",):
                    session.send_data(stream_id, b"", end_stream=True)
                    app.fin_pending.discard(stream_id)
            if not app.outgoing[stream_id] and stream_id not in app.fin_pending:
                del app.outgoing[stream_id]
        self._flush()

    def drain_local(self, role: Role) -> None:
        session = self.session(role)
        app = self.apps[role]
        for stream_id, held in list(app.held.items()):
            if held:
                size = self.rng.randint(1, held)
                app.held[stream_id] = held - size
                session.acknowledge_data(stream_id, size, drained=app.held[stream_id] == 0)
        self._flush()

    # -- the network ------------------------------------------------------------------------

    def cut(self) -> None:
        self.cuts += 1
        self.wires[Role.CLIENT].clear()
        self.wires[Role.SERVER].clear()
        for session in (self.client, self.server):
            if session.state in (SessionState.OPEN, SessionState.DETACHED, SessionState.RESUMING):
                session.detach()
        self.client.send_resume(TOKEN, "sim")
        self.resumes += 1
        self._flush()

    def step(self) -> None:
        self.now += 0.001
        roll = self.rng.random()
        role = self.rng.choice([Role.CLIENT, Role.SERVER])
        if roll < self.cut_rate:
            self.cut()
        elif roll < 0.05:
            self.open_stream(role)
        elif roll < 0.45:
            self.write(role)
        elif roll < 0.75:
            self._deliver(role, self.rng.randint(1, 4))
        else:
            self.drain_local(role)

    def done(self) -> bool:
        for role in (Role.CLIENT, Role.SERVER):
            app = self.apps[role]
            if app.outgoing or app.fin_pending or any(app.held.values()):
                return False
            for stream_id, expected in app.expected_in.items():
                if len(app.received[stream_id]) != len(expected) or stream_id not in app.ended:
                    return False
        return not self.wires[Role.CLIENT] and not self.wires[Role.SERVER]

    def run(self, *, streams: int, max_steps: int) -> None:
        for _ in range(streams):
            self.open_stream(Role.CLIENT if self.rng.random() < 0.6 else Role.SERVER)
        steps = 0
        while not self.done():
            steps += 1
            assert steps < max_steps, f"stuck after {steps} steps ({self.cuts} cuts): {self.summary()}"
            self.step()

    def summary(self) -> str:
        parts = []
        for role in (Role.CLIENT, Role.SERVER):
            app = self.apps[role]
            parts.append(
                f"{role.value}: state={self.session(role).state.name} outgoing={ {k: len(v) for k, v in app.outgoing.items()} } "
                f"fin_pending={sorted(app.fin_pending)} held={app.held} "
                f"received={ {k: (len(v), len(app.expected_in[k]), k in app.ended) for k, v in app.received.items()} }"
            )
        return " | ".join(parts)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_cuts_lose_duplicate_and_reorder_nothing(seed: int) -> None:
    simulation = Simulation(seed, cut_rate=0.01)
    simulation.run(streams=5, max_steps=60000)
    for role in (Role.CLIENT, Role.SERVER):
        session = simulation.session(role)
        assert session.statistics().active_streams == 0, simulation.summary()


@pytest.mark.parametrize("seed", range(max(1, SEEDS // 4)))
def test_frequent_cuts_including_during_the_resume_handshake(seed: int) -> None:
    simulation = Simulation(1000 + seed, cut_rate=0.05)
    simulation.run(streams=4, max_steps=200000)
    assert simulation.resumes == simulation.cuts  # every cut was followed by a resume


def test_no_cut_means_no_resume_and_the_same_result() -> None:
    simulation = Simulation(5, cut_rate=0.0)
    simulation.run(streams=6, max_steps=60000)
    assert simulation.cuts == 0


def test_closed_stream_records_are_bounded_in_count_and_bytes() -> None:
    from tunnel.protocol.replay import MAX_CLOSED_RECORDS, MAX_CLOSED_REPLAY_SIZE

    client = Simulation(3, cut_rate=0.0).client
    chunk = b"z" * (WINDOW - 1)  # never credited back: the peer never sees it
    for _ in range(2 * MAX_CLOSED_REPLAY_SIZE // len(chunk)):
        stream_id = client.open_stream(1)
        client.send_data(stream_id, chunk)
        client.reset_stream(stream_id, ErrorCode.NORMAL)  # closed, its replay bytes kept
        client.messages_to_send()
    kept = [record.ledger for record in client._streams.closed_records()]
    assert len(kept) <= MAX_CLOSED_RECORDS
    assert sum(ledger.replay_size for ledger in kept) <= MAX_CLOSED_REPLAY_SIZE
    assert len(kept) == MAX_CLOSED_REPLAY_SIZE // len(chunk)  # the newest are kept


# -- the edges of the received bookkeeping, one by one (docs/protocol.md §13.5) ------------------------


def _pair() -> tuple[Session, Session]:
    """An OPEN v2 client/server pair (token chain starts at resume-0)."""
    simulation = Simulation(0, cut_rate=0.0)
    return simulation.client, simulation.server


def _carry(sender: Session, receiver: Session, now: float = 0.0) -> list[object]:
    for message in sender.messages_to_send():
        receiver.receive_message(message, now)
    return list(receiver.events_received())


def _cut_and_resume(client: Session, server: Session, token_number: int = 1) -> tuple[list[object], list[object]]:
    """Drop everything in flight, detach both, resume; return (server events, client events)."""
    client.messages_to_send()
    server.messages_to_send()
    client.detach()
    server.detach()
    client.send_resume(TOKEN, "edge")
    [message] = client.messages_to_send()
    [hello] = decode_message(message, max_frame_size=MAX_FRAME, version=2)
    assert isinstance(hello, HelloFrame) and hello.hello.resume is not None
    server.resume(_welcome(True, token_number), hello.hello.resume.received, 1.0)
    server_events = list(server.events_received())
    client_events = _carry(server, client, 1.0)
    return server_events, client_events


def test_a_fin_lost_in_the_cut_is_sent_again_and_the_stream_ends_once() -> None:
    client, server = _pair()
    stream_id = client.open_stream(1)
    client.send_data(stream_id, b"abc")
    assert [type(e) for e in _carry(client, server)] == [StreamOpened, DataReceived]
    server.accept_stream(stream_id)
    _carry(server, client)
    client.send_data(stream_id, b"", end_stream=True)  # this FIN is lost in the cut
    server_events, _ = _cut_and_resume(client, server)
    assert server_events == []
    events = _carry(client, server, 1.0)
    assert [type(e) for e in events] == [StreamEnded]  # the FIN again, and no byte twice
    assert server.received_map()[stream_id] == StreamOffsets(3, 0, True)


def test_an_open_that_never_reached_the_peer_is_opened_again_with_its_data() -> None:
    client, server = _pair()
    stream_id = client.open_stream(1)
    client.send_data(stream_id, b"early data", end_stream=True)  # OPEN, DATA, FIN: all lost
    server_events, _ = _cut_and_resume(client, server)
    assert server_events == [] and stream_id not in server.received_map()
    events = _carry(client, server, 1.0)
    assert [type(e) for e in events] == [StreamOpened, DataReceived, StreamEnded]
    assert bytes(events[1].data) == b"early data"  # type: ignore[attr-defined]


def test_a_stream_the_peer_closed_during_the_outage_is_closed_locally() -> None:
    client, server = _pair()
    stream_id = client.open_stream(1)
    client.send_data(stream_id, b"x")
    _carry(client, server)
    server.accept_stream(stream_id)
    _carry(server, client)
    server.reset_stream(stream_id, ErrorCode.NORMAL, "closed during the outage")  # RST lost
    _, client_events = _cut_and_resume(client, server)
    # The server still remembers the reset stream and sends its RST again; the client ends it.
    resets = [e for e in client_events if isinstance(e, StreamReset)]
    assert [(r.stream_id, r.error_code, r.remote) for r in resets] == [(stream_id, ErrorCode.NORMAL, True)]
    assert not client.is_open(stream_id)


def test_a_stream_the_peer_forgot_is_closed_locally_without_loss_of_the_session() -> None:
    client, server = _pair()
    stream_id = client.open_stream(1)
    client.send_data(stream_id, b"x")
    _carry(client, server)
    server.accept_stream(stream_id)
    _carry(server, client)
    # The server forgets the stream entirely (as after a record was pushed out).
    record = server._streams.get(stream_id)
    assert record is not None
    server._streams.drop(record)
    _, client_events = _cut_and_resume(client, server)
    resets = [e for e in client_events if isinstance(e, StreamReset)]
    assert [(r.stream_id, r.error_code, r.remote) for r in resets] == [(stream_id, ErrorCode.STREAM_CLOSED, False)]
    assert client.state is SessionState.OPEN and server.state is SessionState.OPEN
