"""The kit: settings, metrics, the registry and FD budget, serving one WebSocket, and the
decisions that span sessions (resume hand-over, admin kill, shutdown).

One :class:`Kit` per app, stored at ``app.extensions["tunnel"]``; the connect view hands it each
accepted WebSocket through :meth:`Kit.serve`, which blocks for the session's lifetime.

Resume across sessions (docs/protocol.md §13): a new connection's HELLO carries
``resume {sessionId, resumeToken, received}``; its KitSession checks the auth token and ends its
run with a HANDOFF. :meth:`Kit.serve` then finds the session it names (:meth:`Kit._resume_target`),
supersedes that session's connection if the kit has not seen it die (GOAWAY(SUPERSEDED)), and
serves the session on the new connection. Every refusal goes one way (:meth:`Kit._refuse_resume`):
GOAWAY(RESUME_FAILED) and close, leaving any parked session as it was, so a guess cannot kill it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import gevent

from tunnel.config import Settings
from tunnel.metrics import LiveGauges, Metrics
from tunnel.mux.runner import ConnectionEnd, EndKind
from tunnel.mux.transport import CloseCode, Transport, TransportError
from tunnel.protocol import (
    ErrorCode,
    GoAwayFrame,
    ResumeRequest,
    code_name,
    encode_frame,
)
from tunnel.server.kit_session import KitSession, KitSessionState, protocol_session
from tunnel.server.registry import Registry
from tunnel.server.resumption import RESUME_FAILED_REASON, compare_token_anyway

log = logging.getLogger("tunnel.session")


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
        self.registry: Registry[KitSession] = Registry(settings.fd_budget)
        metrics.set_live_source(self.live_gauges)

    @property
    def draining(self) -> bool:
        """SIGTERM: no new sessions, no parking, no resumes."""
        return self.registry.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.registry.draining = value

    # -- views ---------------------------------------------------------------------------------

    def live_gauges(self) -> LiveGauges:
        sessions = list(self.registry)
        return LiveGauges(
            sessions_active=len(sessions),
            bindings_active=sum(len(s.bindings) for s in sessions),
            fd_permits_available=self.registry.budget.available,
            sessions_orphaned=sum(1 for s in sessions if s.parked),
        )

    def fd_accounting(self) -> FdAccounting:
        budget = self.registry.budget
        return FdAccounting(budget.size, budget.available, self.registry.permits_granted())

    # -- steering --------------------------------------------------------------------------------

    def kill_session(self, session_id: str, grace_s: float) -> KitSession | None:
        """Admin kill: GOAWAY(ADMIN_CLOSE, "closed by admin"), stop the session's EXPOSE
        listeners, drain for at most ``grace_s``, then force-close. Returns the session (already
        closing is fine: the call is idempotent), or None when unknown.
        Does not block: the drain runs in the session's group."""
        kit_session = self.registry.get(session_id)
        if kit_session is None:
            return None
        if kit_session.state is KitSessionState.CLOSING:
            return kit_session
        kit_session.admin_killed = True  # never parked, never resumable (docs/protocol.md §11)
        if kit_session.parked:
            # Parked: nothing is attached to drain, so it closes at once, and a later
            # HELLO.resume finds nothing.
            kit_session.set_state(KitSessionState.CLOSING)
            log.info("session kill requested: id=%s (parked: closed at once)", session_id)
            self.metrics.sessions_closed_total.labels(reason="admin_close").inc()
            kit_session.release_all()  # release, then unlist: the views' FD sum stays exact
            self.registry.remove(kit_session)
            return kit_session
        kit_session.set_state(KitSessionState.CLOSING)
        kit_session.stop_accepting()
        self.metrics.goaways_sent_total.labels(code="admin_close").inc()
        log.info("session kill requested: id=%s grace_s=%.3f", session_id, grace_s)
        runner = kit_session.runner
        runner.spawn(
            runner.close_gracefully,
            ErrorCode.ADMIN_CLOSE,
            "closed by admin",
            drain_s=grace_s,
            ws_close_code=CloseCode.NORMAL,
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
            if runner.ended:
                continue
            kit_session.set_state(KitSessionState.CLOSING)
            kit_session.stop_accepting()
            self.metrics.goaways_sent_total.labels(code="shutdown").inc()
            closers.append(
                runner.spawn(
                    runner.close_gracefully,
                    ErrorCode.SHUTDOWN,
                    "server shutting down",
                    drain_s=grace_s,
                    ws_close_code=CloseCode.GOING_AWAY,
                )
            )
        gevent.joinall(closers, timeout=grace_s + 2.0)

    # -- serving ---------------------------------------------------------------------------------

    def serve(self, transport: Transport, *, peer_address: str, user_agent: str) -> None:
        """Run one tunnel session over an accepted WebSocket until it ends."""
        settings = self.settings
        kit_session = KitSession(
            settings,
            self.metrics,
            self.registry,
            protocol_session(settings, transport.subprotocol),
            transport,
            peer_address=peer_address,
            user_agent=user_agent,
        )
        if not kit_session.take_permit():
            self.metrics.fd_permit_exhausted_total.labels(path="session").inc()
            self.metrics.handshake_failures_total.labels(reason="resource_exhausted").inc()
            log.info("session refused: peer=%s reason=no-fd-permit", peer_address)
            self._close_with_goaway(
                transport, ErrorCode.RESOURCE_EXHAUSTED, "no file descriptor permit left", CloseCode.TRY_AGAIN_LATER
            )
            return
        current = kit_session
        end: ConnectionEnd | None = None
        try:
            runner = kit_session.runner
            self.registry.add(kit_session)
            runner.spawn(kit_session.watch_handshake)
            end = runner.run()
            if end.kind is EndKind.HANDOFF and kit_session.resume_request is not None:
                # HELLO.resume: this connection (and its permit) may now serve a parked session.
                request = kit_session.resume_request
                target = self._resume_target(kit_session, request)
                if target is None:
                    end = self._refuse_resume(transport, request.session_id)
                else:
                    # The WebSocket's permit moves to the target first: release_all() yields, and
                    # an observer meanwhile must see the permit counted (docs/protocol.md §12).
                    kit_session.permits_held -= 1
                    target.permits_held += 1
                    self.registry.remove(kit_session)
                    kit_session.release_all()
                    current = target
                    end = self._resume(target, transport, request, peer_address)
            if end.error_code != ErrorCode.RESUME_FAILED:  # a refusal: counted already
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

    # -- resume across sessions ------------------------------------------------------------------

    def _resume_target(self, temp: KitSession, request: ResumeRequest) -> KitSession | None:
        """The parked (or still attached) session a HELLO.resume names, if the token fits."""
        target = self.registry.get(request.session_id)
        if target is None or target is temp:
            compare_token_anyway(request.resume_token)
            return None
        if not target.token_matches(request.resume_token) or not target.resumable_now():
            return None
        return target

    def _resume(
        self, target: KitSession, transport: Transport, request: ResumeRequest, peer_address: str
    ) -> ConnectionEnd:
        """Serve ``target`` on the connection that resumed it, until that connection ends."""
        if target.state not in (KitSessionState.ORPHANED, KitSessionState.ACTIVE) or target.admin_killed:
            # Expired or killed since its token was checked (the check and this line are in one
            # turn today, but the rule must not depend on it): refuse like any failed resume.
            return self._refuse_resume(transport, target.session_id)
        runner = target.runner
        if target.active:
            # The client came back while the kit still holds its old connection: drop that one
            # (which parks the session first).
            runner.supersede("the session was resumed on another connection")
            log.info("session superseded: id=%s", target.session_id)
        outage_s = target.unpark(transport, request, peer_address)
        self.metrics.resumes_total.labels(outcome="resumed").inc()
        self.metrics.outage_duration_seconds.observe(outage_s)
        log.info(
            "session resumed: id=%s peer=%s outage_s=%.3f streams=%d bytes_retransmitted=%d",
            target.session_id,
            peer_address,
            outage_s,
            runner.stream_count,
            runner.statistics().bytes_retransmitted,
        )
        return runner.run()

    def _refuse_resume(self, transport: Transport, session_id: str) -> ConnectionEnd:
        """GOAWAY(RESUME_FAILED) and close: the client starts a new session."""
        self.metrics.resumes_total.labels(outcome="failed").inc()
        log.info("resume refused: session=%s", session_id)
        self._close_with_goaway(transport, ErrorCode.RESUME_FAILED, RESUME_FAILED_REASON, CloseCode.POLICY_VIOLATION)
        return ConnectionEnd(EndKind.LOCAL_CLOSE, RESUME_FAILED_REASON, error_code=int(ErrorCode.RESUME_FAILED))

    @staticmethod
    def _close_with_goaway(transport: Transport, code: ErrorCode, reason: str, close_code: CloseCode) -> None:
        """Refuse a connection that no session runs on: GOAWAY straight onto the wire, close."""
        try:
            transport.send_messages([encode_frame(GoAwayFrame(code, reason))])
        except TransportError:
            pass  # the peer is gone already; closing is all that is left
        transport.close(close_code, reason)

    def _ended(self, kit_session: KitSession, end: ConnectionEnd) -> None:
        if end.parked:
            return  # logged when parked; the session is not over
        was_active = kit_session.state is not KitSessionState.HANDSHAKE
        reason = end.kind.value
        if end.kind is EndKind.LOCAL_CLOSE and end.error_code is not None:
            reason = (code_name(end.error_code) or reason).lower()
        kit_session.set_state(KitSessionState.CLOSING)
        if was_active:
            stats = kit_session.runner.statistics()
            self.metrics.sessions_closed_total.labels(reason=reason).inc()
            log.info(
                "session closed: id=%s peer=%s reason=%s detail=%r bytes_in=%d bytes_out=%d",
                kit_session.session_id,
                kit_session.peer_address,
                reason,
                end.detail,
                stats.data_bytes_received,
                stats.data_bytes_sent,
            )
        elif end.kind is EndKind.PROTOCOL_ERROR:
            self.metrics.handshake_failures_total.labels(reason="protocol_error").inc()
            log.info("session refused: peer=%s reason=protocol-error detail=%r", kit_session.peer_address, end.detail)
