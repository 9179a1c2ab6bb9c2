"""Read-only views of the kit's live objects, for the admin API (docs/admin-api.md §6,
docs/protocol.md §12).

Each function takes one :class:`KitSnapshot` of the kit and builds frozen dataclasses from it;
nothing here changes a session, a binding or the FD budget. The API's marshmallow schemas
(tunnel.api.schemas) dump these objects as they are.

Consistency: :func:`take_snapshot` walks the registry and reads every figure without yielding to
another greenlet (no I/O, no gevent call), so under gevent one snapshot is one instant: the
sessions listed, their bindings, their permits and ``fdPermitsAvailable`` all belong together,
and ``fdPermitsAvailable + sum(connectionsGranted) == fdBudget`` holds within it whenever it
holds in the kit.

Which sessions are listed: every session in the registry, which is what the
``hoody_tunnel_sessions_active`` gauge counts. That includes a connection still in its handshake
(it already holds the permit of its WebSocket, so leaving it out would break the FD sum); it is
shown as ``"active"``, since the reference's states are ``active``, ``orphaned`` and
``closing`` only. A session that is ending (admin kill, shutdown, end of connection) is
``"closing"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from tunnel.protocol import BindKind
from tunnel.server.kit import Kit
from tunnel.server.kit_session import KitSession, KitSessionState

__all__ = [
    "BindingView",
    "BindingsView",
    "ClosingView",
    "KitSnapshot",
    "SessionView",
    "SessionsView",
    "TunnelBindingView",
    "TunnelSessionView",
    "TunnelsView",
    "bindings_view",
    "closing_view",
    "session_state_text",
    "sessions_view",
    "take_snapshot",
    "tunnels_view",
]

V2_PROTOCOL = "hoody-tunnel.v2"

_STATE_TEXT = {
    KitSessionState.HANDSHAKE: "active",
    KitSessionState.ACTIVE: "active",
    KitSessionState.ORPHANED: "orphaned",
    KitSessionState.CLOSING: "closing",
    KitSessionState.CLOSED: "closing",
}


def session_state_text(state: KitSessionState) -> str:
    """The ``state`` the views show: ``"active"``, ``"orphaned"`` or ``"closing"``."""
    return _STATE_TEXT[state]


@dataclass(frozen=True, slots=True)
class BindingView:
    """One binding (BindingInfo, BindingDetail and TunnelBindingView are all cut from it)."""

    bind_id: int
    kind: str  # "EXPOSE" or "PULL"
    mode: str  # "tcp" or "http"
    port: int  # the container port
    session_id: str

    @property
    def container_port(self) -> int:
        return self.port


@dataclass(frozen=True, slots=True)
class SessionView:
    """One session (SessionInfo of GET /sessions)."""

    session_id: str
    peer_addr: str
    protocol: str
    state: str
    connections_granted: int  # FD permits the session holds now (docs/protocol.md §12)
    active_streams: int
    max_streams: int
    bindings: tuple[BindingView, ...]
    client: str
    user_agent: str
    created_at: str  # ISO-8601 UTC, millisecond precision
    bytes_in: int  # DATA payload bytes received from the client
    bytes_out: int  # DATA payload bytes sent to the client
    rtt_ms: float | None
    bytes_retransmitted: int  # v2: DATA bytes sent again after resumes
    parked: bool = False  # not in the API: ``state`` is its text

    @property
    def is_v2(self) -> bool:
        return self.protocol == V2_PROTOCOL


@dataclass(frozen=True, slots=True)
class KitSnapshot:
    """Every session and the FD budget, read at one instant (see the module docstring)."""

    sessions: tuple[SessionView, ...]
    fd_budget: int
    fd_permits_available: int


@dataclass(frozen=True, slots=True)
class SessionsView:
    """GET /sessions."""

    sessions: tuple[SessionView, ...]

    @property
    def total(self) -> int:
        return len(self.sessions)


@dataclass(frozen=True, slots=True)
class BindingsView:
    """GET /bindings."""

    bindings: tuple[BindingView, ...]

    @property
    def total(self) -> int:
        return len(self.bindings)


@dataclass(frozen=True, slots=True)
class TunnelBindingView:
    """An expose or pull binding of a TunnelSessionView."""

    bind_id: int
    container_port: int
    mode: str


@dataclass(frozen=True, slots=True)
class TunnelSessionView:
    """One session of GET /tunnels."""

    session_id: str
    peer_addr: str
    protocol: str
    state: str
    connections_granted: int
    active_streams: int
    expose_bindings: tuple[TunnelBindingView, ...]
    pull_bindings: tuple[TunnelBindingView, ...]
    parked: bool = False  # not in the API: counts orphaned sessions without comparing state text


@dataclass(frozen=True, slots=True)
class TunnelsView:
    """GET /tunnels: the dashboard."""

    fd_permits_available: int
    fd_budget: int
    sessions: tuple[TunnelSessionView, ...]

    @property
    def orphaned_sessions(self) -> int:
        return sum(1 for session in self.sessions if session.parked)

    @property
    def total_bindings(self) -> int:
        return sum(len(s.expose_bindings) + len(s.pull_bindings) for s in self.sessions)

    @property
    def total_streams(self) -> int:
        return sum(session.active_streams for session in self.sessions)


@dataclass(frozen=True, slots=True)
class ClosingView:
    """DELETE /sessions/{id}: the close has been initiated."""

    session_id: str
    status: str = "closing"


def _iso_utc(epoch_s: float) -> str:
    moment = datetime.fromtimestamp(epoch_s, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _session_view(kit_session: KitSession, max_streams: int) -> SessionView:
    runner = kit_session.runner
    stats = runner.statistics()
    rtt_s = kit_session.rtt_s if kit_session.rtt_s is not None else stats.rtt_s
    bindings = tuple(
        BindingView(
            bind_id=binding.bind_id,
            kind=binding.kind.value,
            mode=binding.mode.value,
            port=binding.port,
            session_id=kit_session.session_id,
        )
        for binding in sorted(kit_session.bindings.values(), key=lambda b: b.bind_id)
    )
    return SessionView(
        session_id=kit_session.session_id,
        peer_addr=kit_session.peer_address,
        protocol=kit_session.protocol,
        state=session_state_text(kit_session.state),
        connections_granted=kit_session.permits_held,
        active_streams=stats.active_streams,
        max_streams=max_streams,
        bindings=bindings,
        client=kit_session.client_name,
        user_agent=kit_session.user_agent,
        created_at=_iso_utc(kit_session.created_at),
        bytes_in=stats.data_bytes_received,
        bytes_out=stats.data_bytes_sent,
        rtt_ms=None if rtt_s is None else round(rtt_s * 1000.0, 3),
        bytes_retransmitted=stats.bytes_retransmitted,
        parked=kit_session.parked,
    )


def take_snapshot(kit: Kit) -> KitSnapshot:
    """Read every session of ``kit`` and its FD budget at one instant (no yield in between)."""
    max_streams = kit.settings.max_streams
    sessions = sorted(kit.registry, key=lambda s: (s.created_at, s.session_id))
    views = tuple(_session_view(kit_session, max_streams) for kit_session in sessions)
    accounting = kit.fd_accounting()
    return KitSnapshot(
        sessions=views,
        fd_budget=accounting.budget,
        fd_permits_available=accounting.available,
    )


def sessions_view(snapshot: KitSnapshot) -> SessionsView:
    return SessionsView(sessions=snapshot.sessions)


def bindings_view(snapshot: KitSnapshot) -> BindingsView:
    bindings = sorted(
        (binding for session in snapshot.sessions for binding in session.bindings),
        key=lambda binding: binding.bind_id,
    )
    return BindingsView(bindings=tuple(bindings))


def _tunnel_bindings(session: SessionView, kind: BindKind) -> tuple[TunnelBindingView, ...]:
    return tuple(
        TunnelBindingView(bind_id=b.bind_id, container_port=b.port, mode=b.mode)
        for b in session.bindings
        if b.kind == kind.value
    )


def tunnels_view(snapshot: KitSnapshot) -> TunnelsView:
    return TunnelsView(
        fd_permits_available=snapshot.fd_permits_available,
        fd_budget=snapshot.fd_budget,
        sessions=tuple(
            TunnelSessionView(
                session_id=session.session_id,
                peer_addr=session.peer_addr,
                protocol=session.protocol,
                state=session.state,
                connections_granted=session.connections_granted,
                active_streams=session.active_streams,
                expose_bindings=_tunnel_bindings(session, BindKind.EXPOSE),
                pull_bindings=_tunnel_bindings(session, BindKind.PULL),
                parked=session.parked,
            )
            for session in snapshot.sessions
        ),
    )


def closing_view(kit_session: KitSession) -> ClosingView:
    """What DELETE answers once :meth:`Kit.kill_session` has returned ``kit_session``."""
    return ClosingView(session_id=kit_session.session_id)
