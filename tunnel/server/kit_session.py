"""One tunnel session on the kit: handshake, bindings, PULL streams, parking, and the permits it holds.

A :class:`KitSession` is the :class:`~tunnel.mux.runner.RunnerDelegate` of the kit side and the
:class:`~tunnel.server.bindings.ExposeHost` of its EXPOSE bindings. :class:`~tunnel.server.kit.Kit`
builds it for each accepted WebSocket with what it needs (settings, metrics, the registry, the
protocol session and the transport); it builds its own :class:`~tunnel.mux.runner.SessionRunner`
and reaches the protocol session only through it. Everything it spawns lives in the runner's group.

Lifecycle (:class:`KitSessionState`, changed only by :meth:`KitSession.set_state`)::

    HANDSHAKE --HELLO ok--> ACTIVE --connection lost (v2, no GOAWAY)--> ORPHANED (parked)
        |                     |  ^                                          |
        |                     |  +-------------- resumed -------------------+
        |                     +--GOAWAY / admin kill / shutdown--> CLOSING --> CLOSED
        +--refused, handed off, or ended-----------------------------------------^
    ORPHANED --TTL ran out or admin kill--> CLOSED

Parking (docs/protocol.md §13): a v2 session whose WebSocket ends without a GOAWAY keeps its
streams (their sockets, buffers and permits) and its bindings; its EXPOSE accept loops pause; the
WebSocket's permit is released; after ``orphan_ttl_s`` it expires and everything is released.
Which parked session a HELLO.resume names, and the hand-over, are the Kit's business.

Permits: the WebSocket holds one from :meth:`Kit.serve`; each EXPOSE listener one; each stream's
local socket one. ``permits_held`` counts them and changes only next to the semaphore call, with
no yield in between (see :mod:`tunnel.server.registry`).
"""

from __future__ import annotations

import enum
import hmac
import logging
import secrets
import time

import gevent
from gevent.event import Event as GeventEvent

from tunnel import __version__
from tunnel.config import Settings
from tunnel.metrics import Metrics
from tunnel.mux.pump import StreamPump
from tunnel.mux.runner import ConnectionEnd, EndKind, PumpClass, SessionRunner
from tunnel.mux.transport import CloseCode, Transport
from tunnel.protocol import (
    BindKind,
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
    Role,
    Session,
    SessionConfig,
    SessionState,
    StreamAccepted,
    StreamOpened,
    StreamRefused,
    StreamReset,
    UnbindReceived,
    UpstreamError,
    Welcome,
    code_name,
)
from tunnel.server import bindings as binding_io
from tunnel.server import expose
from tunnel.server.bindings import Binding
from tunnel.server.registry import PortInUse, Registry
from tunnel.server.resumption import Parking, ResumeTokens

log = logging.getLogger("tunnel.session")


class KitSessionState(enum.Enum):
    """Where a kit session is in its life; the admin views show it as ``state``."""

    HANDSHAKE = "handshake"
    ACTIVE = "active"
    ORPHANED = "orphaned"
    CLOSING = "closing"
    CLOSED = "closed"


#: End kinds after which a v2 session is parked (no GOAWAY was exchanged).
_PARKABLE = frozenset({EndKind.PEER_CLOSED, EndKind.DEAD, EndKind.SEND_FAILED, EndKind.SUPERSEDED})


def protocol_session(settings: Settings, subprotocol: str) -> Session:
    """The kit's protocol session for a connection that negotiated ``subprotocol``."""
    return Session(
        SessionConfig(
            role=Role.SERVER,
            version=2 if subprotocol.endswith(".v2") else 1,
            receive_window_size=settings.window_size,
            max_frame_size=settings.max_frame_size,
            max_streams=settings.max_streams,
            heartbeat_interval_s=settings.heartbeat_s,
        )
    )


def new_session_id() -> str:
    """``"sess_"`` + 12 lowercase hex digits from a CSPRNG (docs/protocol.md §4)."""
    return "sess_" + secrets.token_hex(6)


class KitSession:
    """The kit's side of one tunnel session."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        registry: Registry[KitSession],
        session: Session,
        transport: Transport,
        *,
        peer_address: str,
        user_agent: str,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = registry
        self.session_id = new_session_id()
        self.protocol = transport.subprotocol
        self.resumable = self.protocol.endswith(".v2")
        self.peer_address = peer_address
        self.user_agent = user_agent
        self.client_name = ""
        self.created_at = time.time()
        self.state = KitSessionState.HANDSHAKE
        self.bindings: dict[int, Binding] = {}
        self.permits_held = 0
        self.rtt_s: float | None = None
        self.close_reason = ""
        self.admin_killed = False
        self.resume_tokens = ResumeTokens()
        self.parking = Parking()
        self.expiry: gevent.Greenlet[..., object] | None = None
        self.attached = GeventEvent()  # set while a connection serves it; accept loops wait on it
        self.attached.set()
        #: This connection's HELLO asked to resume another session (Kit.serve hands it over).
        self.resume_request: ResumeRequest | None = None
        self._stream_permits: set[int] = set()  # stream ids whose local socket holds a permit
        self._welcomed = GeventEvent()
        self._open_started: dict[int, float] = {}
        self.runner = SessionRunner(session, transport, self, name=self.session_id)

    # -- state -----------------------------------------------------------------------------------

    def set_state(self, state: KitSessionState) -> None:
        """The one place the session's state changes."""
        self.state = state

    @property
    def active(self) -> bool:
        return self.state is KitSessionState.ACTIVE

    @property
    def closing(self) -> bool:
        return self.state in (KitSessionState.CLOSING, KitSessionState.CLOSED)

    @property
    def parked(self) -> bool:
        return self.state is KitSessionState.ORPHANED

    @property
    def active_streams(self) -> int:
        return self.runner.statistics().active_streams

    # -- permits ---------------------------------------------------------------------------------

    def take_permit(self, *, wait: bool = False) -> bool:
        budget = self.registry.budget
        ok = budget.acquire() if wait else budget.try_acquire()
        if ok:
            self.permits_held += 1  # no yield between acquire and this line (registry.py)
        return ok

    def give_permit(self) -> None:
        self.permits_held -= 1
        self.registry.budget.release()

    # -- handshake -------------------------------------------------------------------------------

    def watch_handshake(self) -> None:
        """End the connection if no valid HELLO arrives in time (docs/protocol.md §4)."""
        if self._welcomed.wait(self.settings.handshake_timeout_s):
            return
        self.metrics.handshake_failures_total.labels(reason="timeout").inc()
        log.info("session refused: peer=%s reason=handshake-timeout", self.peer_address)
        self.runner.close_gracefully(
            ErrorCode.TIMEOUT,
            f"no HELLO within {self.settings.handshake_timeout_s:g} s",
            drain_s=0.0,
            ws_close_code=CloseCode.POLICY_VIOLATION,
        )

    def _hello(self, event: HelloReceived) -> None:
        runner = self.runner
        if runner.state is not SessionState.HELLO_RECEIVED:
            return  # e.g. HELLO and GOAWAY in one message: the client already left
        hello = event.hello
        if not self._token_ok(hello.token):
            self.metrics.handshake_failures_total.labels(reason="auth").inc()
            log.info("session refused: peer=%s reason=invalid-token", self.peer_address)
            runner.spawn(
                runner.close_gracefully,
                ErrorCode.AUTH_FAILED,
                "invalid token",
                drain_s=0.0,
                ws_close_code=CloseCode.POLICY_VIOLATION,
            )
            return
        if hello.resume is not None:
            # The Kit decides which session this resumes (or refuses): hand the connection over.
            self.resume_request = hello.resume
            self._welcomed.set()
            runner.end(ConnectionEnd(EndKind.HANDOFF, f"resumes {hello.resume.session_id}"))
            return
        self.client_name = hello.client
        runner.send_welcome(self.build_welcome(resumed=False))
        self.set_state(KitSessionState.ACTIVE)
        self._welcomed.set()
        self.metrics.sessions_opened_total.inc()
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

    def build_welcome(self, *, resumed: bool) -> Welcome:
        """The WELCOME of a new (``resumed=False``) or resumed session; v2 carries a fresh resume
        token and the TTL."""
        settings = self.settings
        v2 = self.resumable
        return Welcome(
            session_id=self.session_id,
            protocol=self.protocol,
            resumed=resumed,
            max_streams=settings.max_streams,
            window=settings.window_size,
            max_frame=settings.max_frame_size,
            heartbeat_ms=int(settings.heartbeat_s * 1000),
            server=f"hoody-tunnel/{__version__}",
            resume_token=self.resume_tokens.issue(self._acknowledged_token()) if v2 else None,
            orphan_ttl_ms=int(settings.orphan_ttl_s * 1000) if v2 else None,
        )

    # -- resume ------------------------------------------------------------------------------------

    def _acknowledged_token(self) -> str | None:
        """The token of the last WELCOME the client acknowledged (then the only valid one)."""
        welcome = self.runner.welcome
        if self.runner.welcome_acknowledged and welcome is not None:
            return welcome.resume_token or ""
        return None

    def token_matches(self, token: str) -> bool:
        return self.resume_tokens.matches(token, self._acknowledged_token())

    def resumable_now(self) -> bool:
        """Whether a HELLO.resume with a good token may take this session over."""
        return (
            self.resumable
            and not self.admin_killed
            and not self.registry.draining
            and self.state in (KitSessionState.ORPHANED, KitSessionState.ACTIVE)
            and not self.runner.closing  # e.g. the client said GOAWAY: nothing to resume
            and self.runner.state in (SessionState.OPEN, SessionState.DETACHED)
        )

    def _should_park(self, end: ConnectionEnd) -> bool:
        """True when this connection end parks the session instead of closing it."""
        return (
            self.resumable
            and end.kind in _PARKABLE
            and self.state is KitSessionState.ACTIVE
            and not self.admin_killed
            and not self.registry.draining
            and not self.runner.closing
            and self.runner.state is SessionState.OPEN
        )

    def _park(self, end: ConnectionEnd) -> None:
        """Start the TTL; the runner detaches the protocol session."""
        self.set_state(KitSessionState.ORPHANED)
        self.parking.park(time.monotonic())
        self.attached.clear()  # EXPOSE accept loops pause: new connections wait in the backlog
        ttl_s = self.settings.orphan_ttl_s
        # A timer, not a group member: the group is the session's streams, which it may expire.
        self.expiry = gevent.spawn_later(ttl_s, self._expire)
        self.metrics.sessions_parked_total.inc()
        log.info(
            "session parked: id=%s reason=%s detail=%r ttl_s=%.1f streams=%d",
            self.session_id,
            end.kind.value,
            end.detail,
            ttl_s,
            self.runner.stream_count,
        )

    def _expire(self) -> None:
        """The TTL ran out: release everything the parked session held."""
        if self.state is not KitSessionState.ORPHANED:
            return
        log.info("session expired: id=%s after %.1f s parked", self.session_id, self.parked_for_s())
        self.metrics.sessions_closed_total.labels(reason="expired").inc()
        self.expiry = None
        self.release_all()  # release, then unlist: the views' FD sum stays exact
        self.registry.remove(self)

    def parked_for_s(self) -> float:
        return self.parking.parked_for_s(time.monotonic())

    def unpark(self, transport: Transport, request: ResumeRequest, peer_address: str) -> float:
        """Serve the session on ``transport``, which resumed it. Returns the outage in seconds.
        The caller runs the runner next."""
        if self.expiry is not None:
            self.expiry.kill(block=False)
            self.expiry = None
        outage_s = self.parked_for_s()
        runner = self.runner
        runner.resume(transport, self.build_welcome(resumed=True), request.received)
        self.set_state(KitSessionState.ACTIVE)
        self.parking.unpark()
        self.peer_address = peer_address
        self.attached.set()
        runner.wake_streams()
        return outage_s

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
                self.metrics.stream_open_latency_seconds.observe(time.monotonic() - started)
        elif isinstance(event, StreamRefused):
            self.metrics.streams_refused_total.labels(reason=_label(event.error_code)).inc()
        elif isinstance(event, StreamReset):
            self._open_started.pop(event.stream_id, None)
        elif isinstance(event, PongReceived):
            self.rtt_s = event.rtt_s
        elif isinstance(event, GoAwayReceived):
            self.close_reason = f"client goaway {_label(event.error_code)}"
            self.metrics.goaways_received_total.labels(code=_label(event.error_code)).inc()

    def stream_opened(self, event: StreamOpened, pump: StreamPump) -> None:
        """A PULL stream from the client: dial the pull host."""
        binding = self.bindings.get(event.bind_id)
        if binding is None or binding.kind is not BindKind.PULL or binding.closed:
            self._refuse(pump, ErrorCode.NOT_FOUND, f"unknown PULL binding {event.bind_id}")
            return
        if not self.take_permit():
            self.metrics.fd_permit_exhausted_total.labels(path="pull").inc()
            self._refuse(pump, ErrorCode.RESOURCE_EXHAUSTED, "no file descriptor permit left")
            return
        self._stream_permits.add(event.stream_id)
        binding.streams_opened += 1
        self.metrics.streams_opened_total.labels(kind="pull").inc()
        self.runner.spawn(self._dial_pull, binding, pump)

    def _refuse(self, pump: StreamPump, code: ErrorCode, reason: str) -> None:
        self.metrics.streams_refused_total.labels(reason=_label(code)).inc()
        self.runner.reset_stream(pump.stream_id, code, reason)
        pump.reset(code, reason)

    def _dial_pull(self, binding: Binding, pump: StreamPump) -> None:
        try:
            sock = binding_io.dial(self.settings.pull_host, binding.port, timeout_s=self.settings.connect_timeout_s)
        except UpstreamError as exc:
            self.metrics.streams_refused_total.labels(reason="connect_failed").inc()
            self.runner.reset_stream(pump.stream_id, exc.error_code, str(exc))
            pump.reset(exc.error_code, str(exc))
            return
        if pump.finished:  # reset by the client while we dialled
            sock.close()
            return
        pump.connect(sock)
        self.runner.accept_stream(pump.stream_id)

    def connection_ended(self, end: ConnectionEnd) -> bool:
        if self._should_park(end):
            self._park(end)
            return True
        return False  # Kit.serve() cleans up once run() returns

    def stream_finished(self, pump: StreamPump) -> None:
        if pump.stream_id in self._stream_permits:
            self._stream_permits.discard(pump.stream_id)
            self.give_permit()
        self.metrics.bytes_total.labels(direction="in").inc(pump.bytes_to_local)
        self.metrics.bytes_total.labels(direction="out").inc(pump.bytes_from_local)

    # -- bindings --------------------------------------------------------------------------------

    def _bind(self, request: BindRequest) -> None:
        settings = self.settings
        kind, port = request.kind, request.port
        if self.state is not KitSessionState.ACTIVE or self.runner.goaway_sent:
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
        bind_id = self.registry.next_bind_id()
        binding = Binding(
            bind_id=bind_id, kind=kind, port=port, mode=request.mode, host_header=request.host_header
        )
        if kind is BindKind.EXPOSE and not self._open_expose(request, binding):
            return
        self.bindings[bind_id] = binding
        self.runner.send_bind_ok(
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
        registry = self.registry
        port = request.port
        try:
            registry.claim_port(port, self.session_id)
        except PortInUse:
            owner = "this session" if registry.port_owner(port) == self.session_id else "another session"
            self._bind_error(request, ErrorCode.PORT_IN_USE, f"port {port}: already exposed by {owner}")
            return False
        if not self.take_permit():
            registry.release_port(port, self.session_id)
            self.metrics.fd_permit_exhausted_total.labels(path="listener").inc()
            self._bind_error(request, ErrorCode.RESOURCE_EXHAUSTED, f"port {port}: no file descriptor permit left")
            return False
        try:
            binding.listener = binding_io.open_listener(self.settings.expose_host, port)
        except UpstreamError as exc:
            self.give_permit()
            registry.release_port(port, self.session_id)
            self._bind_error(request, exc.error_code, str(exc))
            return False
        binding.accept_greenlet = self.runner.spawn(expose.accept_loop, self, binding)
        return True

    def _bind_error(self, request: BindRequest, code: ErrorCode, message: str) -> None:
        log.info("bind refused: id=%s port=%d code=%s error=%r", self.session_id, request.port, code.name, message)
        self.runner.send_bind_error(request.req_id, code, message)

    def open_expose_stream(
        self, binding: Binding, origin: str, *, pump_class: PumpClass = StreamPump, holds_permit: bool = False
    ) -> StreamPump:
        """Open a stream for a connection accepted on an EXPOSE binding, and count it
        (:class:`~tunnel.server.bindings.ExposeHost`)."""
        pump = self.runner.open_stream(binding.bind_id, origin, pump_class=pump_class)
        if holds_permit:
            self._stream_permits.add(pump.stream_id)
        self._open_started[pump.stream_id] = time.monotonic()
        binding.streams_opened += 1
        self.metrics.streams_opened_total.labels(kind="expose").inc()
        return pump

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
            self.registry.release_port(binding.port, self.session_id)

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
        self.runner.stop()
        self.set_state(KitSessionState.CLOSED)


def _label(code: int) -> str:
    """An error code as a metric label: bounded (a peer's unknown code is "unknown")."""
    return (code_name(code) or "unknown").lower()


__all__ = ["KitSession", "KitSessionState", "new_session_id", "protocol_session"]
