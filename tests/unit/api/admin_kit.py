"""Sessions for the admin API's unit tests: real KitSession objects, no network, never run.

A KitSession built here holds real FD permits from its kit's budget (``take_permit``), real
Binding objects, and a state; its runner sits on an in-memory transport and is never run, so it
carries no streams or byte counts. That is all the views read, so the views, schemas and
endpoints can be tested without a socket.
"""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from tunnel.api import current_kit
from tunnel.app import create_app
from tunnel.config import Settings
from tests.memory_transport import MemoryTransport
from tunnel.protocol import BindKind, BindMode
from tunnel.server.bindings import Binding
from tunnel.server.kit import Kit
from tunnel.server.kit_session import KitSession, KitSessionState, protocol_session

ADMIN_TOKEN = "unit-admin-token-0123456789"
CLIENT_TOKEN = "unit-client-token-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_app(tmp_path: Path, **overrides: object) -> Flask:
    settings = Settings(
        tokens=(CLIENT_TOKEN,), admin_token=ADMIN_TOKEN, state_dir=str(tmp_path), **overrides  # type: ignore[arg-type]
    )
    return create_app(settings)


def kit_of(app: Flask) -> Kit:
    with app.app_context():
        return current_kit()


def add_session(
    kit: Kit,
    *,
    protocol: str = "hoody-tunnel.v2",
    state: KitSessionState = KitSessionState.ACTIVE,
    peer: str = "192.168.1.100:54321",
    bindings: tuple[tuple[BindKind, int, BindMode], ...] = (),
    extra_permits: int = 0,
    created_at: float | None = None,
) -> KitSession:
    """A session in ``kit``'s registry holding 1 + ``extra_permits`` permits + one per EXPOSE."""
    session = KitSession(
        kit.settings,
        kit.metrics,
        kit.registry,
        protocol_session(kit.settings, protocol),
        MemoryTransport(protocol),
        peer_address=peer,
        user_agent="ua/1",
    )
    session.set_state(state)
    session.client_name = "hoody-cli/1.0.0"
    if created_at is not None:
        session.created_at = created_at
    assert session.take_permit()  # the WebSocket's
    for kind, port, mode in bindings:
        binding = Binding(bind_id=kit.registry.next_bind_id(), kind=kind, port=port, mode=mode)
        if kind is BindKind.EXPOSE:
            assert session.take_permit()  # the listener's (no real socket here)
        session.bindings[binding.bind_id] = binding
    for _ in range(extra_permits):
        assert session.take_permit()
    kit.registry.add(session)
    return session
