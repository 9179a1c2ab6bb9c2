"""The states of a session, the moves between them, and which frames each state may receive.

Theory of operation
-------------------
A session's life is a small state machine, the session-level counterpart of the per-stream
table in :mod:`~tunnel.protocol.stream`::

    CLIENT: IDLE --send_hello--> HELLO_SENT --WELCOME--> OPEN
    SERVER: IDLE --HELLO--> HELLO_RECEIVED --send_welcome--> OPEN
    OPEN --GOAWAY sent or received--> DRAINING (existing streams go on, no new ones)
    v2: OPEN --detach (WebSocket lost)--> DETACHED --resume (server)--> OPEN
        client: DETACHED --send_resume--> RESUMING --WELCOME(resumed)--> OPEN
        DETACHED or RESUMING --detach (the new WebSocket lost too)--> DETACHED
    any --protocol error, connection_lost, GOAWAY before OPEN--> CLOSED

Every move is listed in ``_TRANSITIONS``; the session changes its state only through
``Session._set_state``, which checks the move with :func:`check_transition`. The session checks
commands and received frames against its state *before* it changes anything, so a move missing
from the table is a bug in the protocol core itself, never the peer's or the driver's doing: it
raises ``AssertionError``.

Receiving rules (:func:`check_receivable`), beyond the per-frame codec rules:

* Direction: the server never accepts WELCOME, BIND_OK or BIND_ERR; the client never accepts
  HELLO or BIND.
* Order: the server's first frame must be HELLO, and a second HELLO is an error. Until it sent
  WELCOME, the server accepts nothing but GOAWAY. The client accepts nothing but WELCOME or
  GOAWAY until WELCOME (and only GOAWAY before it sent HELLO). GOAWAY is accepted in every state
  but the server's IDLE (nothing but HELLO comes first).
"""

from __future__ import annotations

from enum import Enum

from tunnel.protocol.config import Role
from tunnel.protocol.errors import RemoteProtocolError
from tunnel.protocol.frames import FrameType

__all__ = ["SessionState", "check_receivable", "check_transition"]


class SessionState(Enum):
    """Where a session is in its life.

    ::

        CLIENT: IDLE --send_hello--> HELLO_SENT --WELCOME--> OPEN
        SERVER: IDLE --HELLO--> HELLO_RECEIVED --send_welcome--> OPEN
        OPEN --GOAWAY sent or received--> DRAINING (existing streams go on, no new ones)
        OPEN --detach (v2, WebSocket lost)--> DETACHED --resume--> OPEN
        client: DETACHED --send_resume--> RESUMING --WELCOME(resumed)--> OPEN
        any --protocol error, connection_lost, GOAWAY before OPEN--> CLOSED
    """

    IDLE = "idle"
    HELLO_SENT = "hello_sent"
    HELLO_RECEIVED = "hello_received"
    OPEN = "open"
    DRAINING = "draining"
    DETACHED = "detached"  # v2: the WebSocket is gone, the streams wait for a resume
    RESUMING = "resuming"  # client: HELLO.resume sent on a new WebSocket
    CLOSED = "closed"


_S = SessionState

#: Every allowed move: {state: the states it may move to}. CLOSED is reachable from anywhere
#: (connection_lost, a protocol error); DETACHED and CLOSED may be entered again from themselves
#: (a second cut while parked, connection_lost after a close).
_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    _S.IDLE: frozenset({_S.HELLO_SENT, _S.HELLO_RECEIVED, _S.CLOSED}),
    _S.HELLO_SENT: frozenset({_S.OPEN, _S.CLOSED}),
    _S.HELLO_RECEIVED: frozenset({_S.OPEN, _S.CLOSED}),
    _S.OPEN: frozenset({_S.DRAINING, _S.DETACHED, _S.CLOSED}),
    _S.DRAINING: frozenset({_S.CLOSED}),
    _S.DETACHED: frozenset({_S.DETACHED, _S.RESUMING, _S.OPEN, _S.CLOSED}),
    _S.RESUMING: frozenset({_S.DETACHED, _S.OPEN, _S.CLOSED}),
    _S.CLOSED: frozenset({_S.CLOSED}),
}


def check_transition(old: SessionState, new: SessionState) -> None:
    """Check that ``old -> new`` is a listed move of the session state machine.

    Args:
        old: the current state.
        new: the state to move to.

    Raises:
        AssertionError: the move is not listed (a bug in the protocol core).
    """
    if new not in _TRANSITIONS[old]:
        raise AssertionError(f"session state {old.name} -> {new.name} is not a listed transition")


# Frame types only the server receives / only the client receives.
_TO_SERVER_ONLY = frozenset({FrameType.HELLO, FrameType.BIND})
_TO_CLIENT_ONLY = frozenset({FrameType.WELCOME, FrameType.BIND_OK, FrameType.BIND_ERR})


def check_receivable(role: Role, state: SessionState, frame_type: FrameType) -> None:
    """Check the direction and order rules for a received frame (see the module docstring).

    Args:
        role: our side.
        state: the session's state.
        frame_type: the type of the frame received.

    Raises:
        RemoteProtocolError: the peer may not send this frame now (a session error).
    """
    name = frame_type.name
    server = role is Role.SERVER
    if (server and frame_type in _TO_CLIENT_ONLY) or (not server and frame_type in _TO_SERVER_ONLY):
        sender = "client" if server else "server"
        raise RemoteProtocolError(f"{name} sent by the {sender} (wrong direction)")
    if state in (SessionState.OPEN, SessionState.DRAINING):
        if frame_type is FrameType.HELLO:
            raise RemoteProtocolError("second HELLO")
        if frame_type is FrameType.WELCOME:
            raise RemoteProtocolError("second WELCOME")
        return
    if frame_type is FrameType.GOAWAY and (not server or state is not SessionState.IDLE):
        return  # e.g. AUTH_FAILED instead of WELCOME
    if state is SessionState.IDLE:
        if server and frame_type is FrameType.HELLO:
            return
        if server:
            raise RemoteProtocolError(f"expected HELLO as the first frame, got {name}")
        raise RemoteProtocolError(f"{name} before the client sent HELLO")
    if state in (SessionState.HELLO_SENT, SessionState.RESUMING) and frame_type is FrameType.WELCOME:
        return
    if frame_type is FrameType.HELLO:
        raise RemoteProtocolError("second HELLO")
    raise RemoteProtocolError(f"{name} before WELCOME")
