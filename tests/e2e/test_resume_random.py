"""Resume under random connection cuts (docs/protocol.md §13.9): nothing lost, duplicated, reordered.

One real CLI client reaches the kit through :class:`~tests.e2e.fault_proxy.FaultProxy` with a
PULL and an EXPOSE binding. Several streams on each path move at least 16 MiB each way (per
path) at once, while a seeded chaos plan cuts the connection several times: after a random
number of bytes in either direction, right after a DATA frame carrying FIN (or a few bytes
into what follows it), inside OPEN / OPEN_OK / WINDOW / DATA frames, and on the reconnect
itself (inside the HTTP upgrade, right after it, or inside HELLO.resume / WELCOME). Every cut
resets both TCP connections: the kit parks the session, the client resumes it.

Afterwards: every stream carried its exact bytes both ways (each receiver compares byte by
byte with what the sender sent), the session id never changed and was never given up, the FD
invariant holds, nothing is orphaned, no stream is left open, and the kit worker's open FD
count is back to its baseline.

Seeds: TUNNEL_RESUME_E2E_SEEDS (default 3); a failing seed is reproduced with
TUNNEL_RESUME_E2E_SEED_BASE=<seed> TUNNEL_RESUME_E2E_SEEDS=1.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.admin_support import admin_get
from tests.e2e.fault_proxy import DOWN, UP, FaultProxy, TunnelFrameSeen, is_fin, launch_client
from tests.e2e.harness import KitProcess
from tests.e2e.loopback import TcpServer, recv_until_eof
from tests.e2e.tunnel_support import ClientProcess
from tests.waiting import scaled_s, wait_until

MakeKit = Callable[..., KitProcess]

SEEDS = int(os.environ.get("TUNNEL_RESUME_E2E_SEEDS", "3"))
SEED_BASE = int(os.environ.get("TUNNEL_RESUME_E2E_SEED_BASE", "0"))
MIB = 1024 * 1024
PER_PATH_BYTES = 16 * MIB  # at least this much each way through each of PULL and EXPOSE
HEADER = struct.Struct("!QQQ")  # tag, bytes the initiator sends after the header, bytes it wants back
API = "/api/v1/tunnel"
FD_SLACK = 3
CHAOS_BACKSTOP_S = 90  # longer than the transfers may take (60 s), shorter than the test's timeout


# -- transfers with exact checking ---------------------------------------------------------------


def stream_bytes(tag: int, direction: str, size: int) -> bytes:
    """The exact bytes of one direction of one stream (never periodic, so a shifted or repeated
    range cannot pass)."""
    return random.Random(f"{tag}/{direction}").randbytes(size)


def first_difference(got: bytes | bytearray, want: bytes) -> str:
    if got == want:
        return "equal"
    n = min(len(got), len(want))
    index = next((i for i in range(0, n, 4096) if got[i : min(i + 4096, n)] != want[i : min(i + 4096, n)]), None)
    if index is not None:
        index = next(i for i in range(index, min(index + 4096, n)) if got[i] != want[i])
        return f"first difference at byte {index} (got {len(got)} bytes, want {len(want)})"
    return f"length differs: got {len(got)} bytes, want {len(want)} (prefix equal)"


def send_all_then_fin(sock: socket.socket, data: bytes, errors: list[str], what: str) -> None:
    try:
        view = memoryview(data)
        for offset in range(0, len(view), 256 * 1024):
            sock.sendall(view[offset : offset + 256 * 1024])
        sock.shutdown(socket.SHUT_WR)
    except OSError as exc:
        errors.append(f"{what}: send failed: {exc!r}")


class CheckingTarget(TcpServer):
    """A TCP server: reads the header (tag, up size, down size), sends the down bytes while
    reading the up bytes to EOF, and records whether they were exact."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.results: dict[int, str] = {}  # tag -> "equal" or what differed
        self.errors: list[str] = []
        super().__init__(backlog=256)

    def serve(self, conn: socket.socket) -> None:
        conn.settimeout(scaled_s(60))
        try:
            head = bytearray()
            while len(head) < HEADER.size:
                chunk = conn.recv(HEADER.size - len(head))
                if not chunk:
                    raise ConnectionError(f"EOF inside the header after {len(head)} bytes")
                head += chunk
            tag, up_size, down_size = HEADER.unpack(head)
            sender = threading.Thread(
                target=send_all_then_fin,
                args=(conn, stream_bytes(tag, DOWN, down_size), self.errors, f"{self.name} target tag {tag}"),
                daemon=True,
            )
            sender.start()
            got = recv_until_eof(conn, 256 * 1024)
            sender.join(scaled_s(60))
            verdict = first_difference(got, stream_bytes(tag, UP, up_size))
            with self.lock:
                self.results[tag] = verdict
                self.lock.notify_all()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            with self.lock:
                self.errors.append(f"{self.name} target: {exc!r}")
                self.lock.notify_all()
        finally:
            conn.close()


@dataclass
class StreamPlan:
    path: str  # "pull" or "expose"
    tag: int
    up: int
    down: int
    start_after_s: float


@dataclass
class StreamOutcome:
    plan: StreamPlan
    verdict: str = "not run"
    elapsed_s: float = 0.0
    progress: str = "not started"  # for reports on a hang


def run_initiator(port: int, plan: StreamPlan, outcome: StreamOutcome) -> None:
    """Connect, send header + up bytes (then FIN) while reading the down bytes to EOF."""
    begun = time.monotonic()
    errors: list[str] = []
    try:
        outcome.progress = "connecting"
        with socket.create_connection(("127.0.0.1", port), timeout=scaled_s(30)) as sock:
            sock.settimeout(scaled_s(60))
            outcome.progress = f"connected from :{sock.getsockname()[1]}"
            payload = HEADER.pack(plan.tag, plan.up, plan.down) + stream_bytes(plan.tag, UP, plan.up)
            sender = threading.Thread(
                target=send_all_then_fin, args=(sock, payload, errors, f"{plan.path} #{plan.tag}"), daemon=True
            )
            sender.start()
            got = bytearray()
            while chunk := sock.recv(256 * 1024):
                got += chunk
                outcome.progress = f"connected from :{sock.getsockname()[1]}, {len(got)} bytes received"
            outcome.progress += ", EOF"
            sender.join(scaled_s(60))
            verdict = first_difference(got, stream_bytes(plan.tag, DOWN, plan.down))
            outcome.verdict = "; ".join(errors) if errors else verdict
    except OSError as exc:
        outcome.verdict = f"{exc!r}"
    outcome.elapsed_s = time.monotonic() - begun


def make_stream_plans(rng: random.Random) -> list[StreamPlan]:
    """Per path: 3-4 bulk streams that together carry >= 16 MiB each way, plus short ones
    (0 B to 200 KiB, started at random moments) so OPENs and FINs are in flight around cuts."""
    plans: list[StreamPlan] = []
    tag = 0
    for path in ("pull", "expose"):
        bulk = rng.randint(3, 4)
        ups = _split(rng, PER_PATH_BYTES, bulk)
        downs = _split(rng, PER_PATH_BYTES, bulk)
        for up, down in zip(ups, downs):
            tag += 1
            plans.append(StreamPlan(path, tag, up, down, rng.uniform(0.0, 0.3)))
        for _ in range(rng.randint(8, 14)):
            tag += 1
            plans.append(
                StreamPlan(path, tag, rng.choice([0, rng.randint(1, 200 * 1024)]),
                           rng.choice([0, rng.randint(1, 200 * 1024)]), rng.uniform(0.0, 2.5))
            )
    return plans


def _split(rng: random.Random, total: int, parts: int) -> list[int]:
    """``parts`` sizes, each at least 1 MiB, summing to ``total`` plus a random extra."""
    total += rng.randint(0, MIB)
    cuts = sorted(rng.randint(MIB, total - MIB) for _ in range(parts - 1))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
    # keep every part >= 256 KiB
    return [max(size, 256 * 1024) for size in sizes]


# -- the chaos plan ------------------------------------------------------------------------------


@dataclass
class Chaos:
    """Arms one cut after another (each after the client resumed from the previous one)."""

    proxy: FaultProxy
    client: ClientProcess
    rng: random.Random
    cuts_wanted: int
    done: threading.Event = field(default_factory=threading.Event)
    log: list[str] = field(default_factory=list)
    error: str = ""

    def stream_finished(self, finished: int, total: int) -> None:
        """Called as streams end: when the last two are left, cut right after the next FIN
        (the transfers' final FINs are then in flight)."""
        if finished == total - 2 and not self.done.is_set():
            direction = self.rng.choice([UP, DOWN])
            extra = self.rng.choice([0, self.rng.randint(-9, 40)])
            self.proxy.cut_after_frame(direction, is_fin, extra=extra, label="tail: after a FIN near the end")
            self.log.append(f"tail cut armed ({direction}, {extra:+d})")

    def resumed_count(self) -> int:
        return sum(1 for line in self.client.output().splitlines() if "hoody-tunnel: resumed sess_" in line)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)

    def _run(self) -> None:
        rng = self.rng
        for index in range(self.cuts_wanted):
            if self.done.is_set():
                return
            resumed_before = self.resumed_count()
            cuts_before = self.proxy.cuts
            kind = rng.choice(["bytes", "bytes", "fin", "fin", "frame", "now"])
            direction = rng.choice([UP, DOWN])
            if kind == "bytes":
                n = rng.choice([rng.randint(0, 64 * 1024), rng.randint(0, 6 * MIB)])
                self.proxy.cut_after(n, direction, label=f"plan {index}: after {n} more {direction} bytes")
            elif kind == "fin":
                extra = rng.choice([0, 0, rng.randint(-9, -1), rng.randint(1, 64)])
                self.proxy.cut_after_frame(direction, is_fin, extra=extra, label=f"plan {index}: after a FIN")
            elif kind == "frame":
                types = rng.choice([(0x10,), (0x11,), (0x13,), (0x12,), (0x10, 0x11, 0x14)])
                extra = rng.randint(-12, 20)

                def matches(frame: TunnelFrameSeen, types: tuple[int, ...] = types) -> bool:
                    return frame.type in types

                self.proxy.cut_after_frame(direction, matches, extra=extra, label=f"plan {index}: frame {types}")
            else:
                self.proxy.cut(f"plan {index}: cut now")
            # The reconnect itself may be cut too, once, at a random point of its handshake.
            if rng.random() < 0.4:
                hs_dir = rng.choice([UP, DOWN])
                if rng.random() < 0.5:
                    self.proxy.cut_next_connection_after(
                        rng.randint(0, 8), hs_dir, after_upgrade=True, label=f"plan {index}: right after the upgrade"
                    )
                else:
                    self.proxy.cut_next_connection_after(
                        rng.randint(0, 900), hs_dir, label=f"plan {index}: inside the reconnect handshake"
                    )
            # Wait for the cut to land (or the transfers to end first: the test sets ``done`` at
            # the latest after its 60 s of transfers, so the deadline is only a backstop).
            wait_until(
                lambda: self.proxy.cuts != cuts_before or self.done.is_set(),
                CHAOS_BACKSTOP_S,
                f"plan {index} ({kind}) to fire, or the transfers to end",
                interval_s=0.01,
            )
            if self.proxy.cuts == cuts_before:
                self.log.append(f"plan {index} ({kind}) did not fire before the end")
                return
            self.log.append(f"plan {index} ({kind}) fired")
            # Then for the client to resume before the next one is armed.
            wait_until(
                lambda: self.resumed_count() != resumed_before or self.done.is_set(),
                20,
                f"a resume after plan {index}",
                interval_s=0.01,
                context=self.client.output,
            )
        self.log.append("plan finished")


# -- helpers -------------------------------------------------------------------------------------


def worker_fds(kit: KitProcess) -> int:
    reply = kit.get(f"{API}/health")
    assert reply.status == 200
    fds = reply.json()["fds"]
    assert isinstance(fds, int), reply.json()
    return fds


# -- the test ------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(SEED_BASE, SEED_BASE + SEEDS))
def test_streams_stay_byte_exact_through_random_cuts(make_kit: MakeKit, seed: int) -> None:
    rng = random.Random(seed)
    window = rng.choice(["65536", "262144"])
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1", HOODY_TUNNEL_WINDOW=window, HOODY_TUNNEL_FD_BUDGET="256")
    proxy = FaultProxy(kit.port)
    pull_target = CheckingTarget("pull")
    expose_target = CheckingTarget("expose")
    client: ClientProcess | None = None
    chaos: Chaos | None = None
    started = time.monotonic()
    try:
        client, container_port = launch_client(
            kit, proxy, lambda port: ["--pull", f"0:{pull_target.port}", "--expose", f"{port}:127.0.0.1:{expose_target.port}"]
        )
        pull_port = client.pull_port(pull_target.port)
        [session] = admin_get(kit, "/sessions")["sessions"]
        session_id = session["sessionId"]
        baseline_fds = worker_fds(kit)

        plans = make_stream_plans(rng)
        outcomes = [StreamOutcome(plan) for plan in plans]
        go = threading.Event()
        finished: list[int] = []
        finished_lock = threading.Lock()
        threads = []
        for outcome in outcomes:
            port = pull_port if outcome.plan.path == "pull" else container_port

            def delayed(outcome: StreamOutcome = outcome, port: int = port) -> None:
                go.wait()
                # Staggered starts spread OPENs over the run (a schedule, not a synchronisation).
                time.sleep(outcome.plan.start_after_s)
                run_initiator(port, outcome.plan, outcome)
                with finished_lock:
                    finished.append(outcome.plan.tag)
                    count = len(finished)
                if chaos is not None:
                    chaos.stream_finished(count, len(outcomes))

            threads.append(threading.Thread(target=delayed, daemon=True))
        chaos = Chaos(proxy, client, random.Random(seed * 7919 + 1), cuts_wanted=rng.randint(8, 12))
        chaos_thread = threading.Thread(target=chaos.run, daemon=True)
        for thread in threads:
            thread.start()
        chaos_thread.start()
        go.set()
        deadline = time.monotonic() + scaled_s(60)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        chaos.done.set()
        chaos_thread.join(scaled_s(25))
        proxy.disarm()
        hung = [(o.plan, o.progress) for o in outcomes if o.verdict == "not run"]
        report = _report(seed, window, proxy, chaos, client, outcomes)
        if hung:
            far = {t.name: sorted(t.results) for t in (pull_target, expose_target)}
            try:
                kit_view: Any = admin_get(kit, "/sessions")
            except Exception as exc:  # noqa: BLE001 - a report, not a check
                kit_view = repr(exc)
            raise AssertionError(
                f"{len(hung)} streams did not finish: {hung}\nfar ends finished: {far}\n"
                f"kit /sessions: {kit_view}\n{report}"
            )

        # Every stream byte-exact both ways.
        bad = [(o.plan.path, o.plan.tag, o.verdict) for o in outcomes if o.verdict != "equal"]
        assert not bad, f"initiator side: {bad}\n{report}"
        for target, path in ((pull_target, "pull"), (expose_target, "expose")):
            tags = [o.plan.tag for o in outcomes if o.plan.path == path]
            with target.lock:
                target.lock.wait_for(lambda: all(t in target.results for t in tags), scaled_s(20))
                results = dict(target.results)
            far_bad = {t: results.get(t, "no result") for t in tags if results.get(t) != "equal"}
            assert not far_bad, f"{path} target side: {far_bad} {target.errors}\n{report}"
        assert not chaos.error, f"chaos: {chaos.error}\n{report}"
        assert proxy.cuts >= 3, f"only {proxy.cuts} cuts landed\n{report}"

        # The session survived every cut as itself: never given up, never replaced.
        output = client.output()
        assert "session expired" not in output and "reconnected as" not in output, report
        assert client.process.poll() is None, report
        # If the last cut came at the very end, let the client come back first.
        wait_until(
            lambda: [s["state"] for s in admin_get(kit, "/sessions")["sessions"]] == ["active"],
            20, f"the session active again\n{report}",
        )
        [session] = admin_get(kit, "/sessions")["sessions"]
        assert session["sessionId"] == session_id, report

        # No stream left open, nothing orphaned, the FD budget whole, the worker's FDs back.
        wait_until(
            lambda: admin_get(kit, "/sessions")["sessions"][0]["activeStreams"] == 0,
            20,
            "activeStreams 0",
            context=lambda: f"{admin_get(kit, '/sessions')}\n{report}",
        )
        tunnels = admin_get(kit, "/tunnels")
        assert tunnels["orphanedSessions"] == 0, tunnels
        granted = sum(s["connectionsGranted"] for s in tunnels["sessions"])
        assert tunnels["fdPermitsAvailable"] + granted == tunnels["fdBudget"] == 256, tunnels
        # WebSocket + EXPOSE listener: nothing else may hold a permit now.
        assert granted == 2, tunnels
        wait_until(
            lambda: abs(worker_fds(kit) - baseline_fds) <= FD_SLACK,
            20,
            "fds back to baseline",
            context=lambda: f"kit fds {worker_fds(kit)} vs baseline {baseline_fds}\n{report}",
        )
        print(
            f"\nseed {seed}: passed in {time.monotonic() - started:.1f} s, {proxy.cuts} cuts, "
            f"{chaos.resumed_count()} resumes, {len(outcomes)} streams byte-exact\n{report}"
        )
    finally:
        if chaos is not None:
            chaos.done.set()
        if client is not None:
            client.kill()
        proxy.close()
        pull_target.close()
        expose_target.close()


def _report(seed: int, window: str, proxy: FaultProxy, chaos: Chaos, client: ClientProcess,
            outcomes: list[StreamOutcome]) -> str:
    moved = {p: (sum(o.plan.up for o in outcomes if o.plan.path == p), sum(o.plan.down for o in outcomes if o.plan.path == p))
             for p in ("pull", "expose")}
    client_lines = client.output().splitlines()[-120:]
    exit_status = client.process.poll()
    return (
        f"seed={seed} window={window} streams={len(outcomes)} bytes(up, down) per path={moved}\n"
        f"proxy: {proxy.snapshot()}\n"
        "proxy log:\n  " + "\n  ".join(proxy.log) + "\n"
        "chaos: " + "; ".join(chaos.log) + "\n"
        f"client (exit status {exit_status}):\n  " + "\n  ".join(client_lines)
    )
