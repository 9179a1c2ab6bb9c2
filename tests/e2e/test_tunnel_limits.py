"""Limits: maxStreams and the FD budget, on every path (docs/protocol.md §7.6, §12).

maxStreams: a raw client that opens one stream too many gets RST(REFUSED); the CLI instead holds
the extra local connection until a slot frees.

FD budget: every descriptor the kit opens for a session (its WebSocket, each EXPOSE listener, each
stream's local socket) takes a permit. Without one: a new session gets GOAWAY(RESOURCE_EXHAUSTED),
a BIND EXPOSE gets BIND_ERR(RESOURCE_EXHAUSTED), a PULL stream gets RST(RESOURCE_EXHAUSTED), and an
EXPOSE listener stops accepting until a permit frees. At every moment
``fdPermitsAvailable + Σ connectionsGranted == budget`` (GET /api/v1/tunnel/tunnels).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from tests.e2e.admin_support import admin_get, check_fd_invariant
from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local, free_port_candidate, recv_exactly
from tests.e2e.tunnel_support import ClientProcess, RawClient, TcpTarget, launch_with_expose
from tests.e2e.wire import (
    BIND_ERR,
    BIND_OK,
    DATA,
    FLAG_FIN,
    GOAWAY,
    OPEN_OK,
    REFUSED,
    RESOURCE_EXHAUSTED,
    RST,
    Frame,
)
from tests.waiting import scaled_s, wait_until

MakeKit = Callable[..., KitProcess]

# A negative observation ("nothing came through") needs some time to be meaningful.
QUIET_S = 1.0


def _answers(client: RawClient, stream_ids: set[int]) -> dict[int, Frame]:
    """Read until every stream in ``stream_ids`` got OPEN_OK or RST; return those frames."""
    answers: dict[int, Frame] = {}
    while set(answers) != stream_ids:
        frame = client.expect(OPEN_OK, RST, GOAWAY)
        assert frame.type != GOAWAY, f"session ended: {frame.code} {frame.reason!r}"
        if frame.stream_id in stream_ids and frame.stream_id not in answers:
            answers[frame.stream_id] = frame
    return answers


def _bind_ok(client: RawClient, kind: str, port: int, req_id: int) -> int:
    frame = client.bind(kind, port, req_id=req_id)
    assert frame.type == BIND_OK, f"{kind} {port}: {frame}"
    return int(frame.json()["bindId"])


def _bind_expose(client: RawClient, req_id: int) -> int:
    """BIND EXPOSE on a free container port (another try if that port was taken meanwhile)."""
    for attempt in range(3):
        port = free_port_candidate()
        frame = client.bind("EXPOSE", port, req_id=req_id + attempt * 100)
        if frame.type == BIND_OK:
            return port
        assert "in use" in frame.json()["error"], frame
    raise AssertionError("no free container port")


def _session_view(body: dict[str, object], session_id: str) -> dict[str, object]:
    sessions = body["sessions"]
    assert isinstance(sessions, list)
    for session in sessions:
        if session["sessionId"] == session_id:
            return dict(session)
    raise AssertionError(f"{session_id} not in {body}")


# == maxStreams ===================================================================================


@pytest.mark.timeout(60)
def test_an_open_beyond_max_streams_is_refused_and_a_freed_slot_is_usable(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_MAX_STREAMS="2")
    target = TcpTarget("echo")
    client = RawClient.connect(kit)
    try:
        welcome = client.hello(kit.client_token)
        assert welcome["maxStreams"] == 2
        bind_id = _bind_ok(client, "PULL", target.port, req_id=1)

        for stream_id in (1, 3, 5):  # none of them is closed
            client.open_stream(stream_id, bind_id)
        answers = _answers(client, {1, 3, 5})

        assert answers[1].type == OPEN_OK, answers
        assert answers[3].type == OPEN_OK, answers
        assert answers[5].type == RST, answers
        assert answers[5].code == REFUSED, (answers[5].code, answers[5].reason)

        # Close stream 1 (FIN both ways), then a new stream fits again.
        client.send_frame(DATA, 1, b"", flags=FLAG_FIN)
        fin = client.expect(DATA, RST, stream_id=1)
        while not fin.flags & FLAG_FIN:
            assert fin.type == DATA, fin
            fin = client.expect(DATA, RST, stream_id=1)
        client.open_stream(7, bind_id)
        assert _answers(client, {7})[7].type == OPEN_OK
    finally:
        client.close()
        target.close()


@pytest.mark.timeout(60)
def test_the_cli_holds_a_connection_beyond_max_streams_until_a_stream_closes(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_MAX_STREAMS="2")
    target = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{target.port}")
    first = second = third = None
    try:
        client.wait_ready()
        port = client.pull_port(target.port)
        first, second = connect_local(port), connect_local(port)
        for sock, message in ((first, b"first"), (second, b"second")):
            sock.sendall(message)
            assert recv_exactly(sock, len(message)) == message

        third = connect_local(port)  # accepted by the client's listener, then held
        third.sendall(b"third")
        third.settimeout(QUIET_S)
        with pytest.raises(TimeoutError):
            third.recv(16)
        assert target.accepted == 2, "a third stream reached the target while two were open"

        first.shutdown(socket.SHUT_WR)  # stream 1 ends: FIN, the echo answers FIN
        assert first.recv(16) == b""
        first.close()

        third.settimeout(scaled_s(10))
        assert recv_exactly(third, 5) == b"third"
        assert target.accepted == 3
        second.sendall(b"still")
        assert recv_exactly(second, 5) == b"still"
        assert client.process.poll() is None, client.output()
    finally:
        for conn in (first, second, third):
            if conn is not None:
                conn.close()
        client.kill()
        target.close()


# == FD budget ======================================================================================


@pytest.mark.timeout(60)
def test_a_new_session_without_a_permit_gets_goaway_resource_exhausted(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_FD_BUDGET="2", HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    holder = RawClient.connect(kit)
    refused = retry = None
    try:
        session_id = holder.hello(kit.client_token)["sessionId"]
        _bind_expose(holder, req_id=1)  # WebSocket + listener: the budget is spent
        full = admin_get(kit, "/tunnels")

        refused = RawClient.connect(kit)
        frames, closed = refused.read_until_closed()
        assert frames and frames[0].type == GOAWAY, f"expected GOAWAY first, got {frames} then {closed}"
        assert frames[0].code == RESOURCE_EXHAUSTED, (frames[0].code, frames[0].reason)
        assert closed.code is not None, f"no close frame after the GOAWAY: {closed}"

        body = check_fd_invariant(full, 2)
        assert body["fdPermitsAvailable"] == 0, body
        assert _session_view(body, session_id)["connectionsGranted"] == 2, body

        # The holder leaves: both permits come back, and a session is welcome again.
        holder.close()
        wait_until(lambda: admin_get(kit, "/tunnels")["fdPermitsAvailable"] == 2, 10, "permits back")
        check_fd_invariant(admin_get(kit, "/tunnels"), 2)
        retry = RawClient.connect(kit)
        assert retry.hello(kit.client_token)["sessionId"].startswith("sess_")
    finally:
        for client in (holder, refused, retry):
            if client is not None:
                client.close()


@pytest.mark.timeout(60)
def test_bind_expose_without_a_permit_gets_bind_err_resource_exhausted(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_FD_BUDGET="1", HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    target = TcpTarget("echo")
    client = RawClient.connect(kit)
    try:
        session_id = client.hello(kit.client_token)["sessionId"]  # the WebSocket takes the permit
        port = free_port_candidate()
        frame = client.bind("EXPOSE", port, req_id=1)

        assert frame.type == BIND_ERR, frame
        body = frame.json()
        assert body["reqId"] == 1 and body["code"] == RESOURCE_EXHAUSTED, body
        assert str(port) in body["error"], body
        # Nothing listens on the refused port.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=scaled_s(5)).close()
        # The session itself carries on.
        assert client.bind("PULL", target.port, req_id=2).type == BIND_OK
        view = check_fd_invariant(admin_get(kit, "/tunnels"), 1)
        assert view["fdPermitsAvailable"] == 0, view
        assert _session_view(view, session_id)["connectionsGranted"] == 1, view
    finally:
        client.close()
        target.close()


@pytest.mark.timeout(60)
def test_a_pull_stream_without_a_permit_gets_rst_resource_exhausted(make_kit: MakeKit) -> None:
    kit = make_kit(HOODY_TUNNEL_FD_BUDGET="1")
    target = TcpTarget("echo")
    client = RawClient.connect(kit)
    try:
        session_id = client.hello(kit.client_token)["sessionId"]
        bind_id = _bind_ok(client, "PULL", target.port, req_id=1)
        client.open_stream(1, bind_id)
        client.send_frame(DATA, 1, b"early data")  # within the window: held or dropped, never sent

        answer = _answers(client, {1})[1]
        assert answer.type == RST, answer
        assert answer.code == RESOURCE_EXHAUSTED, (answer.code, answer.reason)
        assert target.accepted == 0, "the kit dialled the target without a permit"
        view = check_fd_invariant(admin_get(kit, "/tunnels"), 1)
        assert view["fdPermitsAvailable"] == 0, view
        assert _session_view(view, session_id)["connectionsGranted"] == 1, view
        # The session survives the refusal: the next stream is answered too (refused again).
        client.open_stream(3, bind_id)
        again = _answers(client, {3})[3]
        assert (again.type, again.code) == (RST, RESOURCE_EXHAUSTED), again
    finally:
        client.close()
        target.close()


@pytest.mark.timeout(60)
def test_an_expose_listener_out_of_permits_stops_accepting_until_one_frees(make_kit: MakeKit) -> None:
    # WebSocket + listener + one stream = 3.
    kit = make_kit(HOODY_TUNNEL_FD_BUDGET="3", HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    target = TcpTarget("echo")
    client = None
    first = second = None
    try:
        client, container_port = launch_with_expose(
            kit, lambda port: ["--expose", f"{port}:127.0.0.1:{target.port}"]
        )
        first = connect_local(container_port)
        first.sendall(b"first")
        assert recv_exactly(first, 5) == b"first"
        full = admin_get(kit, "/tunnels")

        # The kernel completes the handshake (backlog), but the kit does not accept it yet.
        second = connect_local(container_port)
        second.sendall(b"second")
        second.settimeout(QUIET_S)
        with pytest.raises(TimeoutError):
            second.recv(16)
        assert target.accepted == 1, "the kit accepted a connection without a permit"
        waiting = admin_get(kit, "/tunnels")

        first.shutdown(socket.SHUT_WR)
        assert first.recv(16) == b""
        first.close()

        second.settimeout(scaled_s(10))
        assert recv_exactly(second, 6) == b"second"
        assert target.accepted == 2
        for view in (full, waiting):
            body = check_fd_invariant(view, 3)
            assert body["fdPermitsAvailable"] == 0, body
        check_fd_invariant(admin_get(kit, "/tunnels"), 3)
        assert client.process.poll() is None, client.output()
    finally:
        for sock in (first, second):
            if sock is not None:
                sock.close()
        if client is not None:
            client.kill()
        target.close()
