"""tunnel.server.views: read-only snapshots of the kit, checked on real KitSession objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.api.admin_kit import add_session, kit_of, make_app
from tunnel.protocol import BindKind, BindMode
from tunnel.server.kit_session import KitSessionState
from tunnel.server.views import (
    bindings_view,
    closing_view,
    session_state_text,
    sessions_view,
    take_snapshot,
    tunnels_view,
)

EXPOSE, PULL = BindKind.EXPOSE, BindKind.PULL
TCP, HTTP = BindMode.TCP, BindMode.HTTP


@pytest.mark.parametrize(
    ("state", "text"),
    [
        (KitSessionState.HANDSHAKE, "active"),
        (KitSessionState.ACTIVE, "active"),
        (KitSessionState.ORPHANED, "orphaned"),
        (KitSessionState.CLOSING, "closing"),
        (KitSessionState.CLOSED, "closing"),
    ],
)
def test_every_kit_state_maps_to_one_of_the_three_view_states(state: KitSessionState, text: str) -> None:
    assert session_state_text(state) == text


def test_an_empty_kit(tmp_path: Path) -> None:
    kit = kit_of(make_app(tmp_path, fd_budget=64))
    snapshot = take_snapshot(kit)
    assert sessions_view(snapshot).total == 0
    assert bindings_view(snapshot).total == 0
    tunnels = tunnels_view(snapshot)
    assert (tunnels.fd_permits_available, tunnels.fd_budget) == (64, 64)
    assert (tunnels.orphaned_sessions, tunnels.total_bindings, tunnels.total_streams) == (0, 0, 0)


def test_sessions_bindings_and_tunnels_from_one_snapshot(tmp_path: Path) -> None:
    kit = kit_of(make_app(tmp_path, fd_budget=64, max_streams=7))
    first = add_session(kit, bindings=((EXPOSE, 3000, HTTP), (PULL, 5432, TCP)), created_at=100.0)
    second = add_session(
        kit,
        protocol="hoody-tunnel.v1",
        state=KitSessionState.ORPHANED,
        bindings=((PULL, 6379, TCP),),
        extra_permits=2,
        created_at=200.0,
    )
    handshake = add_session(kit, state=KitSessionState.HANDSHAKE, created_at=300.0)

    snapshot = take_snapshot(kit)
    sessions = sessions_view(snapshot)
    assert [s.session_id for s in sessions.sessions] == [
        first.session_id, second.session_id, handshake.session_id
    ]
    assert sessions.total == 3
    one, two, three = sessions.sessions
    assert (one.is_v2, two.is_v2) == (True, False)
    assert (one.state, two.state, three.state) == ("active", "orphaned", "active")
    assert (one.connections_granted, two.connections_granted, three.connections_granted) == (2, 3, 1)
    assert {s.max_streams for s in sessions.sessions} == {7}
    assert one.created_at == "1970-01-01T00:01:40.000Z"
    assert (one.active_streams, one.bytes_in, one.bytes_out, one.rtt_ms) == (0, 0, 0, None)
    assert [(b.kind, b.container_port, b.mode) for b in one.bindings] == [
        ("EXPOSE", 3000, "http"), ("PULL", 5432, "tcp")
    ]

    bindings = bindings_view(snapshot)
    assert bindings.total == 3
    assert [b.bind_id for b in bindings.bindings] == sorted(b.bind_id for b in bindings.bindings)
    assert [(b.session_id, b.port) for b in bindings.bindings] == [
        (first.session_id, 3000), (first.session_id, 5432), (second.session_id, 6379)
    ]

    tunnels = tunnels_view(snapshot)
    assert tunnels.orphaned_sessions == 1
    assert tunnels.total_bindings == 3
    assert [len(s.expose_bindings) for s in tunnels.sessions] == [1, 0, 0]
    assert [len(s.pull_bindings) for s in tunnels.sessions] == [1, 1, 0]
    # docs/protocol.md §12: available + sum(granted) == budget.
    granted = sum(s.connections_granted for s in tunnels.sessions)
    assert tunnels.fd_permits_available + granted == tunnels.fd_budget == 64
    assert tunnels.fd_permits_available == 64 - 6


def test_views_only_read(tmp_path: Path) -> None:
    kit = kit_of(make_app(tmp_path))
    session = add_session(kit, state=KitSessionState.CLOSING, bindings=((EXPOSE, 4000, TCP),))
    before = (session.state, dict(session.bindings), session.permits_held, kit.registry.budget.available)
    first = take_snapshot(kit)
    second = take_snapshot(kit)
    assert first == second
    assert (session.state, dict(session.bindings), session.permits_held, kit.registry.budget.available) == before
    assert closing_view(session).session_id == session.session_id
    assert closing_view(session).status == "closing"
    with pytest.raises(AttributeError):
        first.sessions[0].state = "active"  # type: ignore[misc]
