"""The client end of a tunnel: local PULL listeners, EXPOSE dialing, one session at a time.

:class:`TunnelClient` is the :class:`~tunnel.mux.runner.RunnerDelegate` of the client side; it
drives the same :class:`~tunnel.mux.runner.SessionRunner` as the kit. Local PULL listeners are
opened before connecting (so a local port clash is reported before anything else) and are owned
by the client, not by a session, so later sessions can reuse them.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import TextIO

import gevent
from gevent import Greenlet
from gevent import socket as gsocket
from gevent.event import AsyncResult
from gevent.event import Event as GeventEvent
from gevent.pool import Group

from tunnel import __version__
from tunnel.client.specs import ExposeSpec, PullSpec
from tunnel.mux import ws_client
from tunnel.mux.dialing import connect_tcp
from tunnel.mux.pump import StreamPump
from tunnel.mux.runner import ConnectionEnd, EndKind, SessionRunner
from tunnel.mux.transport import HandshakeRejected, Transport, TransportError
from tunnel.protocol import (
    BindAccepted,
    BindFailed,
    BindKind,
    BindMode,
    BindRequest,
    ErrorCode,
    Event,
    GoAwayReceived,
    Hello,
    LocalProtocolError,
    PongReceived,
    Role,
    Session,
    SessionConfig,
    SessionState,
    StreamOpened,
    StreamReset,
    WelcomeReceived,
    code_name,
)
from tunnel.protocol import TunnelError

log = logging.getLogger(__name__)

#: Exit codes of ``hoody-tunnel connect`` (issue: the client).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ADMIN_CLOSE = 3
EXIT_AUTH = 4

SUBPROTOCOLS = {"v2": ["hoody-tunnel.v2"], "v1": ["hoody-tunnel.v1"], None: ["hoody-tunnel.v2", "hoody-tunnel.v1"]}
#: Largest frame the client accepts: the server may send up to its own maxFrame, which it may
#: set up to the 4 MiB message cap.
CLIENT_MAX_FRAME_SIZE = 4 * 1024 * 1024 - 10
DEFAULT_WINDOW_SIZE = 256 * 1024


#: Reconnect backoff: exponential from BACKOFF_BASE_S, capped at BACKOFF_CAP_S, full jitter
#: (a random delay between 0 and the cap of the attempt), so a fleet of clients that lost the
#: same kit do not all come back in the same instant.
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 10.0


def backoff_delay_s(attempt: int, rng: random.Random) -> float:
    """The delay before reconnect attempt ``attempt`` (0-based)."""
    return rng.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** min(attempt, 16))))


class _ResumeRefused(TunnelError):
    """The parked session cannot be resumed: start a new one."""


_RESUMABLE_ENDS = frozenset({EndKind.PEER_CLOSED, EndKind.DEAD, EndKind.SEND_FAILED})


class ClientError(TunnelError):
    """A failure the CLI reports in one line with an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.fatal = fatal  # no point retrying (a refused token)


class HandshakeOutcome(enum.Enum):
    """How the wait for WELCOME (or for the answer to a resume) ended."""

    WELCOMED = "welcomed"
    GOAWAY = "goaway"
    ENDED = "ended"


@dataclass
class ClientOptions:
    url: str
    token: str
    protocol: str | None = None  # "v1", "v2" or None (offer both, v2 preferred)
    exposes: list[ExposeSpec] = field(default_factory=list)
    pulls: list[PullSpec] = field(default_factory=list)
    window_size: int = DEFAULT_WINDOW_SIZE
    connect_timeout_s: float = 10.0
    handshake_timeout_s: float = 10.0
    drain_s: float = 2.0
    pull_wait_s: float = 30.0  # how long a local PULL connection waits for a (re)connected session


@dataclass
class _LocalPull:
    spec: PullSpec
    listener: socket.socket
    bind_id: int | None = None


class TunnelClient:
    """Connects, binds, and serves until Ctrl-C, an admin kill, or the connection is lost."""

    def __init__(self, options: ClientOptions, *, out: TextIO, err: TextIO) -> None:
        self.options = options
        self.out = out
        self.err = err
        self.group = Group()
        self.runner: SessionRunner | None = None
        self.session_id = ""
        self.protocol = ""
        self._pulls: list[_LocalPull] = []
        self._exposes: dict[int, ExposeSpec] = {}
        self._handshake: AsyncResult[HandshakeOutcome] = AsyncResult()
        self._binds: dict[int, AsyncResult[Event | None]] = {}
        self._goaway: GoAwayReceived | None = None
        self._stopping = False
        self._stop_requested = GeventEvent()
        self._serving = GeventEvent()  # a session is bound and serving: PULL may open streams
        self._random = random.Random()
        self._parked: SessionRunner | None = None  # a session waiting for a resume
        self._lost_at = 0.0
        self.ready = GeventEvent()  # set once bound and serving (tests wait on it)

    # -- public --------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until Ctrl-C, an admin kill or a fatal refusal; returns the exit code.

        A lost connection or a server shutdown leads to a new session after a backoff
        (exponential, full jitter); local PULL listeners stay open throughout.
        """
        try:
            self._open_local_listeners()
            self._start_pull_loops()
            first = True
            attempt = 0
            while True:
                parked = self._parked
                try:
                    if parked is not None:
                        end = self._resume_session(parked)
                    else:
                        end = self._one_session(first=first)
                except _ResumeRefused as exc:
                    self._say(f"hoody-tunnel: {exc}; session expired, starting a new one", err=True)
                    self._abandon_parked()
                    continue
                except ClientError as exc:
                    if (first and parked is None) or exc.fatal:
                        self._say(f"hoody-tunnel: {exc}", err=True)
                        return exc.exit_code
                    self._say(f"hoody-tunnel: reconnect failed: {exc}", err=True)
                else:
                    first = False
                    attempt = 0
                    if end.parked:
                        self._parked = self.runner
                        self._lost_at = time.monotonic()
                        self._say(
                            f"hoody-tunnel: connection lost{_end_text(end)}; resuming {self.session_id}…",
                            err=True,
                        )
                    else:
                        code = self._exit_code(end)
                        if code is not None:
                            return code
                if self._stopping:
                    return EXIT_OK
                delay_s = backoff_delay_s(attempt, self._random)
                attempt += 1
                self._say(f"hoody-tunnel: reconnecting in {delay_s:.1f} s")
                if self._stop_requested.wait(delay_s):
                    return EXIT_OK
        except ClientError as exc:
            self._say(f"hoody-tunnel: {exc}", err=True)
            return exc.exit_code
        finally:
            self._abandon_parked()
            self._close_local_listeners()
            self.group.kill(block=True, timeout=5)

    # -- resume (docs/protocol.md §13) -------------------------------------------------------------

    def _resume_session(self, runner: SessionRunner) -> ConnectionEnd:
        """Resume the parked session on a new connection and serve until that one ends.

        Raises:
            _ResumeRefused: the kit refused (RESUME_FAILED), or the session's TTL has passed.
            ClientError: a transient failure (try again later), or a fatal one (token refused).
        """
        # No local give-up on the kit's TTL: a kit that expired the session answers
        # RESUME_FAILED at once, and one that re-parked it meanwhile may hold it longer.
        if runner.state is not SessionState.DETACHED:
            raise _ResumeRefused("the session was closed")
        transport = self._open_transport()
        if transport.subprotocol != self.protocol:
            transport.close()
            raise _ResumeRefused(f"the kit now speaks {transport.subprotocol}")
        self._handshake = AsyncResult()
        self._goaway = None
        runner.send_resume(self.options.token, f"hoody-tunnel/{__version__}")
        runner.attach(transport)
        end_greenlet = gevent.spawn(runner.run)
        resumed = False
        try:
            end_greenlet.link(lambda _: self._handshake.set(HandshakeOutcome.ENDED))
            try:
                outcome = self._handshake.get(timeout=self.options.handshake_timeout_s)
            except gevent.Timeout:
                raise ClientError("no answer to the resume within the handshake timeout") from None
            if outcome is not HandshakeOutcome.WELCOMED:
                goaway = self._goaway
                if goaway is not None and goaway.error_code == ErrorCode.AUTH_FAILED:
                    raise ClientError(f"the server refused the token ({goaway.reason})", EXIT_AUTH, fatal=True)
                if goaway is not None or runner.closed:
                    # RESUME_FAILED, or any other refusal (e.g. no FD permit): this session is over.
                    reason = _code_text(goaway) if goaway is not None else "the kit closed the session"
                    raise _ResumeRefused(f"the kit refused the resume: {reason}")
                raise ClientError("connection lost during the resume")
            resumed = True
            retransmitted = runner.statistics().bytes_retransmitted
            self._say(
                f"hoody-tunnel: resumed {self.session_id} after {time.monotonic() - self._lost_at:.1f} s, "
                f"0 bytes lost ({retransmitted} bytes retransmitted in total)",
                err=True,
            )
            self._parked = None
            runner.wake_streams()
            self._serving.set()
            end = end_greenlet.get()
            assert end is not None
            return end
        finally:
            if not resumed and not end_greenlet.dead:
                runner.transport.abort()
                end_greenlet.join(timeout=5)

    def _abandon_parked(self) -> None:
        """Give up a parked session: its streams' local connections are reset."""
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.connection_lost()
            parked.stop()

    def _one_session(self, *, first: bool) -> ConnectionEnd:
        """Connect, handshake, bind, and serve until the connection ends."""
        self._handshake = AsyncResult()
        self._binds.clear()
        self._exposes.clear()
        self._goaway = None
        runner = self._connect()
        end_greenlet = gevent.spawn(runner.run)
        bound = False
        try:
            self._wait_welcome(end_greenlet)
            self._bind_all(end_greenlet)
            if first:
                self._print_summary()
            else:
                self._say(f"hoody-tunnel: reconnected as {self.session_id} ({self.protocol})")
            bound = True
            self._serving.set()
            self.ready.set()
            end = end_greenlet.get()
            assert end is not None
            return end
        finally:
            if not end_greenlet.dead:
                # Leaving for any reason (a refused BIND, an error): say so, never just drop.
                runner.close_gracefully(ErrorCode.NORMAL, "client closing", drain_s=0.0)
                end_greenlet.join(timeout=5)
            if not (bound and runner.detached):
                runner.connection_lost()
                runner.stop()  # else parked: the streams wait for the resume

    def stop(self) -> None:
        """Ctrl-C: GOAWAY(NORMAL), let streams finish briefly, close. Safe from any greenlet."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_requested.set()
        runner = self.runner
        if runner is None or runner.ended:
            return
        self._say("hoody-tunnel: closing")
        gevent.spawn(
            runner.close_gracefully, ErrorCode.NORMAL, "client closing", drain_s=self.options.drain_s
        )

    # -- connecting ------------------------------------------------------------------------------

    def _open_local_listeners(self) -> None:
        for spec in self.options.pulls:
            family = socket.AF_INET6 if ":" in spec.bind_host else socket.AF_INET
            listener = gsocket.socket(family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((spec.bind_host, spec.local_port))
                listener.listen(128)
            except OSError as exc:
                listener.close()
                raise ClientError(
                    f"cannot listen on {spec.bind_host}:{spec.local_port} for --pull: {exc.strerror or exc}"
                ) from exc
            if spec.local_port == 0:  # the OS picked one: show the real port in the summary
                spec = dataclasses.replace(spec, local_port=listener.getsockname()[1])
            self._pulls.append(_LocalPull(spec, listener))

    def _close_local_listeners(self) -> None:
        for pull in self._pulls:
            pull.listener.close()
        self._pulls.clear()

    def _open_transport(self) -> Transport:
        options = self.options
        try:
            return ws_client.connect(
                options.url,
                SUBPROTOCOLS[options.protocol],
                timeout_s=options.connect_timeout_s,
                headers=[("User-Agent", f"hoody-tunnel/{__version__}")],
            )
        except HandshakeRejected as exc:
            raise ClientError(f"the server refused the WebSocket upgrade: {_rejection_text(exc)}") from exc
        except (TransportError, OSError) as exc:
            raise ClientError(f"cannot connect to {options.url}: {exc}") from exc

    def _connect(self) -> SessionRunner:
        options = self.options
        transport = self._open_transport()
        self.protocol = transport.subprotocol
        session = Session(
            SessionConfig(
                role=Role.CLIENT,
                version=2 if transport.subprotocol.endswith(".v2") else 1,
                receive_window_size=options.window_size,
                max_frame_size=CLIENT_MAX_FRAME_SIZE,
                max_streams=1,  # replaced by WELCOME.maxStreams
                heartbeat_interval_s=15.0,  # replaced by WELCOME.heartbeatMs
            )
        )
        runner = SessionRunner(session, transport, self, name="client")
        runner.send_hello(Hello(token=options.token, client=f"hoody-tunnel/{__version__}", window=options.window_size))
        self.runner = runner
        return runner

    def _wait_welcome(self, end_greenlet: Greenlet[..., ConnectionEnd]) -> None:
        end_greenlet.link(lambda _: self._handshake.set(HandshakeOutcome.ENDED))
        try:
            outcome = self._handshake.get(timeout=self.options.handshake_timeout_s)
        except gevent.Timeout:
            raise ClientError(
                f"no answer to HELLO within {self.options.handshake_timeout_s:g} s"
            ) from None
        if outcome is HandshakeOutcome.WELCOMED:
            return
        goaway = self._goaway
        if goaway is not None:
            if goaway.error_code == ErrorCode.AUTH_FAILED:
                raise ClientError(f"the server refused the token ({goaway.reason})", EXIT_AUTH, fatal=True)
            raise ClientError(f"the server refused the session: {_code_text(goaway)}")
        end = end_greenlet.value if end_greenlet.ready() else None
        raise ClientError(f"connection lost during the handshake{_end_text(end)}")

    def _bind_all(self, end_greenlet: Greenlet[..., ConnectionEnd]) -> None:
        runner = self.runner
        assert runner is not None
        req_id = 0
        pending: list[tuple[int, str, AsyncResult[Event | None]]] = []
        for expose in self.options.exposes:
            req_id += 1
            result: AsyncResult[Event | None] = AsyncResult()
            self._binds[req_id] = result
            runner.send_bind(
                BindRequest(req_id, BindKind.EXPOSE, expose.container_port, expose.mode, expose.host_header)
            )
            pending.append((req_id, f"--expose {expose.container_port}", result))
        for pull in self._pulls:
            req_id += 1
            result = AsyncResult()
            self._binds[req_id] = result
            runner.send_bind(BindRequest(req_id, BindKind.PULL, pull.spec.container_port, BindMode.TCP))
            pending.append((req_id, f"--pull {pull.spec.local_port}", result))
        def lost(_: object) -> None:
            for _, _, waiting in pending:
                if not waiting.ready():
                    waiting.set(None)

        end_greenlet.link(lost)
        exposes = iter(self.options.exposes)
        pulls = iter(self._pulls)
        failures: list[str] = []
        for _, what, result in pending:
            try:
                event = result.get(timeout=self.options.handshake_timeout_s)
            except gevent.Timeout:
                raise ClientError(f"no answer to BIND within {self.options.handshake_timeout_s:g} s") from None
            if event is None:
                raise ClientError(f"connection lost while binding{_end_text(end_greenlet.value)}")
            if isinstance(event, BindFailed):
                failures.append(f"{what}: {event.error} ({_code_name(event.error_code)})")
                continue
            assert isinstance(event, BindAccepted)
            if event.result.kind is BindKind.EXPOSE:
                self._exposes[event.result.bind_id] = next(exposes)
            else:
                next(pulls).bind_id = event.result.bind_id
        if failures:
            raise ClientError("binding refused: " + "; ".join(failures))

    def _print_summary(self) -> None:
        self._say(f"hoody-tunnel: connected to {self.options.url} as {self.session_id} ({self.protocol})")
        for bind_id, expose in self._exposes.items():
            self._say(f"  expose  {expose.describe()}  [bind {bind_id}]")
        for pull in self._pulls:
            self._say(f"  pull    {pull.spec.describe()}  [bind {pull.bind_id}]")
        self._say("hoody-tunnel: ready (Ctrl-C to stop)")

    # -- PULL: local connections become streams ---------------------------------------------

    def _start_pull_loops(self) -> None:
        for pull in self._pulls:
            self.group.spawn(self._pull_accept_loop, pull)

    def _pull_accept_loop(self, pull: _LocalPull) -> None:
        while True:
            try:
                conn, address = pull.listener.accept()
            except OSError:
                return  # listener closed: the client is stopping
            self.group.spawn(self._pull_connection, pull, conn, f"{address[0]}:{address[1]}")

    def _pull_connection(self, pull: _LocalPull, conn: socket.socket, origin: str) -> None:
        """Carry one local connection: wait for a serving session and a free stream slot
        (beyond maxStreams, or while reconnecting, the connection waits rather than being
        refused), then open a stream for it."""
        deadline_s = self.options.pull_wait_s
        while not self._stopping:
            if not self._serving.wait(deadline_s):
                log.info("no session for %s within %.0f s: closing it", origin, deadline_s)
                break
            runner = self.runner
            if runner is None or pull.bind_id is None:
                break
            if not runner.wait_stream_slot() or not self._serving.is_set():
                continue  # the session ended meanwhile: wait for the next one
            try:
                pump = runner.open_stream(pull.bind_id, origin)
            except LocalProtocolError:
                continue  # GOAWAY raced us: wait for the next session
            pump.connect(conn)
            return
        conn.close()

    # -- RunnerDelegate ---------------------------------------------------------------------------

    def stream_opened(self, event: StreamOpened, pump: StreamPump) -> None:
        """An EXPOSE connection arrived at the kit: dial our local target."""
        assert self.runner is not None
        expose = self._exposes.get(event.bind_id)
        if expose is None:
            reason = f"unknown binding {event.bind_id}"
            self.runner.reset_stream(event.stream_id, ErrorCode.NOT_FOUND, reason)
            pump.reset(ErrorCode.NOT_FOUND, reason)
            return
        self.runner.spawn(self._dial_expose, expose, pump)

    def _dial_expose(self, expose: ExposeSpec, pump: StreamPump) -> None:
        runner = self.runner
        assert runner is not None
        try:
            sock = connect_tcp(expose.local_host, expose.local_port, timeout_s=self.options.connect_timeout_s)
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
            runner.reset_stream(
                pump.stream_id, ErrorCode.CONNECT_FAILED, f"{expose.local_host}:{expose.local_port}: {reason}"
            )
            pump.reset()
            return
        if pump.finished:
            sock.close()
            return
        pump.connect(sock)
        runner.accept_stream(pump.stream_id)

    def stream_finished(self, pump: StreamPump) -> None:
        pass  # the client has no FD budget

    def connection_ended(self, end: ConnectionEnd) -> bool:
        """Keep the session for a resume when a v2 connection was lost without GOAWAY."""
        self._serving.clear()  # local PULL connections now wait for the next session
        runner = self.runner
        welcome = runner.welcome if runner is not None else None
        return not (
            runner is None
            or self._stopping
            or self._goaway is not None
            or end.kind not in _RESUMABLE_ENDS
            or runner.version < 2
            or welcome is None
            or not welcome.resume_token
            or runner.state not in (SessionState.OPEN, SessionState.RESUMING, SessionState.DETACHED)
        )

    def event_received(self, event: Event) -> None:
        if isinstance(event, WelcomeReceived):
            self.session_id = event.welcome.session_id
            self._handshake.set(HandshakeOutcome.WELCOMED)
        elif isinstance(event, (BindAccepted, BindFailed)):
            req_id = event.result.req_id if isinstance(event, BindAccepted) else event.req_id
            result = self._binds.pop(req_id, None)
            if result is not None:
                result.set(event)
        elif isinstance(event, GoAwayReceived):
            self._goaway = event
            self._serving.clear()  # no new streams on this session (docs/protocol.md §11)
            self._handshake.set(HandshakeOutcome.GOAWAY)
            if event.error_code == ErrorCode.ADMIN_CLOSE:
                self._say(f"hoody-tunnel: {event.reason or 'closed by admin'}", err=True)
            elif self.ready.is_set():
                self._say(f"hoody-tunnel: the server is closing the session: {_code_text(event)}", err=True)
            if self.runner is not None:
                self.runner.wake_slot_waiters()
        elif isinstance(event, StreamReset) and event.remote:
            log.debug("stream %d reset by the kit: %s", event.stream_id, event.reason)
        elif isinstance(event, PongReceived):
            pass

    # -- output ----------------------------------------------------------------------------------

    def _exit_code(self, end: ConnectionEnd) -> int | None:
        """The exit code once a session ended, or None to reconnect."""
        goaway = self._goaway
        if self._stopping:
            return EXIT_OK
        if goaway is not None:
            code = goaway.error_code
            if code == ErrorCode.ADMIN_CLOSE:
                return EXIT_ADMIN_CLOSE  # the operator meant it: never reconnect (docs/protocol.md §11)
            if code == ErrorCode.AUTH_FAILED:
                return EXIT_AUTH
            if code == ErrorCode.PROTOCOL_ERROR:
                self._say(f"hoody-tunnel: the server reported a protocol error: {_code_text(goaway)}", err=True)
                return EXIT_FAILURE
            if code == ErrorCode.SHUTDOWN:
                self._say("hoody-tunnel: the server is shutting down; starting a new session", err=True)
                return None
        self._say(f"hoody-tunnel: connection lost{_end_text(end)}; starting a new session", err=True)
        return None

    def _say(self, line: str, *, err: bool = False) -> None:
        stream = self.err if err else self.out
        stream.write(line + "\n")
        stream.flush()


def _code_name(code: int) -> str:
    return code_name(code) or f"code {code}"


def _code_text(goaway: GoAwayReceived) -> str:
    return f"{goaway.reason or 'no reason given'} ({_code_name(goaway.error_code)})"


def _end_text(end: ConnectionEnd | None) -> str:
    if end is None or not end.detail:
        return ""
    return f" ({end.detail})"


def _rejection_text(exc: HandshakeRejected) -> str:
    body = exc.body.decode("utf-8", "replace").strip()[:200] if exc.body else ""
    return f"HTTP {exc.status}" + (f": {body}" if body else "")


