"""Authentication and the handshake deadline (docs/protocol.md §4).

A missing, empty or wrong token: GOAWAY(AUTH_FAILED, "invalid token"), then close 1008; the CLI
says the token was refused and exits 4. No HELLO within the handshake timeout: GOAWAY(TIMEOUT),
then close. Tokens never reach a log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.harness import KitProcess
from tests.e2e.tunnel_support import ClientProcess, RawClient, TcpTarget
from tests.e2e.wire import AUTH_FAILED, GOAWAY, HELLO, TIMEOUT, WELCOME
from tests.waiting import scaled_s

MakeKit = Callable[..., KitProcess]

WRONG_TOKEN = "e2e-wrong-token-do-not-log-me-31337"


@pytest.mark.timeout(60)
def test_the_cli_with_a_bad_token_exits_4_saying_the_token_was_refused(kit: KitProcess) -> None:
    target = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{target.port}", token=WRONG_TOKEN)
    try:
        assert client.wait_exit() == 4, client.output()
        lines = [line for line in client.output().splitlines() if "token" in line]
        assert any("refused the token" in line for line in lines), client.output()
        assert "ready" not in client.output()
        assert WRONG_TOKEN not in kit.output(), "the offered token reached the kit's log"
        assert WRONG_TOKEN not in client.output()
    finally:
        client.kill()
        target.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("case", "token"),
    [("wrong", WRONG_TOKEN), ("empty", ""), ("missing", None)],
)
def test_a_bad_token_gets_goaway_auth_failed_then_close_1008(
    kit: KitProcess, case: str, token: str | None
) -> None:
    client = RawClient.connect(kit)
    try:
        hello: dict[str, object] = {"client": "e2e-raw/1.0"}
        if token is not None:
            hello["token"] = token
        client.send_json(HELLO, hello)
        frames, closed = client.read_until_closed()

        assert not [f for f in frames if f.type == WELCOME], frames
        assert frames and frames[0].type == GOAWAY, f"{case}: {frames} then {closed}"
        assert (frames[0].code, frames[0].reason) == (AUTH_FAILED, "invalid token"), frames[0]
        assert closed.code == 1008, closed
        if token:
            assert token not in kit.output(), "the offered token reached the kit's log"
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_no_hello_within_the_handshake_timeout_gets_goaway_timeout_then_close(
    make_kit: MakeKit,
) -> None:
    kit = make_kit(HOODY_TUNNEL_HANDSHAKE_TIMEOUT_MS="500")
    client = RawClient.connect(kit)
    try:
        started = time.monotonic()
        frames, closed = client.read_until_closed(timeout_s=10)
        waited_s = time.monotonic() - started

        assert frames and frames[0].type == GOAWAY, f"{frames} then {closed}"
        assert frames[0].code == TIMEOUT, (frames[0].code, frames[0].reason)
        assert len(frames) == 1, frames
        assert closed.code is not None, f"no close frame after the GOAWAY: {closed}"
        # Not before the deadline (the upgrade itself came before `started`).
        assert waited_s >= 0.4, waited_s
        assert waited_s < scaled_s(5.0), waited_s
    finally:
        client.close()
