"""The admin views against a real gunicorn, with live sessions made by the real client CLI.

- every field and JSON type of every endpoint, from the reference tables (admin_reference.py);
- totals equal list lengths; one session looks the same in /sessions, /bindings, /tunnels, the
  metrics and the CLI;
- the FD invariant fdPermitsAvailable + sum(connectionsGranted) == HOODY_TUNNEL_FD_BUDGET with
  no session, idle bound sessions, and streaming ones (PULL and EXPOSE);
- the metrics parse with prometheus_client's parser and agree with the JSON views;
- one access-log line per admin request, and no token anywhere in the server's output.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.admin_reference import (
    ENDPOINT_OBJECTS,
    REFERENCE_GAUGES,
    VALID_STATES,
    type_errors,
)
from tests.e2e.admin_support import API, admin_get, auth, check_fd_invariant, gauges, views_agree_with_metrics
from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local, round_trip
from tests.e2e.tunnel_support import ClientProcess, TcpTarget, launch_with_expose, run_cli
from tests.waiting import wait_until

MakeKit = Callable[..., KitProcess]
FD_BUDGET = 40


@pytest.fixture
def echo() -> Iterator[TcpTarget]:
    target = TcpTarget("echo")
    yield target
    target.close()


def launch_clients(kit: KitProcess, echo: TcpTarget) -> tuple[ClientProcess, ClientProcess, int]:
    """A v2 client with an http EXPOSE and a PULL, and a v1 client with a PULL only."""
    first, port = launch_with_expose(  # the EXPOSE port is picked at random; retried on a clash
        kit, lambda port: ["--expose", f"{port}:127.0.0.1:{echo.port}/http", "--pull", f"0:{echo.port}"], attempts=5
    )
    second = ClientProcess.launch(kit, "--protocol", "v1", "--pull", f"0:{echo.port}")
    second.wait_ready()
    return first, second, port


def fd_invariant(kit: KitProcess) -> dict[str, Any]:
    """GET /tunnels with the FD invariant asserted against FD_BUDGET."""
    return check_fd_invariant(admin_get(kit, "/tunnels"), FD_BUDGET)


def test_every_endpoint_has_the_reference_fields_and_types(kit: KitProcess, echo: TcpTarget) -> None:
    first, second, port = launch_clients(kit, echo)
    try:
        for path, name in ENDPOINT_OBJECTS.items():
            reply = kit.get(path, headers={**auth(kit), "User-Agent": "e2e/1.0"})
            assert reply.status == 200, path
            body = reply.json()
            assert type_errors(name, body) == [], (path, body)

        sessions = admin_get(kit, "/sessions")["sessions"]
        assert len(sessions) == 2
        by_v2 = {s["isV2"]: s for s in sessions}
        v2, v1 = by_v2[True], by_v2[False]
        assert (v2["protocol"], v1["protocol"]) == ("hoody-tunnel.v2", "hoody-tunnel.v1")
        assert {s["maxStreams"] for s in sessions} == {100}  # HOODY_TUNNEL_MAX_STREAMS default
        assert all(s["state"] in VALID_STATES for s in sessions)
        assert all(s["sessionId"].startswith("sess_") and len(s["sessionId"]) == 17 for s in sessions)
        assert all(s["peerAddr"].startswith("127.0.0.1:") for s in sessions)
        expose = [b for b in v2["bindings"] if b["kind"] == "EXPOSE"]
        assert expose == [{"bindId": expose[0]["bindId"], "containerPort": port, "kind": "EXPOSE", "mode": "http"}]
        assert [(b["kind"], b["mode"], b["containerPort"]) for b in v1["bindings"]] == [
            ("PULL", "tcp", echo.port)
        ]
        assert v2["client"].startswith("hoody-tunnel/")
        assert v2["createdAt"].endswith("Z")
    finally:
        first.kill()
        second.kill()


def test_totals_and_one_session_seen_alike_by_every_view_the_metrics_and_the_cli(
    kit: KitProcess, echo: TcpTarget
) -> None:
    first, second, port = launch_clients(kit, echo)
    try:
        sessions = admin_get(kit, "/sessions")
        bindings = admin_get(kit, "/bindings")
        tunnels = admin_get(kit, "/tunnels")
        assert sessions["total"] == len(sessions["sessions"]) == len(tunnels["sessions"]) == 2
        assert bindings["total"] == len(bindings["bindings"]) == tunnels["totalBindings"] == 3
        assert tunnels["totalStreams"] == sum(s["activeStreams"] for s in tunnels["sessions"])
        assert tunnels["orphanedSessions"] == 0

        # The same bindings, from three angles.
        from_sessions = sorted(
            (b["bindId"], s["sessionId"], b["kind"], b["mode"], b["containerPort"])
            for s in sessions["sessions"]
            for b in s["bindings"]
        )
        from_bindings = sorted(
            (b["bindId"], b["sessionId"], b["kind"], b["mode"], b["port"]) for b in bindings["bindings"]
        )
        from_tunnels = sorted(
            (b["bindId"], s["sessionId"], kind, b["mode"], b["containerPort"])
            for s in tunnels["sessions"]
            for kind, key in (("EXPOSE", "exposeBindings"), ("PULL", "pullBindings"))
            for b in s[key]
        )
        assert from_sessions == from_bindings == from_tunnels
        assert len({bind_id for bind_id, *_ in from_bindings}) == 3  # unique across the process
        for field in ("sessionId", "peerAddr", "protocol", "connectionsGranted", "activeStreams", "state"):
            assert [s[field] for s in sessions["sessions"]] == [s[field] for s in tunnels["sessions"]]

        # The metrics agree.
        wait_until(lambda: views_agree_with_metrics(kit), 10, "views and metrics to agree")

        # The CLI, as JSON (the API's own body) and as a table.
        env = {"HOODY_TUNNEL_SERVER": kit.base_url, "HOODY_TUNNEL_ADMIN_TOKEN": kit.admin_token or ""}
        cli_sessions = run_cli(kit, "sessions", "--json", env=env)
        assert cli_sessions.code == 0, cli_sessions
        assert json.loads(cli_sessions.out) == sessions
        cli_bindings = run_cli(kit, "bindings", "--json", env=env)
        assert json.loads(cli_bindings.out) == bindings
        table = run_cli(kit, "sessions", env=env)
        assert table.code == 0 and table.out.endswith("2 sessions\n"), table
        for session in sessions["sessions"]:
            (line,) = [line for line in table.out.splitlines() if line.startswith(session["sessionId"])]
            assert session["peerAddr"] in line and session["state"] in line
        tunnels_table = run_cli(kit, "tunnels", env=env)
        assert f"FD permits available: {tunnels['fdPermitsAvailable']} of {tunnels['fdBudget']}" in tunnels_table.out
        assert f":{port}" in tunnels_table.out
        bindings_table = run_cli(kit, "bindings", env=env)
        assert bindings_table.out.endswith("3 bindings\n")
    finally:
        first.kill()
        second.kill()


def test_metrics_parse_and_carry_the_reference_gauges(kit: KitProcess) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    reply = kit.get(f"{API}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    for name, help_text in REFERENCE_GAUGES.items():
        assert families[name].type == "gauge"
        assert families[name].documentation == help_text
    assert views_agree_with_metrics(kit)


def test_fd_invariant_with_no_session_idle_bindings_and_streams(make_kit: MakeKit, echo: TcpTarget) -> None:
    kit = make_kit(HOODY_TUNNEL_FD_BUDGET=str(FD_BUDGET))
    idle = fd_invariant(kit)
    assert idle["fdPermitsAvailable"] == FD_BUDGET and idle["sessions"] == []
    assert gauges(kit)["hoody_tunnel_fd_permits_available"] == FD_BUDGET

    first, second, port = launch_clients(kit, echo)
    sockets: list[socket.socket] = []
    try:
        bound = fd_invariant(kit)
        granted = {s["protocol"]: s["connectionsGranted"] for s in bound["sessions"]}
        # The WebSocket, plus the EXPOSE listener (docs/protocol.md §12); a PULL binding holds none.
        assert granted == {"hoody-tunnel.v2": 2, "hoody-tunnel.v1": 1}
        assert bound["fdPermitsAvailable"] == FD_BUDGET - 3

        # Streams: three PULL connections through the v2 client, two through the v1 client.
        # Two connections into the kit's EXPOSE listener, which is in http mode: each sends an
        # unfinished request head, so it holds its permit on the kit but has no stream yet (a
        # stream opens with the first complete request; docs/http-mode.md).
        for client, count in ((first, 3), (second, 2)):
            for _ in range(count):
                sock = connect_local(client.pull_port(echo.port))
                sockets.append(sock)
                round_trip(sock, b"pull")
        for _ in range(2):
            sock = connect_local(port)
            sockets.append(sock)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")

        def streaming() -> dict[str, Any] | None:
            tunnels = fd_invariant(kit)
            granted = sum(s["connectionsGranted"] for s in tunnels["sessions"])
            return tunnels if tunnels["totalStreams"] == 5 and granted == 10 else None

        tunnels = wait_until(streaming, 10, "five streams and two held EXPOSE connections")
        by_protocol = {s["protocol"]: s for s in tunnels["sessions"]}
        assert by_protocol["hoody-tunnel.v2"]["activeStreams"] == 3
        assert by_protocol["hoody-tunnel.v2"]["connectionsGranted"] == 2 + 5
        assert by_protocol["hoody-tunnel.v1"]["connectionsGranted"] == 1 + 2
        assert tunnels["fdPermitsAvailable"] == FD_BUDGET - 10
        wait_until(lambda: views_agree_with_metrics(kit), 10, "views and metrics to agree")

        # Streams end: their permits come back.
        for sock in sockets:
            sock.close()
        sockets.clear()
        wait_until(
            lambda: fd_invariant(kit)["fdPermitsAvailable"] == FD_BUDGET - 3,
            10,
            "stream permits to return",
        )
    finally:
        for sock in sockets:
            sock.close()
        first.interrupt()
        second.interrupt()
    wait_until(lambda: fd_invariant(kit)["fdPermitsAvailable"] == FD_BUDGET, 10, "every permit back")
    assert gauges(kit)["hoody_tunnel_fd_permits_available"] == FD_BUDGET


def test_admin_requests_are_access_logged_and_no_token_reaches_the_logs(
    kit: KitProcess, echo: TcpTarget
) -> None:
    client = ClientProcess.launch(kit, "--pull", f"0:{echo.port}")
    try:
        client.wait_ready()
        for path in ("/sessions", "/bindings", "/tunnels"):
            admin_get(kit, path)
            assert kit.get(f"{API}{path}", headers=auth(kit, "a-wrong-token-value")).status == 401
        kit.request("DELETE", f"{API}/sessions/sess_000000000000?grace_ms=10", headers=auth(kit))
        env = {"HOODY_TUNNEL_SERVER": kit.base_url, "HOODY_TUNNEL_ADMIN_TOKEN": kit.admin_token or ""}
        cli = run_cli(kit, "tunnels", env=env)
        assert cli.code == 0

        def logged() -> str | None:
            output = kit.stdout() + kit.stderr()
            return output if output.count('"DELETE /api/v1/tunnel/sessions/') >= 1 and output.count(
                '"GET /api/v1/tunnel/tunnels '
            ) >= 3 else None

        output = wait_until(logged, 10, "the access log lines")
        for path in ("sessions", "bindings"):
            assert output.count(f'"GET /api/v1/tunnel/{path} HTTP/1.1" 200') >= 1
            assert output.count(f'"GET /api/v1/tunnel/{path} HTTP/1.1" 401') >= 1
        for secret in (kit.admin_token, kit.client_token, "a-wrong-token-value"):
            assert secret and secret not in output
            assert secret not in cli.out + cli.err
            assert secret not in client.output()
    finally:
        client.kill()
