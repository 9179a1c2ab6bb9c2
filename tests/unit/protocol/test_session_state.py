"""The session state machine: the allowed moves, the one place that makes them, the receiving rules;
and the stream table's effects deciding the events the Session emits."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import tunnel.protocol as package
from tunnel.protocol import (
    FrameType,
    RemoteProtocolError,
    Role,
    SessionState,
    StreamState,
    WindowFrame,
    WindowUpdated,
)
from tunnel.protocol import stream as stream_module
from tunnel.protocol.session_state import _TRANSITIONS, check_receivable, check_transition
from tunnel.protocol.stream import StreamInput

from .pair import SessionPair

S = SessionState
ALL_MOVES = list(itertools.product(SessionState, SessionState))


@pytest.mark.parametrize(("old", "new"), ALL_MOVES, ids=[f"{a.name}-{b.name}" for a, b in ALL_MOVES])
def test_a_move_is_listed_or_an_assertion_error(old: SessionState, new: SessionState) -> None:
    if new in _TRANSITIONS[old]:
        check_transition(old, new)
    else:
        with pytest.raises(AssertionError, match=f"{old.name} -> {new.name}"):
            check_transition(old, new)


def test_every_state_is_reachable_from_idle_and_can_close() -> None:
    seen, frontier = {S.IDLE}, [S.IDLE]
    while frontier:
        for new in _TRANSITIONS[frontier.pop()]:
            if new not in seen:
                seen.add(new)
                frontier.append(new)
    assert seen == set(SessionState)
    assert all(S.CLOSED in moves for moves in _TRANSITIONS.values())
    assert _TRANSITIONS[S.CLOSED] == {S.CLOSED}


def test_only_a_parked_session_goes_back_to_open() -> None:
    into_open = {old for old, moves in _TRANSITIONS.items() if S.OPEN in moves}
    assert into_open == {S.HELLO_SENT, S.HELLO_RECEIVED, S.DETACHED, S.RESUMING}
    assert _TRANSITIONS[S.DRAINING] == {S.CLOSED}


def test_the_state_is_read_only_from_outside() -> None:
    pair = SessionPair()
    assert pair.client.state is S.OPEN
    with pytest.raises(AttributeError):
        pair.client.state = S.CLOSED  # type: ignore[misc]


def test_only_set_state_assigns_the_state() -> None:
    """The rule "one place changes the session state", checked on the source."""
    path = Path(package.__file__).parent / "session.py"
    writers: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for inner in ast.walk(node):
                targets = inner.targets if isinstance(inner, ast.Assign) else []
                for target in targets:
                    if (
                        isinstance(target, ast.Attribute)
                        and isinstance(target.value, ast.Name)
                        and target.value.id == "self"
                        and target.attr in ("state", "_state")
                    ):
                        writers.add(node.name)
    assert writers == {"__init__", "_set_state"}


@pytest.mark.parametrize(
    ("role", "state", "frame_type", "message"),
    [
        (Role.SERVER, S.OPEN, FrameType.WELCOME, "WELCOME sent by the client"),
        (Role.CLIENT, S.OPEN, FrameType.BIND, "BIND sent by the server"),
        (Role.SERVER, S.IDLE, FrameType.GOAWAY, "expected HELLO as the first frame, got GOAWAY"),
        (Role.CLIENT, S.IDLE, FrameType.PING, "PING before the client sent HELLO"),
        (Role.SERVER, S.OPEN, FrameType.HELLO, "second HELLO"),
        (Role.CLIENT, S.DRAINING, FrameType.WELCOME, "second WELCOME"),
        (Role.SERVER, S.HELLO_RECEIVED, FrameType.OPEN, "OPEN before WELCOME"),
        (Role.CLIENT, S.HELLO_SENT, FrameType.DATA, "DATA before WELCOME"),
    ],
)
def test_frames_the_state_does_not_accept(
    role: Role, state: SessionState, frame_type: FrameType, message: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        check_receivable(role, state, frame_type)


@pytest.mark.parametrize(
    ("role", "state", "frame_type"),
    [
        (Role.SERVER, S.IDLE, FrameType.HELLO),
        (Role.CLIENT, S.IDLE, FrameType.GOAWAY),
        (Role.CLIENT, S.HELLO_SENT, FrameType.WELCOME),
        (Role.CLIENT, S.RESUMING, FrameType.WELCOME),
        (Role.SERVER, S.HELLO_RECEIVED, FrameType.GOAWAY),
        (Role.CLIENT, S.DRAINING, FrameType.DATA),
    ],
)
def test_frames_the_state_accepts(role: Role, state: SessionState, frame_type: FrameType) -> None:
    check_receivable(role, state, frame_type)


# -- the stream table's effect column drives the events ----------------------------------------


def test_the_stream_tables_effect_decides_the_event(monkeypatch: pytest.MonkeyPatch) -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    pair.client.send_data(stream_id, b"x" * 10)
    pair.to_server()
    window = WindowFrame(stream_id, 10)
    assert pair.inject(pair.client, window) == [WindowUpdated(stream_id, 10)]
    # The same transition with no effect: the credit still arrives, but no event is emitted.
    key = (StreamState.OPEN, StreamInput.RECV_WINDOW)
    monkeypatch.setitem(stream_module._TRANSITIONS, key, (None, StreamState.OPEN))
    credit = pair.client.outbound_credit(stream_id)
    assert pair.inject(pair.client, window) == []
    assert pair.client.outbound_credit(stream_id) == credit + 10
