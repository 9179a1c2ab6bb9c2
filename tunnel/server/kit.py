"""The kit: settings, metrics, the registry and FD budget, and serving one WebSocket.

One :class:`Kit` per app, stored at ``app.extensions["tunnel"]``; the connect view hands it each
accepted WebSocket through :meth:`Kit.serve`, which blocks for the session's lifetime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import gevent

from tunnel.config import Settings
from tunnel.metrics import LiveGauges, Metrics
from tunnel.mux.runner import WS_GOING_AWAY, WS_NORMAL, ConnectionEnd, EndKind, SessionRunner
from tunnel.mux.transport import Transport, TransportError
from tunnel.protocol import ErrorCode, ResumeRequest, Role, Session, SessionConfig
from tunnel.server.kit_session import KitSession, SessionState
from tunnel.server import resumption
from tunnel.server.registry import Registry

log = logging.getLogger("tunnel.session")

#: WebSocket close code "try again later" (RFC 6455 §7.4.1, registered 1013).
WS_TRY_AGAIN_LATER = 1013


@dataclass(frozen=True, slots=True)
class FdAccounting:
    """A consistent snapshot of the FD budget (docs/protocol.md §12 invariant)."""

    budget: int
    available: int
    granted: int


class Kit:
    """Everything the tunnel kit holds for one app."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = Registry(settings.fd_budget)
        self.draining = False
        metrics.set_live_source(self.live_gauges)

    # -- views ---------------------------------------------------------------------------------

    def live_gauges(self) -> LiveGauges:
        sessions = list(self.registry)
        return LiveGauges(
            sessions_active=len(sessions),
            bindings_active=sum(len(s.bindings) for s in sessions),
            fd_permits_available=self.registry.budget.available,
            sessions_orphaned=sum(1 for s in sessions if s.state is SessionState.ORPHANED),
        )

    def fd_accounting(self) -> FdAccounting:
        budget = self.registry.budget
        return FdAccounting(budget.size, budget.available, self.registry.permits_granted())

    # -- steering --------------------------------------------------------------------------------

    def kill_session(self, session_id: str, grace_s: float) -> KitSession | None:
        """Admin kill (admin-api.md DELETE): GOAWAY(ADMIN_CLOSE, "closed by admin"), stop the
        session's EXPOSE listeners, drain for at most ``grace_s``, then force-close. Returns the
        session (already closing is fine: the call is idempotent), or None when unknown.
        Does not block: the drain runs in the session's group."""
        kit_session = self.registry.get(session_id)
        if kit_session is None:
            return None
        if kit_session.state is SessionState.CLOSING:
            return kit_session
        if kit_session.state is SessionState.ORPHANED:
            # Parked: nothing is attached to drain, so it closes at once (admin-api.md), and a
            # later HELLO.resume finds nothing.
            kit_session.admin_killed = True
            kit_session.state = SessionState.CLOSING
            log.info("session kill requested: id=%s (parked: closed at once)", session_id)
            self.metrics.sessions_closed_total.labels(reason="admin_close").inc()
            kit_session.release_all()  # release, then unlist: the views' FD sum stays exact
            self.registry.remove(kit_session)
            return kit_session
        kit_session.state = SessionState.CLOSING
        kit_session.admin_killed = True  # never parked, never resumable (docs/protocol.md §11)
        kit_session.stop_accepting()
        self.metrics.goaways_sent_total.labels(code="admin_close").inc()
        log.info("session kill requested: id=%s grace_s=%.3f", session_id, grace_s)
        runner = kit_session.runner
        if runner is not None:
            runner.spawn(
                runner.close_gracefully,
                ErrorCode.ADMIN_CLOSE,
                "closed by admin",
                drain_s=grace_s,
                ws_close_code=WS_NORMAL,
            )
        return kit_session

    def shutdown(self, grace_s: float) -> None:
        """SIGTERM: refuse new sessions, GOAWAY(SHUTDOWN) + close 1001 to every session, let
        streams drain for up to ``grace_s``, and return once every session has ended."""
        self.draining = True
        sessions = list(self.registry)
        log.info("shutting down: %d session(s), grace %.1f s", len(sessions), grace_s)
        closers = []
        for kit_session in sessions:
            runner = kit_session.runner
            if runner is None or runner.ended:
                continue
            kit_session.state = SessionState.CLOSING
            kit_session.stop_accepting()
            self.metrics.goaways_sent_total.labels(code="shutdown").inc()
            closers.append(
                runner.spawn(
                    runner.close_gracefully,
                    ErrorCode.SHUTDOWN,
                    "server shutting down",
                    drain_s=grace_s,
                    ws_close_code=WS_GOING_AWAY,
                )
            )
        gevent.joinall(closers, timeout=grace_s + 2.0)

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, transport: Transport, *, peer_address: str, user_agent: str) -> None:
        """Run one tunnel session over an accepted WebSocket until it ends."""
        settings = self.settings
        version = 2 if transport.subprotocol.endswith(".v2") else 1
        session = Session(
            SessionConfig(
                role=Role.SERVER,
                version=version,
                receive_window_size=settings.window_size,
                max_frame_size=settings.max_frame_size,
                max_streams=settings.max_streams,
                heartbeat_interval_s=settings.heartbeat_s,
            )
        )
        kit_session = KitSession(
            self,
            SessionRunner,
            protocol=transport.subprotocol,
            peer_address=peer_address,
            user_agent=user_agent,
        )
        if not kit_session.take_permit():
            self.metrics.fd_permit_exhausted_total.labels(path="session").inc()
            self.metrics.handshake_failures_total.labels(reason="resource_exhausted").inc()
            log.info("session refused: peer=%s reason=no-fd-permit", peer_address)
            self._refuse(transport, session, ErrorCode.RESOURCE_EXHAUSTED, "no file descriptor permit left")
            return
        current = kit_session
        end: ConnectionEnd | None = None
        try:
            runner = SessionRunner(session, transport, kit_session, name=kit_session.session_id)
            kit_session.runner = runner
            self.registry.add(kit_session)
            runner.spawn(kit_session.watch_handshake)
            end = runner.run()
            while end.kind is EndKind.HANDOFF and current.resume_target is not None:
                # HELLO.resume: this connection (and its permit) now serves the parked session.
                temp, current = current, current.resume_target
                request = temp.pending_resume
                assert request is not None
                self.registry.remove(temp)
                temp.release_all()
                temp.permits_held -= 1
                current.permits_held += 1
                end = self._resume(current, transport, request, peer_address)
            if end.error_code != ErrorCode.RESUME_FAILED:  # a late refusal: counted already
                self._ended(current, end)
        finally:
            if end is not None and end.parked:
                # The session lives on (parked, or already resumed elsewhere): this connection
                # only gives back its WebSocket's permit.
                current.give_permit()
            else:
                # Release first, then unlist: while listed, its permits still count in the
                # views' sum, so fdPermitsAvailable + sum(connectionsGranted) stays exact.
                current.release_all()
                current.give_permit()
                self.registry.remove(current)
            transport.close()

    def _resume(self, target: KitSession, transport: Transport, request: ResumeRequest, peer_address: str) -> ConnectionEnd:
        """Serve ``target`` on the connection that resumed it, until that connection ends."""
        runner = target.runner
        assert runner is not None
        if target.state not in (SessionState.ORPHANED, SessionState.ACTIVE) or target.admin_killed:
            # Expired or killed since its token was checked: refuse like any failed resume.
            return resumption.refuse_late(transport, target)
        if target.state is SessionState.ACTIVE:
            resumption.supersede(target)  # its old connection parks it first
        if target.expiry is not None:
            target.expiry.kill(block=False)
            target.expiry = None
        outage_s = target.parked_for_s()
        runner.attach(transport)
        runner.session.resume(resumption.build_welcome(target, resumed=True), request.received, runner.clock())
        runner.dispatch(runner.session.events_received())
        retransmitted = runner.session.statistics().bytes_retransmitted
        target.state = SessionState.ACTIVE
        target.parked_at = None
        target.peer_address = peer_address
        target.attached.set()
        runner.wake_streams()
        self.metrics.resumes_total.labels(outcome="resumed").inc()
        self.metrics.outage_duration_seconds.observe(outage_s)
        log.info(
            "session resumed: id=%s peer=%s outage_s=%.3f streams=%d bytes_retransmitted=%d",
            target.session_id,
            peer_address,
            outage_s,
            len(runner.pumps),
            retransmitted,
        )
        return runner.run()

    def _refuse(self, transport: Transport, session: Session, code: ErrorCode, reason: str) -> None:
        session.send_goaway(code, reason)
        try:
            transport.send_messages(session.messages_to_send())
        except TransportError:
            pass  # the peer is gone already; closing is all that is left
        transport.close(WS_TRY_AGAIN_LATER, reason)

    def _ended(self, kit_session: KitSession, end: ConnectionEnd) -> None:
        if end.parked:
            return  # logged by resumption.park(); the session is not over
        was_active = kit_session.state is not SessionState.HANDSHAKE
        reason = end.kind.value
        if end.kind is EndKind.LOCAL_CLOSE and end.error_code is not None:
            reason = ErrorCode(end.error_code).name.lower() if end.error_code in ErrorCode._value2member_map_ else reason
        kit_session.state = SessionState.CLOSING
        if was_active:
            stats = kit_session.runner.session.statistics() if kit_session.runner else None
            self.metrics.sessions_closed_total.labels(reason=reason).inc()
            log.info(
                "session closed: id=%s peer=%s reason=%s detail=%r bytes_in=%d bytes_out=%d",
                kit_session.session_id,
                kit_session.peer_address,
                reason,
                end.detail,
                stats.data_bytes_received if stats else 0,
                stats.data_bytes_sent if stats else 0,
            )
        elif end.kind is EndKind.PROTOCOL_ERROR:
            self.metrics.handshake_failures_total.labels(reason="protocol_error").inc()
            log.info("session refused: peer=%s reason=protocol-error detail=%r", kit_session.peer_address, end.detail)
