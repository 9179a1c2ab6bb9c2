"""Resume edges (docs/protocol.md §11, §12, §13) against a real gunicorn kit and the real CLI.

* the proxy itself cuts where it is told (the tool the other tests trust);
* a parked session: ``state: "orphaned"``, bindings kept, the WebSocket's permit released,
  EXPOSE connections made meanwhile wait and are served after the resume, local PULL
  connections too, long-lived connections carry on; metrics and ``bytesRetransmitted``;
* the TTL: an expired session releases bindings, permits and the EXPOSE port; the CLI whose
  session expired starts a new one and binds again;
* failed resumes (wrong token, unknown session, expired, admin-killed) get GOAWAY(RESUME_FAILED)
  and leave a parked session as it was; a resume token stops working once a newer one was
  acknowledged; a resume while the kit still holds the old connection supersedes it;
* never parked: v1 sessions, an orderly client close, a protocol error, an admin kill;
* the demonstration: a connection pinging every 100 ms lives through a 5 s outage.

The raw client is the project's own transport and sans-I/O Session (resume needs the received
map), but what the tests assert about GOAWAY is decoded from the bytes on the wire.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from tests.e2e.admin_support import admin_get, check_fd_invariant, metric
from tests.e2e.fault_proxy import UP, FaultProxy, launch_client
from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local, free_port_candidate, listen_loopback, recv_exactly, round_trip
from tests.e2e.tunnel_support import TcpTarget
from tests.e2e.wire import ADMIN_CLOSE, PROTOCOL_ERROR, RESUME_FAILED, SUPERSEDED, Frame, split_frames
from tests.e2e.wire import encode_frame as encode_wire_frame
from tests.waiting import holds_for, scaled_s, wait_until
from tunnel.mux.transport import ConnectionClosed, SocketTransport, TransportError
from tunnel.mux.ws_client import connect
from tunnel.protocol import (
    BindKind,
    BindMode,
    BindRequest,
    FrameType,
    Hello,
    HelloFrame,
    ResumeRequest,
    Role,
    Session,
    SessionConfig,
    encode_frame,
)

MakeKit = Callable[..., KitProcess]
API = "/api/v1/tunnel"
WINDOW = 256 * 1024
RESUMED_LINE = re.compile(r"resumed (sess_[0-9a-f]{12}) after (\d+\.\d) s")


# == helpers ====================================================================================


def sessions(kit: KitProcess) -> list[dict[str, Any]]:
    return list(admin_get(kit, "/sessions")["sessions"])


def session_by_id(kit: KitProcess, session_id: str) -> dict[str, Any] | None:
    return next((s for s in sessions(kit) if s["sessionId"] == session_id), None)


def wait_state(kit: KitProcess, session_id: str, state: str, timeout_s: float = 10) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        found = session_by_id(kit, session_id)
        return found if found is not None and found["state"] == state else None

    return wait_until(
        probe, timeout_s, f"{session_id} {state}", context=lambda: f"{sessions(kit)}\n{kit.stderr()[-3000:]}"
    )


def wait_gone(kit: KitProcess, session_id: str, timeout_s: float = 10) -> list[str]:
    """Wait until ``session_id`` is no longer listed; returns every state seen meanwhile."""
    seen: list[str] = []

    def probe() -> bool:
        found = session_by_id(kit, session_id)
        if found is not None:
            seen.append(found["state"])
        return found is None

    wait_until(
        probe,
        timeout_s,
        f"{session_id} gone",
        context=lambda: f"states seen: {sorted(set(seen))}; sessions: {sessions(kit)}",
    )
    return seen


def tunnels_checked(kit: KitProcess) -> dict[str, Any]:
    """GET /tunnels with the FD invariant of docs/protocol.md §12 asserted."""
    return check_fd_invariant(admin_get(kit, "/tunnels"))


def dial(port: int) -> socket.socket:
    return connect_local(port, read_timeout_s=20)


def nothing_arrives(sock: socket.socket, within_s: float) -> bool:
    """True when no byte (and no EOF) arrives within ``within_s`` (an absence check)."""
    sock.settimeout(within_s)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(scaled_s(20))
    raise AssertionError(f"got {data!r} while the session was parked")


# -- a raw client on the project's transport and Session ----------------------------------------


def open_transport(url: str, version: int = 2) -> SocketTransport:
    return connect(url, [f"hoody-tunnel.v{version}"], timeout_s=scaled_s(10), headers={"User-Agent": "e2e-resume/1.0"})


def read_frames(transport: SocketTransport, until: Callable[[Frame], bool], timeout_s: float = 10,
                feed: Session | None = None) -> tuple[Frame | None, list[Frame]]:
    """Read until a frame satisfies ``until`` (returned) or the connection ends (None).
    Every frame read is returned too; ``feed`` gets each message and its answers are sent."""
    seen: list[Frame] = []
    deadline = time.monotonic() + scaled_s(timeout_s)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching frame in time; frames: {[(f.type, f.stream_id) for f in seen]}")
        try:
            with gevent.Timeout(remaining, TimeoutError("no frame in time")):
                message = bytes(transport.receive_message())
        except ConnectionClosed:
            return None, seen
        except TimeoutError:
            continue
        frames = split_frames(message)
        seen.extend(frames)
        if feed is not None:
            try:
                feed.receive_message(message, time.monotonic())
            except Exception:  # noqa: BLE001 - the wire frames are what the test asserts
                pass
            answers = feed.messages_to_send()
            if answers:
                try:
                    transport.send_messages(answers)
                except TransportError:
                    pass
        for frame in frames:
            if frame.type == FrameType.PING and feed is None:
                transport.send_messages([encode_wire_frame(FrameType.PONG, 0, frame.payload)])
            if until(frame):
                return frame, seen


class RawClient:
    """One tunnel session driven by hand: the project's Session over the project's transport."""

    def __init__(self, kit: KitProcess, *, version: int = 2, url: str | None = None) -> None:
        self.kit = kit
        self.url = url or kit.ws_url
        self.version = version
        self.session = Session(
            SessionConfig(
                role=Role.CLIENT,
                version=version,
                receive_window_size=WINDOW,
                max_frame_size=4 * 1024 * 1024 - 10,
                max_streams=100,
                heartbeat_interval_s=3600.0,
            )
        )
        self.transport = open_transport(self.url, version)
        self.session.send_hello(Hello(token=kit.client_token or "", client="e2e-resume/1.0", window=WINDOW))
        self.flush()
        frame, seen = read_frames(self.transport, lambda f: f.type in (FrameType.WELCOME, FrameType.GOAWAY), feed=self.session)
        assert frame is not None and frame.type == FrameType.WELCOME, seen
        self.welcome: dict[str, Any] = frame.json()
        self.session_id: str = self.welcome["sessionId"]

    def flush(self) -> None:
        messages = self.session.messages_to_send()
        if messages:
            self.transport.send_messages(messages)

    def bind_expose(self, port: int) -> int:
        self.session.send_bind(BindRequest(1, BindKind.EXPOSE, port, BindMode.TCP))
        self.flush()
        frame, seen = read_frames(self.transport, lambda f: f.type in (FrameType.BIND_OK, FrameType.BIND_ERR), feed=self.session)
        assert frame is not None and frame.type == FrameType.BIND_OK, seen
        return int(frame.json()["bindId"])

    def acknowledge(self) -> None:
        """Send something after WELCOME, so the kit knows the client holds the new token."""
        self.session.send_ping(b"ack12345")
        self.flush()
        read_frames(self.transport, lambda f: f.type == FrameType.PONG, feed=self.session)

    def cut(self) -> None:
        """Drop the connection without GOAWAY or close frame (a dead network)."""
        self.transport.abort()

    def resume(self) -> tuple[Frame | None, list[Frame]]:
        """HELLO.resume on a new connection (the Session builds the received map); returns the
        answering WELCOME or GOAWAY frame."""
        transport = open_transport(self.url, self.version)
        if self.session.state.name == "OPEN":
            self.session.detach()
        self.session.send_resume(self.kit.client_token or "", "e2e-resume/1.0")
        self.transport = transport
        self.flush()
        frame, seen = read_frames(transport, lambda f: f.type in (FrameType.WELCOME, FrameType.GOAWAY), feed=self.session)
        if frame is not None and frame.type == FrameType.WELCOME:
            self.welcome = frame.json()
        return frame, seen

    def close(self) -> None:
        try:
            self.transport.abort()
        except TransportError:
            pass


def crafted_resume(url: str, *, token: str, session_id: str, resume_token: str, version: int = 2) -> tuple[Frame | None, list[Frame]]:
    """A HELLO.resume written by hand on a new connection; returns the kit's answer frame."""
    transport = open_transport(url, version)
    try:
        hello = Hello(token=token, client="e2e-guess/1.0", window=WINDOW,
                      resume=ResumeRequest(session_id, resume_token, {}))
        transport.send_messages([bytes(encode_frame(HelloFrame(hello)))])
        return read_frames(transport, lambda f: f.type in (FrameType.WELCOME, FrameType.GOAWAY))
    finally:
        transport.abort()


def assert_goaway(answer: tuple[Frame | None, list[Frame]], code: int) -> Frame:
    frame, seen = answer
    assert frame is not None, f"connection ended without GOAWAY; frames: {seen}"
    assert frame.type == FrameType.GOAWAY, f"expected GOAWAY, got {frame.type:#x}: {frame.payload[:200]!r}"
    assert frame.code == code, f"GOAWAY code {frame.code:#06x}, want {code:#06x} ({frame.reason!r})"
    return frame


# == the proxy itself ===========================================================================


def test_fault_proxy_cuts_at_the_requested_byte(tmp_path: Any) -> None:
    """cut_after(n) forwards exactly n bytes, then both ends see a reset; pause stalls."""
    received = bytearray()
    ended = threading.Event()
    server = listen_loopback(backlog=4)

    def serve() -> None:
        conn, _ = server.accept()
        try:
            while chunk := conn.recv(65536):
                received.extend(chunk)
        except OSError:
            pass
        ended.set()
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    with FaultProxy(server.getsockname()[1]) as proxy:
        sock = dial(proxy.port)
        proxy.pause()
        sock.sendall(b"a" * 1000)
        holds_for(lambda: not received, 0.2, "no bytes across the paused proxy")
        proxy.unpause()
        wait_until(lambda: len(received) == 1000, 5, "1000 bytes after unpause")
        proxy.cut_after(12345, UP)
        with pytest.raises(OSError):
            for _ in range(100):
                sock.sendall(bytes(range(256)) * 64)
                sock.recv(1)  # the echo never comes; the reset does
        assert ended.wait(scaled_s(5))
        assert len(received) == 1000 + 12345, len(received)
        assert proxy.cuts == 1
        sock.close()
    server.close()


# == parking =====================================================================================


@pytest.mark.timeout(90)
def test_parked_session_keeps_bindings_and_serves_waiting_connections_after_resume(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    echo = TcpTarget("echo")
    proxy = FaultProxy(kit.port)
    client = None
    try:
        client, container_port = launch_client(
            kit, proxy, lambda port: ["--pull", f"0:{echo.port}", "--expose", f"{port}:127.0.0.1:{echo.port}"]
        )
        pull_port = client.pull_port(echo.port)
        [before] = sessions(kit)
        session_id = before["sessionId"]
        # Two long-lived connections, one on each path.
        expose_a = dial(container_port)
        pull_b = dial(pull_port)
        round_trip(expose_a, b"A before")
        round_trip(pull_b, b"B before")
        granted_before = tunnels_checked(kit)["sessions"][0]["connectionsGranted"]
        assert granted_before == 4, tunnels_checked(kit)  # WebSocket, listener, two stream sockets

        proxy.refuse(True)
        proxy.cut("test: network gone")
        parked = wait_state(kit, session_id, "orphaned")
        client.wait_line("connection lost")
        client.wait_line("resuming")
        tunnels = tunnels_checked(kit)
        assert tunnels["orphanedSessions"] == 1, tunnels
        assert tunnels["sessions"][0]["state"] == "orphaned", tunnels
        # The WebSocket's permit is released; listener and stream sockets keep theirs.
        assert tunnels["sessions"][0]["connectionsGranted"] == granted_before - 1, tunnels
        assert sorted(b["kind"] for b in parked["bindings"]) == ["EXPOSE", "PULL"], parked
        assert len(admin_get(kit, "/bindings")["bindings"]) == 2
        assert metric(kit, "hoody_tunnel_sessions_orphaned") == 1.0

        # While parked: a new EXPOSE connection waits in the backlog; a local PULL connection
        # is accepted by the client and waits; the long-lived ones keep their data.
        expose_c = dial(container_port)
        expose_c.sendall(b"C made while parked")
        pull_d = dial(pull_port)
        pull_d.sendall(b"D made while parked")
        expose_a.sendall(b"A during the outage")
        pull_b.sendall(b"B during the outage")
        assert nothing_arrives(expose_c, 0.3) and nothing_arrives(pull_d, 0.05)
        assert session_by_id(kit, session_id)["state"] == "orphaned"  # type: ignore[index]

        proxy.refuse(False)
        line = client.wait_line("resumed sess_", 30)
        match = RESUMED_LINE.search(line)
        assert match and match.group(1) == session_id, line

        assert recv_exactly(expose_c, 19) == b"C made while parked"
        assert recv_exactly(pull_d, 19) == b"D made while parked"
        assert recv_exactly(expose_a, 19) == b"A during the outage"
        assert recv_exactly(pull_b, 19) == b"B during the outage"
        round_trip(expose_a, b"A after")
        round_trip(pull_b, b"B after")

        after = wait_state(kit, session_id, "active")
        assert len(sessions(kit)) == 1
        assert tunnels_checked(kit)["orphanedSessions"] == 0
        assert metric(kit, "hoody_tunnel_sessions_orphaned") == 0.0
        assert metric(kit, "hoody_tunnel_resumes_total", outcome="resumed") == 1.0
        assert metric(kit, "hoody_tunnel_outage_duration_seconds_count") == 1.0
        for sock in (expose_a, pull_b, expose_c, pull_d):
            sock.close()
        assert "session expired" not in client.output()
        # The session view tells how much the resumes cost.
        assert isinstance(after.get("bytesRetransmitted"), int), after
    finally:
        if client is not None:
            client.kill()
        proxy.close()
        echo.close()


@pytest.mark.timeout(60)
def test_ttl_expiry_releases_bindings_permits_and_the_expose_port(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1", HOODY_TUNNEL_ORPHAN_TTL_MS="1000")
    echo = TcpTarget("echo")
    client = None
    try:
        client, container_port = launch_client(
            kit, None, lambda port: ["--pull", f"0:{echo.port}", "--expose", f"{port}:127.0.0.1:{echo.port}"]
        )
        pull_port = client.pull_port(echo.port)
        [info] = sessions(kit)
        expose_a = dial(container_port)
        round_trip(expose_a, b"held stream")
        pull_b = dial(pull_port)
        round_trip(pull_b, b"held pull stream")
        budget = tunnels_checked(kit)["fdBudget"]
        assert tunnels_checked(kit)["sessions"][0]["connectionsGranted"] == 4

        client.kill()  # SIGKILL: the client cannot say goodbye, nor come back
        killed_at = time.monotonic()
        wait_state(kit, info["sessionId"], "orphaned", 5)
        wait_gone(kit, info["sessionId"], 15)
        assert time.monotonic() - killed_at >= 0.9, "expired before its TTL"

        tunnels = tunnels_checked(kit)
        assert tunnels["sessions"] == [] and tunnels["orphanedSessions"] == 0, tunnels
        assert tunnels["fdPermitsAvailable"] == budget, tunnels
        assert admin_get(kit, "/bindings")["bindings"] == []
        assert metric(kit, "hoody_tunnel_sessions_orphaned") == 0.0
        # The stream's kit-side socket is closed: the held connection ends.
        expose_a.settimeout(scaled_s(5))
        try:
            assert expose_a.recv(1) == b""
        except ConnectionResetError:
            pass
        # The EXPOSE port is free again.
        mine = socket.socket()
        try:
            mine.bind(("127.0.0.1", container_port))
            mine.listen(1)
        finally:
            mine.close()
        expose_a.close()
        pull_b.close()
    finally:
        if client is not None:
            client.kill()
        echo.close()


@pytest.mark.timeout(60)
def test_client_whose_session_expired_starts_a_new_one_and_binds_again(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1", HOODY_TUNNEL_ORPHAN_TTL_MS="1000")
    echo = TcpTarget("echo")
    proxy = FaultProxy(kit.port)
    client = None
    try:
        client, container_port = launch_client(kit, proxy, lambda port: ["--expose", f"{port}:127.0.0.1:{echo.port}"])
        [info] = sessions(kit)
        proxy.refuse(True)
        proxy.cut("test: network gone")
        wait_state(kit, info["sessionId"], "orphaned", 5)
        wait_gone(kit, info["sessionId"], 15)
        proxy.refuse(False)
        client.wait_line("session expired, starting a new one", 40)
        line = client.wait_line("reconnected as sess_", 20)
        new_id = re.search(r"sess_[0-9a-f]{12}", line).group(0)  # type: ignore[union-attr]
        assert new_id != info["sessionId"]
        wait_state(kit, new_id, "active")
        with dial(container_port) as sock:
            round_trip(sock, b"bound again")
    finally:
        if client is not None:
            client.kill()
        proxy.close()
        echo.close()


# == failed resumes ===============================================================================


@pytest.mark.timeout(60)
def test_failed_resumes_get_resume_failed_and_leave_the_parked_session_alone(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    raw = RawClient(kit)
    port = free_port_candidate()
    try:
        raw.bind_expose(port)
        raw.acknowledge()
        first_token = raw.welcome["resumeToken"]
        raw.cut()
        parked = wait_state(kit, raw.session_id, "orphaned")
        token = kit.client_token or ""

        attempts = {
            "wrong resume token": dict(session_id=raw.session_id, resume_token=first_token[:-4] + "AAAA"),
            "empty resume token": dict(session_id=raw.session_id, resume_token=""),
            "unknown session": dict(session_id="sess_000000000000", resume_token=first_token),
        }
        for what, fields in attempts.items():
            refusal = assert_goaway(crafted_resume(kit.ws_url, token=token, **fields), RESUME_FAILED)
            assert first_token not in refusal.reason, what
            still = session_by_id(kit, raw.session_id)
            assert still is not None and still["state"] == "orphaned", (what, still)
            assert still["bindings"] == parked["bindings"], what
            tunnels_checked(kit)
        assert metric(kit, "hoody_tunnel_resumes_total", outcome="failed") == float(len(attempts))

        # The rightful client still gets its session back, with a new token.
        answer, seen = raw.resume()
        assert answer is not None and answer.type == FrameType.WELCOME, seen
        welcome = answer.json()
        assert welcome["resumed"] is True and welcome["sessionId"] == raw.session_id, welcome
        assert welcome["resumeToken"] != first_token
        assert isinstance(welcome["received"], dict), welcome
        wait_state(kit, raw.session_id, "active")
        assert metric(kit, "hoody_tunnel_resumes_total", outcome="resumed") == 1.0

        # Once the new WELCOME is acknowledged, the old token stops working.
        raw.acknowledge()
        raw.cut()
        wait_state(kit, raw.session_id, "orphaned")
        assert_goaway(
            crafted_resume(kit.ws_url, token=token, session_id=raw.session_id, resume_token=first_token), RESUME_FAILED
        )
        assert session_by_id(kit, raw.session_id)["state"] == "orphaned"  # type: ignore[index]
        answer, seen = raw.resume()
        assert answer is not None and answer.type == FrameType.WELCOME, seen
        wait_state(kit, raw.session_id, "active")
    finally:
        raw.close()


@pytest.mark.timeout(60)
def test_resume_after_the_ttl_fails(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_ORPHAN_TTL_MS="1000")
    raw = RawClient(kit)
    try:
        raw.cut()
        wait_state(kit, raw.session_id, "orphaned", 5)
        wait_gone(kit, raw.session_id, 15)
        assert_goaway(raw.resume(), RESUME_FAILED)
        assert sessions(kit) == []
    finally:
        raw.close()


@pytest.mark.timeout(60)
def test_admin_killed_sessions_are_not_parked_and_cannot_be_resumed(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    headers = {"Authorization": f"Bearer {kit.admin_token}"}
    budget = tunnels_checked(kit)["fdBudget"]

    # Killed while active: GOAWAY(ADMIN_CLOSE); the client then drops the connection: not parked.
    active = RawClient(kit)
    try:
        active.bind_expose(free_port_candidate())
        reply = kit.request("DELETE", f"{API}/sessions/{active.session_id}?grace_ms=0", headers=headers)
        assert reply.status in (200, 202), reply
        assert_goaway(read_frames(active.transport, lambda f: f.type == FrameType.GOAWAY), ADMIN_CLOSE)
        active.cut()
        seen = wait_gone(kit, active.session_id, 10)
        assert "orphaned" not in seen, seen
        assert_goaway(active.resume(), RESUME_FAILED)
    finally:
        active.close()

    # Killed while parked: released at once (not after the TTL), and cannot be resumed.
    parked = RawClient(kit)
    try:
        parked.bind_expose(free_port_candidate())
        parked.cut()
        wait_state(kit, parked.session_id, "orphaned")
        reply = kit.request("DELETE", f"{API}/sessions/{parked.session_id}", headers=headers)
        assert reply.status in (200, 202), reply
        wait_gone(kit, parked.session_id, 10)
        assert_goaway(parked.resume(), RESUME_FAILED)
        tunnels = tunnels_checked(kit)
        assert tunnels["fdPermitsAvailable"] == budget and tunnels["sessions"] == [], tunnels
        assert admin_get(kit, "/bindings")["bindings"] == []
    finally:
        parked.close()


# == superseding ==================================================================================


@pytest.mark.timeout(60)
def test_resume_while_the_old_connection_is_open_supersedes_it(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    raw = RawClient(kit)
    port = free_port_candidate()
    try:
        raw.bind_expose(port)
        raw.acknowledge()
        old = raw.transport
        # The client thinks the connection died; the kit does not know yet.
        frame, seen = raw.resume()
        assert frame is not None and frame.type == FrameType.WELCOME, seen
        assert frame.json()["resumed"] is True
        goaway, old_frames = read_frames(old, lambda f: f.type == FrameType.GOAWAY)
        assert_goaway((goaway, old_frames), SUPERSEDED)
        old.abort()
        [only] = sessions(kit)
        assert only["sessionId"] == raw.session_id and only["state"] == "active", only
        tunnels_checked(kit)
        # The session goes on on the new connection: an EXPOSE connection is announced there.
        with dial(port):
            opened, seen = read_frames(raw.transport, lambda f: f.type == FrameType.OPEN, feed=raw.session)
            assert opened is not None, seen
    finally:
        raw.close()


# == never parked =================================================================================


@pytest.mark.timeout(60)
def test_v1_sessions_are_never_parked(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    echo = TcpTarget("echo")
    proxy = FaultProxy(kit.port)
    client = None
    try:
        client, container_port = launch_client(
            kit, proxy, lambda port: ["--protocol", "v1", "--expose", f"{port}:127.0.0.1:{echo.port}"]
        )
        [info] = sessions(kit)
        assert info["protocol"] == "hoody-tunnel.v1"
        proxy.cut("test: v1 connection cut")
        seen = wait_gone(kit, info["sessionId"], 5)
        assert "orphaned" not in seen, seen
        assert tunnels_checked(kit)["orphanedSessions"] == 0
        client.wait_line("starting a new session")
        line = client.wait_line("reconnected as sess_", 20)
        assert "resum" not in client.output(), client.output()
        assert info["sessionId"] not in line
        with dial(container_port) as sock:
            round_trip(sock, b"v1 again")
    finally:
        if client is not None:
            client.kill()
        proxy.close()
        echo.close()

    # A v1 HELLO asking to resume is refused as such.
    answer = crafted_resume(kit.ws_url, token=kit.client_token or "", session_id="sess_000000000000",
                            resume_token="x" * 32, version=1)
    frame = assert_goaway(answer, RESUME_FAILED)
    assert "v2" in frame.reason, frame.reason


@pytest.mark.timeout(60)
def test_orderly_close_and_protocol_errors_are_never_parked(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    echo = TcpTarget("echo")
    client, _ = launch_client(kit, None, lambda port: ["--expose", f"{port}:127.0.0.1:{echo.port}"])
    try:
        [info] = sessions(kit)
        assert client.interrupt() == 0, client.output()  # Ctrl-C: GOAWAY(NORMAL)
        seen = wait_gone(kit, info["sessionId"], 10)
        assert "orphaned" not in seen, seen
    finally:
        client.kill()
        echo.close()

    raw = RawClient(kit)
    try:
        raw.transport.send_messages([encode_wire_frame(0x7F)])  # an unknown frame type
        assert_goaway(read_frames(raw.transport, lambda f: f.type == FrameType.GOAWAY), PROTOCOL_ERROR)
        raw.cut()
        seen = wait_gone(kit, raw.session_id, 10)
        assert "orphaned" not in seen, seen
        assert tunnels_checked(kit)["orphanedSessions"] == 0
    finally:
        raw.close()


# == the demonstration ============================================================================


class Pinger:
    """Sends a numbered line every 100 ms on an echo connection and checks each echo."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self.sock = sock
        self.stop = threading.Event()
        self.sent = 0
        self.echoed = 0
        self.worst_s = 0.0
        self.error = ""
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.wait(0.1):
                line = f"{self.name} ping {self.sent:05d}\n".encode()
                begun = time.monotonic()
                self.sock.sendall(line)
                self.sent += 1
                echoed = recv_exactly(self.sock, len(line))
                if echoed != line:
                    raise AssertionError(f"echo {echoed!r} for {line!r}")
                self.echoed += 1
                self.worst_s = max(self.worst_s, time.monotonic() - begun)
        except (OSError, AssertionError) as exc:
            self.error = repr(exc)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(scaled_s(30))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("outage", ["cut-and-refused", "silent"])
def test_long_lived_connections_live_through_a_five_second_outage(make_kit: MakeKit, outage: str) -> None:
    # heartbeat 1 s: a silent network is declared dead after 3 s of silence, on both sides.
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1", HOODY_TUNNEL_HEARTBEAT_MS="1000")
    echo = TcpTarget("echo")
    proxy = FaultProxy(kit.port)
    client = None
    pingers: list[Pinger] = []
    try:
        client, container_port = launch_client(
            kit, proxy, lambda port: ["--pull", f"0:{echo.port}", "--expose", f"{port}:127.0.0.1:{echo.port}"]
        )
        pull_port = client.pull_port(echo.port)
        [info] = sessions(kit)
        pingers = [Pinger("pull", dial(pull_port)), Pinger("expose", dial(container_port))]
        wait_until(lambda: all(p.echoed >= 10 for p in pingers), 10, "ten pings each before the outage")

        began = time.monotonic()
        if outage == "silent":
            proxy.pause()
        else:
            proxy.refuse(True)
            proxy.cut("outage")
        wait_state(kit, info["sessionId"], "orphaned", 10)
        remaining_s = 5.0 - (time.monotonic() - began)
        if remaining_s > 0:
            time.sleep(remaining_s)  # the outage itself lasts 5 s: this is the scenario, not a sync
        if outage == "silent":
            proxy.unpause()
        else:
            proxy.refuse(False)
        line = client.wait_line("resumed sess_", 30)
        counts = [p.echoed for p in pingers]
        wait_until(lambda: all(p.echoed >= c + 10 for p, c in zip(pingers, counts)), 15, "ten pings each after")
        for pinger in pingers:
            pinger.finish()
        assert not [p.error for p in pingers if p.error], [p.error for p in pingers]
        match = RESUMED_LINE.search(line)
        assert match and match.group(1) == info["sessionId"], line
        # The client counts from when it noticed the loss: at once for a reset, after 3 silent
        # heartbeats (3 s) for a silent network.
        assert float(match.group(2)) >= (4.0 if outage != "silent" else 1.0), line
        wait_state(kit, info["sessionId"], "active")
        assert len(sessions(kit)) == 1
        transcript = [l for l in client.output().splitlines() if l.startswith(("hoody-tunnel", "  "))]
        assert any("connection lost" in l for l in transcript) and any("resuming" in l for l in transcript)
        print(f"\n=== {outage} outage of 5 s: the client printed")
        print("\n".join(transcript))
        for pinger in pingers:
            print(f"  {pinger.name}: {pinger.echoed} pings echoed in order, longest wait {pinger.worst_s:.1f} s")
    finally:
        for pinger in pingers:
            pinger.stop.set()
            pinger.sock.close()
        if client is not None:
            client.kill()
        proxy.close()
        echo.close()
