"""Registry and FdBudget, and the FD invariant through every path of a session's life.

docs/protocol.md §12: ``budget.available + sum(s.permits_held for s in registry) == budget.size``
at every point another greenlet can observe. The path tests check it after each step *and* run an
:class:`InvariantWatch`, a greenlet that checks it every time it is scheduled (it yields between
checks), so a window where the sum is off across a yield anywhere in the kit shows up too.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent
import pytest

from tests.waiting import scaled_s, wait_until
from tests.driver_support import recv_exactly, recv_to_eof
from tests.unit.server.kit_harness import V1, KitHarness
from tunnel.mux.runner import ConnectionEnd, EndKind
from tunnel.protocol import BindFailed, BindKind, ErrorCode, GoAwayFrame, StreamReset, WelcomeReceived, decode_message
from tunnel.server.kit import Kit
from tunnel.server.kit_session import KitSessionState
from tunnel.server.registry import FdBudget, PortInUse, Registry

# -- FdBudget ------------------------------------------------------------------------------------


def test_budget_hands_out_exactly_its_size_and_takes_permits_back() -> None:
    budget = FdBudget(3)
    assert (budget.size, budget.available) == (3, 3)
    assert [budget.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert budget.available == 0
    budget.release()
    assert budget.available == 1
    assert budget.acquire(timeout_s=0) is True
    assert budget.acquire(timeout_s=0.001) is False  # empty: times out


def test_a_waiting_acquire_gets_the_permit_someone_releases() -> None:
    budget = FdBudget(1)
    assert budget.try_acquire()
    waiter = gevent.spawn(budget.acquire)
    gevent.sleep(0)
    assert not waiter.dead  # waiting for a permit
    budget.release()
    assert waiter.get(timeout=scaled_s(5)) is True
    assert budget.available == 0


def test_releasing_more_than_was_taken_is_an_error() -> None:
    budget = FdBudget(2)
    with pytest.raises(ValueError):
        budget.release()  # a double release is a bug: the bounded semaphore refuses it
    assert budget.available == 2


# -- Registry --------------------------------------------------------------------------------------


@dataclass
class Entry:
    session_id: str
    permits_held: int = 0


def test_registry_lists_sessions_by_id_and_removes_only_the_same_object() -> None:
    registry: Registry[Entry] = Registry(10)
    first, impostor = Entry("sess_a", 2), Entry("sess_a", 5)
    registry.add(first)
    registry.add(Entry("sess_b", 1))
    assert registry.get("sess_a") is first and len(registry) == 2
    registry.remove(impostor)  # same id, another object: not removed
    assert registry.get("sess_a") is first
    for entry in registry:  # a snapshot: removing while iterating is fine
        registry.remove(entry)
    assert len(registry) == 0 and registry.get("sess_a") is None


def test_permits_granted_sums_the_listed_sessions() -> None:
    registry: Registry[Entry] = Registry(10)
    a, b = Entry("sess_a", 2), Entry("sess_b", 3)
    registry.add(a)
    registry.add(b)
    assert registry.permits_granted() == 5
    registry.remove(a)
    assert registry.permits_granted() == 3


def test_bind_ids_are_unique_and_count_up_from_one() -> None:
    registry: Registry[Entry] = Registry(1)
    assert [registry.next_bind_id() for _ in range(5)] == [1, 2, 3, 4, 5]
    other: Registry[Entry] = Registry(1)
    assert other.next_bind_id() == 1  # per registry (per kit), not module-global


def test_a_port_is_claimed_by_one_session_and_only_its_owner_releases_it() -> None:
    registry: Registry[Entry] = Registry(1)
    registry.claim_port(3100, "sess_a")
    with pytest.raises(PortInUse):
        registry.claim_port(3100, "sess_b")
    with pytest.raises(PortInUse):
        registry.claim_port(3100, "sess_a")
    registry.release_port(3100, "sess_b")  # not the owner: ignored
    assert registry.port_owner(3100) == "sess_a"
    registry.release_port(3100, "sess_a")
    assert registry.port_owner(3100) is None
    registry.claim_port(3100, "sess_b")
    assert registry.port_owner(3100) == "sess_b"


# -- the FD invariant through every path -----------------------------------------------------------


class InvariantWatch:
    """A greenlet that checks the invariant every time it runs, then yields; the test names its
    steps, so a violation says after which step it was seen."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.checks = 0
        self.last_step = "start"
        self.violations: list[str] = []
        self.greenlet = gevent.spawn(self._watch)

    def _watch(self) -> None:
        while True:
            accounting = self.kit.fd_accounting()
            if accounting.available + accounting.granted != accounting.budget:
                self.violations.append(f"after step {self.last_step!r}: {accounting}")
            self.checks += 1
            gevent.sleep(0)

    def step(self, name: str) -> None:
        """Check the invariant now, and label what the watch sees from here on."""
        accounting = self.kit.fd_accounting()
        assert accounting.available + accounting.granted == accounting.budget, (name, accounting)
        self.last_step = name

    def done(self) -> None:
        """Stop watching; fail if the invariant was ever seen broken."""
        self.greenlet.kill()
        assert self.checks > 0
        assert self.violations == [], f"{len(self.violations)} violation(s), first: {self.violations[0]}"


Make = Callable[..., tuple[KitHarness, InvariantWatch]]


@pytest.fixture
def make(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Make]:
    made: list[tuple[KitHarness, InvariantWatch]] = []

    def factory(**overrides: object) -> tuple[KitHarness, InvariantWatch]:
        harness = KitHarness(monkeypatch, tmp_path, **overrides)
        watch = InvariantWatch(harness.kit)
        made.append((harness, watch))
        return harness, watch

    yield factory
    for harness, watch in made:
        watch.greenlet.kill()
        harness.close()


def _held(h: KitHarness) -> list[int]:
    return [s.permits_held for s in h.kit.registry]


def test_fd_invariant_through_open_bind_streams_park_resume_and_close(make: Make) -> None:
    h, watch = make(fd_budget=8)
    c = h.connect(park=True)
    watch.step("session opened")
    assert _held(h) == [1] and h.kit.registry.budget.available == 7

    h.bind(c, BindKind.EXPOSE, 3100)
    watch.step("EXPOSE bound")
    pull = h.open_pull(c, h.bind(c, BindKind.PULL, 5432))
    watch.step("PULL stream opened")
    outside = h.outside_client(3100)
    _, _, app = h.accept_expose(c)
    watch.step("EXPOSE stream opened")
    assert _held(h) == [4]

    outside.sendall(b"x")
    assert recv_exactly(app, 1) == b"x"
    outside.close()
    app.close()
    h.wait_permits(c.session, 3, "the EXPOSE stream to close")
    watch.step("EXPOSE stream closed")

    c.cut()
    watch.step("parked")
    assert _held(h) == [2] and c.session.parked  # listener + PULL stream; the WebSocket's is back

    h.resume(c)
    c.peer.wait_for(WelcomeReceived)
    wait_until(lambda: c.session.state is KitSessionState.ACTIVE, 5.0, "the resume")
    watch.step("resumed")
    assert _held(h) == [3]  # the new WebSocket's permit moved to the resumed session
    assert len(h.kit.registry) == 1

    pull.app.shutdown(socket.SHUT_WR)
    pull.target.shutdown(socket.SHUT_WR)
    assert recv_to_eof(pull.target) == b"" and recv_to_eof(pull.app) == b""
    h.wait_permits(c.session, 2, "the PULL stream to close")
    watch.step("PULL stream closed")

    h.kit.draining = True  # so the close below ends the session instead of parking it
    c.peer.transport.close()
    c.serve.get(timeout=scaled_s(5))
    watch.step("session closed")
    assert len(h.kit.registry) == 0 and h.kit.registry.budget.available == 8
    watch.done()


def test_fd_invariant_while_a_resume_hands_the_new_connection_over(make: Make) -> None:
    """HELLO.resume arrives on a new connection, whose temporary session holds the WebSocket's
    permit; Kit.serve hands connection and permit to the parked session. No observer may see
    that permit counted nowhere."""
    h, watch = make()
    c = h.connect(park=True)
    h.bind(c, BindKind.EXPOSE, 3100)
    c.cut()
    watch.step("parked")
    h.resume(c)
    c.peer.wait_for(WelcomeReceived)
    wait_until(lambda: c.session.state is KitSessionState.ACTIVE, 5.0, "the resume")
    watch.step("resumed")
    assert _held(h) == [2] and h.kit.registry.budget.available == h.kit.registry.budget.size - 2
    watch.done()


def test_fd_invariant_when_a_resume_supersedes_a_connection_the_kit_still_holds(make: Make) -> None:
    h, watch = make()
    c = h.connect(park=True)
    h.bind(c, BindKind.EXPOSE, 3100)
    old_serve, old_kit_end = c.serve, c.kit_end
    # The client's side of the connection dies without the kit noticing (a half-open TCP).
    c.client_end.peer = None
    c.peer.runner.end(ConnectionEnd(EndKind.DEAD, "client gave up on the connection"))
    assert c.peer.runner.detached and c.session.state is KitSessionState.ACTIVE
    watch.step("client detached, kit still attached")

    h.resume(c)
    c.peer.wait_for(WelcomeReceived)
    old_serve.get(timeout=scaled_s(5))  # the old connection was superseded
    watch.step("superseded and resumed")
    assert any(
        isinstance(f, GoAwayFrame) and f.error_code == ErrorCode.SUPERSEDED
        for m in old_kit_end.sent
        for f in decode_message(m, max_frame_size=1 << 20, version=2)
    )
    assert c.session.state is KitSessionState.ACTIVE
    assert _held(h) == [2]  # the listener and the new WebSocket; the old one's permit is back
    assert h.kit.registry.budget.available == h.kit.registry.budget.size - 2
    watch.done()


def test_fd_invariant_when_a_parked_session_expires(make: Make) -> None:
    h, watch = make(orphan_ttl_s=0.05)
    c = h.connect()
    h.bind(c, BindKind.EXPOSE, 3100)
    h.open_pull(c, h.bind(c, BindKind.PULL, 5432))
    watch.step("bound, one stream")
    c.cut()
    watch.step("parked or expired")
    wait_until(lambda: len(h.kit.registry) == 0, 5.0, "expiry")
    watch.step("expired")
    assert h.kit.registry.budget.available == h.kit.registry.budget.size
    watch.done()


def test_fd_invariant_through_admin_kills_of_active_and_parked_sessions(make: Make) -> None:
    h, watch = make()
    active = h.connect()
    h.bind(active, BindKind.EXPOSE, 3100)
    h.open_pull(active, h.bind(active, BindKind.PULL, 5432))
    parked = h.connect()
    h.bind(parked, BindKind.EXPOSE, 3101)
    h.open_pull(parked, h.bind(parked, BindKind.PULL, 5433))
    parked.cut()
    watch.step("one active, one parked")

    h.kit.kill_session(active.session.session_id, grace_s=0.0)
    watch.step("active session killed")
    active.serve.get(timeout=scaled_s(5))
    watch.step("active session closed")
    h.kit.kill_session(parked.session.session_id, grace_s=0.0)
    watch.step("parked session killed")
    assert len(h.kit.registry) == 0
    watch.done()


def test_fd_invariant_when_permits_run_out(make: Make) -> None:
    h, watch = make(fd_budget=2)
    c = h.connect()
    h.bind(c, BindKind.EXPOSE, 3100)
    watch.step("budget used up")

    assert isinstance(c.peer.bind(BindKind.EXPOSE, 3101), BindFailed)
    watch.step("bind refused for no permit")
    c.peer.runner.open_stream(h.bind(c, BindKind.PULL, 5432))
    assert c.peer.wait_for(StreamReset).error_code == ErrorCode.RESOURCE_EXHAUSTED
    watch.step("stream refused for no permit")
    _, serve = h.serve()
    serve.get(timeout=scaled_s(5))
    watch.step("session refused for no permit")
    assert _held(h) == [2] and h.kit.registry.budget.available == 0

    # An outside connection waits for a permit (tcp mode refuses nothing): the accept loop
    # blocks in take_permit(wait=True).
    outside = h.outside_client(3100)
    wait_until(lambda: h.counter("hoody_tunnel_fd_permit_exhausted_total", path="expose") == 1, 5.0, "the accept loop to wait for a permit")
    watch.step("accept waiting for a permit")
    h.kit.draining = True
    # ...and the session's end gives every permit back, with the waiter never counted twice.
    c.peer.transport.close()
    c.serve.get(timeout=scaled_s(5))
    watch.step("session closed with an accept waiting for a permit")
    outside.close()
    assert len(h.kit.registry) == 0
    watch.done()


def test_fd_invariant_for_a_v1_session_cut_with_streams(make: Make) -> None:
    h, watch = make()
    c = h.connect(V1)
    h.bind(c, BindKind.EXPOSE, 3100)
    h.open_pull(c, h.bind(c, BindKind.PULL, 5432))
    watch.step("v1 bound, one stream")
    c.cut()
    watch.step("v1 cut")
    assert len(h.kit.registry) == 0
    watch.done()
