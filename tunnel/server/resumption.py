"""Parking and resuming v2 sessions on the kit (docs/protocol.md §13).

Parking: a v2 session whose WebSocket ends without a GOAWAY keeps its streams (their sockets,
buffers and permits) and its bindings; its EXPOSE listeners stop accepting; the WebSocket's
permit is released; after ``orphan_ttl_s`` it expires and everything is released.

Resuming: a new connection's HELLO carries ``resume {sessionId, resumeToken, received}``. The
token must be one the session issued since the last one the client acknowledged (a WELCOME lost
in a cut leaves the client holding an older one); all are compared in constant time. A session
still attached to a connection the kit has not seen die is superseded: that connection gets
GOAWAY(SUPERSEDED) and is dropped. A failed attempt gets GOAWAY(RESUME_FAILED) and leaves the
parked session as it was, so a guess cannot kill it.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from typing import TYPE_CHECKING

import gevent

from tunnel import __version__
from tunnel.mux.runner import WS_POLICY_VIOLATION, ConnectionEnd, EndKind
from tunnel.protocol import ErrorCode, GoAwayFrame, Hello, ResumeRequest, Welcome, encode_frame
from tunnel.mux.transport import Transport, TransportError

if TYPE_CHECKING:
    from tunnel.server.kit_session import KitSession

log = logging.getLogger("tunnel.session")

#: Resume tokens a session honours at most (issued since the last acknowledged one).
MAX_LIVE_RESUME_TOKENS = 16
RESUME_FAILED_REASON = "resume failed: session unknown, expired, closed, or token wrong"

# End kinds after which a v2 session is parked (no GOAWAY was exchanged).
_PARKABLE = frozenset({EndKind.PEER_CLOSED, EndKind.DEAD, EndKind.SEND_FAILED, EndKind.SUPERSEDED})


def new_resume_token() -> str:
    """At least 128 bits from a CSPRNG, URL-safe base64 (docs/protocol.md §13.3): here 192."""
    return secrets.token_urlsafe(24)


def issue_token(kit_session: KitSession) -> str:
    """A fresh token for a WELCOME; older ones stay valid until the client acknowledges."""
    session = kit_session.runner.session if kit_session.runner else None
    if session is not None and session.welcome_acknowledged and session.welcome is not None:
        # The client holds the last WELCOME's token: nothing older can be in its hands.
        kit_session.resume_tokens = [session.welcome.resume_token or ""]
    token = new_resume_token()
    kit_session.resume_tokens.append(token)
    del kit_session.resume_tokens[:-MAX_LIVE_RESUME_TOKENS]
    return token


def token_matches(kit_session: KitSession, token: str) -> bool:
    session = kit_session.runner.session if kit_session.runner else None
    candidates = list(kit_session.resume_tokens)
    if session is not None and session.welcome_acknowledged and session.welcome is not None:
        candidates = [session.welcome.resume_token or ""]
    presented = token.encode("utf-8", "surrogateescape")
    ok = False
    for candidate in candidates:  # every one, so timing tells nothing
        ok |= bool(candidate) and hmac.compare_digest(presented, candidate.encode("utf-8"))
    return ok


def should_park(kit_session: KitSession, end: ConnectionEnd) -> bool:
    """True when this connection end parks the session instead of closing it (docs/protocol.md §13.1)."""
    from tunnel.server.kit_session import SessionState

    runner = kit_session.runner
    if runner is None or not kit_session.protocol.endswith(".v2"):
        return False
    session = runner.session
    return (
        end.kind in _PARKABLE
        and kit_session.state is SessionState.ACTIVE
        and not kit_session.admin_killed
        and not kit_session.kit.draining
        and session.goaway_sent is None
        and session.goaway_received is None
        and session.state.name == "OPEN"
    )


def park(kit_session: KitSession, end: ConnectionEnd) -> None:
    """Detach the session and start its TTL (called from the runner's connection_ended)."""
    from tunnel.server.kit_session import SessionState

    assert kit_session.runner is not None
    kit_session.runner.session.detach()
    kit_session.state = SessionState.ORPHANED
    kit_session.parked_at = time.monotonic()
    kit_session.attached.clear()  # EXPOSE accept loops pause: new connections wait in the backlog
    ttl_s = kit_session.settings.orphan_ttl_s
    # A timer, not a group member: the group is the session's streams, which it may expire.
    kit_session.expiry = gevent.spawn_later(ttl_s, expire, kit_session)
    kit_session.kit.metrics.sessions_parked_total.inc()
    log.info(
        "session parked: id=%s reason=%s detail=%r ttl_s=%.1f streams=%d",
        kit_session.session_id,
        end.kind.value,
        end.detail,
        ttl_s,
        len(kit_session.runner.pumps),
    )


def expire(kit_session: KitSession) -> None:
    """The TTL ran out: release everything the parked session held."""
    from tunnel.server.kit_session import SessionState

    if kit_session.state is not SessionState.ORPHANED:
        return
    kit = kit_session.kit
    log.info("session expired: id=%s after %.1f s parked", kit_session.session_id, kit_session.parked_for_s())
    kit.metrics.sessions_closed_total.labels(reason="expired").inc()
    kit_session.expiry = None
    kit_session.release_all()  # release, then unlist: the views' FD sum stays exact
    kit.registry.remove(kit_session)


def find_target(temp: KitSession, request: ResumeRequest) -> KitSession | None:
    """The parked (or still attached) session a HELLO.resume names, if the token fits."""
    from tunnel.server.kit_session import SessionState

    target = temp.kit.registry.get(request.session_id)
    if target is None or target is temp or target.runner is None:
        # Compare anyway, so timing does not tell an unknown id from a wrong token.
        hmac.compare_digest(request.resume_token.encode("utf-8", "surrogateescape"), b"x" * 32)
        return None
    if not token_matches(target, request.resume_token):
        return None
    if target.admin_killed or target.state not in (SessionState.ORPHANED, SessionState.ACTIVE):
        return None
    session = target.runner.session
    if session.goaway_sent is not None or session.goaway_received is not None:
        return None  # closing (e.g. the client said GOAWAY): nothing to resume
    if session.state.name not in ("OPEN", "DETACHED"):
        return None
    if not target.protocol.endswith(".v2") or target.kit.draining:
        return None
    return target


def supersede(target: KitSession) -> None:
    """The client came back while the kit still holds its old connection: drop that one."""
    runner = target.runner
    assert runner is not None
    reason = "the session was resumed on another connection"
    try:  # straight onto the old wire: the session itself must not enter DRAINING
        runner.transport.send_messages([encode_frame(GoAwayFrame(ErrorCode.SUPERSEDED, reason))])
    except TransportError:
        pass  # that connection is dead anyway, which is why the client came back
    runner.end(ConnectionEnd(EndKind.SUPERSEDED, reason, error_code=int(ErrorCode.SUPERSEDED)))
    log.info("session superseded: id=%s", target.session_id)


def refuse(temp: KitSession, hello: Hello) -> None:
    """GOAWAY(RESUME_FAILED): the client starts a new session."""
    assert temp.runner is not None
    temp.kit.metrics.resumes_total.labels(outcome="failed").inc()
    session_id = hello.resume.session_id if hello.resume else "?"
    log.info("resume refused: peer=%s session=%s", temp.peer_address, session_id)
    temp.runner.spawn(
        temp.runner.close_gracefully,
        ErrorCode.RESUME_FAILED,
        RESUME_FAILED_REASON,
        drain_s=0.0,
        ws_close_code=WS_POLICY_VIOLATION,
    )


def refuse_late(transport: Transport, target: KitSession) -> ConnectionEnd:
    """The target ended between the token check and the handoff: GOAWAY(RESUME_FAILED)."""
    target.kit.metrics.resumes_total.labels(outcome="failed").inc()
    log.info("resume refused: session=%s ended meanwhile", target.session_id)
    try:
        transport.send_messages([encode_frame(GoAwayFrame(ErrorCode.RESUME_FAILED, RESUME_FAILED_REASON))])
    except TransportError:
        pass  # the client is gone too
    transport.close(WS_POLICY_VIOLATION, "resume failed")
    return ConnectionEnd(EndKind.LOCAL_CLOSE, RESUME_FAILED_REASON, error_code=int(ErrorCode.RESUME_FAILED))


def build_welcome(kit_session: KitSession, *, resumed: bool) -> Welcome:
    """The WELCOME of a new (``resumed=False``) or resumed session; v2 carries a fresh resume
    token and the TTL."""
    settings = kit_session.settings
    v2 = kit_session.protocol.endswith(".v2")
    return Welcome(
        session_id=kit_session.session_id,
        protocol=kit_session.protocol,
        resumed=resumed,
        max_streams=settings.max_streams,
        window=settings.window_size,
        max_frame=settings.max_frame_size,
        heartbeat_ms=int(settings.heartbeat_s * 1000),
        server=f"hoody-tunnel/{__version__}",
        resume_token=issue_token(kit_session) if v2 else None,
        orphan_ttl_ms=int(settings.orphan_ttl_s * 1000) if v2 else None,
    )
