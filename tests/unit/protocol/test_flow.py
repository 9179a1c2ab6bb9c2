"""Flow-control accounting: credit never negative, never above its maximum."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tunnel.protocol import (
    MAX_CREDIT,
    MAX_WINDOW_SIZE,
    MIN_WINDOW_SIZE,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    Window,
)


def test_send_credit_consumed_and_added() -> None:
    window = Window(send_credit=100, receive_window=MIN_WINDOW_SIZE)
    window.consume_send_credit(60)
    window.consume_send_credit(0)  # an empty FIN
    assert (window.send_credit, window.sent_bytes) == (40, 60)
    with pytest.raises(LocalProtocolError) as info:
        window.consume_send_credit(41)
    assert info.value.error_code is ErrorCode.FLOW_CONTROL_ERROR
    assert str(info.value) == "cannot send 41 bytes with 40 bytes of credit"
    assert window.send_credit == 40  # unchanged
    window.add_send_credit(60)
    assert window.send_credit == 100


def test_send_credit_above_2_31_minus_1_is_a_flow_control_error() -> None:
    window = Window(send_credit=MAX_CREDIT - 10, receive_window=MIN_WINDOW_SIZE)
    window.add_send_credit(10)
    assert window.send_credit == MAX_CREDIT
    with pytest.raises(RemoteProtocolError) as info:
        window.add_send_credit(1)
    assert info.value.error_code is ErrorCode.FLOW_CONTROL_ERROR
    assert window.send_credit == MAX_CREDIT


def test_receive_beyond_granted_is_a_flow_control_error() -> None:
    window = Window(send_credit=0, receive_window=MIN_WINDOW_SIZE)
    window.record_received(MIN_WINDOW_SIZE - 1)
    with pytest.raises(RemoteProtocolError) as info:
        window.record_received(2)
    assert info.value.error_code is ErrorCode.FLOW_CONTROL_ERROR
    assert window.received_bytes == MIN_WINDOW_SIZE - 1
    window.record_received(1)
    assert window.receive_credit == 0


def test_window_increment_once_half_the_window_is_acknowledged() -> None:
    size = 64 * 1024
    window = Window(send_credit=0, receive_window=size)
    window.record_received(size)
    assert window.acknowledge(size // 2 - 1) == 0  # below half: batched
    assert window.acknowledge(1) == size // 2  # half reached: one WINDOW for all of it
    assert window.receive_credit == size // 2
    assert window.acknowledge(10, announce=False) == 0  # e.g. after the peer's FIN
    assert (window.received_bytes, window.consumed_bytes, window.unacknowledged_bytes) == (
        size,
        size // 2 + 10,
        size // 2 - 10,
    )


def test_acknowledging_more_than_received_is_a_local_error() -> None:
    window = Window(send_credit=0, receive_window=MIN_WINDOW_SIZE)
    window.record_received(5)
    with pytest.raises(LocalProtocolError, match="cannot acknowledge 6 bytes: 5 are unacknowledged"):
        window.acknowledge(6)
    with pytest.raises(LocalProtocolError):
        window.acknowledge(-1)


@pytest.mark.parametrize(("send", "receive"), [(-1, MIN_WINDOW_SIZE), (MAX_CREDIT + 1, MIN_WINDOW_SIZE), (0, 0)])
def test_initial_values_checked(send: int, receive: int) -> None:
    with pytest.raises(LocalProtocolError):
        Window(send_credit=send, receive_window=receive)


class WindowMachine(RuleBasedStateMachine):
    """A sender/receiver pair of windows driven at random, with a model of the peer."""

    @initialize(
        peer_window=st.integers(MIN_WINDOW_SIZE, MAX_WINDOW_SIZE),
        our_window=st.integers(MIN_WINDOW_SIZE, MAX_WINDOW_SIZE),
    )
    def setup(self, peer_window: int, our_window: int) -> None:
        self.window = Window(send_credit=peer_window, receive_window=our_window)
        self.our_window = our_window
        self.peer_credit = our_window  # what the peer believes it may send
        self.model_send_credit = peer_window

    @rule(size=st.integers(0, 2 * MAX_WINDOW_SIZE))
    def send(self, size: int) -> None:
        if size <= self.model_send_credit:
            self.window.consume_send_credit(size)
            self.model_send_credit -= size
        else:
            with pytest.raises(LocalProtocolError):
                self.window.consume_send_credit(size)

    @rule(increment=st.integers(1, 2**32 - 1))
    def window_received(self, increment: int) -> None:
        if self.model_send_credit + increment <= MAX_CREDIT:
            self.window.add_send_credit(increment)
            self.model_send_credit += increment
        else:
            with pytest.raises(RemoteProtocolError):
                self.window.add_send_credit(increment)

    @rule(size=st.integers(0, MAX_WINDOW_SIZE), cheat=st.booleans())
    def peer_sends(self, size: int, cheat: bool) -> None:
        if not cheat:
            size = min(size, self.peer_credit)
        if size <= self.peer_credit:
            self.window.record_received(size)
            self.peer_credit -= size
        else:
            with pytest.raises(RemoteProtocolError):
                self.window.record_received(size)

    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        size = data.draw(st.integers(0, self.window.unacknowledged_bytes))
        increment = self.window.acknowledge(size, announce=data.draw(st.booleans()))
        assert increment == 0 or increment * 2 >= self.our_window
        self.peer_credit += increment

    @invariant()
    def credit_in_bounds(self) -> None:
        if not hasattr(self, "window"):
            return
        assert 0 <= self.window.send_credit <= MAX_CREDIT
        assert self.window.send_credit == self.model_send_credit
        assert 0 <= self.window.receive_credit <= self.our_window
        assert self.window.receive_credit == self.peer_credit
        assert 0 <= self.window.consumed_bytes <= self.window.received_bytes


WindowMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestWindowMachine = WindowMachine.TestCase


def test_window_increment_from_a_quarter_once_drained() -> None:
    window = Window(send_credit=1024, receive_window=1024)
    window.record_received(255)
    assert window.acknowledge(255, drained=True) == 0  # under a quarter: nothing yet
    window.record_received(1)
    assert window.acknowledge(1, drained=False) == 0  # a quarter, but more is still queued
    window.record_received(1)
    assert window.acknowledge(1, drained=True) == 257  # drained with >= a quarter: announce all
    assert window.receive_credit == 1024


def test_no_increment_when_drained_after_the_peer_finished() -> None:
    window = Window(send_credit=1024, receive_window=1024)
    window.record_received(600)
    assert window.acknowledge(600, announce=False, drained=True) == 0
