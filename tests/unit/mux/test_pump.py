"""StreamPump between a socketpair (its "local TCP connection") and a stream.

Most tests drive the pump through :class:`FakeOwner`, a StreamOwner that keeps the credit by
hand and checks every call against it; the last ones run a pump under a real SessionRunner, where
the peer's Session enforces the window.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import gevent
import pytest
from gevent import socket as gsocket
from gevent.event import Event

from tests.waiting import scaled_s, wait_until
from tests.driver_support import (
    LocalSocket,
    WirePeer,
    client_config,
    local_pair,
    recv_exactly,
    recv_to_eof,
    settle,
)
from tests.memory_transport import transport_pair
from tunnel.mux.pump import StreamPump
from tunnel.mux.runner import ConnectionEnd, EndKind, SessionRunner
from tunnel.protocol import (
    MIN_WINDOW_SIZE,
    DataFrame,
    ErrorCode,
    Event as ProtocolEvent,
    HelloReceived,
    Role,
    Session,
    SessionConfig,
    StreamOpened,
)
from tests.unit.protocol.pair import make_welcome

WAIT_S = 5.0
STREAM = 1


class FakeOwner:
    """A StreamOwner with credit kept by hand. Records every call; notes any violation."""

    def __init__(self, credit: int = 0) -> None:
        self.credit = credit
        self.sent: list[tuple[bytes, bool]] = []
        self.acks: list[tuple[int, bool]] = []
        self.resets: list[tuple[int, str]] = []
        self.violations: list[str] = []
        self.failures: list[BaseException] = []
        self.greenlets: list[gevent.Greenlet[..., object]] = []
        self.starved = Event()  # set when the pump asked for credit and there was none
        self.data_sent = Event()
        self.local: LocalSocket | None = None  # to check acknowledgements against real writes

    # StreamOwner
    def outbound_credit(self, stream_id: int) -> int:
        assert stream_id == STREAM
        if self.credit <= 0:
            self.starved.set()
        return self.credit

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        if len(data) > self.credit:
            self.violations.append(f"sent {len(data)} bytes with {self.credit} credit")
        if any(fin for _, fin in self.sent):
            self.violations.append("DATA after FIN")
        self.credit -= len(data)
        self.sent.append((bytes(data), end_stream))
        self.data_sent.set()

    def acknowledge_data(self, stream_id: int, size: int, *, drained: bool = False) -> None:
        self.acks.append((size, drained))
        if self.local is not None and self.acked > self.local.written:
            self.violations.append(f"acknowledged {self.acked} bytes, {self.local.written} written")

    def reset_stream(self, stream_id: int, code: int, reason: str = "") -> None:
        self.resets.append((code, reason))

    def spawn(self, func: Callable[..., object], *args: object) -> gevent.Greenlet[..., object]:
        greenlet = gevent.spawn(func, *args)
        greenlet.link_exception(lambda g: self.failures.append(g.exception))  # type: ignore[arg-type]
        self.greenlets.append(greenlet)
        return greenlet

    # for tests
    @property
    def acked(self) -> int:
        return sum(size for size, _ in self.acks)

    @property
    def data(self) -> bytes:
        return b"".join(data for data, _ in self.sent)

    def grant(self, pump: StreamPump, size: int) -> None:
        """A WINDOW arrived."""
        self.starved.clear()
        self.credit += size
        pump.credit_changed()


class Finished:
    """``on_finished`` that counts its calls."""

    def __init__(self) -> None:
        self.calls: list[StreamPump] = []
        self.event = Event()

    def __call__(self, pump: StreamPump) -> None:
        self.calls.append(pump)
        self.event.set()


@pytest.fixture
def cleanup() -> Iterator[list[object]]:
    things: list[object] = []
    yield things
    for thing in things:
        if isinstance(thing, StreamPump):
            thing.reset()
        elif isinstance(thing, socket.socket):
            thing.close()
        elif isinstance(thing, FakeOwner):
            gevent.killall(thing.greenlets)
            assert not thing.failures, thing.failures  # no pump greenlet died unexpectedly
            assert not thing.violations, thing.violations


def make_pump(
    cleanup: list[object], credit: int = 0, *, read_size: int = 64 * 1024
) -> tuple[FakeOwner, StreamPump, Finished, LocalSocket, gsocket.socket]:
    owner = FakeOwner(credit)
    finished = Finished()
    pump = StreamPump(owner, STREAM, read_size=read_size, on_finished=finished)
    local, app = local_pair()
    owner.local = local
    cleanup.extend([pump, owner, app])
    return owner, pump, finished, local, app


def wait(event: Event, what: str) -> None:
    assert event.wait(scaled_s(WAIT_S)), f"timed out waiting for {what}"


# -- credit ----------------------------------------------------------------------------------------


def test_the_pump_never_sends_more_than_its_credit_and_waits_for_window(cleanup: list[object]) -> None:
    owner, pump, _, local, app = make_pump(cleanup, credit=1000, read_size=300)
    payload = bytes(range(256)) * 20  # 5120 bytes waiting in the local socket
    app.sendall(payload)
    pump.connect(local)

    wait(owner.starved, "the pump to run out of credit")
    assert len(owner.data) == 1000 == pump.bytes_from_local  # the rest stays in the socket
    assert all(len(data) <= 300 for data, _ in owner.sent)  # read_size caps each read
    settle()
    assert len(owner.data) == 1000  # without a WINDOW nothing more moves

    owner.grant(pump, 2500)
    wait_until(lambda: owner.starved.is_set() and len(owner.data) == 3500, 5.0, "the second window to be used")
    owner.grant(pump, 1 << 20)
    wait_until(lambda: len(owner.data) == len(payload), 5.0, "the rest")
    assert owner.data == payload
    assert not owner.violations
    assert not any(fin for _, fin in owner.sent)  # no local EOF yet


def test_a_grant_that_comes_while_the_pump_checks_its_credit_is_not_lost(cleanup: list[object]) -> None:
    owner, pump, _, local, app = make_pump(cleanup, credit=0)
    pump.connect(local)
    wait(owner.starved, "the pump to wait for credit")
    app.sendall(b"abc")
    owner.grant(pump, 3)
    wait(owner.data_sent, "the bytes")
    assert owner.data == b"abc"


# -- acknowledgements --------------------------------------------------------------------------------


def test_data_is_acknowledged_only_once_written_to_the_local_socket(cleanup: list[object]) -> None:
    owner, pump, _, local, app = make_pump(cleanup)
    local.send_limit = 1000  # the local app takes 1000 bytes, then stops reading
    pump.connect(local)
    chunks = [b"a" * 600, b"b" * 600, b"c" * 600]
    for chunk in chunks:
        pump.deliver(chunk)

    wait(local.send_blocked, "the local write to block")
    settle()
    assert local.written == 1000
    assert owner.acked == 600  # only the first chunk is wholly written; 400 of the second are not acked
    assert owner.acks == [(600, False)]

    local.unblock()
    wait_until(lambda: owner.acked == 1800, 5.0, "every chunk to be acknowledged")
    assert recv_exactly(app, 1800) == b"".join(chunks)
    assert owner.acks[-1] == (600, True)  # the last acknowledgement says the queue is drained
    assert not owner.violations  # at no acknowledgement did acked exceed written
    assert pump.bytes_to_local == 1800


def test_data_that_arrives_before_connect_is_held_and_written_in_order(cleanup: list[object]) -> None:
    owner, pump, _, local, app = make_pump(cleanup)
    pump.deliver(b"early ")
    pump.deliver(memoryview(b"data"))
    assert owner.acks == []  # nothing written yet, nothing acknowledged
    pump.connect(local)
    assert recv_exactly(app, 10) == b"early data"
    wait_until(lambda: owner.acked == 10, 5.0, "the acknowledgements")


# -- EOF both ways ---------------------------------------------------------------------------------


def test_local_eof_becomes_fin_and_the_other_direction_keeps_flowing(cleanup: list[object]) -> None:
    owner, pump, finished, local, app = make_pump(cleanup, credit=1 << 20)
    pump.connect(local)
    app.sendall(b"request")
    app.shutdown(socket.SHUT_WR)

    wait_until(lambda: owner.sent and owner.sent[-1][1], 5.0, "the FIN")
    assert owner.data == b"request"
    assert owner.sent[-1] == (b"", True)  # an empty DATA with FIN
    assert not pump.finished  # half closed: the peer may still send

    pump.deliver(b"response")
    assert recv_exactly(app, 8) == b"response"
    pump.deliver_eof()
    assert recv_to_eof(app) == b""  # the peer's FIN reached the local app as EOF
    wait(finished.event, "the stream to finish")
    assert pump.finished and finished.calls == [pump]
    assert local.fileno() == -1 and not local.aborted  # closed in order, no reset
    assert pump.reset_code is None


def test_peer_fin_shuts_down_the_local_write_side_only(cleanup: list[object]) -> None:
    owner, pump, finished, local, app = make_pump(cleanup, credit=1 << 20)
    pump.connect(local)
    pump.deliver(b"all of it")
    pump.deliver_eof()

    assert recv_to_eof(app) == b"all of it"  # then EOF: SHUT_WR after the queued data
    assert (socket.SOL_SOCKET, socket.SO_LINGER) not in [(lv, opt) for lv, opt, _ in local.options]
    assert not pump.finished
    app.sendall(b"still talking")  # our read side is open
    wait_until(lambda: owner.data == b"still talking", 5.0, "the upstream bytes")
    app.shutdown(socket.SHUT_WR)
    wait(finished.event, "the stream to finish")
    assert finished.calls == [pump]
    assert owner.sent[-1] == (b"", True)


# -- reset -----------------------------------------------------------------------------------------


def test_reset_records_code_and_reason_and_aborts_the_local_socket(cleanup: list[object]) -> None:
    owner, pump, finished, local, app = make_pump(cleanup, credit=0)
    pump.connect(local)
    wait(owner.starved, "the pump to wait for credit")
    app.sendall(b"never read")  # no credit: stays unread in the pump's socket

    pump.reset(ErrorCode.CONNECT_FAILED, "127.0.0.1:5432: connection refused")

    assert pump.finished
    assert pump.reset_code == ErrorCode.CONNECT_FAILED
    assert pump.reset_reason == "127.0.0.1:5432: connection refused"
    assert local.aborted  # SO_LINGER (on, 0): closing sends RST on a TCP connection
    assert local.fileno() == -1
    with pytest.raises(ConnectionResetError), gevent.Timeout(scaled_s(WAIT_S)):
        app.recv(100)  # the local app sees the connection reset, not an orderly EOF
    assert finished.calls == [pump]
    settle()
    assert all(g.dead for g in owner.greenlets)  # both loops stopped
    assert owner.resets == []  # the pump tells no one: whoever reset the stream sent the RST


def test_a_second_reset_keeps_the_first_code_and_on_finished_runs_once(cleanup: list[object]) -> None:
    owner, pump, finished, local, app = make_pump(cleanup)
    pump.connect(local)
    pump.reset(ErrorCode.REFUSED, "first")
    pump.reset(ErrorCode.PROTOCOL_ERROR, "second")
    pump.reset()
    assert (pump.reset_code, pump.reset_reason) == (ErrorCode.REFUSED, "first")
    assert len(finished.calls) == 1


def test_reset_without_a_code_means_the_session_ended(cleanup: list[object]) -> None:
    owner, pump, finished, local, app = make_pump(cleanup)
    pump.connect(local)
    pump.reset()
    assert pump.finished and pump.reset_code is None and pump.reset_reason == ""
    assert local.aborted
    assert len(finished.calls) == 1


def test_a_socket_connected_after_a_reset_is_aborted_at_once(cleanup: list[object]) -> None:
    owner, pump, finished, local, app = make_pump(cleanup)
    pump.reset(ErrorCode.REFUSED, "gone")
    pump.connect(local)
    assert local.aborted and local.fileno() == -1
    assert owner.greenlets == []  # no loops started
    assert len(finished.calls) == 1


def test_on_finished_runs_once_after_a_clean_finish_and_a_late_reset(cleanup: list[object]) -> None:
    owner, pump, finished, local, app = make_pump(cleanup, credit=1 << 20)
    pump.connect(local)
    pump.deliver_eof()
    app.shutdown(socket.SHUT_WR)
    wait(finished.event, "the stream to finish")
    pump.reset(ErrorCode.REFUSED, "too late")
    pump.deliver(b"too late")
    settle()
    assert finished.calls == [pump]
    assert pump.reset_code is None  # finished cleanly before the reset
    assert not local.aborted


def test_a_failed_local_write_resets_the_stream_once(cleanup: list[object]) -> None:
    owner, pump, finished, local, app = make_pump(cleanup)
    pump.connect(local)
    app.close()  # the local app is gone
    pump.deliver(b"x" * 100_000)
    wait(finished.event, "the stream to finish")
    assert len(owner.resets) == 1
    code, reason = owner.resets[0]
    assert code == ErrorCode.CONNECT_FAILED and reason.startswith("local connection")
    assert local.aborted
    assert finished.calls == [pump]
    assert owner.acked == 0  # nothing was written, nothing acknowledged


# -- under a real runner: the peer's Session enforces the window -----------------------------------


class _KitDelegate:
    def __init__(self) -> None:
        self.runner: SessionRunner | None = None
        self.pumps: list[StreamPump] = []
        self.local: LocalSocket | None = None

    def stream_opened(self, event: StreamOpened, pump: StreamPump) -> None:
        assert self.runner is not None and self.local is not None
        self.pumps.append(pump)
        pump.connect(self.local)
        self.runner.accept_stream(event.stream_id)

    def stream_finished(self, pump: StreamPump) -> None:
        pass

    def event_received(self, event: ProtocolEvent) -> None:
        if isinstance(event, HelloReceived):
            assert self.runner is not None
            self.runner.send_welcome(make_welcome(self.runner._session.config))

    def connection_ended(self, end: ConnectionEnd) -> bool:
        return False


def test_under_a_runner_the_peer_receives_one_window_then_more_only_after_its_window(cleanup: list[object]) -> None:
    client_end, kit_end = transport_pair()
    config = SessionConfig(
        role=Role.SERVER, version=2, receive_window_size=64 * 1024, max_frame_size=16 * 1024,
        max_streams=4, heartbeat_interval_s=30.0,
    )
    delegate = _KitDelegate()
    runner = SessionRunner(Session(config), kit_end, delegate, name="kit")
    delegate.runner = runner
    local, app = local_pair()
    delegate.local = local
    cleanup.append(app)
    run = gevent.spawn(runner.run)
    peer = WirePeer(client_end, Session(client_config(window=MIN_WINDOW_SIZE)))  # 16 KiB window
    try:
        peer.handshake()
        stream_id = peer.session.open_stream(7)
        peer.send()
        payload = bytes(range(256)) * 256  # 64 KiB: four windows
        sender = gevent.spawn(app.sendall, payload)

        received = bytearray()
        while len(received) < MIN_WINDOW_SIZE:
            received += b"".join(bytes(f.data) for f in peer.receive() if isinstance(f, DataFrame))
        assert len(received) == MIN_WINDOW_SIZE  # exactly one window, not a byte more
        wait_until(lambda: runner.outbound_credit(stream_id) == 0, 5.0, "the credit to be used up")
        settle()
        assert peer.pending() == 0 and delegate.pumps[0].bytes_from_local == MIN_WINDOW_SIZE

        # Grant half a window at a time (the smallest WINDOW the peer sends), so the kit's
        # credit (8 KiB) is below its read size (16 KiB): only honouring the credit keeps it in.
        half = MIN_WINDOW_SIZE // 2
        acked = 0
        while len(received) < len(payload):
            if len(received) - acked >= half:
                peer.session.acknowledge_data(stream_id, half)
                acked += half
                peer.send()
            # The peer's Session raises if the kit sends beyond the window: it enforces it.
            received += b"".join(bytes(f.data) for f in peer.receive() if isinstance(f, DataFrame))
            assert len(received) - acked <= MIN_WINDOW_SIZE
        assert bytes(received) == payload
        sender.get(timeout=scaled_s(WAIT_S))
        assert not runner.ended
    finally:
        client_end.close()
        end = run.get(timeout=scaled_s(WAIT_S))
        assert end.kind is EndKind.PEER_CLOSED  # not INTERNAL_ERROR: no pump greenlet failed
        runner.stop()

