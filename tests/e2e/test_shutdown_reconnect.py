"""Issue 3, graceful shutdown: an idle client sees GOAWAY(SHUTDOWN) when the kit is SIGTERM'd,
and reconnects (backoff with jitter) as a new session to the restarted kit, binding again."""

from __future__ import annotations

from tests.e2e.admin_support import admin_get
from tests.e2e.conftest import MakeKit
from tests.e2e.loopback import connect_local, round_trip
from tests.e2e.tunnel_support import ClientProcess, TcpTarget


def test_client_reconnects_to_the_restarted_kit_after_sigterm(make_kit: MakeKit) -> None:
    echo = TcpTarget("echo")
    first = make_kit()
    client = ClientProcess.launch(first, "--pull", f"0:{echo.port}")
    try:
        client.wait_ready()
        local_port = client.pull_port(echo.port)
        with connect_local(local_port) as sock:
            round_trip(sock, b"before")
        assert first.stop() == 0  # SIGTERM: GOAWAY(SHUTDOWN), drain, exit 0
        client.wait_line("shutting down")
        # The same port, state directory and tokens, as a restarted container would have.
        second = make_kit(port=first.port, HOODY_TUNNEL_STATE_DIR=str(first.state_dir))
        client.wait_line("reconnected as", timeout_s=40)
        assert client.process.poll() is None
        # The local PULL listener stayed open throughout and works through the new session.
        with connect_local(local_port) as sock:
            round_trip(sock, b"after")
        sessions = admin_get(second, "/sessions")
        assert sessions["total"] == 1 and sessions["sessions"][0]["bindings"][0]["kind"] == "PULL"
        assert client.interrupt() == 0
    finally:
        client.kill()
        echo.close()
