"""Bulk transfer: 64 MiB each way through PULL and through EXPOSE at the same time, byte-exact.

One CLI client holds both bindings of one session, so the two paths share the WebSocket and its
flow control. Each path runs a full-duplex transfer: the initiating side sends pattern bytes while
reading what the far side sends, and both ends hash what they sent and what they received.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local
from tests.e2e.tunnel_support import TcpTarget, bidirectional_transfer, launch_with_expose
from tests.waiting import scaled_s

MakeKit = Callable[..., KitProcess]

MIB = 1024 * 1024
# Per direction and per path: 256 times the default 256 KiB window, so credit is renewed
# hundreds of times on every stream while the other path competes for the same WebSocket.
SIZE = 64 * MIB


@pytest.mark.timeout(240)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_pull_and_expose_move_bulk_data_both_ways_at_once_byte_exact(
    make_kit: MakeKit, version: str
) -> None:
    size = SIZE
    kit = make_kit(HOODY_TUNNEL_EXPOSE_HOST="127.0.0.1")
    # Far ends: the PULL target lives "in the container", the EXPOSE target on the client side.
    pull_target = TcpTarget("transfer", size=size, seed=11)
    expose_target = TcpTarget("transfer", size=size, seed=22)
    client = None
    try:
        client, container_port = launch_with_expose(
            kit,
            lambda port: [
                "--protocol", version,
                "--pull", f"0:{pull_target.port}",
                "--expose", f"{port}:127.0.0.1:{expose_target.port}",
            ],
        )
        assert f"(hoody-tunnel.{version})" in client.output(), client.output()
        pull_port = client.pull_port(pull_target.port)

        results: dict[str, tuple[str, str, int]] = {}
        errors: dict[str, BaseException] = {}

        def run(path: str, port: int, seed: int) -> None:
            try:
                with connect_local(port) as sock:
                    results[path] = bidirectional_transfer(sock, seed, size)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors[path] = exc

        threads = [
            threading.Thread(target=run, args=("pull", pull_port, 33), daemon=True),
            threading.Thread(target=run, args=("expose", container_port, 44), daemon=True),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(scaled_s(180))
        assert not any(thread.is_alive() for thread in threads), f"transfer hung\n{client.output()}"
        assert not errors, f"{errors}\n{client.output()}"

        [pull_record] = pull_target.wait_records(1, scaled_s(30))
        [expose_record] = expose_target.wait_records(1, scaled_s(30))
        for path, record in (("pull", pull_record), ("expose", expose_record)):
            sent_sha, received_sha, received_n = results[path]
            # Initiator -> far end, byte-exact.
            assert record.received_size == size, (path, record)
            assert record.received_sha == sent_sha, path
            # Far end -> initiator, byte-exact.
            assert received_n == size, (path, received_n)
            assert received_sha == record.sent_sha, path
        assert client.process.poll() is None, client.output()
    finally:
        if client is not None:
            client.kill()
        pull_target.close()
        expose_target.close()
