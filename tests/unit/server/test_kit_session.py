"""KitSession through Kit.serve: bindings, FD permits, parking and expiry.

Each test connects whole clients (ClientPeer: a client Session on its own SessionRunner) to a Kit
over in-memory transports; the kit's listeners and PULL dials are AF_UNIX stand-ins
(kit_harness.py), so no test touches the network.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gevent.socket import wait_read

from tests.waiting import scaled_s, wait_until
from tests.driver_support import recv_exactly, recv_to_eof, settle
from tests.unit.server.kit_harness import V1, Connection, KitHarness, is_closed
from tunnel.config import PortRanges
from tunnel.protocol import (
    BindAccepted,
    BindFailed,
    BindKind,
    BindMode,
    ErrorCode,
    GoAwayFrame,
    GoAwayReceived,
    StreamReset,
    UnbindReceived,
    UpstreamError,
    WelcomeReceived,
    decode_message,
)
from tunnel.server.kit_session import KitSession, KitSessionState

Make = Callable[..., KitHarness]


@pytest.fixture
def make(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Make]:
    made: list[KitHarness] = []

    def factory(**overrides: object) -> KitHarness:
        harness = KitHarness(monkeypatch, tmp_path, **overrides)
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.close()


def state_of(session: KitSession) -> KitSessionState:
    return session.state


def _stream_ended(sock: socket.socket) -> bool:
    """The far end closed (EOF) or reset the connection."""
    try:
        return recv_to_eof(sock) is not None
    except ConnectionResetError:
        return True


# -- bindings --------------------------------------------------------------------------------------


def test_expose_on_an_allowed_port_opens_a_listener_and_answers_bind_ok(make: Make) -> None:
    h = make()
    c = h.connect()
    assert c.session.permits_held == 1  # the WebSocket's
    answer = c.peer.bind(BindKind.EXPOSE, 3100)

    assert isinstance(answer, BindAccepted)
    result = answer.result
    assert (result.req_id, result.kind, result.port, result.mode) == (1, BindKind.EXPOSE, 3100, BindMode.TCP)
    listener = h.net.listeners[3100]
    assert c.session.bindings[result.bind_id].listener is listener and not is_closed(listener)
    assert h.kit.registry.port_owner(3100) == c.session.session_id
    assert c.session.permits_held == 2  # + the listener's
    h.check_invariant()

    # Each accepted connection becomes a stream of that binding, holding a permit of its own.
    outside = h.outside_client(3100)
    event, _, app = h.accept_expose(c)
    assert event.bind_id == result.bind_id and event.origin == "198.51.100.7:40001"
    assert c.session.permits_held == 3
    h.check_invariant()
    outside.sendall(b"hello kit")
    assert recv_exactly(app, 9) == b"hello kit"
    app.sendall(b"hello outside")
    assert recv_exactly(outside, 13) == b"hello outside"
    outside.shutdown(socket.SHUT_WR)
    app.shutdown(socket.SHUT_WR)
    assert recv_to_eof(outside) == b"" and recv_to_eof(app) == b""
    h.wait_permits(c.session, 2, "the stream's permit to come back")
    h.check_invariant()


@pytest.mark.parametrize(
    ("kind", "overrides", "text"),
    [
        (BindKind.EXPOSE, {}, "port 22: not allowed (HOODY_TUNNEL_EXPOSE_PORTS is 1024-65535)"),
        (
            BindKind.PULL,
            {"pull_ports": PortRanges.parse("5000-5999,6000")},
            "port 22: not allowed (HOODY_TUNNEL_PULL_PORTS is 5000-5999,6000)",
        ),
    ],
)
def test_a_forbidden_port_answers_bind_err_forbidden_with_the_documented_text(
    make: Make, kind: BindKind, overrides: dict[str, object], text: str
) -> None:
    h = make(**overrides)
    c = h.connect()
    answer = c.peer.bind(kind, 22)
    assert isinstance(answer, BindFailed)
    assert (answer.error_code, answer.error) == (ErrorCode.FORBIDDEN, text)
    assert h.net.listeners == {} and h.net.dialed == []
    assert c.session.bindings == {}
    assert c.session.permits_held == 1
    h.check_invariant()


def test_a_port_already_exposed_answers_port_in_use_and_is_free_again_once_its_session_ends(make: Make) -> None:
    h = make()
    first = h.connect(V1)
    second = h.connect()
    h.bind(first, BindKind.EXPOSE, 3100)

    by_other = second.peer.bind(BindKind.EXPOSE, 3100)
    assert isinstance(by_other, BindFailed)
    assert (by_other.error_code, by_other.error) == (ErrorCode.PORT_IN_USE, "port 3100: already exposed by another session")
    by_self = first.peer.bind(BindKind.EXPOSE, 3100)
    assert isinstance(by_self, BindFailed)
    # docs/protocol.md §6.1 step 6 says "the same text when it is this very session"; the code
    # names the owner since e640365 ("PORT_IN_USE says whose port"): this pins the code's text.
    assert (by_self.error_code, by_self.error) == (ErrorCode.PORT_IN_USE, "port 3100: already exposed by this session")
    assert (first.session.permits_held, second.session.permits_held) == (2, 1)  # no listener permit taken
    assert len(first.session.bindings) == 1 and second.session.bindings == {}
    h.check_invariant()

    first.cut()  # v1: the session ends, its listener closes and the port is free
    assert h.kit.registry.port_owner(3100) is None
    h.bind(second, BindKind.EXPOSE, 3100)
    assert h.kit.registry.port_owner(3100) == second.session.session_id
    h.check_invariant()


def test_a_refused_listen_gives_back_the_permit_and_the_port(make: Make) -> None:
    h = make()
    c = h.connect()
    h.net.refuse_listen[3100] = UpstreamError("port 3100: address already in use on 127.0.0.1", error_code=ErrorCode.PORT_IN_USE)
    answer = c.peer.bind(BindKind.EXPOSE, 3100)
    assert isinstance(answer, BindFailed)
    assert (answer.error_code, answer.error) == (ErrorCode.PORT_IN_USE, "port 3100: address already in use on 127.0.0.1")
    assert c.session.permits_held == 1
    assert h.kit.registry.port_owner(3100) is None
    h.check_invariant()


def test_unbind_closes_the_listener_and_gives_back_its_permit_and_port(make: Make) -> None:
    h = make()
    c = h.connect()
    bind_id = h.bind(c, BindKind.EXPOSE, 3100)
    assert c.session.permits_held == 2
    c.peer.session.send_unbind(bind_id)  # the runner has no UNBIND command: the CLI never sends it
    c.peer.runner.flush()
    echo = c.peer.wait_for(UnbindReceived)
    assert echo.bind_id == bind_id
    assert is_closed(h.net.listeners[3100])
    assert c.session.bindings == {} and c.session.permits_held == 1
    assert h.kit.registry.port_owner(3100) is None
    h.check_invariant()


def test_an_expose_stream_the_client_refuses_gives_its_permit_back(make: Make) -> None:
    h = make()
    c = h.connect()
    h.bind(c, BindKind.EXPOSE, 3100)
    outside = h.outside_client(3100)
    event, pump = c.peer.next_opened()
    h.wait_permits(c.session, 3, "the accepted connection's permit")
    c.peer.runner.reset_stream(event.stream_id, ErrorCode.CONNECT_FAILED, "127.0.0.1:3000: connection refused")
    pump.reset(ErrorCode.CONNECT_FAILED, "127.0.0.1:3000: connection refused")
    h.wait_permits(c.session, 2, "the refused stream's permit to come back")
    assert _stream_ended(outside)  # the outside client is cut off
    h.check_invariant()


# -- PULL streams and permits ----------------------------------------------------------------------


def test_a_pull_stream_dials_the_target_and_holds_one_permit_until_it_closes(make: Make) -> None:
    h = make()
    c = h.connect()
    bind_id = h.bind(c, BindKind.PULL, 5432)
    assert c.session.permits_held == 1  # a PULL binding holds no descriptor

    stream = h.open_pull(c, bind_id)
    assert h.net.dialed == [("127.0.0.1", 5432)]
    assert c.session.permits_held == 2
    h.check_invariant()
    stream.app.sendall(b"query")
    assert recv_exactly(stream.target, 5) == b"query"
    stream.target.sendall(b"rows")
    assert recv_exactly(stream.app, 4) == b"rows"

    stream.app.shutdown(socket.SHUT_WR)
    stream.target.shutdown(socket.SHUT_WR)
    assert recv_to_eof(stream.target) == b"" and recv_to_eof(stream.app) == b""
    h.wait_permits(c.session, 1, "the stream's permit to come back")
    h.check_invariant()


def test_an_open_for_an_unknown_pull_binding_is_reset_not_found_without_a_permit(make: Make) -> None:
    h = make()
    c = h.connect()
    pump = c.peer.runner.open_stream(999)
    reset = c.peer.wait_for(StreamReset)
    assert (reset.error_code, reset.reason) == (ErrorCode.NOT_FOUND, "unknown PULL binding 999")
    assert pump.reset_code == ErrorCode.NOT_FOUND
    assert h.net.dialed == [] and c.session.permits_held == 1


def test_without_a_permit_left_binds_streams_and_sessions_are_refused_resource_exhausted(make: Make) -> None:
    h = make(fd_budget=2)
    c = h.connect()
    h.bind(c, BindKind.EXPOSE, 3100)  # the second and last permit
    assert h.kit.registry.budget.available == 0

    refused_bind = c.peer.bind(BindKind.EXPOSE, 3101)
    assert isinstance(refused_bind, BindFailed)
    assert (refused_bind.error_code, refused_bind.error) == (
        ErrorCode.RESOURCE_EXHAUSTED,
        "port 3101: no file descriptor permit left",
    )
    assert h.kit.registry.port_owner(3101) is None and 3101 not in h.net.listeners
    h.check_invariant()

    pull = h.bind(c, BindKind.PULL, 5432)
    pump = c.peer.runner.open_stream(pull)
    reset = c.peer.wait_for(StreamReset)
    assert (reset.error_code, reset.reason) == (ErrorCode.RESOURCE_EXHAUSTED, "no file descriptor permit left")
    assert pump.reset_code == ErrorCode.RESOURCE_EXHAUSTED
    assert h.net.dialed == []
    assert c.session.permits_held == 2
    h.check_invariant()

    client_end, serve = h.serve()
    serve.get(timeout=scaled_s(5))  # refused before reading anything
    goaway = decode_message(client_end.receive_message(), max_frame_size=1 << 20, version=2)
    assert goaway == [GoAwayFrame(ErrorCode.RESOURCE_EXHAUSTED, "no file descriptor permit left")]
    assert client_end.peer is not None and client_end.peer.close_code_sent == 1013
    assert len(h.kit.registry) == 1
    assert h.counter("hoody_tunnel_fd_permit_exhausted_total", path="session") == 1
    assert h.counter("hoody_tunnel_fd_permit_exhausted_total", path="listener") == 1
    assert h.counter("hoody_tunnel_fd_permit_exhausted_total", path="pull") == 1
    h.check_invariant()


# -- parking and expiry ----------------------------------------------------------------------------


def _bound_with_a_stream(h: KitHarness, c: Connection) -> None:
    h.bind(c, BindKind.EXPOSE, 3100)
    stream = h.open_pull(c, h.bind(c, BindKind.PULL, 5432))
    c.pull = stream  # type: ignore[attr-defined]
    assert c.session.permits_held == 3  # WebSocket, listener, stream
    h.check_invariant()


def test_a_v2_session_cut_without_goaway_is_parked_and_its_accept_loops_pause_until_the_resume(make: Make) -> None:
    h = make()
    c = h.connect(park=True)
    _bound_with_a_stream(h, c)
    session = c.session
    listener = h.net.listeners[3100]

    c.cut()

    assert session.state is KitSessionState.ORPHANED and session.parked
    assert h.kit.registry.get(session.session_id) is session
    assert session.permits_held == 2  # the WebSocket's permit went back; listener and stream kept
    h.check_invariant()
    assert h.kit.live_gauges().sessions_orphaned == 1
    assert h.counter("hoody_tunnel_sessions_parked_total") == 1
    assert session.expiry is not None and not session.expiry.dead  # the TTL runs
    assert not is_closed(listener) and h.kit.registry.port_owner(3100) == session.session_id
    assert session.runner.stream_count == 1  # the PULL stream waits for the resume

    # Someone connects to the exposed port while the session is parked: nothing accepts it.
    outside = h.outside_client(3100)
    wait_read(listener.fileno(), timeout=scaled_s(5))  # the connection waits in the backlog
    settle()
    assert listener.accepted == 0
    assert session.permits_held == 2 and session.runner.stream_count == 1

    # The client resumes: the accept loop carries on and serves the waiting connection.
    h.resume(c)
    welcome = c.peer.wait_for(WelcomeReceived)
    assert welcome.welcome.resumed and welcome.welcome.session_id == session.session_id
    wait_until(lambda: session.state is KitSessionState.ACTIVE, 5.0, "the session to be active again")
    event, _, app = h.accept_expose(c)
    assert listener.accepted == 1
    outside.sendall(b"waited")
    assert recv_exactly(app, 6) == b"waited"
    c.pull.app.sendall(b"still here")  # type: ignore[attr-defined]
    assert recv_exactly(c.pull.target, 10) == b"still here"  # type: ignore[attr-defined]
    assert session.permits_held == 4  # WebSocket (moved to it), listener, two streams
    h.check_invariant()


def test_a_parked_session_expires_after_the_ttl_and_releases_every_permit(make: Make) -> None:
    ttl_s = 0.05
    h = make(orphan_ttl_s=ttl_s)
    c = h.connect()
    _bound_with_a_stream(h, c)
    session = c.session
    listener = h.net.listeners[3100]

    cut_at = time.monotonic()
    c.cut()
    wait_until(lambda: h.kit.registry.get(session.session_id) is None, 5.0, "the parked session to expire")
    assert time.monotonic() - cut_at >= ttl_s

    assert h.counter("hoody_tunnel_sessions_parked_total") == 1  # it was parked first
    assert h.counter("hoody_tunnel_sessions_closed_total", reason="expired") == 1
    assert session.state is KitSessionState.CLOSED
    assert session.permits_held == 0
    assert h.kit.registry.budget.available == h.kit.registry.budget.size
    assert is_closed(listener) and h.kit.registry.port_owner(3100) is None
    assert session.runner.stream_count == 0
    assert _stream_ended(c.pull.target)  # type: ignore[attr-defined]  # the kit's side is closed
    assert h.kit.live_gauges().sessions_orphaned == 0
    h.check_invariant()


def test_a_v1_session_is_never_parked(make: Make) -> None:
    h = make()
    c = h.connect(V1)
    _bound_with_a_stream(h, c)
    session = c.session
    c.cut()

    assert session.state is KitSessionState.CLOSED
    assert h.kit.registry.get(session.session_id) is None
    assert session.permits_held == 0
    assert h.kit.registry.budget.available == h.kit.registry.budget.size
    assert is_closed(h.net.listeners[3100])
    assert _stream_ended(c.pull.target)  # type: ignore[attr-defined]
    assert h.counter("hoody_tunnel_sessions_parked_total") == 0
    assert h.counter("hoody_tunnel_sessions_closed_total", reason="peer_closed") == 1


def test_an_admin_killed_session_is_not_parked_when_its_connection_drops_during_the_drain(make: Make) -> None:
    h = make()
    c = h.connect()
    _bound_with_a_stream(h, c)  # the open stream keeps the drain waiting
    session = c.session

    assert h.kit.kill_session(session.session_id, grace_s=30.0) is session
    goaway = c.peer.wait_for(GoAwayReceived)
    assert (goaway.error_code, goaway.reason) == (ErrorCode.ADMIN_CLOSE, "closed by admin")
    assert session.admin_killed and state_of(session) is KitSessionState.CLOSING
    assert is_closed(h.net.listeners[3100])  # listeners stop at once
    assert session.permits_held == 2  # WebSocket and the draining stream
    h.check_invariant()

    c.cut()  # during the drain: a cut that would park an ordinary v2 session
    assert h.counter("hoody_tunnel_sessions_parked_total") == 0
    assert session.state is KitSessionState.CLOSED
    assert h.kit.registry.get(session.session_id) is None
    assert session.permits_held == 0
    assert h.kit.registry.budget.available == h.kit.registry.budget.size


def test_an_admin_killed_session_is_not_parked_when_its_connection_drops_as_it_is_killed(make: Make) -> None:
    h = make()
    c = h.connect()
    _bound_with_a_stream(h, c)
    session = c.session

    # In one turn: the connection drops, and the admin kills the session before the kit has
    # seen the drop (so no GOAWAY is queued yet when the kit's reader sees it).
    c.client_end.abort()
    h.kit.kill_session(session.session_id, grace_s=30.0)
    c.serve.get(timeout=scaled_s(5))

    assert not any(isinstance(e, GoAwayReceived) for e in c.peer.seen)
    assert h.counter("hoody_tunnel_sessions_parked_total") == 0
    assert session.state is KitSessionState.CLOSED
    assert h.kit.registry.get(session.session_id) is None
    assert session.permits_held == 0
    assert h.kit.registry.budget.available == h.kit.registry.budget.size


def test_an_admin_kill_closes_a_parked_session_at_once_and_it_cannot_be_resumed(make: Make) -> None:
    h = make()
    c = h.connect(park=True)
    _bound_with_a_stream(h, c)
    session = c.session
    c.cut()
    assert session.parked

    assert h.kit.kill_session(session.session_id, grace_s=30.0) is session
    assert session.state is KitSessionState.CLOSED and session.expiry is None
    assert h.kit.registry.get(session.session_id) is None
    assert session.permits_held == 0
    assert h.kit.registry.budget.available == h.kit.registry.budget.size
    assert is_closed(h.net.listeners[3100])
    assert h.counter("hoody_tunnel_sessions_closed_total", reason="admin_close") == 1
    h.check_invariant()

    client_end, serve = h.resume(c)
    serve.get(timeout=scaled_s(5))
    assert client_end.peer is not None and client_end.peer.close_code_sent == 1008
    assert h.counter("hoody_tunnel_resumes_total", outcome="failed") == 1
    assert len(h.kit.registry) == 0
    assert h.kit.registry.budget.available == h.kit.registry.budget.size
