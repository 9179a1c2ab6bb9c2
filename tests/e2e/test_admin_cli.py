"""``hoody-tunnel health|metrics|sessions|bindings|tunnels|kill`` against a real gunicorn.

Tables by default, the API's JSON unchanged with --json; server and token from the options, the
environment, or (the token) the credentials a local kit generated; exit codes 0 / 1 (unreachable,
Session not found) / 2 (usage, no token, grace_ms refused) / 4 (admin token refused).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

from tests.e2e.admin_reference import INVALID_GRACE_MS
from tests.e2e.admin_support import API, admin_get, gauges
from tests.e2e.harness import KitProcess
from tests.e2e.tunnel_support import ClientProcess, TcpTarget, run_cli
from tests.waiting import wait_until

MakeKit = Callable[..., KitProcess]


def server_env(kit: KitProcess, token: str | None = None) -> dict[str, str]:
    env = {"HOODY_TUNNEL_SERVER": kit.base_url}
    if token is not None:
        env["HOODY_TUNNEL_ADMIN_TOKEN"] = token
    return env


def test_health_and_metrics_need_no_token(kit: KitProcess) -> None:
    health = run_cli(kit, "health", "--server", kit.base_url)
    assert health.code == 0, health
    lines = dict(line.split(None, 1) for line in health.out.splitlines())
    assert lines["status"] == "ok" and lines["service"] == "hoody-tunnel"
    assert lines["ip"] == "127.0.0.1"

    as_json = run_cli(kit, "health", "--json", env=server_env(kit))
    body = json.loads(as_json.out)
    assert body["service"] == "hoody-tunnel" and body["userAgent"].startswith("hoody-tunnel-admin/")

    metrics = run_cli(kit, "metrics", env=server_env(kit))
    assert metrics.code == 0
    rows = dict(line.rsplit(None, 1) for line in metrics.out.splitlines()[1:])
    assert rows["hoody_tunnel_fd_permits_available"] == "512"
    samples = json.loads(run_cli(kit, "metrics", "--json", env=server_env(kit)).out)
    by_name = {s["name"]: s["value"] for s in samples if not s["labels"]}
    assert by_name["hoody_tunnel_sessions_active"] == gauges(kit)["hoody_tunnel_sessions_active"]


def test_tables_and_json_with_a_live_session_and_a_kill(kit: KitProcess) -> None:
    target = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{target.port}")
    try:
        client.wait_ready()
        env = server_env(kit, kit.admin_token)
        (session,) = admin_get(kit, "/sessions")["sessions"]
        session_id = session["sessionId"]

        sessions = run_cli(kit, "sessions", env=env)
        assert sessions.code == 0, sessions
        header, row, total = sessions.out.splitlines()
        assert header.split() == [
            "SESSION", "PEER", "PROTO", "STATE", "CONNS", "STREAMS", "IN", "OUT", "RTT", "BINDINGS"
        ]
        assert row.split()[:6] == [session_id, session["peerAddr"], "v2", "active", "1", "0/100"]
        assert row.endswith(f"PULL {target.port}/tcp")
        assert total == "1 session"
        raw = kit.get(f"{API}/bindings", headers={"Authorization": f"Bearer {kit.admin_token}"}).body
        assert run_cli(kit, "bindings", "--json", env=env).out.rstrip("\n") == raw.decode().rstrip("\n")
        bindings = run_cli(kit, "bindings", env=env).out.splitlines()
        assert bindings[1].split()[1:] == ["PULL", "tcp", str(target.port), session_id]

        refused = run_cli(kit, "kill", session_id, "--grace-ms", "9999", env=env)
        assert (refused.code, refused.err.strip()) == (2, f"hoody-tunnel: {INVALID_GRACE_MS['error']}")
        killed = run_cli(kit, "kill", session_id, "--grace-ms", "100", "--json", env=env)
        assert killed.code == 0, killed
        assert json.loads(killed.out) == {"sessionId": session_id, "status": "closing"}
        assert client.wait_exit() == 3
        wait_until(lambda: admin_get(kit, "/sessions")["total"] == 0, 10, "the session to end")
        missing = run_cli(kit, "kill", session_id, env=env)
        assert missing.code == 1
        assert missing.err.strip() == f"hoody-tunnel: Session not found: {session_id}"
        assert run_cli(kit, "sessions", env=env).out == "no sessions\n"
    finally:
        client.kill()
        target.close()


def test_token_sources_and_their_precedence(make_kit: MakeKit) -> None:
    # The kit generates its admin token and stores it where the local CLI looks.
    kit = make_kit(HOODY_TUNNEL_ADMIN_TOKEN="")
    local = {"HOODY_TUNNEL_STATE_DIR": str(kit.state_dir), **server_env(kit)}
    stored = run_cli(kit, "tunnels", env=local)
    assert stored.code == 0, stored
    assert stored.out.startswith("FD permits available: 512 of 512\n")

    # --admin-token beats the environment, which beats the stored token.
    wrong_env = {**local, "HOODY_TUNNEL_ADMIN_TOKEN": "wrong-token"}
    refused = run_cli(kit, "sessions", env=wrong_env)
    assert refused.code == 4
    assert "admin token refused" in refused.err and "wrong-token" not in refused.err
    stored_token = json.loads((kit.state_dir / "credentials.json").read_text())["adminToken"]
    assert run_cli(kit, "sessions", "--admin-token", stored_token, env=wrong_env).code == 0
    assert run_cli(kit, "sessions", "--admin-token", "wrong-token", env=local).code == 4


def test_no_token_and_an_unreachable_kit(make_kit: MakeKit) -> None:
    kit = make_kit()
    # No token anywhere (an empty state directory): a usage error, said plainly.
    empty = {"HOODY_TUNNEL_STATE_DIR": str(kit.state_dir.parent / "nothing-here"), **server_env(kit)}
    none = run_cli(kit, "bindings", env=empty)
    assert none.code == 2
    assert "no admin token" in none.err

    # Nothing listens on a port we hold bound but never listen on: connection refused.
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    try:
        url = f"http://127.0.0.1:{holder.getsockname()[1]}"
        for args in (("health",), ("sessions", "--admin-token", "t"), ("kill", "sess_x", "--admin-token", "t")):
            down = run_cli(None, *args, "--server", url)
            assert down.code == 1, (args, down)
            assert down.err.startswith(f"hoody-tunnel: cannot reach the kit at {url}: connection refused")
    finally:
        holder.close()

    bad = run_cli(kit, "health", "--server", "ftp://example")
    assert bad.code == 2 and "--server" in bad.err
