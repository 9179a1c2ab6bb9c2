"""One tunnel session on the kit: handshake, bindings, streams and the permits it holds.

A :class:`KitSession` is the :class:`~tunnel.mux.runner.RunnerDelegate` of the kit side. It is
created when a WebSocket has been accepted; a v1 session ends with its connection, a v2 session
may be parked and resumed on later connections (server/resumption.py). Everything it spawns
lives in its runner's group.

Permits: the WebSocket holds one from :meth:`Kit.serve`; each EXPOSE listener one; each stream's
local socket one. ``permits_held`` counts them and changes only next to the semaphore call, with
no yield in between (see :mod:`tunnel.server.registry`).
"""

from __future__ import annotations

import enum
import hmac
import secrets
import logging
import time
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event as GeventEvent

from tunnel.mux.pump import StreamPump
from tunnel.mux.runner import WS_POLICY_VIOLATION, ConnectionEnd, EndKind, SessionRunner
from tunnel.protocol import (
    BindAccepted,
    BindKind,
    BindMode,
    BindRejected,
    BindRequest,
    BindRequested,
    BindResult,
    ErrorCode,
    Event,
    GoAwayReceived,
    HelloReceived,
    PongReceived,
    ResumeRequest,
    SessionState as ProtocolSessionState,
    StreamAccepted,
    StreamOpened,
    StreamRefused,
    StreamReset,
    UnbindReceived,
    UpstreamError,
)
from tunnel.server import bindings as binding_io
from tunnel.server import http_mode
from tunnel.server import resumption
from tunnel.server.bindings import Binding
from tunnel.server.registry import PortInUse

if TYPE_CHECKING:
    from tunnel.server.http_mode import HttpStream
    from tunnel.server.kit import Kit

log = logging.getLogger("tunnel.session")


class SessionState(enum.Enum):
    """What the admin views show as ``state``."""

    HANDSHAKE = "handshake"
    ACTIVE = "active"
    ORPHANED = "orphaned"
    CLOSING = "closing"
    CLOSED = "closed"


def new_session_id() -> str:
    """``"sess_"`` + 12 lowercase hex digits from a CSPRNG (docs/protocol.md §5.2)."""
    return "sess_" + secrets.token_hex(6)


class KitSession:
    """The kit's side of one tunnel session."""

    def __init__(
        self,
        kit: Kit,
        runner_factory: type[SessionRunner],
        *,
        protocol: str,
        peer_address: str,
        user_agent: str,
    ) -> None:
        self.kit = kit
        self.settings = kit.settings
        self.session_id = new_session_id()
        self.protocol = protocol
        self.peer_address = peer_address
        self.user_agent = user_agent
        self.client_name = ""
        self.created_at = time.time()
        self.state = SessionState.HANDSHAKE
        self.bindings: dict[int, Binding] = {}
        self.permits_held = 0
        self.rtt_s: float | None = None
        self.close_reason = ""
        self.admin_killed = False
        # Resume (server/resumption.py)
        self.resume_tokens: list[str] = []
        self.parked_at: float | None = None
        self.expiry: gevent.Greenlet[..., object] | None = None
        self.attached = GeventEvent()  # set while a connection serves it; accept loops wait on it
        self.attached.set()
        self.resume_target: KitSession | None = None  # this connection's HELLO resumes that one
        self.pending_resume: ResumeRequest | None = None
        self._stream_permits: set[int] = set()  # stream ids whose local socket holds a permit
        # HTTP mode: live streams of http bindings, so a StreamReset's reason reaches its 502 page.
        self.http_streams: dict[int, HttpStream] = {}
        self._welcomed = GeventEvent()
        self._open_started: dict[int, float] = {}
        self.runner: SessionRunner | None = None
        self._runner_factory = runner_factory

    # -- permits ---------------------------------------------------------------------------------

    def take_permit(self, *, wait: bool = False) -> bool:
        budget = self.kit.registry.budget
        ok = budget.acquire() if wait else budget.try_acquire()
        if ok:
            self.permits_held += 1  # no yield between acquire and this line (registry.py)
        return ok

    def give_permit(self) -> None:
        self.permits_held -= 1
        self.kit.registry.budget.release()

    # -- views -------------------------------------------------------------------------------------

    @property
    def active_streams(self) -> int:
        return 0 if self.runner is None else self.runner.session.statistics().active_streams

    # -- handshake -------------------------------------------------------------------------------

    def watch_handshake(self) -> None:
        """End the connection if no valid HELLO arrives in time (docs/protocol.md §4)."""
        assert self.runner is not None
        if self._welcomed.wait(self.settings.handshake_timeout_s):
            return
        self.kit.metrics.handshake_failures_total.labels(reason="timeout").inc()
        log.info("session refused: peer=%s reason=handshake-timeout", self.peer_address)
        self.runner.close_gracefully(
            ErrorCode.TIMEOUT,
            f"no HELLO within {self.settings.handshake_timeout_s:g} s",
            drain_s=0.0,
            ws_close_code=WS_POLICY_VIOLATION,
        )

    def _hello(self, event: HelloReceived) -> None:
        assert self.runner is not None
        if self.runner.session.state is not ProtocolSessionState.HELLO_RECEIVED:
            return  # e.g. HELLO and GOAWAY in one message: the client already left
        hello = event.hello
        if not self._token_ok(hello.token):
            self.kit.metrics.handshake_failures_total.labels(reason="auth").inc()
            log.info("session refused: peer=%s reason=invalid-token", self.peer_address)
            self.runner.spawn(
                self.runner.close_gracefully,
                ErrorCode.AUTH_FAILED,
                "invalid token",
                drain_s=0.0,
                ws_close_code=WS_POLICY_VIOLATION,
            )
            return
        if hello.resume is not None:
            target = resumption.find_target(self, hello.resume)
            if target is None:
                resumption.refuse(self, hello)
                return
            # Hand this connection over to the parked session (Kit.serve does the rest).
            self.resume_target = target
            self.pending_resume = hello.resume
            self._welcomed.set()
            self.runner.end(ConnectionEnd(EndKind.HANDOFF, f"resumes {target.session_id}"))
            return
        self.client_name = hello.client
        self.runner.session.send_welcome(resumption.build_welcome(self, resumed=False))
        self.state = SessionState.ACTIVE
        self._welcomed.set()
        self.kit.metrics.sessions_opened_total.inc()
        log.info(
            "session opened: id=%s peer=%s protocol=%s client=%r",
            self.session_id,
            self.peer_address,
            self.protocol,
            hello.client,
        )

    def _token_ok(self, token: str) -> bool:
        if not token:
            return False
        candidate = token.encode("utf-8", "surrogateescape")
        ok = False
        for accepted in self.settings.tokens:
            # Compare against every token so timing says nothing about which one matched.
            ok |= hmac.compare_digest(candidate, accepted.encode("utf-8"))
        return ok

    # -- RunnerDelegate ------------------------------------------------------------------------------

    def event_received(self, event: Event) -> None:
        if isinstance(event, HelloReceived):
            self._hello(event)
        elif isinstance(event, BindRequested):
            self._bind(event.request)
        elif isinstance(event, BindRejected):
            log.info(
                "bind refused: id=%s req=%d code=%d error=%r",
                self.session_id,
                event.req_id,
                event.error_code,
                event.error,
            )
        elif isinstance(event, UnbindReceived):
            self._unbind(event.bind_id)
        elif isinstance(event, StreamAccepted):
            started = self._open_started.pop(event.stream_id, None)
            if started is not None:
                self.kit.metrics.stream_open_latency_seconds.observe(time.monotonic() - started)
        elif isinstance(event, StreamRefused):
            self.kit.metrics.streams_refused_total.labels(reason=_code_name(event.error_code)).inc()
        elif isinstance(event, StreamReset):
            self._open_started.pop(event.stream_id, None)
            # HTTP mode: the runner already called reset(); hand over the reason (the 502 page).
            http_stream = self.http_streams.pop(event.stream_id, None)
            if http_stream is not None:
                http_stream.note_reset(event.error_code, event.reason)
        elif isinstance(event, PongReceived):
            self.rtt_s = event.rtt_s
        elif isinstance(event, GoAwayReceived):
            self.close_reason = f"client goaway {_code_name(event.error_code)}"
            self.kit.metrics.goaways_received_total.labels(code=_code_name(event.error_code)).inc()
        elif isinstance(event, BindAccepted):  # pragma: no cover - client-side event
            pass

    def stream_opened(self, event: StreamOpened, pump: StreamPump) -> None:
        """A PULL stream from the client: dial the pull host."""
        assert self.runner is not None
        binding = self.bindings.get(event.bind_id)
        if binding is None or binding.kind is not BindKind.PULL or binding.closed:
            self._refuse(pump, ErrorCode.NOT_FOUND, f"unknown PULL binding {event.bind_id}")
            return
        if not self.take_permit():
            self.kit.metrics.fd_permit_exhausted_total.labels(path="pull").inc()
            self._refuse(pump, ErrorCode.RESOURCE_EXHAUSTED, "no file descriptor permit left")
            return
        self._stream_permits.add(event.stream_id)
        binding.streams_opened += 1
        self.kit.metrics.streams_opened_total.labels(kind="pull").inc()
        self.runner.spawn(self._dial_pull, binding, pump)

    def _refuse(self, pump: StreamPump, code: ErrorCode, reason: str) -> None:
        assert self.runner is not None
        self.kit.metrics.streams_refused_total.labels(reason=code.name.lower()).inc()
        self.runner.reset_stream(pump.stream_id, code, reason)
        pump.reset()

    def _dial_pull(self, binding: Binding, pump: StreamPump) -> None:
        assert self.runner is not None
        host = self.settings.pull_host
        try:
            sock = binding_io.dial(host, binding.port, timeout_s=self.settings.connect_timeout_s)
        except UpstreamError as exc:
            self.kit.metrics.streams_refused_total.labels(reason="connect_failed").inc()
            self.runner.reset_stream(pump.stream_id, exc.error_code, str(exc))
            pump.reset()
            return
        if pump.finished:  # reset by the client while we dialled
            sock.close()
            return
        pump.connect(sock)
        self.runner.session.accept_stream(pump.stream_id)
        self.runner.flush()

    def connection_ended(self, end: ConnectionEnd) -> bool:
        if resumption.should_park(self, end):
            resumption.park(self, end)
            return True
        return False  # Kit.serve() cleans up once run() returns

    def parked_for_s(self) -> float:
        return 0.0 if self.parked_at is None else time.monotonic() - self.parked_at

    def stream_finished(self, pump: StreamPump) -> None:
        if pump.stream_id in self._stream_permits:
            self._stream_permits.discard(pump.stream_id)
            self.give_permit()
        self.kit.metrics.bytes_total.labels(direction="in").inc(pump.bytes_to_local)
        self.kit.metrics.bytes_total.labels(direction="out").inc(pump.bytes_from_local)

    # -- bindings --------------------------------------------------------------------------------

    def _bind(self, request: BindRequest) -> None:
        assert self.runner is not None
        session = self.runner.session
        settings = self.settings
        kind, port = request.kind, request.port
        if self.state is not SessionState.ACTIVE or session.goaway_sent is not None:
            self._bind_error(request, ErrorCode.REFUSED, f"port {port}: the session is closing")
            return
        allowed = settings.expose_ports if kind is BindKind.EXPOSE else settings.pull_ports
        if port not in allowed:
            variable = "EXPOSE" if kind is BindKind.EXPOSE else "PULL"
            self._bind_error(
                request,
                ErrorCode.FORBIDDEN,
                f"port {port}: not allowed (HOODY_TUNNEL_{variable}_PORTS is {allowed})",
            )
            return
        bind_id = self.kit.registry.next_bind_id()
        binding = Binding(
            bind_id=bind_id, kind=kind, port=port, mode=request.mode, host_header=request.host_header
        )
        if kind is BindKind.EXPOSE:
            if not self._open_expose(request, binding):
                return
        self.bindings[bind_id] = binding
        session.send_bind_ok(
            BindResult(req_id=request.req_id, bind_id=bind_id, kind=kind, port=port, mode=request.mode)
        )
        log.info(
            "session bound: id=%s bind=%d kind=%s port=%d mode=%s",
            self.session_id,
            bind_id,
            kind.value,
            port,
            request.mode.value,
        )

    def _open_expose(self, request: BindRequest, binding: Binding) -> bool:
        assert self.runner is not None
        registry = self.kit.registry
        port = request.port
        try:
            registry.claim_port(port, self.session_id)
        except PortInUse:
            owner = "this session" if registry.port_owner(port) == self.session_id else "another session"
            self._bind_error(request, ErrorCode.PORT_IN_USE, f"port {port}: already exposed by {owner}")
            return False
        if not self.take_permit():
            registry.release_port(port, self.session_id)
            self.kit.metrics.fd_permit_exhausted_total.labels(path="listener").inc()
            self._bind_error(request, ErrorCode.RESOURCE_EXHAUSTED, f"port {port}: no file descriptor permit left")
            return False
        try:
            binding.listener = binding_io.open_listener(self.settings.expose_host, port)
        except UpstreamError as exc:
            self.give_permit()
            registry.release_port(port, self.session_id)
            self._bind_error(request, exc.error_code, str(exc))
            return False
        binding.accept_greenlet = self.runner.spawn(self._accept_loop, binding)
        return True

    def _bind_error(self, request: BindRequest, code: ErrorCode, message: str) -> None:
        assert self.runner is not None
        log.info("bind refused: id=%s port=%d code=%s error=%r", self.session_id, request.port, code.name, message)
        self.runner.session.send_bind_error(request.req_id, code, message)

    def open_expose_stream(self, binding: Binding, origin: str) -> StreamPump:
        """Open a stream for a connection accepted on an EXPOSE binding, and count it."""
        runner = self.runner
        assert runner is not None
        pump = runner.open_stream(binding.bind_id, origin)
        self._open_started[pump.stream_id] = time.monotonic()
        binding.streams_opened += 1
        self.kit.metrics.streams_opened_total.labels(kind="expose").inc()
        return pump

    def _accept_loop(self, binding: Binding) -> None:
        """Accept EXPOSE connections, one stream each, within maxStreams and the FD budget."""
        if binding.mode is BindMode.HTTP:
            # HTTP mode (server/http_mode.py) parses requests: it answers 503 where tcp waits.
            http_mode.accept_loop(self, binding)
            return
        runner = self.runner
        assert runner is not None and binding.listener is not None
        metrics = self.kit.metrics
        while not binding.closed and not runner.ended:
            conn = None
            permit = False
            try:
                # While parked, stop accepting: new connections wait in the backlog (docs/protocol.md §13.1).
                self.attached.wait()
                # Take a permit only once a connection is waiting, so an idle listener holds
                # just its own permit (connectionsGranted counts what is really open).
                try:
                    binding_io.wait_acceptable(binding.listener)
                except UpstreamError:
                    return  # the listener was closed (unbind, kill, end of session)
                self.attached.wait()
                if binding.closed:
                    return
                permit = self.take_permit()
                if not permit:
                    metrics.fd_permit_exhausted_total.labels(path="expose").inc()
                    # Out of permits: stop accepting; connections wait in the kernel backlog
                    # (docs/protocol.md §12).
                    permit = self.take_permit(wait=True)
                try:
                    conn, origin = binding_io.accept(binding.listener)
                except UpstreamError as exc:
                    if not binding.closed:
                        log.warning("expose listener on port %d failed: %s", binding.port, exc)
                    return
                # At maxStreams the accepted connection waits here for a slot (later ones wait in
                # the backlog), rather than being refused. While parked it waits for the resume.
                if not self._wait_expose_slot(binding):
                    return
                pump = self.open_expose_stream(binding, origin)
                self._stream_permits.add(pump.stream_id)
                permit = False  # now owned by the stream: released in stream_finished
                pump.connect(conn)
                conn = None
            finally:
                # Killed (unbind, session end) or failed while holding a socket or a permit.
                if conn is not None:
                    conn.close()
                if permit:
                    self.give_permit()

    def _wait_expose_slot(self, binding: Binding) -> bool:
        """Wait until a stream may be opened for ``binding``; False once it never can."""
        runner = self.runner
        assert runner is not None
        while True:
            if binding.closed or self.state in (SessionState.CLOSING, SessionState.CLOSED):
                return False
            self.attached.wait()  # parked: until the resume (or the end, which sets it too)
            if runner.wait_stream_slot() and not binding.closed:
                return True
            if not runner.detached:
                return False  # the connection ended for good

    def _unbind(self, bind_id: int) -> None:
        binding = self.bindings.pop(bind_id, None)
        if binding is not None:
            self._close_binding(binding)
            log.info("session unbound: id=%s bind=%d", self.session_id, bind_id)

    def _close_binding(self, binding: Binding) -> None:
        if binding.closed:
            return
        binding.closed = True
        if binding.listener is not None:
            greenlet = binding.accept_greenlet
            if isinstance(greenlet, gevent.Greenlet) and greenlet is not gevent.getcurrent():
                greenlet.kill(block=False)
            binding.listener.close()
            binding.listener = None
            self.give_permit()
            self.kit.registry.release_port(binding.port, self.session_id)

    def stop_accepting(self) -> None:
        """Close every EXPOSE listener (admin kill, shutdown, end of session)."""
        for binding in self.bindings.values():
            self._close_binding(binding)

    def release_all(self) -> None:
        """The session is over: listeners, bindings, stream sockets, permits."""
        if self.expiry is not None and self.expiry is not gevent.getcurrent():
            self.expiry.kill(block=False)
        self.expiry = None
        self.attached.set()  # wake paused accept loops so they see the end
        self.stop_accepting()
        self.bindings.clear()
        if self.runner is not None:
            self.runner.stop()
        self.state = SessionState.CLOSED


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return "unknown"


__all__ = ["BindMode", "KitSession", "SessionState", "new_session_id"]
