"""The state of a session and what happens when the peer's frames arrive.

:class:`SessionCore` holds everything a :class:`~tunnel.protocol.session.Session` knows and
handles received frames; ``Session`` adds the driver contract and the commands. The split keeps
each file readable; only ``Session`` is public.

Receiving rules beyond the per-frame codec rules (wire-protocol.md §2-§6, docs/protocol.md):

* Direction and order: :func:`~tunnel.protocol.session_state.check_receivable`.
* OPEN: the opener's parity (client odd, server even) and strictly increasing ids, else a
  session error. Beyond ``max_streams`` streams opened by the peer and still open, or after we
  sent GOAWAY: RST(REFUSED) and a StreamRefused event.
* A frame other than OPEN or RST for a stream that is not open: RST(STREAM_CLOSED), no event;
  an RST for such a stream is ignored.
* Stream rule violations (table misses, DATA after FIN, flow control) reset that stream:
  RST(code) queued, ``StreamReset(remote=False)`` emitted. Never fatal to the session.
"""

from __future__ import annotations

from tunnel.protocol import events as ev
from tunnel.protocol.config import Role, SessionConfig
from tunnel.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, truncate_text
from tunnel.protocol.flow import Window
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
)
from tunnel.protocol.heartbeat import Heartbeat
from tunnel.protocol.messages import Hello, Welcome
from tunnel.protocol.outbox import Outbox
from tunnel.protocol.payloads import DEFAULT_WINDOW_SIZE, validate_bind_values
from tunnel.protocol.replay import MAX_CLOSED_RECORDS, MAX_CLOSED_REPLAY_SIZE
from tunnel.protocol.session_state import SessionState, check_receivable
from tunnel.protocol.stream import Opener, Stream, StreamEffect, StreamInput, StreamState

__all__ = ["SessionCore"]


class SessionCore:
    """State of one session and the handling of received frames (base of ``Session``).

    Args:
        config: the session's parameters.
    """

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.role = config.role
        self.version = config.version
        self.state = SessionState.IDLE
        #: Server: the HELLO received. Client: the HELLO sent.
        self.hello: Hello | None = None
        #: Client: the WELCOME received. Server: the WELCOME sent.
        self.welcome: Welcome | None = None
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
        self._streams: dict[int, Stream] = {}
        #: v2: closed streams remembered for a resume (replay.py), oldest first.
        self._closed: dict[int, Stream] = {}
        self._bytes_retransmitted = 0
        #: Streams of ours to open again after a resume, once the DATA queued before is out.
        self._pending_reopens: list[Stream] = []
        #: Server: the client has sent something since our last WELCOME, so it has that
        #: WELCOME (and its resume token). Until then the previous token must still work:
        #: a WELCOME lost in a cut would otherwise leave the client with a dead token.
        self.welcome_acknowledged = False
        self._open_counts = {Opener.LOCAL: 0, Opener.REMOTE: 0}
        self._heartbeat = Heartbeat(config.heartbeat_interval_s)
        # Client streams are odd, server streams even (wire-protocol.md §2).
        self._local_parity = 1 if config.role is Role.CLIENT else 0
        self._next_local_id = 1 if config.role is Role.CLIENT else 2
        self._last_remote_id = 0
        self._now = 0.0
        self._streams_opened_local = 0
        self._streams_opened_remote = 0
        self._streams_refused = 0
        self._data_bytes_received = 0
        self._messages_received = 0

    # -- stream bookkeeping -----------------------------------------------------------------------

    def _new_stream(self, stream_id: int, bind_id: int, opener: Opener, origin: str | None) -> Stream:
        window = Window(
            send_credit=self.peer_window_size, receive_window=self.config.receive_window_size
        )
        stream = Stream(stream_id, bind_id, opener, window, origin, keep_replay=self.version >= 2)
        self._streams[stream_id] = stream
        self._open_counts[opener] += 1
        return stream

    def _forget(self, stream: Stream) -> None:
        stream.machine.state = StreamState.CLOSED
        if self._streams.pop(stream.stream_id, None) is not None:
            self._open_counts[stream.opener] -= 1
            self._remember_closed(stream)

    def _remember_closed(self, stream: Stream) -> None:
        """v2: keep a closed stream's ledger for a resume (bounded; see replay.py)."""
        if self.version < 2:
            return
        self._closed[stream.stream_id] = stream
        while len(self._closed) > MAX_CLOSED_RECORDS:
            del self._closed[next(iter(self._closed))]
        if stream.ledger.replay_size:
            kept = sum(record.ledger.replay_size for record in self._closed.values())
            while kept > MAX_CLOSED_REPLAY_SIZE and len(self._closed) > 1:
                oldest = self._closed.pop(next(iter(self._closed)))
                kept -= oldest.ledger.replay_size

    @property
    def attached(self) -> bool:
        """False while DETACHED or RESUMING: frames then only go into the ledgers (resume.py)."""
        return self.state is not SessionState.DETACHED and self.state is not SessionState.RESUMING

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
            self._forget(stream)
            raise

    def _reset_by_us(self, stream: Stream, exc: RemoteProtocolError) -> None:
        """The peer broke a stream rule: RST(code) and StreamReset(remote=False)."""
        self._queue_rst(stream.stream_id, exc.error_code, str(exc))
        self._forget(stream)
        self._events.append(ev.StreamReset(stream.stream_id, exc.error_code, str(exc), False))

    def _close_streams(self) -> None:
        for stream in list(self._streams.values()):
            self._forget(stream)

    def _close_everything(self) -> None:
        self._close_streams()
        self._outbox.clear()
        self.state = SessionState.CLOSED

    def _fail(self, exc: RemoteProtocolError) -> None:
        """A session rule was broken: only GOAWAY(code, reason) stays queued; CLOSED."""
        self._close_everything()
        self._outbox.queue_control(GoAwayFrame(exc.error_code, truncate_text(str(exc))))
        self.goaway_sent = exc.error_code

    # -- queries --------------------------------------------------------------------------------

    def stream_ids(self) -> list[int]:
        """Ids of the streams not CLOSED, in opening order.

        Returns:
            The ids.
        """
        return list(self._streams)

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
        stream = self._streams.get(stream_id)
        return StreamState.CLOSED if stream is None else stream.state

    def stream_bind_id(self, stream_id: int) -> int | None:
        """The binding a live stream belongs to.

        Args:
            stream_id: the stream.

        Returns:
            Its bind id, or None for an unknown or closed stream.
        """
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.bind_id

    def _live_stream(self, stream_id: int, what: str) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(
                f"{what}: stream {stream_id} is not open",
                ErrorCode.STREAM_CLOSED,
                stream_id=stream_id,
            )
        return stream

    # -- received frames --------------------------------------------------------------------------

    def _check_allowed(self, frame_type: FrameType) -> None:
        check_receivable(self.role, self.state, frame_type)

    def _handle_frame(self, frame: Frame) -> None:
        if isinstance(frame, DataFrame):  # the hot path first
            self._on_data(frame)
            return
        self._check_allowed(frame.frame_type)
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
            self.state = SessionState.HELLO_RECEIVED
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
            if self.role is Role.SERVER:  # the echo is the acknowledgement (wire-protocol.md §2)
                self._outbox.queue_control(UnbindFrame(frame.bind_id))
            self._events.append(ev.UnbindReceived(frame.bind_id))

    def _unknown_stream(self, stream_id: int, frame_type: FrameType) -> None:
        # wire-protocol.md §5: frames for a stream we do not know get RST(STREAM_CLOSED).
        self._queue_rst(
            stream_id, ErrorCode.STREAM_CLOSED, f"{frame_type.name} for stream {stream_id}, which is not open"
        )

    def _on_data(self, frame: DataFrame) -> None:
        if self.state not in (SessionState.OPEN, SessionState.DRAINING):
            self._check_allowed(FrameType.DATA)
        stream_id = frame.stream_id
        stream = self._streams.get(stream_id)
        if stream is None:
            self._unknown_stream(stream_id, FrameType.DATA)
            return
        size = len(frame.data)
        stream.ledger.answered = True
        try:
            # The state first: DATA after FIN is STREAM_CLOSED whatever its size.
            stream.process(StreamInput.RECV_FIN if frame.end_stream else StreamInput.RECV_DATA)
            stream.window.record_received(size)
        except RemoteProtocolError as exc:
            self._reset_by_us(stream, exc)
            return
        self._data_bytes_received += size
        if frame.end_stream:
            stream.ledger.fin_received = True
        if size:
            self._events.append(ev.DataReceived(stream_id, frame.data))
        if frame.end_stream:
            self._events.append(ev.StreamEnded(stream_id))
        if stream.closed:
            self._forget(stream)

    def _on_window(self, frame: WindowFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            closed = self._closed.get(frame.stream_id)
            if closed is not None:  # credit for bytes of a stream we closed: they arrived
                closed.ledger.credited(frame.increment)
            # Else ignored, never answered with RST: a WINDOW the peer sent before our FIN (or
            # RST) reached it crosses that frame in flight and arrives after the stream closed
            # here, and an RST for it would reset the peer's side while it still delivers our
            # last bytes (docs/protocol.md §15). Credit for a stream that is gone grants nothing.
            return
        try:
            stream.process(StreamInput.RECV_WINDOW)
            stream.window.add_send_credit(frame.increment)
        except RemoteProtocolError as exc:
            self._reset_by_us(stream, exc)
            return
        stream.ledger.credited(frame.increment)
        self._events.append(ev.WindowUpdated(frame.stream_id, frame.increment))

    def _on_open_ok(self, frame: OpenOkFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            self._unknown_stream(frame.stream_id, FrameType.OPEN_OK)
            return
        if stream.ledger.resumed and not stream.machine.allows(StreamInput.RECV_OPEN_OK):
            return  # resent at a resume in case it was lost: we had it already
        stream.ledger.answered = True
        try:
            stream.process(StreamInput.RECV_OPEN_OK)
        except RemoteProtocolError as exc:
            self._reset_by_us(stream, exc)
            return
        self._events.append(ev.StreamAccepted(frame.stream_id))

    def _on_rst(self, frame: RstFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return  # never answer an RST with an RST
        stream.ledger.reset_received = True
        stream.ledger.answered = True
        stream.process(StreamInput.RECV_RST)  # listed for every live state
        self._outbox.drop_stream(frame.stream_id)
        self._forget(stream)
        self._events.append(ev.StreamReset(frame.stream_id, frame.error_code, frame.reason, True))

    def _on_open(self, frame: OpenFrame) -> None:
        stream_id = frame.stream_id
        peer = "server" if self.role is Role.CLIENT else "client"
        if stream_id % 2 == self._local_parity:
            parity = "even" if peer == "server" else "odd"
            raise RemoteProtocolError(f"OPEN of stream {stream_id}: the {peer} opens {parity} ids")
        if stream_id <= self._last_remote_id:
            raise RemoteProtocolError(
                f"OPEN of stream {stream_id}: ids must increase (last was {self._last_remote_id})"
            )
        self._last_remote_id = stream_id
        if self.goaway_sent is not None:
            self._refuse(frame, "GOAWAY sent: no new streams")
        elif self._open_counts[Opener.REMOTE] >= self.max_streams:
            self._refuse(frame, f"maxStreams {self.max_streams} reached")
        else:
            stream = self._new_stream(stream_id, frame.bind_id, Opener.REMOTE, frame.origin)
            stream.process(StreamInput.RECV_OPEN)
            self._streams_opened_remote += 1
            self._events.append(ev.StreamOpened(stream_id, frame.bind_id, frame.origin))

    def _refuse(self, frame: OpenFrame, reason: str) -> None:
        self._queue_rst(frame.stream_id, ErrorCode.REFUSED, reason)
        if self.version >= 2:  # remembered, so a refusal lost in a cut is sent again
            record = Stream(frame.stream_id, frame.bind_id, Opener.REMOTE, Window(send_credit=0, receive_window=self.config.receive_window_size))
            record.machine.state = StreamState.CLOSED
            record.ledger.reset_sent = (ErrorCode.REFUSED, truncate_text(reason))
            self._remember_closed(record)
        self._streams_refused += 1
        self._events.append(ev.StreamRefused(frame.stream_id, frame.bind_id, ErrorCode.REFUSED))

    def _on_goaway(self, frame: GoAwayFrame) -> None:
        self.goaway_received = frame.error_code
        self._events.append(ev.GoAwayReceived(frame.error_code, frame.reason))
        if self.state is SessionState.OPEN:
            self.state = SessionState.DRAINING
        elif self.state is not SessionState.DRAINING:
            self._close_streams()
            self.state = SessionState.CLOSED

    def _on_resumed_welcome(self, welcome: Welcome) -> None:
        raise NotImplementedError  # ResumableSession

    def _on_welcome(self, welcome: Welcome) -> None:
        if self.state is SessionState.RESUMING:
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
        self.state = SessionState.OPEN
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
