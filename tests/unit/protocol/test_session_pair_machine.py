"""Two correct sessions driven at random never break a rule, never refuse, never lose a byte.

A randomized simulation plays both drivers of a SessionPair, the way tunnel.mux does: opening
streams within ``can_open_stream()``, accepting (or refusing) what the peer opens, sending within
``outbound_credit()``, half-closing, acknowledging what was "written", resetting, pinging,
GOAWAY, and carrying messages (sometimes only part of what is queued) in either direction.
Hypothesis supplies the random choices (``st.randoms``), so a failure is reproducible.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol import (
    DataReceived,
    ErrorCode,
    Role,
    Session,
    StreamOpened,
    StreamRefused,
    StreamReset,
    StreamState,
)

from .pair import SessionPair, make_config

SENDING_STATES = {StreamState.OPEN_SENT, StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE}
# Small limits, so that a few steps exhaust windows and stream slots.
LIMITS = {"max_streams": 2, "receive_window_size": 16 * 1024, "max_frame_size": 16 * 1024}
ACTIONS = [
    "open", "open", "send", "send", "send", "ack", "ack", "deliver", "deliver", "deliver", "reset", "ping",
    "goaway",
]


class Simulation:
    def __init__(self, rnd: random.Random, version: int, max_message_size: int) -> None:
        self.rnd = rnd
        self.pair = SessionPair(
            version,
            client_config=make_config(Role.CLIENT, version, max_message_size=max_message_size, **LIMITS),
            server_config=make_config(Role.SERVER, version, max_message_size=max_message_size, **LIMITS),
        )
        self.sides = {"client": self.pair.client, "server": self.pair.server}
        self.sent: dict[tuple[str, int], bytearray] = {}
        self.received: dict[tuple[str, int], bytearray] = {}
        self.unacked: dict[tuple[str, int], int] = {}  # (receiver side, stream) -> bytes held
        self.goaway_sent: set[str] = set()
        self.counter = 0
        self.windows = 0

    def other(self, side: str) -> str:
        return "server" if side == "client" else "client"

    def step(self) -> None:
        side = self.rnd.choice(["client", "server"])
        session = self.sides[side]
        action = self.rnd.choice(ACTIONS)
        getattr(self, action)(side, session)
        self.check()

    def open(self, side: str, session: Session) -> None:
        if session.can_open_stream():
            self.sent[(side, session.open_stream(bind_id=1))] = bytearray()

    def send(self, side: str, session: Session) -> None:
        streams = [s for s in session.stream_ids() if session.stream_state(s) in SENDING_STATES]
        if not streams:
            return
        stream_id = self.rnd.choice(streams)
        credit = session.outbound_credit(stream_id)
        size = self.rnd.choice([credit, credit // 2, self.rnd.randint(0, credit)])
        self.counter += 1
        payload = bytes([self.counter % 251]) * size
        # Finish often once the peer has finished: that is when streams close and slots free up.
        fin_odds = 0.5 if session.stream_state(stream_id) is StreamState.HALF_CLOSED_REMOTE else 0.15
        session.send_data(stream_id, payload, end_stream=self.rnd.random() < fin_odds)
        self.sent[(side, stream_id)] += payload

    def ack(self, side: str, session: Session) -> None:
        keys = [key for key, size in self.unacked.items() if key[0] == side and size]
        if keys:
            key = self.rnd.choice(keys)
            size = self.rnd.choice([self.unacked[key], self.rnd.randint(1, self.unacked[key])])
            session.acknowledge_data(key[1], size)
            self.unacked[key] -= size

    def reset(self, side: str, session: Session) -> None:
        if session.stream_ids() and self.rnd.random() < 0.3:
            session.reset_stream(self.rnd.choice(session.stream_ids()), ErrorCode.NORMAL)

    def ping(self, side: str, session: Session) -> None:
        session.send_ping(b"8 bytes!")

    def goaway(self, side: str, session: Session) -> None:
        if not self.goaway_sent and self.rnd.random() < 0.02:
            session.send_goaway(ErrorCode.SHUTDOWN, "bye")
            self.goaway_sent.add(side)

    def deliver(self, side: str, session: Session) -> None:
        receiver_side = self.other(side)
        receiver = self.sides[receiver_side]
        max_bytes = self.rnd.choice([None, self.rnd.randint(1, 40_000)])
        for event in self.pair.send(session, max_bytes):
            if isinstance(event, DataReceived):
                self.received.setdefault((side, event.stream_id), bytearray()).extend(event.data)
                key = (receiver_side, event.stream_id)
                self.unacked[key] = self.unacked.get(key, 0) + len(event.data)
            elif isinstance(event, StreamOpened):
                if self.rnd.random() < 0.1:
                    receiver.reset_stream(event.stream_id, ErrorCode.CONNECT_FAILED)
                else:
                    receiver.accept_stream(event.stream_id)  # a no-op if already reset
                    self.sent[(receiver_side, event.stream_id)] = bytearray()
            elif isinstance(event, StreamRefused):
                assert receiver_side in self.goaway_sent, event  # never for maxStreams
            elif isinstance(event, StreamReset):
                assert event.remote, event  # a correct peer never breaks a stream rule
            elif type(event).__name__ == "WindowUpdated":
                self.windows += 1

    def check(self) -> None:
        for key, got in self.received.items():
            assert self.sent[key][: len(got)] == got  # nothing lost, duplicated or reordered
        for session in self.sides.values():
            for stream_id in session.stream_ids():
                assert 0 <= session.outbound_credit(stream_id) <= 2**31 - 1
            assert session.statistics().active_streams == len(session.stream_ids())


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False), st.sampled_from([1, 2]), st.sampled_from([64, 5000, 1 << 20]))
def test_two_correct_sessions(rnd: random.Random, version: int, max_message_size: int) -> None:
    simulation = Simulation(rnd, version, max_message_size)
    for _ in range(300):
        simulation.step()
    # Drain everything: both sides end up with every byte the other sent on live streams.
    for _ in range(50):
        simulation.deliver("client", simulation.pair.client)
        simulation.deliver("server", simulation.pair.server)
        simulation.check()
