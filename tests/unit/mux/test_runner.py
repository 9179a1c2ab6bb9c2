"""SessionRunner over the in-memory transport, with an injectable clock.

The runner under test drives a *server* Session; the far end is a :class:`WirePeer` (a client
Session whose messages the test carries by hand), so the test decides exactly what the runner
receives and sees every frame it sends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import gevent
import pytest
from gevent.queue import Queue

from tests.waiting import scaled_s, wait_until
from tests.driver_support import FakeClock, LocalSocket, WirePeer, client_config, local_pair, settle
from tests.memory_transport import MemoryTransport, transport_pair
from tunnel.mux.pump import StreamPump
from tunnel.mux.runner import ConnectionEnd, EndKind, SessionRunner
from tunnel.mux.transport import CloseCode
from tunnel.protocol import (
    BindErrFrame,
    BindFrame,
    BindKind,
    BindMode,
    BindOkFrame,
    BindRequest,
    BindRequested,
    BindResult,
    DataFrame,
    ErrorCode,
    Event as ProtocolEvent,
    GoAwayFrame,
    Hello,
    HelloReceived,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    Role,
    RstFrame,
    Session,
    SessionConfig,
    SessionState,
    StreamOpened,
    WelcomeFrame,
    WindowFrame,
    encode_frame,
)
from tests.unit.protocol.pair import make_welcome

HEARTBEAT_S = 1 / 16  # exact in binary: fake times below compare exactly
WAIT_S = 5.0


def server_config(*, heartbeat_s: float = 10.0) -> SessionConfig:
    return SessionConfig(
        role=Role.SERVER,
        version=2,
        receive_window_size=64 * 1024,
        max_frame_size=256 * 1024,
        max_streams=8,
        heartbeat_interval_s=heartbeat_s,
    )


class ServerDelegate:
    """Records everything; answers HELLO with WELCOME unless ``auto_welcome`` is off."""

    def __init__(self, *, park: bool = False, auto_welcome: bool = True) -> None:
        self.runner: SessionRunner | None = None
        self.park = park
        self.auto_welcome = auto_welcome
        self.events: list[ProtocolEvent] = []
        self.opened: Queue[tuple[StreamOpened, StreamPump]] = Queue()
        self.on_stream_opened: Callable[[StreamOpened, StreamPump], None] | None = None
        self.finished: list[StreamPump] = []
        self.ends: list[ConnectionEnd] = []

    def stream_opened(self, event: StreamOpened, pump: StreamPump) -> None:
        if self.on_stream_opened is not None:
            self.on_stream_opened(event, pump)
        self.opened.put((event, pump))

    def stream_finished(self, pump: StreamPump) -> None:
        self.finished.append(pump)

    def event_received(self, event: ProtocolEvent) -> None:
        self.events.append(event)
        if isinstance(event, HelloReceived) and self.auto_welcome:
            assert self.runner is not None
            self.runner.send_welcome(make_welcome(self.runner._session.config))

    def connection_ended(self, end: ConnectionEnd) -> bool:
        self.ends.append(end)
        return self.park


class Harness:
    """A server runner on ``kit`` and a hand-driven client on ``peer``."""

    def __init__(self, *, park: bool = False, auto_welcome: bool = True, heartbeat_s: float = 10.0, window: int = 64 * 1024) -> None:
        self.clock = FakeClock()
        self.client_end, self.kit_end = transport_pair()
        self.delegate = ServerDelegate(park=park, auto_welcome=auto_welcome)
        self.session = Session(server_config(heartbeat_s=heartbeat_s))
        self.runner = SessionRunner(self.session, self.kit_end, self.delegate, name="kit", clock=self.clock)
        self.delegate.runner = self.runner
        self.peer = WirePeer(self.client_end, Session(client_config(window=window)))
        self.greenlets: list[gevent.Greenlet[..., ConnectionEnd]] = []
        self.transports = [self.client_end, self.kit_end]

    def second_pair(self) -> tuple[MemoryTransport, MemoryTransport]:
        """Another connection (a resume), closed at teardown too."""
        pair = transport_pair()
        self.transports.extend(pair)
        return pair

    def start(self, *, handshake: bool = True) -> gevent.Greenlet[..., ConnectionEnd]:
        greenlet = gevent.spawn(self.runner.run)
        self.greenlets.append(greenlet)
        if handshake:
            self.peer.handshake()
        return greenlet

    def open_from_peer(self, bind_id: int = 7) -> tuple[int, StreamPump]:
        stream_id = self.peer.session.open_stream(bind_id, "10.0.0.1:5555")
        self.peer.send()
        event, pump = self.delegate.opened.get(timeout=scaled_s(WAIT_S))
        assert event.stream_id == stream_id
        return stream_id, pump

    def close(self) -> None:
        self.clock.resume_timer()
        for transport in self.transports:
            transport.close()
        gevent.joinall(self.greenlets, timeout=scaled_s(WAIT_S))
        self.runner.stop()


@pytest.fixture
def harnesses() -> Iterator[list[Harness]]:
    made: list[Harness] = []
    yield made
    for harness in made:
        harness.close()


@pytest.fixture
def make(harnesses: list[Harness]) -> Callable[..., Harness]:
    def factory(**kwargs: object) -> Harness:
        harness = Harness(**kwargs)  # type: ignore[arg-type]
        harnesses.append(harness)
        return harness

    return factory


def result_of(greenlet: gevent.Greenlet[..., ConnectionEnd]) -> ConnectionEnd:
    end = greenlet.get(timeout=scaled_s(WAIT_S))
    assert isinstance(end, ConnectionEnd)
    return end


# -- ordering --------------------------------------------------------------------------------------


def test_control_frames_queued_while_bulk_data_waits_overtake_it_and_data_stays_in_order(make: Callable[..., Harness]) -> None:
    h = make(window=4 * 1024 * 1024)
    h.start()
    stream_id, _ = h.open_from_peer()
    second_id, _ = h.open_from_peer()
    h.runner.accept_stream(stream_id)
    h.peer.receive_frame(OpenOkFrame)
    payload = os.urandom(3 * 1024 * 1024)  # three writer batches (WRITE_BATCH_SIZE is 1 MiB)

    h.kit_end.hold()  # the wire is full: the writer blocks on its first batch of DATA
    h.runner.send_data(stream_id, payload)
    assert h.kit_end.send_blocked.wait(scaled_s(WAIT_S)), "the writer never started sending"
    # Control frames queued while the bulk data waits.
    h.runner.send_bind_error(41, ErrorCode.FORBIDDEN, "first")
    h.runner.accept_stream(second_id)
    h.runner.send_bind_error(42, ErrorCode.FORBIDDEN, "second")
    h.kit_end.release()

    received = bytearray()
    while len(received) < len(payload):
        for frame in h.peer.receive():
            if isinstance(frame, DataFrame):
                received += frame.data
    assert bytes(received) == payload  # every byte, in order

    kinds = [type(f).__name__ for f in h.peer.frames if isinstance(f, (DataFrame, BindErrFrame, OpenOkFrame))]
    first_control = kinds.index("BindErrFrame")
    last_data = len(kinds) - 1 - kinds[::-1].index("DataFrame")
    assert 0 < first_control < last_data, kinds  # after the batch in flight, before the rest
    controls = [f for f in h.peer.frames if isinstance(f, (BindErrFrame, OpenOkFrame))][1:]  # [0]: stream 1's OPEN_OK
    assert [(type(f).__name__, getattr(f, "req_id", None)) for f in controls] == [
        ("BindErrFrame", 41),
        ("OpenOkFrame", None),
        ("BindErrFrame", 42),
    ]
    assert kinds[first_control : first_control + 3] == ["BindErrFrame", "OpenOkFrame", "BindErrFrame"]


# -- every command flushes -------------------------------------------------------------------------


def _prepare_stream(h: Harness) -> int:
    stream_id, _ = h.open_from_peer()
    return stream_id


def _accept(h: Harness) -> type:
    stream_id = _prepare_stream(h)
    h.clock.pause_timer()
    h.runner.accept_stream(stream_id)
    return OpenOkFrame


def _reset(h: Harness) -> type:
    stream_id = _prepare_stream(h)
    h.clock.pause_timer()
    h.runner.reset_stream(stream_id, ErrorCode.CONNECT_FAILED, "no")
    return RstFrame


def _bind_ok(h: Harness) -> type:
    h.peer.session.send_bind(_bind_request())
    h.peer.send()
    _wait_for_event(h, BindRequested)
    h.clock.pause_timer()
    h.runner.send_bind_ok(BindResult(req_id=1, bind_id=5, kind=BindKind.PULL, port=5432, mode=BindMode.TCP))
    return BindOkFrame


def _bind_error(h: Harness) -> type:
    h.peer.session.send_bind(_bind_request())
    h.peer.send()
    _wait_for_event(h, BindRequested)
    h.clock.pause_timer()
    h.runner.send_bind_error(1, ErrorCode.FORBIDDEN, "port 5432: not allowed")
    return BindErrFrame


def _open(h: Harness) -> type:
    h.clock.pause_timer()
    h.runner.open_stream(3, "198.51.100.1:1234")
    return OpenFrame


def _send_data(h: Harness) -> type:
    stream_id = _prepare_stream(h)
    h.runner.accept_stream(stream_id)
    h.peer.receive_frame(OpenOkFrame)
    h.clock.pause_timer()
    h.runner.send_data(stream_id, b"hello")
    return DataFrame


def _acknowledge(h: Harness) -> type:
    stream_id = _prepare_stream(h)
    size = 40 * 1024  # more than half the 64 KiB window: a WINDOW is due once acknowledged
    h.peer.session.send_data(stream_id, b"x" * size)
    h.peer.send()
    wait_stats = lambda: h.runner.statistics().data_bytes_received == size  # noqa: E731
    _wait(wait_stats, "the DATA to arrive")
    h.clock.pause_timer()
    h.runner.acknowledge_data(stream_id, size)
    return WindowFrame


def _welcome(h: Harness) -> type:
    _wait_for_event(h, HelloReceived)
    h.clock.pause_timer()
    h.runner.send_welcome(make_welcome(h.session.config))
    return WelcomeFrame


def _bind_request() -> BindRequest:
    return BindRequest(req_id=1, kind=BindKind.PULL, port=5432, mode=BindMode.TCP)


def _wait(condition: Callable[[], object], what: str) -> None:
    wait_until(condition, WAIT_S, what)


def _wait_for_event(h: Harness, event_type: type) -> None:
    _wait(lambda: any(isinstance(e, event_type) for e in h.delegate.events), event_type.__name__)


COMMANDS = {
    "accept_stream": _accept,
    "reset_stream": _reset,
    "send_bind_ok": _bind_ok,
    "send_bind_error": _bind_error,
    "open_stream": _open,
    "send_data": _send_data,
    "acknowledge_data": _acknowledge,
    "send_welcome": _welcome,
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_wakes_the_writer_by_itself(make: Callable[..., Harness], command: str) -> None:
    welcome_by_test = command == "send_welcome"
    h = make(auto_welcome=not welcome_by_test)
    h.start(handshake=False)
    h.peer.session.send_hello(Hello(token="t", client="c"))
    h.peer.send()
    if not welcome_by_test:
        h.peer.receive_frame(WelcomeFrame)
    # Nothing is queued and the writer is idle before the command.
    assert h.runner.wait_flushed(scaled_s(WAIT_S))
    expected = COMMANDS[command](h)  # pauses the timer, then runs the command
    # From here the timer loop is frozen and the peer sends nothing: only the command itself
    # can have woken the writer.
    frame = h.peer.receive_frame(expected)
    assert isinstance(frame, expected)
    assert not h.runner.ended


# -- the stale-run guard ---------------------------------------------------------------------------


@pytest.mark.parametrize("stale_input", ["message", "close"])
def test_greenlets_of_a_superseded_run_neither_feed_the_session_nor_end_the_new_run(
    make: Callable[..., Harness], stale_input: str
) -> None:
    h = make(park=True)
    first_run = h.start()
    old_greenlets = list(h.runner._group)  # run 1's reader, writer and timer
    assert len(old_greenlets) == 3
    messages_before = h.runner.statistics().messages_received
    b_client, b_kit = h.second_pair()
    peer_b_session = h.peer.session
    peer_b_session.detach()
    peer_b_session.send_resume("t", "c")
    peer_b_session.messages_to_send()  # that HELLO.resume is what a Kit reads before handing over

    # In one turn, as Kit._resume does: supersede the old connection, serve the session on B.
    h.runner.supersede("resumed on another connection")
    if stale_input == "message":
        # A BIND the old reader reads off the old wire after the hand-over.
        h.kit_end.inject(encode_frame(BindFrame(req_id=9, kind="PULL", port=5432, mode="tcp")))
    else:
        h.client_end.close(4000, "old wire closes")  # the old reader sees the peer close
    h.runner.resume(b_kit, make_welcome(h.session.config, resumed=True), peer_b_session.received_map())
    second_run = gevent.spawn(h.runner.run)
    h.greenlets.append(second_run)

    first = result_of(first_run)
    assert first.kind is EndKind.SUPERSEDED and first.parked
    gevent.joinall(old_greenlets, timeout=scaled_s(WAIT_S))
    assert all(g.dead for g in old_greenlets)

    # The new connection got the resumed WELCOME (not swallowed by run 1's writer).
    peer_b = WirePeer(b_client, peer_b_session)
    welcome = peer_b.receive_frame(WelcomeFrame)
    assert welcome.welcome.resumed
    # Run 1's reader neither fed the session nor ended run 2.
    assert not any(isinstance(e, BindRequested) for e in h.delegate.events)
    assert h.runner.statistics().messages_received == messages_before
    assert not h.runner.ended and not second_run.dead
    assert h.runner.state is SessionState.OPEN
    # Run 2 is alive and serving: a BIND on B reaches the delegate.
    peer_b.session.send_bind(_bind_request())
    peer_b.send()
    _wait_for_event(h, BindRequested)
    b_client.close(1000, "done")
    second = result_of(second_run)
    assert second.kind is EndKind.PEER_CLOSED and second.close_code == 1000
    assert [e.kind for e in h.delegate.ends] == [EndKind.SUPERSEDED, EndKind.PEER_CLOSED]


def test_a_hand_over_done_in_one_turn_wakes_the_new_runs_writer(make: Callable[..., Harness]) -> None:
    """Kit._resume supersedes the old connection, resumes the session on the new one and runs
    it, in one greenlet and without yielding. Run 1's writer, still waiting on the wake-up event
    it shares with run 2's writer, must not consume the wake-up meant for run 2."""
    h = make(park=True)
    first_run = h.start()
    b_client, b_kit = h.second_pair()
    peer_session = h.peer.session
    peer_session.detach()
    peer_session.send_resume("t", "c")
    peer_session.messages_to_send()  # that HELLO.resume is what a Kit reads before handing over
    h.clock.pause_timer()  # the timer flushes about once a second: it must not mask a lost wake-up

    def hand_over() -> ConnectionEnd:
        h.runner.supersede("resumed on another connection")
        h.runner.resume(b_kit, make_welcome(h.session.config, resumed=True), peer_session.received_map())
        return h.runner.run()

    second_run = gevent.spawn(hand_over)
    h.greenlets.append(second_run)
    assert result_of(first_run).kind is EndKind.SUPERSEDED

    welcome = WirePeer(b_client, peer_session).receive_frame(WelcomeFrame, timeout_s=2.0)
    assert welcome.welcome.resumed and not h.runner.ended


# -- a dying greenlet fails the session ------------------------------------------------------------


class ExplodingSocket(LocalSocket):
    """A local socket whose recv fails with something no pump expects (a bug, not an OSError)."""

    def recv(self, *args: object, **kwargs: object) -> bytes:
        raise RuntimeError("recv exploded")


def test_a_pump_dying_with_an_unexpected_exception_ends_the_run_with_internal_error(make: Callable[..., Harness]) -> None:
    h = make()
    apps = []

    def connect_exploding(event: StreamOpened, pump: StreamPump) -> None:
        ours, theirs = local_pair()
        apps.append((ours, theirs))
        exploding = ExplodingSocket(fileno=ours.detach())
        pump.connect(exploding)  # its upstream greenlet reads at once: credit is there
        h.runner.accept_stream(event.stream_id)

    h.delegate.on_stream_opened = connect_exploding
    run = h.start()
    h.open_from_peer()

    end = result_of(run)
    assert end.kind is EndKind.INTERNAL_ERROR
    assert "recv exploded" in end.detail
    assert h.kit_end.close_code_sent == 1011  # CloseCode.INTERNAL_ERROR
    closed = h.peer.wait_closed()
    assert closed.code == 1011
    assert [e.kind for e in h.delegate.ends] == [EndKind.INTERNAL_ERROR]


def test_a_spawned_helper_dying_fails_the_session_too(make: Callable[..., Harness]) -> None:
    h = make()
    run = h.start()

    def broken() -> None:
        raise KeyError("bug")

    h.runner.spawn(broken)
    end = result_of(run)
    assert end.kind is EndKind.INTERNAL_ERROR and "KeyError" in end.detail
    assert h.kit_end.close_code_sent == 1011


# -- heartbeat through the injectable clock ---------------------------------------------------------


def test_heartbeat_pings_on_the_fake_clock_and_three_silent_intervals_end_the_run_dead(make: Callable[..., Harness]) -> None:
    h = make(heartbeat_s=HEARTBEAT_S)
    run = h.start()  # the HELLO at t0 starts the heartbeat clock; the peer stays silent from here

    def timer_ran_at_current_time() -> None:
        # The timer calls the clock twice per round: 4 more calls = a whole round at this time.
        target = h.clock.calls + 4
        wait_until(lambda: h.clock.calls >= target, WAIT_S, "the timer to run")

    timer_ran_at_current_time()
    assert h.peer.pending() == 0  # no time passed on the clock: no PING, however long we wait
    h.clock.advance(HEARTBEAT_S)
    assert isinstance(h.peer.receive_frame(PingFrame), PingFrame)
    timer_ran_at_current_time()
    assert h.peer.pending() == 0  # one PING per interval of silence
    h.clock.advance(HEARTBEAT_S)
    assert isinstance(h.peer.receive_frame(PingFrame), PingFrame)
    timer_ran_at_current_time()
    assert not h.runner.ended  # two intervals of silence: not dead yet
    h.clock.advance(HEARTBEAT_S)

    end = result_of(run)
    assert end.kind is EndKind.DEAD
    assert h.kit_end.aborted and h.kit_end.close_code_sent is None  # dropped, no close frame
    assert h.peer.wait_closed().code is None


def test_traffic_from_the_peer_postpones_the_heartbeat(make: Callable[..., Harness]) -> None:
    h = make(heartbeat_s=HEARTBEAT_S)
    h.start()
    for _ in range(5):  # the peer speaks every 3/4 interval: never silent for a whole one
        h.clock.advance(HEARTBEAT_S * 3 / 4)
        h.peer.session.send_ping(b"12345678")
        h.peer.send()
        h.peer.receive_frame(PongFrame)
    assert not any(isinstance(f, PingFrame) for f in h.peer.frames)
    assert not h.runner.ended


# -- how connections end ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 4321])
def test_the_peers_close_code_is_reported_in_the_connection_end(make: Callable[..., Harness], code: int) -> None:
    h = make()
    run = h.start()
    h.client_end.close(code, "bye")
    end = result_of(run)
    assert end.kind is EndKind.PEER_CLOSED
    assert end.close_code == code
    assert not end.parked
    assert h.runner.closed  # not parked: the protocol session is over


def test_a_reset_connection_ends_peer_closed_without_a_code_and_a_parking_delegate_detaches(
    make: Callable[..., Harness],
) -> None:
    h = make(park=True)
    run = h.start()
    h.client_end.abort()
    end = result_of(run)
    assert end.kind is EndKind.PEER_CLOSED and end.close_code is None
    assert end.parked and h.runner.detached
    assert h.runner.state is SessionState.DETACHED


def test_a_protocol_error_sends_goaway_then_closes_1002(make: Callable[..., Harness]) -> None:
    h = make()
    run = h.start()
    h.client_end.send_messages([b"\xff" * 12])  # no such frame type
    end = result_of(run)
    assert end.kind is EndKind.PROTOCOL_ERROR
    goaway = h.peer.receive_frame(GoAwayFrame)
    assert goaway.error_code == end.error_code
    assert h.peer.wait_closed().code == CloseCode.PROTOCOL_ERROR


def test_a_failed_send_ends_the_run_send_failed_and_aborts(make: Callable[..., Harness]) -> None:
    h = make()
    run = h.start()
    h.kit_end.stalled = True
    h.runner.open_stream(3)
    end = result_of(run)
    assert end.kind is EndKind.SEND_FAILED
    assert h.kit_end.aborted


def test_stop_after_the_end_leaves_no_greenlet_behind(make: Callable[..., Harness]) -> None:
    h = make()
    run = h.start()
    h.open_from_peer()
    h.client_end.close()
    result_of(run)
    h.runner.stop()
    settle()
    assert len(h.runner._group) == 0
    assert h.runner.stream_count == 0
    assert isinstance(h.delegate.finished[0], StreamPump)
