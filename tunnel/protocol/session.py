"""Session: the sans-I/O state of one tunnel WebSocket, client or server side.

A Session owns no socket, clock or randomness. Its driver feeds it each WebSocket message
(:meth:`Session.receive_message`), the time (:meth:`Session.handle_timer`) and its commands
(:meth:`Session.open_stream`, :meth:`Session.send_data`, ...); after each call it collects
:meth:`Session.events_received` and writes :meth:`Session.messages_to_send`.

The Session is a coordinator over parts it holds:

* :class:`~tunnel.protocol.streams.Streams` (``_streams``): the stream table: live streams, ids,
  open counts and (v2) the records of closed streams; each
  :class:`~tunnel.protocol.stream.Stream` carries its state table
  (:mod:`~tunnel.protocol.stream`), its byte accounting (:mod:`~tunnel.protocol.flow`) and its
  resume ledger (:mod:`~tunnel.protocol.replay`);
* :class:`~tunnel.protocol.outbox.Outbox` (``_outbox``): sending order and batching;
* :class:`~tunnel.protocol.heartbeat.Heartbeat` (``_heartbeat``): liveness;
* :class:`~tunnel.protocol.resume.Resumer` (``_resumer``, v2): the ``received`` maps of a resume
  handshake and the retransmissions and reopens after it, on the same Streams and Outbox.

The Session itself keeps the session state (:mod:`~tunnel.protocol.session_state`: the states,
their allowed moves and which frames each state accepts), the handshake values (HELLO, WELCOME,
the peer's limits), GOAWAY, the events for the driver, and the rules that tie the parts
together: the commands below and the handling of received frames.

Session states (changed only by ``_set_state``, which checks the move)::

    CLIENT: IDLE --send_hello--> HELLO_SENT --WELCOME--> OPEN --GOAWAY sent/received--> DRAINING
    SERVER: IDLE --HELLO--> HELLO_RECEIVED --send_welcome--> OPEN --GOAWAY...--> DRAINING
    v2: OPEN --detach (WebSocket lost)--> DETACHED --resume (server) / WELCOME (client)--> OPEN
        client: DETACHED --send_resume--> RESUMING --WELCOME(resumed)--> OPEN
    any --protocol error / connection_lost / GOAWAY before OPEN--> CLOSED

Receiving rules beyond the per-frame codec rules (docs/protocol.md §3):

* Direction and order: :func:`~tunnel.protocol.session_state.check_receivable`.
* OPEN: the opener's parity (client odd, server even) and strictly increasing ids, else a
  session error. Beyond ``max_streams`` streams opened by the peer and still open, or after we
  sent GOAWAY: RST(REFUSED) and a StreamRefused event.
* A frame other than OPEN or RST for a stream that is not open: RST(STREAM_CLOSED), no event;
  an RST for such a stream is ignored.
* Stream rule violations (table misses, DATA after FIN, flow control) reset that stream:
  RST(code) queued, ``StreamReset(remote=False)`` emitted. Never fatal to the session.

Error model (docs/architecture.md §5): a command that breaks the rules raises
:class:`~tunnel.protocol.errors.LocalProtocolError`. A peer that breaks a session rule makes
``receive_message`` queue ``GOAWAY(code, reason)``, move to CLOSED and raise
:class:`~tunnel.protocol.errors.RemoteProtocolError`. A peer that breaks a stream rule gets an RST
for that stream and the driver a ``StreamReset(remote=False)`` event; the session carries on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunnel.protocol import events as ev
from tunnel.protocol.config import Role, SessionConfig
from tunnel.protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    check_code,
    truncate_text,
)
from tunnel.protocol.frames import (
    MAX_FRAME_SIZE_LIMIT,
    BindErrFrame,
    BindFrame,
    BindOkFrame,
    DataFrame,
    Frame,
    FrameType,
    GoAwayFrame,
    HelloFrame,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    RstFrame,
    UnbindFrame,
    WelcomeFrame,
    WindowFrame,
    decode_message,
)
from tunnel.protocol.heartbeat import Heartbeat
from tunnel.protocol.messages import BindRequest, BindResult, Hello, ResumeRequest, StreamOffsets, Welcome
from tunnel.protocol.outbox import Outbox
from tunnel.protocol.payloads import DEFAULT_WINDOW_SIZE, validate_bind_values
from tunnel.protocol.resume import Resumer
from tunnel.protocol.session_state import SessionState, check_receivable, check_transition
from tunnel.protocol.stream import Opener, Stream, StreamEffect, StreamInput, StreamState
from tunnel.protocol.streams import Streams

__all__ = ["Session", "SessionState", "SessionStatistics"]

_U32_MAX = 0xFFFFFFFF

# The received frames whose events _emit builds (DATA's are built in _on_data).
_StreamFrame = WindowFrame | OpenFrame | OpenOkFrame | RstFrame


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """A snapshot of a session's numbers (trio's ``statistics()`` convention).

    Attributes:
        state: the session state.
        active_streams: streams not CLOSED, whoever opened them.
        streams_opened_local: streams this side opened, since the start.
        streams_opened_remote: streams the peer opened and the session did not refuse.
        streams_refused: OPENs the session refused itself (maxStreams, after GOAWAY).
        data_bytes_sent: DATA payload bytes handed to the driver in messages.
        data_bytes_received: DATA payload bytes received and accepted.
        messages_sent: WebSocket messages handed to the driver.
        messages_received: WebSocket messages received.
        queued_streams: streams with DATA still queued.
        rtt_s: round-trip time of the last answered heartbeat PING, or None.
        goaway_sent: code of the last GOAWAY we queued, or None.
        goaway_received: code of the last GOAWAY the peer sent, or None.
    """

    state: SessionState
    active_streams: int
    streams_opened_local: int
    streams_opened_remote: int
    streams_refused: int
    data_bytes_sent: int
    data_bytes_received: int
    messages_sent: int
    messages_received: int
    queued_streams: int
    rtt_s: float | None
    goaway_sent: int | None
    goaway_received: int | None
    #: v2: DATA bytes sent again after resumes (docs/protocol.md §13).
    bytes_retransmitted: int = 0


class Session:
    """The protocol state of one tunnel WebSocket: the only stateful entry point of the core.

    Calls never block and never yield; under gevent each call is atomic, so a check such as
    :meth:`is_open` or :meth:`outbound_credit` followed by a command sees no change between them.

    Args:
        config: the session's parameters (:class:`~tunnel.protocol.config.SessionConfig`: role,
            negotiated version, windows and limits).

    Raises:
        LocalProtocolError: never for a valid config (SessionConfig checks its values).
    """

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.role = config.role
        self.version = config.version
        self._state = SessionState.IDLE
        #: Server: the HELLO received. Client: the HELLO sent.
        self.hello: Hello | None = None
        #: Client: the WELCOME received. Server: the WELCOME sent.
        self.welcome: Welcome | None = None
        #: Server: the client has sent something since our last WELCOME, so it has that
        #: WELCOME (and its resume token). Until then the previous token must still work:
        #: a WELCOME lost in a cut would otherwise leave the client with a dead token.
        self.welcome_acknowledged = False
        #: Each side may have this many streams it opened open at once (WELCOME.maxStreams).
        self.max_streams = config.max_streams
        #: Largest DATA payload we send (client: WELCOME.maxFrame, capped at 4 MiB-10).
        self.peer_max_frame_size = min(
            config.peer_max_frame_size or config.max_frame_size, MAX_FRAME_SIZE_LIMIT
        )
        #: Our initial send credit per stream: the window the peer announced.
        self.peer_window_size = DEFAULT_WINDOW_SIZE
        #: Code of the last GOAWAY sent / received; None before any.
        self.goaway_sent: int | None = None
        self.goaway_received: int | None = None
        self._events: list[ev.Event] = []
        self._outbox = Outbox(version=config.version, max_message_size=config.max_message_size)
        self._streams = Streams(
            config.role, receive_window_size=config.receive_window_size, resumable=config.version >= 2
        )
        self._resumer = Resumer(self._streams, self._outbox)
        self._heartbeat = Heartbeat(config.heartbeat_interval_s)
        self._now = 0.0
        self._data_bytes_received = 0
        self._messages_received = 0

    # -- session state ----------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """Where the session is in its life (:class:`~tunnel.protocol.session_state.SessionState`)."""
        return self._state

    def _set_state(self, new: SessionState) -> None:
        """The one place the session state changes; the move must be listed in session_state.py."""
        check_transition(self._state, new)
        self._state = new

    @property
    def attached(self) -> bool:
        """False while DETACHED or RESUMING: frames then only go into the ledgers (resume.py)."""
        return self._state is not SessionState.DETACHED and self._state is not SessionState.RESUMING

    # -- driver contract --------------------------------------------------------------------------

    def receive_message(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Process one WebSocket binary message from the peer.

        Args:
            data: the whole message. DATA payloads handed out in DataReceived events are slices
                of it: do not modify it while they are in use.
            now: current time in seconds (any monotonic origin); it also feeds the heartbeat.

        Raises:
            RemoteProtocolError: the peer broke a session rule. GOAWAY(``exc.error_code``,
                ``str(exc)``) is already queued and the session is CLOSED; write
                ``messages_to_send()``, then close the WebSocket. Events produced by the frames
                before the bad one are still delivered. A message received while CLOSED is
                ignored.
        """
        if self._state is SessionState.CLOSED or self._state is SessionState.DETACHED:
            return  # DETACHED: a straggler from the dead connection; the resume resends it
        self._now = now
        self._heartbeat.received(now)
        self._messages_received += 1
        if self._state is SessionState.OPEN or self._state is SessionState.DRAINING:
            self.welcome_acknowledged = True
        try:
            frames = decode_message(
                data, max_frame_size=self.config.max_frame_size, version=self.version
            )
            for frame in frames:
                self._handle_frame(frame)
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise

    def connection_lost(self) -> None:
        """The WebSocket is gone (closed, reset, or dropped after ConnectionDead).

        Every stream is closed and everything queued is dropped; the session is CLOSED.
        No event is emitted.
        """
        self._close_everything()

    def events_received(self) -> list[ev.Event]:
        """Take the events produced since the last call.

        Returns:
            The events in order, as an eager list (the session forgets them).
        """
        events, self._events = self._events, []
        return events

    def messages_to_send(self, max_bytes: int | None = None) -> list[bytes]:
        """Take queued frames as WebSocket binary messages, to be written in order.

        Control frames (everything but DATA) come first in FIFO order, then DATA round robin
        between streams. v1: one frame per message; v2: whole frames packed into messages of at
        most ``config.max_message_size`` bytes (a larger single frame travels alone).

        Args:
            max_bytes: stop after about that many bytes (at least one message when anything is
                queued); the rest stays queued. None: everything.

        Returns:
            The messages (possibly none).
        """
        messages = self._outbox.pop_messages(max_bytes)
        if self._resumer.reopens_pending and not self._outbox and self.attached:
            # Streams opened again at a resume go out only after everything queued before them.
            self._resumer.flush_reopens(self.peer_max_frame_size)
            messages += self._outbox.pop_messages(max_bytes)
        return messages

    def has_data_to_send(self) -> bool:
        """Tell whether anything is queued.

        Returns:
            True when :meth:`messages_to_send` would return at least one message.
        """
        return bool(self._outbox) or (self._resumer.reopens_pending and self.attached)

    def handle_timer(self, now: float) -> None:
        """Let time pass: heartbeat PINGs and dead-connection detection (docs/protocol.md §10).

        The first call (or the first ``receive_message``) starts the clock. While the session
        is OPEN or DRAINING: after one heartbeat interval without any received message a PING
        is queued, after a second interval another; after three intervals a
        ``ConnectionDead(silent_s)`` event is emitted (once per silence). Drop the connection
        then, without GOAWAY.

        Args:
            now: current time in seconds (same origin as ``receive_message``).
        """
        self._now = now
        if not self._heartbeat.started:
            self._heartbeat.received(now)  # the first call starts the clock
            return
        if self._state not in (SessionState.OPEN, SessionState.DRAINING):
            return
        payload, silent_s = self._heartbeat.poll(now)
        if payload is not None:
            self._outbox.queue_control(PingFrame(payload))
        if silent_s is not None:
            self._events.append(ev.ConnectionDead(silent_s))

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` next has work.

        Returns:
            A time in seconds on the clock of ``now``, or None (clock not started, session not
            OPEN/DRAINING, or nothing pending).
        """
        if self._state not in (SessionState.OPEN, SessionState.DRAINING):
            return None
        return self._heartbeat.deadline()

    # -- stream queries ---------------------------------------------------------------------------

    def stream_ids(self) -> list[int]:
        """Ids of the streams not CLOSED, in opening order.

        Returns:
            The ids.
        """
        return self._streams.ids()

    def is_open(self, stream_id: int) -> bool:
        """Tell whether a stream exists and is not CLOSED.

        Args:
            stream_id: the stream.

        Returns:
            True for a live stream.
        """
        return stream_id in self._streams

    def stream_state(self, stream_id: int) -> StreamState:
        """The state of a stream.

        Args:
            stream_id: the stream.

        Returns:
            Its :class:`~tunnel.protocol.stream.StreamState`; CLOSED when unknown.
        """
        return self._streams.state(stream_id)

    def stream_bind_id(self, stream_id: int) -> int | None:
        """The binding a live stream belongs to.

        Args:
            stream_id: the stream.

        Returns:
            Its bind id, or None for an unknown or closed stream.
        """
        return self._streams.bind_id(stream_id)

    # -- handshake and bindings -------------------------------------------------------------------

    def _require(self, what: str, *, role: Role | None = None, states: tuple[SessionState, ...]) -> None:
        if role is not None and self.role is not role:
            raise LocalProtocolError(f"{what}: only the {role.value} may do this")
        if self._state not in states:
            raise LocalProtocolError(f"{what}: not allowed in session state {self._state.name}")

    def send_hello(self, hello: Hello) -> None:
        """Client: send HELLO, the first frame of the session.

        Args:
            hello: the HELLO. A None ``window`` is sent as ``config.receive_window_size``.

        Raises:
            LocalProtocolError: not a client in state IDLE; ``hello.window`` differs from
                ``config.receive_window_size``; a ``resume`` in v1.
        """
        self._require("send_hello", role=Role.CLIENT, states=(SessionState.IDLE,))
        if hello.window is None:
            hello = replace(hello, window=self.config.receive_window_size)
        elif hello.window != self.config.receive_window_size:
            raise LocalProtocolError(
                f"send_hello: window {hello.window} differs from receive_window_size "
                f"{self.config.receive_window_size}"
            )
        if hello.resume is not None and self.version < 2:
            raise LocalProtocolError("send_hello: resume needs hoody-tunnel.v2")
        self._outbox.queue_control(HelloFrame(hello))
        self.hello = hello
        self._set_state(SessionState.HELLO_SENT)

    def send_welcome(self, welcome: Welcome) -> None:
        """Server: accept the session after ``HelloReceived``; the session becomes OPEN.

        The HELLO's window (256 KiB when absent) becomes our initial send credit per stream.

        Args:
            welcome: the WELCOME. Its ``protocol``, ``window``, ``max_frame`` and
                ``max_streams`` must match the config (they are what the session enforces).

        Raises:
            LocalProtocolError: not a server in state HELLO_RECEIVED, or a mismatch as above.
        """
        self._require("send_welcome", role=Role.SERVER, states=(SessionState.HELLO_RECEIVED,))
        config = self.config
        for name, got, expected in (
            ("protocol", welcome.protocol, config.subprotocol),
            ("window", welcome.window, config.receive_window_size),
            ("max_frame", welcome.max_frame, config.max_frame_size),
            ("max_streams", welcome.max_streams, config.max_streams),
        ):
            if got != expected:
                raise LocalProtocolError(f"send_welcome: {name} {got!r} differs from {expected!r}")
        assert self.hello is not None
        self.peer_window_size = (
            self.hello.window if self.hello.window is not None else DEFAULT_WINDOW_SIZE
        )
        self._outbox.queue_control(WelcomeFrame(welcome))
        self.welcome = welcome
        self.welcome_acknowledged = False
        self._set_state(SessionState.OPEN)

    def send_bind(self, request: BindRequest) -> None:
        """Client: ask for a binding (answered by BindAccepted or BindFailed).

        Args:
            request: the BIND request; ``req_id`` is the client's correlation number.

        Raises:
            LocalProtocolError: not a client, or the session is not OPEN/DRAINING.
        """
        self._require("send_bind", role=Role.CLIENT, states=(SessionState.OPEN, SessionState.DRAINING))
        self._outbox.queue_control(BindFrame.from_request(request))

    def send_bind_ok(self, result: BindResult) -> None:
        """Server: answer a BindRequested with BIND_OK.

        Args:
            result: the binding (its ``req_id`` echoes the request's).

        Raises:
            LocalProtocolError: not a server, or the session is not OPEN/DRAINING.
        """
        self._require(
            "send_bind_ok", role=Role.SERVER, states=(SessionState.OPEN, SessionState.DRAINING)
        )
        self._outbox.queue_control(BindOkFrame(result))

    def send_bind_error(self, req_id: int, code: int, error: str) -> None:
        """Server: answer a BindRequested with BIND_ERR.

        Args:
            req_id: the request's ``reqId``.
            code: an :class:`~tunnel.protocol.errors.ErrorCode` (FORBIDDEN, PORT_IN_USE...).
            error: human text naming the port and the reason (cut to 1 KiB).

        Raises:
            LocalProtocolError: not a server, the session is not OPEN/DRAINING, or ``code`` is
                not a u16.
        """
        self._require(
            "send_bind_error", role=Role.SERVER, states=(SessionState.OPEN, SessionState.DRAINING)
        )
        check_code(code, "send_bind_error")
        self._outbox.queue_control(BindErrFrame(req_id, code, truncate_text(error)))

    def send_unbind(self, bind_id: int) -> None:
        """Send UNBIND: the client asks to close a binding (the server echoes it); a server may
        also announce that it closed one.

        Args:
            bind_id: the binding.

        Raises:
            LocalProtocolError: the session is not OPEN/DRAINING, or ``bind_id`` is not a u32.
        """
        self._require("send_unbind", states=(SessionState.OPEN, SessionState.DRAINING))
        if not 0 <= bind_id <= _U32_MAX:
            raise LocalProtocolError(f"send_unbind: bind id {bind_id} is not a u32")
        self._outbox.queue_control(UnbindFrame(bind_id))

    # -- resume (v2; the bookkeeping is the Resumer's) --------------------------------------------

    def detach(self) -> None:
        """The WebSocket of an OPEN v2 session ended without GOAWAY: keep the streams, drop
        what was queued, and wait for a resume (server: :meth:`resume`; client:
        :meth:`send_resume`).

        Also valid while DETACHED or RESUMING (the new connection was lost too): the session is
        then DETACHED again.

        Raises:
            LocalProtocolError: not a v2 session in state OPEN, DETACHED or RESUMING.
        """
        self._resumer.detach()  # reopens not flushed yet are considered again at the next resume
        if not self.attached:  # lost again during (or before) the resume
            self._outbox.clear()
            self._set_state(SessionState.DETACHED)
            return
        if self.version < 2 or self._state is not SessionState.OPEN:
            raise LocalProtocolError(
                f"detach: only an OPEN v2 session can be parked (state {self._state.name}, v{self.version})"
            )
        self._outbox.clear()
        self._set_state(SessionState.DETACHED)

    def received_map(self) -> dict[int, StreamOffsets]:
        """The ``received`` map of a resume handshake (kept by the session's Resumer).

        Returns:
            ``[receivedBytes, consumedBytes, finReceived]`` of every stream still remembered,
            by stream id (see :meth:`tunnel.protocol.resume.Resumer.received_map`).
        """
        return self._resumer.received_map()

    def send_resume(self, token: str, client: str) -> None:
        """Client, DETACHED: send ``HELLO.resume`` on the new connection (the first message).

        Args:
            token: the client token (checked again by the server).
            client: the client's name, e.g. ``"hoody-tunnel/0.1.0"``.

        Raises:
            LocalProtocolError: not a client in state DETACHED, or no resume token known.
        """
        if self.role is not Role.CLIENT or self._state is not SessionState.DETACHED:
            raise LocalProtocolError(f"send_resume: not allowed in session state {self._state.name}")
        welcome = self.welcome
        if welcome is None or not welcome.resume_token:
            raise LocalProtocolError("send_resume: the server gave no resume token")
        hello = Hello(
            token=token,
            client=client,
            window=self.config.receive_window_size,
            resume=ResumeRequest(welcome.session_id, welcome.resume_token, self.received_map()),
        )
        self._outbox.clear()
        self._outbox.queue_control(HelloFrame(hello))
        self.hello = hello
        self._set_state(SessionState.RESUMING)

    def resume(self, welcome: Welcome, peer_received: dict[int, StreamOffsets], now: float) -> None:
        """Server, DETACHED: take the client back. Queues WELCOME(resumed) with our map, then
        every retransmission. Events (StreamReset for streams the client forgot) follow.

        Args:
            welcome: the WELCOME to send: ``resumed`` true, a fresh ``resume_token``; its
                ``received`` is filled in here.
            peer_received: the ``received`` map of the client's HELLO.resume.
            now: current time (restarts the heartbeat).

        Raises:
            LocalProtocolError: not a server in state DETACHED, or ``welcome.resumed`` false.
        """
        if self.role is not Role.SERVER or self._state is not SessionState.DETACHED:
            raise LocalProtocolError(f"resume: not allowed in session state {self._state.name}")
        if not welcome.resumed:
            raise LocalProtocolError("resume: the WELCOME must say resumed")
        self._outbox.clear()
        welcome = replace(welcome, received=self.received_map())
        self._outbox.queue_control(WelcomeFrame(welcome))
        self.welcome = welcome
        self.welcome_acknowledged = False
        self._set_state(SessionState.OPEN)
        self._now = now
        self._heartbeat.received(now)
        self._apply_resume(peer_received)

    def _apply_resume(self, peer_received: dict[int, StreamOffsets]) -> None:
        """Both sides, once the handshake is done: retransmit what the peer's map says it lacks."""
        self._events += self._resumer.apply(
            peer_received,
            peer_window_size=self.peer_window_size,
            max_frame_size=self.peer_max_frame_size,
        )

    # -- streams ----------------------------------------------------------------------------------

    def can_open_stream(self) -> bool:
        """Tell whether :meth:`open_stream` would succeed now.

        Returns:
            True when the session is OPEN (no GOAWAY sent or received), this side has fewer
            than ``max_streams`` streams it opened still in use, and ids are not exhausted.
        """
        return (
            self._state is SessionState.OPEN
            and not self._resumer.reopens_pending  # their ids must reach the peer first
            and not self._streams.local_ids_exhausted
            and self._streams.local_in_use(self._outbox.queued_stream_ids()) < self.max_streams
        )

    def open_stream(self, bind_id: int, origin: str | None = None) -> int:
        """Open a stream: queue OPEN. Early DATA may follow at once (within the credit).

        Args:
            bind_id: the binding the stream belongs to (u32).
            origin: optional ``"ip:port"`` of the connection that caused it.

        Returns:
            The new stream id: odd for the client, even (>= 2) for the server, increasing.

        Raises:
            LocalProtocolError: the session is not OPEN (handshake not done, GOAWAY sent or
                received, closed), ``max_streams`` streams of ours are in use (see
                :meth:`can_open_stream`), or ``bind_id`` is not a u32.
        """
        self._require("open_stream", states=(SessionState.OPEN,))
        if not 0 <= bind_id <= _U32_MAX:
            raise LocalProtocolError(f"open_stream: bind id {bind_id} is not a u32")
        if not self.can_open_stream():
            raise LocalProtocolError(
                f"open_stream: {self.max_streams} streams already open (maxStreams)",
                ErrorCode.REFUSED,
            )
        stream = self._streams.open_local(bind_id, origin, send_credit=self.peer_window_size)
        stream.process(StreamInput.SEND_OPEN)
        self._outbox.queue_control(OpenFrame(stream.stream_id, bind_id, origin or None))
        return stream.stream_id

    def accept_stream(self, stream_id: int) -> None:
        """Accept a stream the peer opened (StreamOpened): queue OPEN_OK.

        Args:
            stream_id: the stream. Unknown or closed (e.g. the peer reset it while the driver
                was connecting: the StreamReset may even come in the same batch of events as
                the StreamOpened): nothing happens.

        Raises:
            LocalProtocolError: the stream cannot be accepted (we opened it, or it was accepted
                already); the stream is then reset with RST(PROTOCOL_ERROR).
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._process_local(stream, StreamInput.SEND_OPEN_OK)
        stream.ledger.accepted = True
        if self.attached:  # else resume.py sends it at the resume
            self._outbox.queue_control(OpenOkFrame(stream_id))

    def send_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, *, end_stream: bool = False
    ) -> None:
        """Queue DATA on a stream, split into frames of at most the peer's maxFrame.

        Args:
            stream_id: the stream. Early data is allowed on a stream we opened, before OPEN_OK.
            data: the payload, at most :meth:`outbound_credit` bytes. ``bytes`` are queued
                without a copy; a writable buffer is copied once.
            end_stream: set FIN on the last frame (alone, ``b""`` sends an empty DATA+FIN,
                which uses no credit).

        Raises:
            LocalProtocolError: ``FLOW_CONTROL_ERROR`` when ``data`` exceeds the credit (nothing
                queued, the stream unchanged); ``STREAM_CLOSED`` for an unknown or closed stream;
                ``PROTOCOL_ERROR`` when the stream's state forbids it (FIN already sent, not yet
                accepted by us): the stream is then reset with RST(PROTOCOL_ERROR).
        """
        stream = self._streams.require(stream_id, "send_data")
        stream_input = StreamInput.SEND_FIN if end_stream else StreamInput.SEND_DATA
        if not stream.machine.allows(stream_input):
            self._process_local(stream, stream_input)  # raises and resets the stream
        payload: bytes | memoryview
        if isinstance(data, bytes):
            payload = data
        else:
            view = memoryview(data)
            if view.ndim != 1 or view.itemsize != 1:
                view = view.cast("B")
            # A writable buffer may be reused by the caller: copy it once.
            payload = view if view.readonly else view.tobytes()
        size = len(payload)
        stream.window.consume_send_credit(size)
        self._process_local(stream, stream_input)
        stream.ledger.record_sent(payload, end_stream)
        if not self.attached or stream.ledger.reopen_pending:  # resume.py: sent from the replay buffer later
            if stream.closed:
                self._streams.forget(stream)
            return
        step = self.peer_max_frame_size
        if size == 0:
            if end_stream:
                self._outbox.queue_data(stream_id, b"", True)
        elif size <= step:
            self._outbox.queue_data(stream_id, payload, end_stream)
        else:
            view = memoryview(payload)  # slices of a memoryview do not copy
            for offset in range(0, size, step):
                last = offset + step >= size
                self._outbox.queue_data(stream_id, view[offset : offset + step], end_stream and last)
        if stream.closed:
            self._streams.forget(stream)

    def outbound_credit(self, stream_id: int) -> int:
        """How many DATA bytes :meth:`send_data` accepts now on a stream.

        Args:
            stream_id: the stream.

        Returns:
            The credit; 0 for an unknown or closed stream, or one on which we may not send
            (FIN sent, or opened by the peer and not accepted yet).
        """
        stream = self._streams.get(stream_id)
        if stream is None or not stream.local_open:
            return 0
        return stream.window.send_credit

    def acknowledge_data(self, stream_id: int, size: int, *, drained: bool = False) -> None:
        """Report ``size`` received bytes of a stream written to the local socket.

        May queue a WINDOW: once at least half our window has been acknowledged since the last
        one (a quarter when ``drained``), and only while the peer may still send on the stream.

        Args:
            stream_id: the stream; unknown or closed: nothing happens.
            size: bytes written (at most what was received and not yet acknowledged).
            drained: nothing more of this stream is waiting to be written locally.

        Raises:
            LocalProtocolError: ``size`` negative or more than the unacknowledged bytes.
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        # While detached the bytes only count as consumed; the resume restarts the window.
        announce = stream.remote_open and self.attached
        increment = stream.window.acknowledge(size, announce=announce, drained=drained)
        if increment:
            self._process_local(stream, StreamInput.SEND_WINDOW)
            self._outbox.queue_control(WindowFrame(stream_id, increment))

    def reset_stream(self, stream_id: int, code: int, reason: str = "") -> None:
        """Reset a stream: queue RST and drop its queued DATA. The stream is CLOSED.

        Args:
            stream_id: the stream; unknown or closed: nothing happens.
            code: an :class:`~tunnel.protocol.errors.ErrorCode` (u16).
            reason: human text (cut to 1 KiB).

        Raises:
            LocalProtocolError: ``code`` is not a u16.
        """
        check_code(code, "reset_stream")
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        self._process_local(stream, StreamInput.SEND_RST)
        self._queue_rst(stream_id, code, reason)
        self._streams.forget(stream)

    # -- liveness and shutdown --------------------------------------------------------------------

    def send_ping(self, payload: bytes) -> None:
        """Queue a PING (the peer answers PONG; only heartbeat PINGs produce PongReceived).

        Args:
            payload: exactly 8 bytes.

        Raises:
            LocalProtocolError: the session is not OPEN/DRAINING, or the payload is not 8 bytes.
        """
        self._require("send_ping", states=(SessionState.OPEN, SessionState.DRAINING))
        if len(payload) != 8:
            raise LocalProtocolError(f"send_ping: payload must be 8 bytes, got {len(payload)}")
        self._outbox.queue_control(PingFrame(bytes(payload)))

    def send_goaway(self, code: int, reason: str = "") -> None:
        """Queue GOAWAY: no new streams from either side; new OPENs get RST(REFUSED).

        In state OPEN the session becomes DRAINING: existing streams carry on (the driver
        resets what is left after its drain window, then closes). Before OPEN (e.g. the server
        refusing a HELLO with AUTH_FAILED) the session becomes CLOSED. While CLOSED nothing
        happens (a GOAWAY may already be queued by a protocol error).

        Args:
            code: an :class:`~tunnel.protocol.errors.ErrorCode` (u16).
            reason: human text (cut to 1 KiB), e.g. ``"invalid token"``.

        Raises:
            LocalProtocolError: ``code`` is not a u16, or a client that has not sent HELLO.
        """
        check_code(code, "send_goaway")
        if self._state is SessionState.CLOSED:
            return
        if self.role is Role.CLIENT and self._state is SessionState.IDLE:
            raise LocalProtocolError("send_goaway: the client's first frame must be HELLO")
        self._outbox.queue_control(GoAwayFrame(code, truncate_text(reason)))
        self.goaway_sent = code
        self._after_goaway()

    def statistics(self) -> SessionStatistics:
        """Take a snapshot of the session's numbers.

        Returns:
            A frozen :class:`SessionStatistics`.
        """
        return SessionStatistics(
            state=self._state,
            active_streams=len(self._streams),
            streams_opened_local=self._streams.opened_local,
            streams_opened_remote=self._streams.opened_remote,
            streams_refused=self._streams.refused,
            data_bytes_sent=self._outbox.data_bytes_sent,
            data_bytes_received=self._data_bytes_received,
            messages_sent=self._outbox.messages_sent,
            messages_received=self._messages_received,
            queued_streams=len(self._outbox.queued_stream_ids()),
            rtt_s=self._heartbeat.rtt_s,
            goaway_sent=self.goaway_sent,
            goaway_received=self.goaway_received,
            bytes_retransmitted=self._resumer.bytes_retransmitted,
        )

    # -- stream rules and endings -----------------------------------------------------------------

    def _queue_rst(self, stream_id: int, code: int, reason: str) -> None:
        self._outbox.drop_stream(stream_id)
        reason = truncate_text(reason)
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.ledger.reset_sent = (code, reason)  # sent again at a resume if lost
        if self.attached:
            self._outbox.queue_control(RstFrame(stream_id, code, reason))

    def _process_local(self, stream: Stream, stream_input: StreamInput) -> StreamEffect | None:
        """Apply one of our commands to a stream; on a table miss reset it and re-raise."""
        try:
            return stream.process(stream_input)
        except LocalProtocolError as exc:
            # The table says CLOSED: tell the peer, so that both ends agree.
            self._queue_rst(stream.stream_id, ErrorCode.PROTOCOL_ERROR, str(exc))
            self._streams.forget(stream)
            raise

    def _reset_by_us(self, stream: Stream, exc: RemoteProtocolError) -> None:
        """The peer broke a stream rule: RST(code) and StreamReset(remote=False)."""
        self._queue_rst(stream.stream_id, exc.error_code, str(exc))
        self._streams.forget(stream)
        self._events.append(ev.StreamReset(stream.stream_id, exc.error_code, str(exc), False))

    def _close_everything(self) -> None:
        self._streams.forget_all()
        self._outbox.clear()
        self._set_state(SessionState.CLOSED)

    def _after_goaway(self) -> None:
        """A GOAWAY was sent or received: an OPEN session drains, one not yet OPEN closes."""
        if self._state is SessionState.OPEN:
            self._set_state(SessionState.DRAINING)
        elif self._state is not SessionState.DRAINING:
            self._streams.forget_all()
            self._set_state(SessionState.CLOSED)

    def _fail(self, exc: RemoteProtocolError) -> None:
        """A session rule was broken: only GOAWAY(code, reason) stays queued; CLOSED."""
        self._close_everything()
        self._outbox.queue_control(GoAwayFrame(exc.error_code, truncate_text(str(exc))))
        self.goaway_sent = exc.error_code

    # -- received frames --------------------------------------------------------------------------

    def _handle_frame(self, frame: Frame) -> None:
        if isinstance(frame, DataFrame):  # the hot path first
            self._on_data(frame)
            return
        check_receivable(self.role, self._state, frame.frame_type)
        if isinstance(frame, WindowFrame):
            self._on_window(frame)
        elif isinstance(frame, OpenFrame):
            self._on_open(frame)
        elif isinstance(frame, OpenOkFrame):
            self._on_open_ok(frame)
        elif isinstance(frame, RstFrame):
            self._on_rst(frame)
        elif isinstance(frame, PingFrame):
            self._outbox.queue_control(PongFrame(frame.payload))
        elif isinstance(frame, PongFrame):
            rtt_s = self._heartbeat.pong(frame.payload, self._now)
            if rtt_s is not None:
                self._events.append(ev.PongReceived(rtt_s))
        elif isinstance(frame, GoAwayFrame):
            self._on_goaway(frame)
        elif isinstance(frame, HelloFrame):
            self.hello = frame.hello
            self._set_state(SessionState.HELLO_RECEIVED)
            self._events.append(ev.HelloReceived(frame.hello))
        elif isinstance(frame, WelcomeFrame):
            self._on_welcome(frame.welcome)
        elif isinstance(frame, BindFrame):
            self._on_bind(frame)
        elif isinstance(frame, BindOkFrame):
            self._events.append(ev.BindAccepted(frame.result))
        elif isinstance(frame, BindErrFrame):
            self._events.append(ev.BindFailed(frame.req_id, frame.error_code, frame.error))
        else:
            assert isinstance(frame, UnbindFrame)
            if self.role is Role.SERVER:  # the echo is the acknowledgement (docs/protocol.md §6.2)
                self._outbox.queue_control(UnbindFrame(frame.bind_id))
            self._events.append(ev.UnbindReceived(frame.bind_id))

    def _emit(self, effect: StreamEffect | None, frame: _StreamFrame) -> None:
        """Act on the effect the stream table returned for a received frame: emit the event it
        names (the table in stream.py decides, not the frame handlers). DATA and ENDED are acted
        on in :meth:`_on_data` itself, the hot path; None (our own commands) emits nothing."""
        events = self._events
        stream_id = frame.stream_id
        if effect is StreamEffect.WINDOW:
            assert isinstance(frame, WindowFrame)
            events.append(ev.WindowUpdated(stream_id, frame.increment))
        elif effect is StreamEffect.ACCEPTED:
            events.append(ev.StreamAccepted(stream_id))
        elif effect is StreamEffect.OPENED:
            assert isinstance(frame, OpenFrame)
            events.append(ev.StreamOpened(stream_id, frame.bind_id, frame.origin))
        elif effect is StreamEffect.RESET:
            assert isinstance(frame, RstFrame)
            events.append(ev.StreamReset(stream_id, frame.error_code, frame.reason, True))

    def _unknown_stream(self, stream_id: int, frame_type: FrameType) -> None:
        # docs/protocol.md §7.5: frames for a stream we do not know get RST(STREAM_CLOSED).
        self._queue_rst(
            stream_id, ErrorCode.STREAM_CLOSED, f"{frame_type.name} for stream {stream_id}, which is not open"
        )

    def _on_data(self, frame: DataFrame) -> None:
        if self._state not in (SessionState.OPEN, SessionState.DRAINING):
            check_receivable(self.role, self._state, FrameType.DATA)
        stream_id = frame.stream_id
        stream = self._streams.get(stream_id)
        if stream is None:
            self._unknown_stream(stream_id, FrameType.DATA)
            return
        size = len(frame.data)
        stream.ledger.answered = True
        try:
            # The state first: DATA after FIN is STREAM_CLOSED whatever its size.
            effect = stream.process(StreamInput.RECV_FIN if frame.end_stream else StreamInput.RECV_DATA)
            stream.window.record_received(size)
        except RemoteProtocolError as exc:
            self._reset_by_us(stream, exc)
            return
        self._data_bytes_received += size
        if frame.end_stream:
            stream.ledger.fin_received = True
        # The table's effect, acted on here rather than in _emit (the hot path): DATA and ENDED
        # both deliver the payload, if any; ENDED also ends the stream.
        if size:
            self._events.append(ev.DataReceived(stream_id, frame.data))
        if effect is StreamEffect.ENDED:
            self._events.append(ev.StreamEnded(stream_id))
        if stream.closed:
            self._streams.forget(stream)

    def _on_window(self, frame: WindowFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            closed = self._streams.closed_record(frame.stream_id)
            if closed is not None:  # credit for bytes of a stream we closed: they arrived
                closed.ledger.credited(frame.increment)
            # Else ignored, never answered with RST: a WINDOW the peer sent before our FIN (or
            # RST) reached it crosses that frame in flight and arrives after the stream closed
            # here, and an RST for it would reset the peer's side while it still delivers our
            # last bytes (docs/protocol.md §15). Credit for a stream that is gone grants nothing.
            return
        try:
            effect = stream.process(StreamInput.RECV_WINDOW)
            stream.window.add_send_credit(frame.increment)
        except RemoteProtocolError as exc:
            self._reset_by_us(stream, exc)
            return
        stream.ledger.credited(frame.increment)
        self._emit(effect, frame)

    def _on_open_ok(self, frame: OpenOkFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            self._unknown_stream(frame.stream_id, FrameType.OPEN_OK)
            return
        if stream.ledger.resumed and not stream.machine.allows(StreamInput.RECV_OPEN_OK):
            return  # resent at a resume in case it was lost: we had it already
        stream.ledger.answered = True
        try:
            effect = stream.process(StreamInput.RECV_OPEN_OK)
        except RemoteProtocolError as exc:
            self._reset_by_us(stream, exc)
            return
        self._emit(effect, frame)

    def _on_rst(self, frame: RstFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return  # never answer an RST with an RST
        stream.ledger.reset_received = True
        stream.ledger.answered = True
        effect = stream.process(StreamInput.RECV_RST)  # listed for every live state
        self._outbox.drop_stream(frame.stream_id)
        self._streams.forget(stream)
        self._emit(effect, frame)

    def _on_open(self, frame: OpenFrame) -> None:
        stream_id = frame.stream_id
        self._streams.claim_remote_id(stream_id)
        if self.goaway_sent is not None:
            self._refuse(frame, "GOAWAY sent: no new streams")
        elif self._streams.open_count(Opener.REMOTE) >= self.max_streams:
            self._refuse(frame, f"maxStreams {self.max_streams} reached")
        else:
            stream = self._streams.open_remote(
                stream_id, frame.bind_id, frame.origin, send_credit=self.peer_window_size
            )
            self._emit(stream.process(StreamInput.RECV_OPEN), frame)

    def _refuse(self, frame: OpenFrame, reason: str) -> None:
        self._queue_rst(frame.stream_id, ErrorCode.REFUSED, reason)
        # Counted; v2: remembered, so a refusal lost in a cut is sent again.
        self._streams.record_refusal(frame.stream_id, frame.bind_id, ErrorCode.REFUSED, truncate_text(reason))
        self._events.append(ev.StreamRefused(frame.stream_id, frame.bind_id, ErrorCode.REFUSED))

    def _on_goaway(self, frame: GoAwayFrame) -> None:
        self.goaway_received = frame.error_code
        self._events.append(ev.GoAwayReceived(frame.error_code, frame.reason))
        self._after_goaway()

    def _on_welcome(self, welcome: Welcome) -> None:
        if self._state is SessionState.RESUMING:
            self._on_resumed_welcome(welcome)
            return
        if welcome.protocol != self.config.subprotocol:
            raise RemoteProtocolError(
                f"WELCOME protocol {welcome.protocol!r} is not the negotiated "
                f"{self.config.subprotocol!r}"
            )
        self.welcome = welcome
        self.max_streams = welcome.max_streams
        self.peer_max_frame_size = min(welcome.max_frame, MAX_FRAME_SIZE_LIMIT)
        self.peer_window_size = welcome.window
        self._heartbeat.interval_s = welcome.heartbeat_ms / 1000
        self._set_state(SessionState.OPEN)
        self._events.append(ev.WelcomeReceived(welcome))

    def _on_resumed_welcome(self, welcome: Welcome) -> None:
        """Client, RESUMING: the server's answer to HELLO.resume."""
        previous = self.welcome
        if not welcome.resumed or previous is None or welcome.session_id != previous.session_id:
            raise RemoteProtocolError(
                "WELCOME does not resume the session we asked for", ErrorCode.RESUME_FAILED
            )
        self.welcome = welcome
        self._set_state(SessionState.OPEN)
        self._apply_resume(welcome.received or {})
        self._events.append(ev.WelcomeReceived(welcome))

    def _on_bind(self, frame: BindFrame) -> None:
        checked = validate_bind_values(frame.req_id, frame.kind, frame.port, frame.mode, frame.host_header)
        if isinstance(checked, str):
            code = ErrorCode.PROTOCOL_ERROR
            error = truncate_text(checked)
            self._outbox.queue_control(BindErrFrame(frame.req_id, code, error))
            self._events.append(ev.BindRejected(frame.req_id, code, error))
        else:
            self._events.append(ev.BindRequested(checked))
