"""Many streams in one session, and one stalled stream not stalling the others.

- 200 connections through one PULL binding are open at the same time (each proves its stream
  with a first round trip before any of them goes on), then each echoes 64 KiB of its own data.
- A stream whose target never reads fills up to what flow control allows and then blocks its
  sender; meanwhile a second stream of the same session still does 200 ping-pong round trips.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local, recv_exactly
from tests.e2e.tunnel_support import ClientProcess, TcpTarget, pattern_bytes
from tests.waiting import scaled_s

MakeKit = Callable[..., KitProcess]

CONNECTIONS = 200
ECHO_SIZE = 64 * 1024


@pytest.mark.timeout(180)
def test_200_concurrent_streams_through_one_pull_binding_each_echo_their_own_bytes(
    make_kit: MakeKit,
) -> None:
    # maxStreams above 200, so all of them are open in the session at once (at the default 100
    # the client would queue half of them, which is a different test).
    kit = make_kit(HOODY_TUNNEL_MAX_STREAMS="256")
    target = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{target.port}")
    try:
        client.wait_ready()
        local_port = client.pull_port(target.port)
        all_open = threading.Barrier(CONNECTIONS + 1)
        errors: dict[int, str] = {}
        done: set[int] = set()
        lock = threading.Lock()

        def one(index: int) -> None:
            try:
                with connect_local(local_port) as sock:
                    hello = index.to_bytes(8, "big")
                    sock.sendall(hello)
                    assert recv_exactly(sock, 8) == hello  # the stream is open end to end
                    all_open.wait(scaled_s(60))
                    data = pattern_bytes(1000 + index, ECHO_SIZE)
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    echoed = recv_exactly(sock, ECHO_SIZE)
                    assert sock.recv(1) == b"", "more bytes than were sent"
                    assert echoed == data, f"connection {index}: echoed bytes differ"
                with lock:
                    done.add(index)
            except BaseException as exc:  # noqa: BLE001 - collected and reported below
                with lock:
                    errors[index] = repr(exc)
                all_open.abort()

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(CONNECTIONS)]
        for thread in threads:
            thread.start()
        try:
            all_open.wait(scaled_s(60))
        except threading.BrokenBarrierError:
            pass
        # Every stream was open at the same time: the target saw them all.
        open_together = target.accepted
        for thread in threads:
            thread.join(scaled_s(60))
        assert not errors, f"{len(errors)} failed, e.g. {sorted(errors.items())[:5]}\n{client.output()}"
        assert done == set(range(CONNECTIONS)), f"unfinished: {sorted(set(range(CONNECTIONS)) - done)[:10]}"
        assert open_together == CONNECTIONS
        assert client.process.poll() is None, client.output()
    finally:
        client.kill()
        target.close()


# What the stalled stream may try to push: far more than any buffer chain on the way.
STALL_ATTEMPT = 512 * 1024 * 1024
# Flow control holds it to one window in the tunnel plus kernel socket buffers at both ends
# (a few MiB each on loopback); anything near the attempt means nothing held it.
STALL_BOUND = 64 * 1024 * 1024
ROUND_TRIPS = 200


@pytest.mark.timeout(120)
def test_a_stream_whose_target_never_reads_does_not_slow_another_stream(kit: KitProcess) -> None:
    blackhole = TcpTarget("blackhole")
    echo = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{blackhole.port}", "--pull", f"0:{echo.port}")
    stalled = None
    try:
        client.wait_ready()
        stalled = connect_local(client.pull_port(blackhole.port))
        block = pattern_bytes(7, 1024 * 1024)

        # Send until no byte has been taken for two whole seconds in a row: the plateau.
        stalled.settimeout(1.0)
        plateau = 0
        blocked_for = 0
        while blocked_for < 2 and plateau < STALL_ATTEMPT:
            try:
                taken = stalled.send(block)
            except TimeoutError:
                blocked_for += 1
                continue
            blocked_for = 0
            plateau += taken
        assert blackhole.accepted == 1, "the blackholed stream never reached its target"
        assert 0 < plateau < STALL_BOUND, f"the stalled sender pushed {plateau} bytes: flow control did not hold it"

        # A second stream of the same session still runs its ping-pong.
        deadline = time.monotonic() + scaled_s(20)
        with connect_local(client.pull_port(echo.port)) as lively:
            lively.settimeout(scaled_s(20))
            for round_trip in range(ROUND_TRIPS):
                message = round_trip.to_bytes(4, "big") + pattern_bytes(round_trip, 60)
                lively.sendall(message)
                assert recv_exactly(lively, 64) == message, f"round trip {round_trip}"
                assert time.monotonic() < deadline, f"only {round_trip} round trips within 20 s"

        # The stalled stream is still held, not reset, and took nothing more meanwhile beyond
        # what drained into buffers; its sender is still blocked.
        stalled.settimeout(1.0)
        try:
            more = stalled.send(block)
        except TimeoutError:
            more = 0
        assert more < STALL_BOUND - plateau, more
        assert client.process.poll() is None, client.output()
    finally:
        if stalled is not None:
            stalled.close()
        client.kill()
        blackhole.close()
        echo.close()
