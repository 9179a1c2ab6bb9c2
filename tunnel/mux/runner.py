"""The gevent driver of one protocol :class:`~tunnel.protocol.Session`, the same for both ends.

Theory of operation
-------------------
Three greenlets serve the connection, all in the runner's :class:`gevent.pool.Group`:

* the **reader** takes one WebSocket message at a time from the transport, feeds it to the
  session and dispatches the resulting events. It never blocks on anything but the transport:
  stream data is appended to a pump's queue, credit updates set an event (docs/protocol.md §8).
* the **writer** is the only greenlet that writes to the transport. Whoever changes the session
  (reader, pumps, timer, an admin call) calls :meth:`SessionRunner.flush`, which wakes it; it then
  drains ``messages_to_send`` in bounded batches so control frames queued meanwhile go first.
* the **timer** calls ``handle_timer`` at the session's next deadline (heartbeat, docs/protocol.md §10).

Calls into a Session never yield, so each is atomic under gevent; only transport writes need
serialising, and the single writer does that.

Per-stream pumps (:mod:`tunnel.mux.pump`) live in the same group; the runner is their
:class:`~tunnel.mux.pump.StreamOwner`. A greenlet that dies with an unexpected exception (the
reader, the writer, the timer, a pump, or anything the owner started with :meth:`spawn`) fails
the whole session (structured concurrency): it is logged and the connection ends with
``INTERNAL_ERROR``. :meth:`run` returns why the connection ended; the owner then decides what
happens to the streams: :meth:`close_streams`, or, for a parked v2 session, nothing until a new
connection is :meth:`attach` ed and :meth:`run` again (the delegate decides in
``connection_ended``).

The command surface
-------------------
The runner is the only way the code above it (server/, client/) reaches the protocol session:
it holds the :class:`~tunnel.protocol.Session` privately and offers its commands
(:meth:`open_stream`, :meth:`accept_stream`, :meth:`send_welcome`, :meth:`send_bind`...) and the
few queries the owners need (:attr:`state`, :meth:`statistics`...). **Every command flushes**:
it calls :meth:`flush`, which wakes the writer when the session has something to send, so no
caller can leave a frame queued and unsent. This is the one place that rule is written down.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol

import gevent
from gevent import Greenlet
from gevent.event import AsyncResult, Event
from gevent.pool import Group

from tunnel.mux.pump import StreamPump, read_size_for
from tunnel.mux.transport import (
    CloseCode,
    ConnectionClosed,
    MessageTooBig,
    SendTimeout,
    TextMessageReceived,
    Transport,
    TransportError,
)
from tunnel.protocol import (
    BindRequest,
    BindResult,
    ConnectionDead,
    DataReceived,
    ErrorCode,
    Event as ProtocolEvent,
    GoAwayFrame,
    Hello,
    RemoteProtocolError,
    Session,
    SessionState,
    SessionStatistics,
    StreamEnded,
    StreamOffsets,
    StreamOpened,
    StreamReset,
    Welcome,
    WindowUpdated,
    encode_frame,
)

log = logging.getLogger(__name__)

#: How much the writer takes from the session per transport write: small enough that control
#: frames queued in the meantime overtake bulk data quickly, large enough to amortise syscalls.
WRITE_BATCH_SIZE = 1 << 20


class EndKind(enum.Enum):
    """Why a connection ended."""

    PEER_CLOSED = "peer_closed"  # close frame, EOF or reset from the peer
    PROTOCOL_ERROR = "protocol_error"  # the peer broke the protocol (GOAWAY sent)
    MESSAGE_TOO_BIG = "message_too_big"  # close 1009 already sent by the transport
    DEAD = "dead"  # heartbeat: nothing received for 3 x interval
    SEND_FAILED = "send_failed"  # a write failed or timed out
    LOCAL_CLOSE = "local_close"  # we closed it (GOAWAY, shutdown, admin, Ctrl-C)
    SUPERSEDED = "superseded"  # the session resumed on another connection (GOAWAY sent)
    HANDOFF = "handoff"  # a HELLO.resume: the transport moves to the parked session's runner
    INTERNAL_ERROR = "internal_error"  # a bug: a greenlet died unexpectedly


@dataclass(frozen=True, slots=True)
class ConnectionEnd:
    """How and why :meth:`SessionRunner.run` returned."""

    kind: EndKind
    detail: str = ""
    close_code: int | None = None  # the WebSocket close code received, when there was one
    error_code: int | None = None  # the protocol error code, for PROTOCOL_ERROR / LOCAL_CLOSE
    parked: bool = False  # the delegate kept the session for a resume (set by SessionRunner.end)


class RunnerDelegate(Protocol):
    """What the owner of a runner (the kit's session, the client) supplies."""

    def stream_opened(self, event: StreamOpened, pump: StreamPump) -> None:
        """The peer opened a stream: connect ``pump`` to a local socket (in a greenlet spawned
        with :meth:`SessionRunner.spawn`) and :meth:`SessionRunner.accept_stream`, or reset it."""

    def stream_finished(self, pump: StreamPump) -> None:
        """A pump closed its local socket (normally or on reset): release what it held."""

    def event_received(self, event: ProtocolEvent) -> None:
        """Every other event (handshake, bindings, GOAWAY, resets, pongs...)."""

    def connection_ended(self, end: ConnectionEnd) -> bool:
        """Called once, synchronously, the moment the connection is declared over.

        Returns:
            True to keep the session for a resume (the runner then detaches it); False to close
            it (the runner then calls ``connection_lost()`` on it).
        """


#: How a runner makes the pump of a new stream (StreamPump, or a subclass such as HTTP mode's).
PumpClass = Callable[..., StreamPump]


class SessionRunner:
    """Drives one :class:`Session` over one :class:`Transport` (and, after a resume, the next)."""

    def __init__(
        self,
        session: Session,
        transport: Transport,
        delegate: RunnerDelegate,
        *,
        name: str = "session",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self.transport = transport
        self.delegate = delegate
        self.name = name
        self.clock = clock
        self._group = Group()
        self._pumps: dict[int, StreamPump] = {}
        self._wake_writer = Event()
        self._writer_idle = Event()
        self._writer_idle.set()
        self._slot_freed = Event()
        self._streams_drained = Event()
        self._streams_drained.set()
        self._ended: AsyncResult[ConnectionEnd] = AsyncResult()
        self._run_id = 0  # bumped by attach(): a superseded run's greenlets see they are stale
        self.detached = False  # the last connection ended and the session waits for a resume

    # -- structured concurrency --------------------------------------------------------------

    def spawn(self, func: Callable[..., object], *args: object, **kwargs: object) -> Greenlet[..., object]:
        """Spawn ``func`` in the session's group; an unexpected exception fails the session."""
        greenlet: Greenlet[..., object] = self._group.spawn(func, *args, **kwargs)
        greenlet.link_exception(self._greenlet_failed)
        return greenlet

    def _greenlet_failed(self, greenlet: Greenlet[..., object]) -> None:
        exc = greenlet.exception
        log.error("%s: greenlet %r died: %r", self.name, greenlet, exc, exc_info=exc)
        self.end(ConnectionEnd(EndKind.INTERNAL_ERROR, f"internal error: {exc!r}"))

    # -- queries ---------------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The protocol session's state."""
        return self._session.state

    @property
    def version(self) -> int:
        return self._session.version

    @property
    def welcome(self) -> Welcome | None:
        """The WELCOME sent (kit) or received (client), the latest after a resume."""
        return self._session.welcome

    @property
    def welcome_acknowledged(self) -> bool:
        """The client acknowledged the last WELCOME (so it holds that one's resume token)."""
        return self._session.welcome_acknowledged

    @property
    def closed(self) -> bool:
        """The protocol session is over (CLOSED): nothing more will be sent or received."""
        return self._session.state is SessionState.CLOSED

    @property
    def closing(self) -> bool:
        """A GOAWAY went either way: the session takes no new work and is not resumable."""
        session = self._session
        return session.goaway_sent is not None or session.goaway_received is not None

    @property
    def goaway_sent(self) -> bool:
        return self._session.goaway_sent is not None

    @property
    def max_streams(self) -> int:
        return self._session.max_streams

    @property
    def stream_count(self) -> int:
        """Streams with a pump (a local side) right now."""
        return len(self._pumps)

    def can_open_stream(self) -> bool:
        return self._session.can_open_stream()

    def outbound_credit(self, stream_id: int) -> int:
        return self._session.outbound_credit(stream_id)

    def statistics(self) -> SessionStatistics:
        return self._session.statistics()

    # -- the connection ------------------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        """Serve a new connection for the same session (a resume): call :meth:`run` next."""
        self._run_id += 1
        self.transport = transport
        self._ended = AsyncResult()
        self._wake_writer.clear()
        self._writer_idle.set()
        self.detached = False

    def run(self) -> ConnectionEnd:
        """Serve the connection until it ends; return why. Streams are left as they are."""
        run_id = self._run_id
        ended = self._ended
        reader = self.spawn(self._reader_loop, run_id)
        others = [self.spawn(self._writer_loop, run_id), self.spawn(self._timer_loop, run_id)]
        self._wake_writer.set()
        end = ended.get()
        assert end is not None
        current = gevent.getcurrent()
        for greenlet in others:
            if greenlet is not current:
                greenlet.kill(block=False)
        if end.kind is EndKind.HANDOFF:
            reader.join()  # it returns by itself; nobody else may read this transport meanwhile
        elif reader is not current:
            reader.kill(block=False)
        return end

    def wake_streams(self) -> None:
        """After a resume: credit was recomputed; let every pump and slot waiter look again."""
        for pump in list(self._pumps.values()):
            pump.credit_changed()
        self._slot_freed.set()

    def end(self, end: ConnectionEnd) -> None:
        """End the connection (first caller wins). Does not block."""
        if self._ended.ready():
            return
        if self.delegate.connection_ended(end):
            self._session.detach()
            self.detached = True
            end = replace(end, parked=True)
        else:
            self._session.connection_lost()
        self._ended.set(end)
        if end.kind is EndKind.HANDOFF:
            return  # the transport lives on under another runner
        if end.kind is EndKind.DEAD or end.kind is EndKind.SEND_FAILED:
            self.transport.abort()
        elif end.kind is EndKind.PROTOCOL_ERROR:
            self.transport.close(CloseCode.PROTOCOL_ERROR, end.detail[:120])
        elif end.kind is EndKind.INTERNAL_ERROR:
            self.transport.close(CloseCode.INTERNAL_ERROR, "internal error")
        else:  # PEER_CLOSED, LOCAL_CLOSE (already closed with its code: close is idempotent)
            self.transport.close(CloseCode.NORMAL, "")

    def _end_run(self, run_id: int, end: ConnectionEnd) -> None:
        """``end`` from a greenlet of run ``run_id``: ignored once that run is over (a stale
        greenlet of a superseded connection must not end the connection that replaced it)."""
        if run_id == self._run_id:
            self.end(end)

    @property
    def ended(self) -> bool:
        return self._ended.ready()

    def supersede(self, reason: str) -> None:
        """The session resumed on another connection while this one still looked alive: tell
        the old wire with GOAWAY(SUPERSEDED), straight onto it (the session itself must not
        enter DRAINING: it lives on), and end this connection."""
        try:
            self.transport.send_messages([encode_frame(GoAwayFrame(ErrorCode.SUPERSEDED, reason))])
        except TransportError:
            pass  # that connection is dead anyway, which is why the client came back
        self.end(ConnectionEnd(EndKind.SUPERSEDED, reason, error_code=int(ErrorCode.SUPERSEDED)))

    def flush(self) -> None:
        """Wake the writer when the session has something to send."""
        if self._session.has_data_to_send():
            self._wake_writer.set()

    def wait_flushed(self, timeout_s: float) -> bool:
        """Wait until the writer has handed everything queued so far to the transport."""
        if not self._session.has_data_to_send() and self._writer_idle.is_set():
            return True
        self._writer_idle.clear()
        self._wake_writer.set()
        return bool(self._writer_idle.wait(timeout_s))

    def close_gracefully(
        self, error_code: int, reason: str, *, drain_s: float, ws_close_code: int = CloseCode.NORMAL
    ) -> None:
        """GOAWAY, let open streams finish for up to ``drain_s``, reset the rest, close.

        Blocks the calling greenlet for at most about ``drain_s`` + one write timeout.
        """
        if self.ended:
            return
        self._session.send_goaway(error_code, reason)
        self.flush()
        if self._pumps:
            self._streams_drained.clear()
            if self._pumps:
                self._streams_drained.wait(drain_s)
        for stream_id in list(self._pumps):
            self._session.reset_stream(stream_id, error_code, reason)
        self.wait_flushed(drain_s + 1.0)
        self.transport.close(ws_close_code, reason[:120])
        self.end(ConnectionEnd(EndKind.LOCAL_CLOSE, reason, error_code=error_code))

    def _reader_loop(self, run_id: int) -> None:
        session = self._session
        transport = self.transport
        while True:
            if self._run_id != run_id or self._ended.ready():
                return  # this connection is over (ended, or superseded by a resume)
            try:
                message = transport.receive_message()
            except ConnectionClosed as exc:
                self._end_run(run_id, ConnectionEnd(EndKind.PEER_CLOSED, str(exc), close_code=exc.code))
                return
            except TextMessageReceived:
                self._protocol_error(run_id, ErrorCode.PROTOCOL_ERROR, "text message received")
                return
            except MessageTooBig as exc:
                self._end_run(
                    run_id,
                    ConnectionEnd(EndKind.MESSAGE_TOO_BIG, str(exc), close_code=CloseCode.MESSAGE_TOO_BIG),
                )
                return
            except TransportError as exc:
                self._end_run(run_id, ConnectionEnd(EndKind.PEER_CLOSED, str(exc)))
                return
            if self._run_id != run_id or self._ended.ready():
                # The connection ended (or was superseded) while this message was read: it
                # belongs to nobody now. Fed to a detached session it would close it.
                return
            try:
                session.receive_message(message, self.clock())
            except RemoteProtocolError as exc:
                self.dispatch(session.events_received())
                self.wait_flushed(1.0)
                self._end_run(
                    run_id,
                    ConnectionEnd(EndKind.PROTOCOL_ERROR, str(exc), error_code=int(exc.error_code)),
                )
                return
            self.dispatch(session.events_received())
            self.flush()

    def _protocol_error(self, run_id: int, code: ErrorCode, reason: str) -> None:
        self._session.send_goaway(code, reason)
        self.wait_flushed(1.0)
        self._end_run(run_id, ConnectionEnd(EndKind.PROTOCOL_ERROR, reason, error_code=int(code)))

    def _writer_loop(self, run_id: int) -> None:
        session = self._session
        transport = self.transport
        wake = self._wake_writer
        idle = self._writer_idle
        while True:
            wake.wait()
            if self._run_id != run_id:
                # A superseded run's writer leaves the wake-up to the current run's writer, which
                # shares the event: clearing it here would hold the new run's frames back.
                return
            wake.clear()
            while session.has_data_to_send():
                messages = session.messages_to_send(WRITE_BATCH_SIZE)
                try:
                    transport.send_messages(messages)
                except SendTimeout as exc:
                    self._end_run(run_id, ConnectionEnd(EndKind.SEND_FAILED, f"send timed out: {exc}"))
                    return
                except TransportError as exc:
                    self._end_run(run_id, ConnectionEnd(EndKind.SEND_FAILED, f"send failed: {exc}"))
                    return
            idle.set()

    def _timer_loop(self, run_id: int) -> None:
        session = self._session
        while self._run_id == run_id:
            now = self.clock()
            deadline = session.next_deadline()
            # No deadline yet (before WELCOME): look again soon, so the first heartbeat is not
            # a whole second late with a short interval.
            delay_s = 0.05 if deadline is None else min(max(deadline - now, 0.0), 1.0)
            gevent.sleep(delay_s)
            if self._run_id != run_id or self._ended.ready():
                return
            session.handle_timer(self.clock())
            events = session.events_received()
            if events:
                self.dispatch(events)
            self.flush()

    # -- events ------------------------------------------------------------------------------

    def dispatch(self, events: list[ProtocolEvent]) -> None:
        """Route session events: stream data to pumps, the rest to the delegate."""
        pumps = self._pumps
        for event in events:
            if isinstance(event, DataReceived):
                pump = pumps.get(event.stream_id)
                if pump is not None:
                    pump.deliver(event.data)
            elif isinstance(event, WindowUpdated):
                pump = pumps.get(event.stream_id)
                if pump is not None:
                    pump.credit_changed()
            elif isinstance(event, StreamEnded):
                pump = pumps.get(event.stream_id)
                if pump is not None:
                    pump.deliver_eof()
            elif isinstance(event, StreamOpened):
                pump = self._new_pump(event.stream_id, StreamPump)
                self.delegate.stream_opened(event, pump)
            elif isinstance(event, StreamReset):
                pump = pumps.get(event.stream_id)
                if pump is not None:
                    pump.reset(event.error_code, event.reason)
                self.delegate.event_received(event)
            elif isinstance(event, ConnectionDead):
                self.delegate.event_received(event)
                self.end(ConnectionEnd(EndKind.DEAD, f"nothing received for {event.silent_s:.1f} s"))
            else:
                self.delegate.event_received(event)

    # -- streams -------------------------------------------------------------------------------

    def _new_pump(self, stream_id: int, pump_class: PumpClass) -> StreamPump:
        pump = pump_class(
            self,
            stream_id,
            read_size=read_size_for(self._session.peer_window_size),
            on_finished=self._pump_finished,
        )
        self._pumps[stream_id] = pump
        self._streams_drained.clear()
        return pump

    def _pump_finished(self, pump: StreamPump) -> None:
        if self._pumps.get(pump.stream_id) is pump:
            del self._pumps[pump.stream_id]
        self._slot_freed.set()
        if not self._pumps:
            self._streams_drained.set()
        self.delegate.stream_finished(pump)

    def wait_stream_slot(self, timeout_s: float | None = None) -> bool:
        """Block until this side may open another stream (``max_streams``) or the connection ends."""
        while not self._session.can_open_stream():
            if self.ended:
                return False
            self._slot_freed.clear()
            if not self._slot_freed.wait(timeout_s):
                return False
        return True

    def wake_slot_waiters(self) -> None:
        """Let :meth:`wait_stream_slot` callers re-check (e.g. after the connection ended)."""
        self._slot_freed.set()

    def close_streams(self) -> None:
        """Abort every stream's local socket (the session is over)."""
        for pump in list(self._pumps.values()):
            pump.reset()
        self.wake_slot_waiters()

    def stop(self) -> None:
        """Kill every greenlet of the session and wait for them (after the connection ended)."""
        self.close_streams()
        self._group.kill(block=True, timeout=5)

    # -- commands: each changes the session, then flushes --------------------------------------

    def open_stream(
        self, bind_id: int, origin: str | None = None, *, pump_class: PumpClass = StreamPump
    ) -> StreamPump:
        """Open a stream of ours; the caller then :meth:`StreamPump.connect` s its socket.

        Args:
            pump_class: what moves the stream's bytes (HTTP mode passes its HttpStream).
        """
        stream_id = self._session.open_stream(bind_id, origin)
        pump = self._new_pump(stream_id, pump_class)
        self.flush()
        return pump

    def accept_stream(self, stream_id: int) -> None:
        """OPEN_OK for a stream the peer opened, once its local socket is connected."""
        self._session.accept_stream(stream_id)
        self.flush()

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        self._session.send_data(stream_id, data, end_stream=end_stream)
        self._wake_writer.set()  # DATA is always queued: no need to ask

    def acknowledge_data(self, stream_id: int, size: int, *, drained: bool = False) -> None:
        self._session.acknowledge_data(stream_id, size, drained=drained)
        self.flush()

    def reset_stream(self, stream_id: int, code: int, reason: str = "") -> None:
        self._session.reset_stream(stream_id, code, reason)
        self.flush()

    def send_hello(self, hello: Hello) -> None:
        self._session.send_hello(hello)
        self.flush()

    def send_welcome(self, welcome: Welcome) -> None:
        self._session.send_welcome(welcome)
        self.flush()

    def send_bind(self, request: BindRequest) -> None:
        self._session.send_bind(request)
        self.flush()

    def send_bind_ok(self, result: BindResult) -> None:
        self._session.send_bind_ok(result)
        self.flush()

    def send_bind_error(self, req_id: int, code: int, error: str) -> None:
        self._session.send_bind_error(req_id, code, error)
        self.flush()

    def send_resume(self, token: str, client: str) -> None:
        """Client: HELLO.resume for the detached session; call :meth:`attach` and :meth:`run`
        with the new connection next (the writer sends it then)."""
        self._session.send_resume(token, client)
        self.flush()

    def resume(self, transport: Transport, welcome: Welcome, peer_received: dict[int, StreamOffsets]) -> None:
        """Kit: serve the detached session on ``transport``, which resumed it: WELCOME(resumed),
        then what the client has not received. Call :meth:`wake_streams` and :meth:`run` next."""
        self.attach(transport)
        self._session.resume(welcome, peer_received, self.clock())
        self.dispatch(self._session.events_received())
        self.flush()

    def connection_lost(self) -> None:
        """Give the detached session up: every stream is closed, nothing is sent any more."""
        self._session.connection_lost()
