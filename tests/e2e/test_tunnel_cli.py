"""The ``hoody-tunnel connect`` CLI against a real kit: stopping, usage errors, dead targets, and
liveness (PING/PONG keeps an idle session; a silent peer is dropped after 3 x heartbeat)."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.e2e.admin_support import admin_get
from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local, recv_exactly, reserved_dead_port
from tests.e2e.tunnel_support import (
    ClientProcess,
    RawClient,
    TcpTarget,
    WsClosed,
    launch_with_expose,
    run_cli,
)
from tests.e2e.wire import BIND_OK, GOAWAY, PING
from tests.waiting import scaled_s

MakeKit = Callable[..., KitProcess]

SESSION_LINE = re.compile(r"connected to \S+ as (sess_[0-9a-f]{12})")
# "Promptly": far below any timeout that a hang would hit (connect timeouts are 10 s).
PROMPT_S = 5.0


def _session_id(client: ClientProcess) -> str:
    match = SESSION_LINE.search(client.output())
    assert match, client.output()
    return match.group(1)


def _assert_closed_promptly(sock: socket.socket) -> None:
    """The peer closes or resets ``sock`` soon: EOF or ECONNRESET, never a hang."""
    sock.settimeout(scaled_s(PROMPT_S))
    try:
        sock.sendall(b"anyone there?")
        data = sock.recv(1024)
    except ConnectionError:
        return
    except TimeoutError:
        raise AssertionError("the connection was left hanging") from None
    assert data == b"", f"got {data!r} from a dead target"


@pytest.mark.timeout(60)
def test_ctrl_c_exits_0_and_the_kit_closes_the_session(kit: KitProcess) -> None:
    target = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{target.port}")
    try:
        client.wait_ready()
        session_id = _session_id(client)
        with connect_local(client.pull_port(target.port)) as sock:  # the session really works
            sock.sendall(b"ping")
            assert recv_exactly(sock, 4) == b"ping"

        assert client.interrupt() == 0, client.output()
        line = kit.wait_log(rf"session closed: id={session_id} [^\n]*").group(0)
        assert "reason=dead" not in line and "protocol_error" not in line, line
        assert "Traceback" not in client.output(), client.output()
    finally:
        client.kill()
        target.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expose", "notaport"], "'notaport'"),
        (["--expose", "80/udp"], "'80/udp'"),
        (["--pull", "1:2:3:4"], "'1:2:3:4'"),
        ([], "--expose or --pull"),
    ],
    ids=["expose-not-a-port", "expose-bad-mode", "pull-too-many-parts", "no-bindings"],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    # Nothing listens on port 9 of loopback: a usage error must be found before connecting.
    result = run_cli(None, "connect", "ws://127.0.0.1:9", "--token", "t", *args)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hoody-tunnel"), result.err
    assert message in lines[0], result.err
    assert "Traceback" not in result.err


@pytest.mark.timeout(60)
def test_a_pull_to_a_dead_container_port_closes_the_local_connection_and_the_client_carries_on(
    kit: KitProcess,
) -> None:
    dead = reserved_dead_port()
    dead_port = dead.getsockname()[1]
    live = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{dead_port}", "--pull", f"0:{live.port}")
    try:
        client.wait_ready()
        for _ in range(2):  # a second try fails just as cleanly
            with connect_local(client.pull_port(dead_port)) as sock:
                _assert_closed_promptly(sock)
            assert client.process.poll() is None, client.output()
        with connect_local(client.pull_port(live.port)) as sock:
            sock.sendall(b"alive")
            assert recv_exactly(sock, 5) == b"alive"
    finally:
        client.kill()
        dead.close()
        live.close()


@pytest.mark.timeout(60)
def test_an_expose_whose_local_target_is_down_closes_the_external_connection(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    dead = reserved_dead_port()
    client = None
    try:
        client, container_port = launch_with_expose(
            kit, lambda port: ["--expose", f"{port}:127.0.0.1:{dead.getsockname()[1]}"]
        )
        for _ in range(2):
            with connect_local(container_port) as sock:
                _assert_closed_promptly(sock)
            assert client.process.poll() is None, client.output()
    finally:
        if client is not None:
            client.kill()
        dead.close()


HEARTBEAT_MS = 200


def _idle_answering_pings(raw: RawClient, idle_s: float) -> None:
    """Stay idle for ``idle_s``, only answering the kit's PINGs (as any client must)."""
    idle_until = time.monotonic() + idle_s
    while (remaining := idle_until - time.monotonic()) > 0:
        try:
            frame = raw.recv_frame(timeout_s=remaining / max(scaled_s(1.0), 1e-9))
        except TimeoutError:
            return
        assert frame.type == PING, f"unexpected {frame} while idle"


@pytest.mark.timeout(60)
def test_idle_sessions_stay_alive_on_ping_pong(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_HEARTBEAT_MS=str(HEARTBEAT_MS))
    target = TcpTarget("echo")
    cli = ClientProcess.launch(kit, "--pull", f"0:{target.port}")
    raw = RawClient.connect(kit)
    try:
        cli.wait_ready()
        cli_session = _session_id(cli)
        welcome = raw.hello(kit.client_token)
        assert welcome["heartbeatMs"] == HEARTBEAT_MS

        # Both sessions stay idle for 1.5 s (over 7 heartbeats); the raw client only answers
        # the kit's PINGs, as any client must.
        _idle_answering_pings(raw, 1.5)
        assert raw.pings_received >= 2, raw.frames

        assert raw.bind("PULL", target.port).type == BIND_OK  # the raw session is alive
        assert cli.process.poll() is None, cli.output()
        with connect_local(cli.pull_port(target.port)) as sock:  # and so is the CLI's
            sock.sendall(b"still here")
            assert recv_exactly(sock, 10) == b"still here"
        for session_id in (cli_session, welcome["sessionId"]):  # never dropped meanwhile
            assert not re.search(rf"session (closed|parked): id={session_id}", kit.output()), kit.output()
    finally:
        raw.close()
        cli.kill()
        target.close()


@pytest.mark.timeout(60)
def test_a_session_whose_hello_comes_late_is_kept_alive_by_ping_pong(make_kit: MakeKit) -> None:
    """The heartbeat starts with the session, whenever the HELLO arrives within the handshake
    timeout: slow clients (HELLO 0.1 .. 0.9 s after the upgrade, spread over a second so no
    timer phase is missed) idle for 1.5 s answering PINGs and are still alive afterwards."""
    kit = make_kit(HOODY_TUNNEL_HEARTBEAT_MS=str(HEARTBEAT_MS))
    target = TcpTarget("echo")
    delays_s = (0.1, 0.3, 0.5, 0.7, 0.9)
    outcomes: dict[float, str] = {}

    def slow_client(delay_s: float) -> None:
        raw = RawClient.connect(kit)
        try:
            time.sleep(delay_s)  # the stimulus: a slow client, not a synchronisation
            raw.hello(kit.client_token)
            _idle_answering_pings(raw, 1.5)
            frame = raw.bind("PULL", target.port)
            outcomes[delay_s] = "alive" if frame.type == BIND_OK else repr(frame)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcomes[delay_s] = f"{exc!r}; pings received: {raw.pings_received}"
        finally:
            raw.close()

    threads = [threading.Thread(target=slow_client, args=(d,), daemon=True) for d in delays_s]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled_s(30))
        assert outcomes == dict.fromkeys(delays_s, "alive"), outcomes
    finally:
        target.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_peer_that_stops_answering_is_dropped_after_three_heartbeats(
    make_kit: MakeKit, version: str
) -> None:
    kit = make_kit(HOODY_TUNNEL_HEARTBEAT_MS=str(HEARTBEAT_MS))
    raw = RawClient.connect(kit, version)
    try:
        session_id = raw.hello(kit.client_token)["sessionId"]
        welcomed = time.monotonic()
        # From now on the raw client neither reads nor writes. v1: the session is closed;
        # v2: it is parked for a resume (docs/protocol.md §10, §13.1).
        kit.wait_log(rf"session (closed|parked): id={session_id} [^\n]*reason=dead", timeout_s=10)
        dropped_after_s = time.monotonic() - welcomed
        # Nothing was received since the HELLO: not dead before 3 x heartbeat (some slack for
        # the clocks of two processes), and found well before a 10 s bound.
        assert dropped_after_s >= 3 * HEARTBEAT_MS / 1000 - 0.1, dropped_after_s
        sessions = {s["sessionId"]: s for s in admin_get(kit, "/tunnels")["sessions"]}
        if version == "v1":
            assert session_id not in sessions, sessions
        else:
            assert sessions[session_id]["state"] == "orphaned", sessions

        # What reached the silent client: PINGs, then the end of the connection; no GOAWAY.
        raw.answer_pings = False
        frames, closed = raw.read_until_closed(timeout_s=10)
        assert isinstance(closed, WsClosed)
        assert not [frame for frame in frames if frame.type == GOAWAY], frames
        assert all(frame.type == PING for frame in frames), frames
        assert frames, "the kit never sent a PING before declaring the connection dead"
    finally:
        raw.abort()
