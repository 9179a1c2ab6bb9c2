"""DELETE /api/v1/tunnel/sessions/{id}, and the admin token, against a real gunicorn.

- grace_ms is validated before the session is looked up: every invalid value gives the exact
  400 body, for an unknown id and for a live one (which then stays up);
- unknown id: 404 ``Session not found``;
- 401 ``Unauthorized`` on every protected endpoint without a token, with a wrong one, with
  another scheme; health, metrics and the OpenAPI document need none;
- a kill: the client receives GOAWAY(0x0001, "closed by admin") on the wire within
  grace_ms + 1 s; a repeated DELETE while it drains answers 200 ``closing`` again, and the views
  show ``state: "closing"``; then the session is gone;
- the real ``hoody-tunnel connect`` prints "closed by admin" and exits 3;
- a parked (orphaned) session is listed as such, and deleting it closes it at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.admin_reference import (
    INVALID_GRACE_MS,
    INVALID_GRACE_MS_VALUES,
    PROTECTED_ENDPOINTS,
    PUBLIC_ENDPOINTS,
    SESSION_NOT_FOUND,
    UNAUTHORIZED,
)
from tests.e2e.admin_support import (
    API,
    WireClient,
    admin_delete,
    admin_get,
    auth,
    gauges,
    launch_shared_kit,
    views_agree_with_metrics,
)
from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local, free_port_candidate
from tests.e2e.tunnel_support import ClientProcess, TcpTarget
from tests.e2e.wire import ADMIN_CLOSE, GOAWAY, OPEN
from tests.waiting import scaled_s, wait_until

MakeKit = Callable[..., KitProcess]
UNKNOWN_ID = "sess_0123456789ab"


@pytest.fixture(scope="module")
def shared_kit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KitProcess]:
    """One kit for the tests that only read or are refused (starting gunicorn takes seconds)."""
    kit = launch_shared_kit(tmp_path_factory.mktemp("admin-kill"))
    yield kit
    kit.stop()


def session_ids(kit: KitProcess) -> list[str]:
    return [s["sessionId"] for s in admin_get(kit, "/sessions")["sessions"]]


def test_every_invalid_grace_ms_is_400_with_the_exact_body_even_for_an_unknown_id(
    kit: KitProcess,
) -> None:
    wire = WireClient(kit)
    try:
        live_id = wire.hello(kit.client_token or "")["sessionId"]
        for value in INVALID_GRACE_MS_VALUES:
            for session_id in (UNKNOWN_ID, live_id):
                reply = admin_delete(kit, session_id, f"?grace_ms={value}")
                assert (reply.status, reply.json()) == (400, INVALID_GRACE_MS), (value, session_id)
                assert reply.headers["content-type"].startswith("application/json")
        # Repeated, out of range with leading zeros, and non-ASCII digits are refused as well.
        for query in ("?grace_ms=1&grace_ms=2", "?grace_ms=0005001", "?grace_ms=%EF%BC%95", "?grace_ms"):
            reply = admin_delete(kit, UNKNOWN_ID, query)
            assert (reply.status, reply.json()) == (400, INVALID_GRACE_MS), query
        # None of that touched the live session.
        assert live_id in session_ids(kit)
        assert [s["state"] for s in admin_get(kit, "/sessions")["sessions"]] == ["active"]
    finally:
        wire.close()


@pytest.mark.parametrize("query", ["", "?grace_ms=0", "?grace_ms=5000", "?grace_ms=0050"])
def test_a_valid_grace_ms_for_an_unknown_session_is_404(shared_kit: KitProcess, query: str) -> None:
    reply = admin_delete(shared_kit, UNKNOWN_ID, query)
    assert (reply.status, reply.json()) == (404, SESSION_NOT_FOUND)


def test_an_id_with_a_slash_is_not_found_not_unrouted(shared_kit: KitProcess) -> None:
    reply = admin_delete(shared_kit, "sess_x%2Fy/z")
    assert (reply.status, reply.json()) == (404, SESSION_NOT_FOUND)


@pytest.mark.parametrize(("method", "path"), PROTECTED_ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic ZTJlOmFkbWlu"},
        {"Authorization": "e2e-admin-token-0123456789abcdef"},  # the right token, no scheme
    ],
    ids=["none", "wrong", "empty", "basic", "no-scheme"],
)
def test_protected_endpoints_answer_401_without_the_admin_token(
    shared_kit: KitProcess, method: str, path: str, headers: dict[str, str]
) -> None:
    kit = shared_kit
    reply = kit.request(method, path, headers=headers)
    assert (reply.status, reply.json()) == (401, UNAUTHORIZED)
    assert reply.headers["www-authenticate"].startswith("Bearer")
    # The client token is not an admin token (docs/admin-api.md §2).
    reply = kit.request(method, path, headers=auth(kit, kit.client_token))
    assert (reply.status, reply.json()) == (401, UNAUTHORIZED)
    # Invalid grace_ms and all: the token is checked first.
    reply = kit.request(method, f"{path}?grace_ms=-1")
    assert reply.status == 401


def test_the_scheme_is_case_insensitive_and_public_endpoints_need_no_token(
    shared_kit: KitProcess,
) -> None:
    kit = shared_kit
    reply = kit.get(f"{API}/sessions", headers={"Authorization": f"bearer {kit.admin_token}"})
    assert reply.status == 200
    for path in PUBLIC_ENDPOINTS:
        assert kit.get(path).status == 200, path


def test_kill_sends_goaway_admin_close_drains_and_ends_the_session(kit: KitProcess) -> None:
    wire = WireClient(kit)
    try:
        session_id = wire.hello(kit.client_token or "")["sessionId"]
        port = free_port_candidate()
        bound = wire.bind("EXPOSE", port)
        # A connection to the exposed port becomes a stream the wire client never answers:
        # the session has a stream open, so the drain takes the whole grace period.
        visitor = connect_local(port)
        opened = wire.expect(OPEN)
        assert opened.stream_id % 2 == 0 and opened.stream_id >= 2
        assert int.from_bytes(opened.payload[:4], "big") == bound["bindId"]
        wait_until(lambda: admin_get(kit, "/tunnels")["totalStreams"] == 1, 10, "the stream in /tunnels")

        grace_ms = 1500
        started = time.monotonic()
        reply = admin_delete(kit, session_id, f"?grace_ms={grace_ms}")
        assert (reply.status, reply.json()) == (200, {"sessionId": session_id, "status": "closing"})

        goaway = wire.expect(GOAWAY, timeout_s=grace_ms / 1000 + 1.0)
        received_s = time.monotonic() - started
        assert (goaway.code, goaway.reason) == (ADMIN_CLOSE, "closed by admin")
        assert goaway.stream_id == 0
        assert received_s < scaled_s(grace_ms / 1000 + 1.0)

        # Draining: still listed, as closing; DELETE again is 200 closing again.
        again = admin_delete(kit, session_id, "?grace_ms=10")
        assert (again.status, again.json()) == (200, {"sessionId": session_id, "status": "closing"})
        states = {s["sessionId"]: s["state"] for s in admin_get(kit, "/sessions")["sessions"]}
        assert states == {session_id: "closing"}
        tunnels = admin_get(kit, "/tunnels")
        assert [s["state"] for s in tunnels["sessions"]] == ["closing"]
        # The EXPOSE listener stopped with the GOAWAY: its binding view and permit stay until
        # the session ends, but nobody new gets in.
        with pytest.raises(OSError):
            connect_local(port, timeout_s=2.0).recv(1)

        # The drain ends by the grace period at the latest (+1 s of slack), then it is gone.
        wait_until(lambda: session_id not in session_ids(kit), grace_ms / 1000 + 2.0, "the session to end")
        ended_s = time.monotonic() - started
        assert ended_s < scaled_s(grace_ms / 1000 + 2.0)
        after = admin_delete(kit, session_id)
        assert (after.status, after.json()) == (404, SESSION_NOT_FOUND)
        tunnels = admin_get(kit, "/tunnels")
        assert tunnels["fdPermitsAvailable"] == tunnels["fdBudget"]
        visitor.close()
    finally:
        wire.close()


def test_the_killed_cli_prints_closed_by_admin_and_exits_3(kit: KitProcess) -> None:
    target = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{target.port}")
    try:
        client.wait_ready()
        (session_id,) = session_ids(kit)
        grace_ms = 200
        started = time.monotonic()
        reply = admin_delete(kit, session_id, f"?grace_ms={grace_ms}")
        assert (reply.status, reply.json()["status"]) == (200, "closing")
        client.wait_line("closed by admin", timeout_s=grace_ms / 1000 + 1.0)
        assert time.monotonic() - started < scaled_s(grace_ms / 1000 + 1.0)
        assert client.wait_exit() == 3, client.output()
        wait_until(lambda: session_ids(kit) == [], 5, "no session left")
    finally:
        client.kill()
        target.close()


def park_a_session(kit: KitProcess) -> tuple[str, int]:
    """A v2 session with an EXPOSE binding whose connection drops without a GOAWAY: parked."""
    wire = WireClient(kit)
    session_id = wire.hello(kit.client_token or "")["sessionId"]
    port = free_port_candidate()
    wire.bind("EXPOSE", port)
    wire.transport.abort()  # TCP gone, no GOAWAY, no close frame (docs/protocol.md §13.1)

    def parked() -> bool:
        tunnels = admin_get(kit, "/tunnels")
        granted = sum(s["connectionsGranted"] for s in tunnels["sessions"])
        return bool(
            tunnels["orphanedSessions"] == 1
            and granted == 1
            and tunnels["fdPermitsAvailable"] + granted == tunnels["fdBudget"]
        )

    wait_until(parked, 10, "the session to be parked")
    return session_id, port


def test_a_parked_session_is_listed_as_orphaned_everywhere(kit: KitProcess) -> None:
    session_id, port = park_a_session(kit)
    (session,) = admin_get(kit, "/sessions")["sessions"]
    # Still listed, with its binding; it holds its listener's permit, not the WebSocket's
    # (docs/protocol.md §12).
    assert (session["sessionId"], session["state"], session["connectionsGranted"]) == (
        session_id, "orphaned", 1
    )
    assert [(b["kind"], b["containerPort"]) for b in session["bindings"]] == [("EXPOSE", port)]
    assert admin_get(kit, "/bindings")["total"] == 1
    tunnels = admin_get(kit, "/tunnels")
    assert tunnels["orphanedSessions"] == 1 and tunnels["sessions"][0]["state"] == "orphaned"
    wait_until(lambda: views_agree_with_metrics(kit), 10, "views and metrics to agree")
    assert gauges(kit)["hoody_tunnel_sessions_orphaned"] == 1


def test_deleting_a_parked_session_closes_it_at_once(kit: KitProcess) -> None:
    session_id, _ = park_a_session(kit)
    started = time.monotonic()
    reply = admin_delete(kit, session_id, "?grace_ms=5000")
    assert (reply.status, reply.json()) == (200, {"sessionId": session_id, "status": "closing"})
    # "At once": nothing is attached to drain, so the grace period does not apply.
    wait_until(lambda: session_ids(kit) == [], 2.0, "the parked session to close")
    assert time.monotonic() - started < scaled_s(2.0)
    tunnels = admin_get(kit, "/tunnels")
    assert tunnels["fdPermitsAvailable"] == tunnels["fdBudget"]
