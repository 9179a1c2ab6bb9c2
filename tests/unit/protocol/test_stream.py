"""The stream state table: every (state, input) pair is a listed transition or an error + CLOSED."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel.protocol.stream import (
    _TRANSITIONS,
    StreamEffect,
    StreamInput,
    StreamState,
    StreamStateMachine,
)

ALL_PAIRS = list(itertools.product(StreamState, StreamInput))


def machine_in(state: StreamState) -> StreamStateMachine:
    machine = StreamStateMachine()
    machine.state = state
    return machine


@pytest.mark.parametrize(("state", "stream_input"), ALL_PAIRS, ids=[f"{s.name}-{i.name}" for s, i in ALL_PAIRS])
def test_every_pair_is_a_transition_or_an_error_that_closes(
    state: StreamState, stream_input: StreamInput
) -> None:
    machine = machine_in(state)
    assert machine.allows(stream_input) == ((state, stream_input) in _TRANSITIONS)
    if (state, stream_input) in _TRANSITIONS:
        effect, next_state = _TRANSITIONS[(state, stream_input)]
        assert machine.process(stream_input, 9) is effect
        assert machine.state is next_state
        return
    expected = LocalProtocolError if stream_input.name.startswith("SEND_") else RemoteProtocolError
    with pytest.raises(expected) as info:
        machine.process(stream_input, 9)
    assert machine.state is StreamState.CLOSED
    assert info.value.stream_id == 9
    assert info.value.error_code in (ErrorCode.PROTOCOL_ERROR, ErrorCode.STREAM_CLOSED)


def test_closed_is_final_and_idle_only_opens() -> None:
    assert not [pair for pair in _TRANSITIONS if pair[0] is StreamState.CLOSED]
    assert {i for (s, i) in _TRANSITIONS if s is StreamState.IDLE} == {
        StreamInput.SEND_OPEN,
        StreamInput.RECV_OPEN,
    }


def test_rst_either_way_closes_every_live_state() -> None:
    for state in StreamState:
        if state in (StreamState.IDLE, StreamState.CLOSED):
            continue
        assert _TRANSITIONS[(state, StreamInput.SEND_RST)] == (None, StreamState.CLOSED)
        assert _TRANSITIONS[(state, StreamInput.RECV_RST)] == (StreamEffect.RESET, StreamState.CLOSED)
        assert (state, StreamInput.RECV_WINDOW) in _TRANSITIONS  # WINDOW is always fine


def test_every_state_is_reachable_and_can_close() -> None:
    seen = {StreamState.IDLE}
    frontier = [StreamState.IDLE]
    while frontier:
        state = frontier.pop()
        for (from_state, _), (_, to_state) in _TRANSITIONS.items():
            if from_state is state and to_state not in seen:
                seen.add(to_state)
                frontier.append(to_state)
    assert seen == set(StreamState)


def test_commands_never_have_an_effect_and_receipts_always_do() -> None:
    for (_, stream_input), (effect, _) in _TRANSITIONS.items():
        assert (effect is None) == stream_input.name.startswith("SEND_")


@pytest.mark.parametrize(
    ("state", "stream_input", "code"),
    [
        (StreamState.HALF_CLOSED_REMOTE, StreamInput.RECV_DATA, ErrorCode.STREAM_CLOSED),
        (StreamState.HALF_CLOSED_REMOTE, StreamInput.RECV_FIN, ErrorCode.STREAM_CLOSED),
        (StreamState.OPEN_RECEIVED_HALF_CLOSED_REMOTE, StreamInput.RECV_DATA, ErrorCode.STREAM_CLOSED),
        (StreamState.CLOSED, StreamInput.RECV_WINDOW, ErrorCode.STREAM_CLOSED),
        (StreamState.OPEN_SENT, StreamInput.RECV_DATA, ErrorCode.PROTOCOL_ERROR),
        (StreamState.OPEN, StreamInput.RECV_OPEN_OK, ErrorCode.PROTOCOL_ERROR),
        (StreamState.OPEN, StreamInput.RECV_OPEN, ErrorCode.PROTOCOL_ERROR),
        (StreamState.HALF_CLOSED_LOCAL, StreamInput.SEND_DATA, ErrorCode.PROTOCOL_ERROR),
        (StreamState.CLOSED, StreamInput.SEND_DATA, ErrorCode.STREAM_CLOSED),
    ],
)
def test_error_codes(state: StreamState, stream_input: StreamInput, code: ErrorCode) -> None:
    with pytest.raises((LocalProtocolError, RemoteProtocolError)) as info:
        machine_in(state).process(stream_input, 3)
    assert info.value.error_code is code
    assert str(info.value).startswith("stream 3: ")


def test_lifecycles() -> None:
    opener, acceptor = StreamStateMachine(), StreamStateMachine()
    opener.process(StreamInput.SEND_OPEN)
    assert acceptor.process(StreamInput.RECV_OPEN) is StreamEffect.OPENED
    opener.process(StreamInput.SEND_DATA)  # early data
    assert acceptor.process(StreamInput.RECV_DATA) is StreamEffect.DATA
    acceptor.process(StreamInput.SEND_OPEN_OK)
    assert opener.process(StreamInput.RECV_OPEN_OK) is StreamEffect.ACCEPTED
    assert (opener.state, acceptor.state) == (StreamState.OPEN, StreamState.OPEN)
    opener.process(StreamInput.SEND_FIN)
    assert acceptor.process(StreamInput.RECV_FIN) is StreamEffect.ENDED
    assert (opener.state, acceptor.state) == (StreamState.HALF_CLOSED_LOCAL, StreamState.HALF_CLOSED_REMOTE)
    acceptor.process(StreamInput.SEND_DATA)
    opener.process(StreamInput.RECV_DATA)
    acceptor.process(StreamInput.SEND_FIN)
    opener.process(StreamInput.RECV_FIN)
    assert (opener.state, acceptor.state) == (StreamState.CLOSED, StreamState.CLOSED)


def test_early_fin_before_open_ok() -> None:
    opener, acceptor = StreamStateMachine(), StreamStateMachine()
    opener.process(StreamInput.SEND_OPEN)
    acceptor.process(StreamInput.RECV_OPEN)
    opener.process(StreamInput.SEND_FIN)
    acceptor.process(StreamInput.RECV_FIN)
    assert acceptor.state is StreamState.OPEN_RECEIVED_HALF_CLOSED_REMOTE
    acceptor.process(StreamInput.SEND_OPEN_OK)
    opener.process(StreamInput.RECV_OPEN_OK)
    assert (opener.state, acceptor.state) == (StreamState.HALF_CLOSED_LOCAL, StreamState.HALF_CLOSED_REMOTE)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(StreamInput), max_size=12))
def test_random_input_sequences(inputs: list[StreamInput]) -> None:
    machine = StreamStateMachine()
    for stream_input in inputs:
        before = machine.state
        try:
            machine.process(stream_input)
        except (LocalProtocolError, RemoteProtocolError):
            assert (before, stream_input) not in _TRANSITIONS
            assert machine.state is StreamState.CLOSED
        else:
            assert _TRANSITIONS[(before, stream_input)][1] is machine.state
