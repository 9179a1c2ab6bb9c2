"""Events a :class:`~tunnel.protocol.session.Session` hands to its driver.

Every event is a past-tense fact about what the peer did (or what the session decided on the
peer's behalf, e.g. refusing a stream beyond ``max_streams``). The driver gets them as an eager
list from ``Session.events_received()`` after each ``receive_message``/``handle_timer`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnel.protocol.messages import BindRequest, BindResult, Hello, Welcome


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every event."""


@dataclass(frozen=True, slots=True)
class HelloReceived(Event):
    """Server side: the client's HELLO arrived and is well formed. The driver authenticates it
    and answers with ``send_welcome`` or ``send_goaway``."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class WelcomeReceived(Event):
    """Client side: the server accepted the session; the session is now OPEN."""

    welcome: Welcome


@dataclass(frozen=True, slots=True)
class BindRequested(Event):
    """Server side: a well-formed BIND with valid values (kind, mode, port range already checked
    by the session). The driver answers ``send_bind_ok`` or ``send_bind_error``."""

    request: BindRequest


@dataclass(frozen=True, slots=True)
class BindRejected(Event):
    """Server side: a BIND whose values were invalid; the session already answered BIND_ERR."""

    req_id: int
    error_code: int
    error: str


@dataclass(frozen=True, slots=True)
class BindAccepted(Event):
    """Client side: BIND_OK for one of our BIND requests."""

    result: BindResult


@dataclass(frozen=True, slots=True)
class BindFailed(Event):
    """Client side: BIND_ERR for one of our BIND requests."""

    req_id: int
    error_code: int
    error: str


@dataclass(frozen=True, slots=True)
class UnbindReceived(Event):
    """The peer sent UNBIND (server side: a request, already echoed; client side: the echo)."""

    bind_id: int


@dataclass(frozen=True, slots=True)
class StreamOpened(Event):
    """The peer opened a stream for ``bind_id``. Answer ``accept_stream`` or ``reset_stream``.
    ``origin`` is the optional ``"ip:port"`` the opener named."""

    stream_id: int
    bind_id: int
    origin: str | None


@dataclass(frozen=True, slots=True)
class StreamRefused(Event):
    """The peer opened a stream the session refused itself (RST already queued):
    beyond ``max_streams`` or after GOAWAY was sent."""

    stream_id: int
    bind_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class StreamAccepted(Event):
    """OPEN_OK arrived for a stream we opened."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """DATA payload for a stream. ``data`` may be a memoryview slice of the received message:
    the driver must not keep it past writing it out without copying. Once the bytes are written
    to the local socket the driver calls ``acknowledge_data(stream_id, len(data))``."""

    stream_id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer sent FIN: it will send no more on this stream (after any DataReceived above)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class WindowUpdated(Event):
    """The peer granted more send credit on a stream."""

    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """A stream ended abnormally. ``remote`` is True when the peer sent RST; False when this
    session reset it itself (e.g. flow-control violation by the peer; the RST is already queued)."""

    stream_id: int
    error_code: int
    reason: str
    remote: bool


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    """The PONG of our last heartbeat PING arrived; ``rtt_s`` is its round-trip time."""

    rtt_s: float


@dataclass(frozen=True, slots=True)
class GoAwayReceived(Event):
    """The peer sent GOAWAY: it opens no new streams and will close after draining."""

    error_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionDead(Event):
    """Nothing was received for 3 x heartbeat interval (docs/protocol.md §10): drop the connection
    without sending GOAWAY."""

    silent_s: float
