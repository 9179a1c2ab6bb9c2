"""Stream state machine (docs/protocol.md §7.4).

Theory of operation
-------------------

A stream carries one proxied connection. Either side may open one: the *opener* sends OPEN
(it may send early DATA, even DATA+FIN, before the answer) and the *acceptor* answers OPEN_OK
once its local connection is up, or RST. Each direction then ends on its own with DATA+FIN
(a half-close); the stream is CLOSED when both directions have sent FIN, or at once on RST,
sent or received. A CLOSED stream's id is never reused.

The machine sees only *inputs*: things we do (``SEND_*``, from Session commands) and things the
peer did (``RECV_*``, from decoded frames). All allowed moves are listed in ``_TRANSITIONS``::

    {(state, input): (side_effect | None, next_state)}

The side effect names the event the Session emits for a received frame: the Session acts on
what :meth:`Stream.process` returns (``Session._emit``), so this table, not the frame handlers,
decides which event a received frame produces. Our own commands have no effect (``None``): the
caller already knows. Any pair missing from the table is a protocol error: the
stream moves to CLOSED and :meth:`StreamStateMachine.process` raises
:class:`~tunnel.protocol.errors.LocalProtocolError` for a ``SEND_*`` input (a bug in the caller)
or :class:`~tunnel.protocol.errors.RemoteProtocolError` for a ``RECV_*`` input (the Session turns
it into an RST of that stream; it is never fatal to the session). Its ``error_code`` is
``STREAM_CLOSED`` when the peer sends DATA after its own FIN or anything to a CLOSED stream, and
``PROTOCOL_ERROR`` otherwise.

States (``L`` = we sent FIN, ``R`` = the peer sent FIN)::

    IDLE --SEND_OPEN--> OPEN_SENT --RECV_OPEN_OK--> OPEN
         --RECV_OPEN--> OPEN_RECEIVED --SEND_OPEN_OK--> OPEN
    OPEN_SENT --SEND_FIN--> OPEN_SENT_HALF_CLOSED_LOCAL --RECV_OPEN_OK--> HALF_CLOSED_LOCAL
    OPEN_RECEIVED --RECV_FIN--> OPEN_RECEIVED_HALF_CLOSED_REMOTE --SEND_OPEN_OK--> HALF_CLOSED_REMOTE
    OPEN --SEND_FIN--> HALF_CLOSED_LOCAL --RECV_FIN--> CLOSED
    OPEN --RECV_FIN--> HALF_CLOSED_REMOTE --SEND_FIN--> CLOSED
    any state but IDLE/CLOSED --SEND_RST or RECV_RST--> CLOSED

Who may send what before the OPEN is answered: the opener may send DATA (early data, within
its credit) and FIN; the acceptor sends nothing but OPEN_OK, RST or WINDOW until it has
accepted, so DATA that reaches the opener before OPEN_OK is a protocol error of that stream.
WINDOW may be received in every live state; we send WINDOW only while the peer may still send
DATA (the Session checks :attr:`Stream.remote_open`).
"""

from __future__ import annotations

from enum import Enum

from tunnel.protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from tunnel.protocol.flow import Window
from tunnel.protocol.replay import StreamLedger

__all__ = ["Opener", "Stream", "StreamEffect", "StreamInput", "StreamState", "StreamStateMachine"]


class StreamState(Enum):
    """Where a stream is in its life (see the module docstring)."""

    # Identity hashing (members are singletons) in C: Enum's own __hash__ is Python code, and
    # the transition table hashes a (state, input) pair for every DATA frame each way.
    __hash__ = object.__hash__

    IDLE = "idle"
    OPEN_SENT = "open_sent"
    OPEN_SENT_HALF_CLOSED_LOCAL = "open_sent_half_closed_local"
    OPEN_RECEIVED = "open_received"
    OPEN_RECEIVED_HALF_CLOSED_REMOTE = "open_received_half_closed_remote"
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half_closed_local"
    HALF_CLOSED_REMOTE = "half_closed_remote"
    CLOSED = "closed"


class StreamInput(Enum):
    """What happens to a stream: a command of ours (SEND_*) or a frame of the peer (RECV_*).

    ``*_FIN`` is DATA with the FIN flag (with or without payload); ``*_DATA`` is DATA without it.
    """

    __hash__ = object.__hash__  # see StreamState

    SEND_OPEN = "send_open"
    SEND_OPEN_OK = "send_open_ok"
    SEND_DATA = "send_data"
    SEND_FIN = "send_fin"
    SEND_WINDOW = "send_window"
    SEND_RST = "send_rst"
    RECV_OPEN = "recv_open"
    RECV_OPEN_OK = "recv_open_ok"
    RECV_DATA = "recv_data"
    RECV_FIN = "recv_fin"
    RECV_WINDOW = "recv_window"
    RECV_RST = "recv_rst"


class StreamEffect(Enum):
    """The event a transition produces: the Session emits it (``Session._emit``)."""

    OPENED = "opened"  # StreamOpened
    ACCEPTED = "accepted"  # StreamAccepted
    DATA = "data"  # DataReceived (if any payload: an empty DATA without FIN produces nothing)
    ENDED = "ended"  # DataReceived (if any payload), then StreamEnded
    WINDOW = "window"  # WindowUpdated
    RESET = "reset"  # StreamReset(remote=True)


class Opener(Enum):
    """Which side opened a stream."""

    LOCAL = "local"
    REMOTE = "remote"


# Short aliases: the table reads better with them.
_S = StreamState
_I = StreamInput
_E = StreamEffect

_TRANSITIONS: dict[tuple[StreamState, StreamInput], tuple[StreamEffect | None, StreamState]] = {
    # Birth.
    (_S.IDLE, _I.SEND_OPEN): (None, _S.OPEN_SENT),
    (_S.IDLE, _I.RECV_OPEN): (_E.OPENED, _S.OPEN_RECEIVED),
    # We opened; waiting for OPEN_OK. Early data (and FIN) allowed from us.
    (_S.OPEN_SENT, _I.SEND_DATA): (None, _S.OPEN_SENT),
    (_S.OPEN_SENT, _I.SEND_FIN): (None, _S.OPEN_SENT_HALF_CLOSED_LOCAL),
    (_S.OPEN_SENT, _I.SEND_RST): (None, _S.CLOSED),
    (_S.OPEN_SENT, _I.RECV_OPEN_OK): (_E.ACCEPTED, _S.OPEN),
    (_S.OPEN_SENT, _I.RECV_WINDOW): (_E.WINDOW, _S.OPEN_SENT),
    (_S.OPEN_SENT, _I.RECV_RST): (_E.RESET, _S.CLOSED),
    (_S.OPEN_SENT_HALF_CLOSED_LOCAL, _I.SEND_RST): (None, _S.CLOSED),
    (_S.OPEN_SENT_HALF_CLOSED_LOCAL, _I.RECV_OPEN_OK): (_E.ACCEPTED, _S.HALF_CLOSED_LOCAL),
    (_S.OPEN_SENT_HALF_CLOSED_LOCAL, _I.RECV_WINDOW): (_E.WINDOW, _S.OPEN_SENT_HALF_CLOSED_LOCAL),
    (_S.OPEN_SENT_HALF_CLOSED_LOCAL, _I.RECV_RST): (_E.RESET, _S.CLOSED),
    # The peer opened; we have not answered. Its early data (and FIN) allowed.
    (_S.OPEN_RECEIVED, _I.SEND_OPEN_OK): (None, _S.OPEN),
    (_S.OPEN_RECEIVED, _I.SEND_WINDOW): (None, _S.OPEN_RECEIVED),
    (_S.OPEN_RECEIVED, _I.SEND_RST): (None, _S.CLOSED),
    (_S.OPEN_RECEIVED, _I.RECV_DATA): (_E.DATA, _S.OPEN_RECEIVED),
    (_S.OPEN_RECEIVED, _I.RECV_FIN): (_E.ENDED, _S.OPEN_RECEIVED_HALF_CLOSED_REMOTE),
    (_S.OPEN_RECEIVED, _I.RECV_WINDOW): (_E.WINDOW, _S.OPEN_RECEIVED),
    (_S.OPEN_RECEIVED, _I.RECV_RST): (_E.RESET, _S.CLOSED),
    (_S.OPEN_RECEIVED_HALF_CLOSED_REMOTE, _I.SEND_OPEN_OK): (None, _S.HALF_CLOSED_REMOTE),
    (_S.OPEN_RECEIVED_HALF_CLOSED_REMOTE, _I.SEND_RST): (None, _S.CLOSED),
    (_S.OPEN_RECEIVED_HALF_CLOSED_REMOTE, _I.RECV_WINDOW): (
        _E.WINDOW,
        _S.OPEN_RECEIVED_HALF_CLOSED_REMOTE,
    ),
    (_S.OPEN_RECEIVED_HALF_CLOSED_REMOTE, _I.RECV_RST): (_E.RESET, _S.CLOSED),
    # Both directions open.
    (_S.OPEN, _I.SEND_DATA): (None, _S.OPEN),
    (_S.OPEN, _I.SEND_FIN): (None, _S.HALF_CLOSED_LOCAL),
    (_S.OPEN, _I.SEND_WINDOW): (None, _S.OPEN),
    (_S.OPEN, _I.SEND_RST): (None, _S.CLOSED),
    (_S.OPEN, _I.RECV_DATA): (_E.DATA, _S.OPEN),
    (_S.OPEN, _I.RECV_FIN): (_E.ENDED, _S.HALF_CLOSED_REMOTE),
    (_S.OPEN, _I.RECV_WINDOW): (_E.WINDOW, _S.OPEN),
    (_S.OPEN, _I.RECV_RST): (_E.RESET, _S.CLOSED),
    # We sent FIN; the peer may still send.
    (_S.HALF_CLOSED_LOCAL, _I.SEND_WINDOW): (None, _S.HALF_CLOSED_LOCAL),
    (_S.HALF_CLOSED_LOCAL, _I.SEND_RST): (None, _S.CLOSED),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_DATA): (_E.DATA, _S.HALF_CLOSED_LOCAL),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_FIN): (_E.ENDED, _S.CLOSED),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_WINDOW): (_E.WINDOW, _S.HALF_CLOSED_LOCAL),
    (_S.HALF_CLOSED_LOCAL, _I.RECV_RST): (_E.RESET, _S.CLOSED),
    # The peer sent FIN; we may still send.
    (_S.HALF_CLOSED_REMOTE, _I.SEND_DATA): (None, _S.HALF_CLOSED_REMOTE),
    (_S.HALF_CLOSED_REMOTE, _I.SEND_FIN): (None, _S.CLOSED),
    (_S.HALF_CLOSED_REMOTE, _I.SEND_RST): (None, _S.CLOSED),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_WINDOW): (_E.WINDOW, _S.HALF_CLOSED_REMOTE),
    (_S.HALF_CLOSED_REMOTE, _I.RECV_RST): (_E.RESET, _S.CLOSED),
}

# States in which the peer has already sent FIN: more DATA from it is STREAM_CLOSED.
_REMOTE_FINISHED = frozenset(
    {_S.OPEN_RECEIVED_HALF_CLOSED_REMOTE, _S.HALF_CLOSED_REMOTE, _S.CLOSED}
)
# States in which we may still send DATA (credit is meaningful).
_LOCAL_SENDING = frozenset({_S.OPEN_SENT, _S.OPEN, _S.HALF_CLOSED_REMOTE})
# States in which the peer may still send DATA (so a WINDOW from us is useful).
_REMOTE_SENDING = frozenset({_S.OPEN_RECEIVED, _S.OPEN, _S.HALF_CLOSED_LOCAL})


class StreamStateMachine:
    """The table-driven state of one stream.

    Attributes:
        state: the current :class:`StreamState` (starts IDLE).
    """

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = StreamState.IDLE

    def allows(self, stream_input: StreamInput) -> bool:
        """Tell whether ``stream_input`` is a listed transition from the current state.

        Args:
            stream_input: the input to test.

        Returns:
            True when :meth:`process` would accept it (nothing changes either way).
        """
        return (self.state, stream_input) in _TRANSITIONS

    def process(self, stream_input: StreamInput, stream_id: int | None = None) -> StreamEffect | None:
        """Apply an input.

        Args:
            stream_input: what happened.
            stream_id: for error messages only.

        Returns:
            The side effect of the transition (the event to emit), or None.

        Raises:
            LocalProtocolError: a ``SEND_*`` input not allowed in this state.
            RemoteProtocolError: a ``RECV_*`` input not allowed in this state.
            In both cases the state is CLOSED afterwards.
        """
        try:
            effect, self.state = _TRANSITIONS[(self.state, stream_input)]
        except KeyError:
            raise self._violation(stream_input, stream_id) from None
        return effect

    def _violation(self, stream_input: StreamInput, stream_id: int | None) -> ProtocolError:
        old_state = self.state
        self.state = StreamState.CLOSED
        where = "stream" if stream_id is None else f"stream {stream_id}"
        name = stream_input.name
        if stream_input.name.startswith("SEND_"):
            return LocalProtocolError(
                f"{where}: {name} not allowed in state {old_state.name}",
                ErrorCode.STREAM_CLOSED if old_state is _S.CLOSED else ErrorCode.PROTOCOL_ERROR,
                stream_id=stream_id,
            )
        if old_state in _REMOTE_FINISHED and stream_input in (_I.RECV_DATA, _I.RECV_FIN):
            return RemoteProtocolError(
                f"{where}: DATA after the peer's FIN", ErrorCode.STREAM_CLOSED, stream_id=stream_id
            )
        return RemoteProtocolError(
            f"{where}: {name} not allowed in state {old_state.name}",
            ErrorCode.STREAM_CLOSED if old_state is _S.CLOSED else ErrorCode.PROTOCOL_ERROR,
            stream_id=stream_id,
        )


class Stream:
    """One stream: its state machine, its flow-control window and what it is for.

    Args:
        stream_id: the stream id.
        bind_id: the binding named by OPEN.
        opener: which side opened it.
        window: its byte accounting.
        origin: the optional ``"ip:port"`` named by OPEN.
    """

    __slots__ = ("bind_id", "ledger", "machine", "opener", "origin", "stream_id", "window")

    def __init__(
        self,
        stream_id: int,
        bind_id: int,
        opener: Opener,
        window: Window,
        origin: str | None = None,
        *,
        keep_replay: bool = False,
    ) -> None:
        self.stream_id = stream_id
        #: What was sent and received, for a resume (replay buffer only for v2).
        self.ledger = StreamLedger(keep_replay=keep_replay)
        self.bind_id = bind_id
        self.opener = opener
        self.window = window
        self.origin = origin
        self.machine = StreamStateMachine()

    @property
    def state(self) -> StreamState:
        """The current :class:`StreamState`."""
        return self.machine.state

    @property
    def closed(self) -> bool:
        """True once the stream is CLOSED."""
        return self.machine.state is StreamState.CLOSED

    @property
    def local_open(self) -> bool:
        """True while we may still send DATA on it."""
        return self.machine.state in _LOCAL_SENDING

    @property
    def remote_open(self) -> bool:
        """True while the peer may still send DATA on it (a WINDOW from us is then useful)."""
        return self.machine.state in _REMOTE_SENDING

    def process(self, stream_input: StreamInput) -> StreamEffect | None:
        """Apply an input to the state machine (see :meth:`StreamStateMachine.process`).

        Args:
            stream_input: what happened.

        Returns:
            The transition's side effect, or None.

        Raises:
            LocalProtocolError: a ``SEND_*`` input not allowed now (the stream is CLOSED after).
            RemoteProtocolError: a ``RECV_*`` input not allowed now (the stream is CLOSED after).
        """
        return self.machine.process(stream_input, self.stream_id)
