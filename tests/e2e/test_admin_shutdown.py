"""Graceful shutdown (SIGTERM), seen from the wire and from the admin views.

docs/protocol.md §11: on SIGTERM the kit sends GOAWAY(SHUTDOWN, "server shutting down") to every
session, lets open streams drain (up to gunicorn's graceful_timeout, less a margin), closes each
WebSocket with 1001, and exits. Until the signal, the kit's views show the session as usual.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.e2e.admin_support import WireClient, admin_get
from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local, free_port_candidate
from tests.e2e.wire import GOAWAY, OPEN, SHUTDOWN
from tests.waiting import scaled_s, wait_until
from tunnel.mux.transport import ConnectionClosed

MakeKit = Callable[..., KitProcess]
GOING_AWAY = 1001


def test_sigterm_sends_goaway_shutdown_drains_closes_1001_and_exits(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_GRACEFUL_TIMEOUT_S="4")
    wire = WireClient(kit)
    try:
        session_id = wire.hello(kit.client_token or "")["sessionId"]
        port = free_port_candidate()
        wire.bind("EXPOSE", port)
        visitor = connect_local(port)
        wire.expect(OPEN)  # never answered: the stream stays open through the drain
        wait_until(lambda: admin_get(kit, "/tunnels")["totalStreams"] == 1, 10, "the open stream")
        assert [s["sessionId"] for s in admin_get(kit, "/sessions")["sessions"]] == [session_id]

        started = time.monotonic()
        kit.process.send_signal(signal.SIGTERM)
        goaway = wire.expect(GOAWAY, timeout_s=3.0)
        assert (goaway.code, goaway.reason) == (SHUTDOWN, "server shutting down")

        # The drain: at most graceful_timeout - 2 s here, then close 1001 (going away).
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                wire.next_frame(timeout_s=6.0)
        assert closed.value.code == GOING_AWAY
        assert time.monotonic() - started < scaled_s(4.0 + 1.0)
        assert kit.wait_exit(timeout_s=scaled_s(10.0)) == 0, kit.output()
        assert "draining sessions" in kit.stderr()
        visitor.close()
    finally:
        wire.close()
