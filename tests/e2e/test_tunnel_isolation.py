"""A misbehaving session ends alone (docs/protocol.md §1, §2, §3).

While a CLI client moves 32 MiB each way through PULL, a raw client in another session sends
something invalid: a text message, garbage bytes, a frame over maxFrame, or a WebSocket message
over 4 MiB. The raw session ends (GOAWAY(PROTOCOL_ERROR) then close, or close 1009 for the
oversized message, announced by its header alone); the transfer, held open across the incident
by gating its upload half-way, completes byte-exact.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable

import pytest

from tests.e2e.harness import KitProcess
from tests.e2e.loopback import connect_local
from tests.e2e.tunnel_support import (
    ClientProcess,
    RawClient,
    TcpTarget,
    pattern_bytes,
    sha256_stream,
)
from tests.e2e.wire import (
    DATA,
    GOAWAY,
    OPEN_OK,
    PROTOCOL_ERROR,
    WS_MAX_MESSAGE,
    encode_frame,
    ws_frame_header,
)
from tests.waiting import scaled_s

MakeKit = Callable[..., KitProcess]

MIB = 1024 * 1024
SIZE = 32 * MIB
SEED_UP, SEED_DOWN = 71, 72


class GatedTransfer:
    """Full-duplex transfer on ``sock`` whose upload stops half-way until ``gate`` is set, so the
    stream is certainly still open when the incident happens."""

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sock = sock
        self.size = size
        self.half_sent = threading.Event()
        self.gate = threading.Event()
        self.sent_sha = ""
        self.received: tuple[str, int] | None = None
        self.errors: list[BaseException] = []
        self._threads = [
            threading.Thread(target=self._send, daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self) -> None:
        try:
            data = pattern_bytes(SEED_UP, self.size)
            half = self.size // 2
            self.sock.sendall(data[:half])
            self.half_sent.set()
            if not self.gate.wait(scaled_s(60)):
                raise TimeoutError("gate never opened")
            self.sock.sendall(data[half:])
            self.sock.shutdown(socket.SHUT_WR)
            self.sent_sha = hashlib.sha256(data).hexdigest()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
            self.half_sent.set()

    def _receive(self) -> None:
        try:
            self.received = sha256_stream(self.sock.recv)
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)

    def join(self, timeout_s: float) -> None:
        for thread in self._threads:
            thread.join(timeout_s)
        assert not any(thread.is_alive() for thread in self._threads), "transfer hung"


def _text_message(client: RawClient) -> None:
    client.send_ws(0x1, b'{"type": "HELLO"}')


def _garbage(client: RawClient) -> None:
    client.send_message(b"\xde\xad\xbe\xef this is not a frame")


def _oversized_frame(client: RawClient) -> None:
    # DATA over maxFrame on an open stream: a protocol error, checked before flow control (the
    # payload is also over the window, which must not turn it into a mere RST).
    assert client.welcome is not None
    max_frame = int(client.welcome["maxFrame"])
    client.send_message(encode_frame(DATA, 1, os.urandom(max_frame + 1)))


def _oversized_message(client: RawClient) -> None:
    # Announce 4 MiB + 1 and send only the start: the kit must answer from the header.
    key = os.urandom(4)
    client.send_raw(ws_frame_header(0x2, WS_MAX_MESSAGE + 1, mask_key=key) + b"\0" * 65536)


OFFENCES = {
    "text_message": _text_message,
    "garbage_bytes": _garbage,
    "frame_over_max_frame": _oversized_frame,
    "message_over_4_MiB": _oversized_message,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("offence", list(OFFENCES))
def test_an_offending_session_ends_alone_while_another_transfer_completes(
    make_kit: MakeKit, offence: str
) -> None:
    kit = make_kit()
    bulk_target = TcpTarget("transfer", size=SIZE, seed=SEED_DOWN)
    echo = TcpTarget("echo")
    client = ClientProcess.launch(kit, "--pull", f"0:{bulk_target.port}")
    raw = transfer = None
    try:
        client.wait_ready()
        raw = RawClient.connect(kit)
        raw_session = raw.hello(kit.client_token)["sessionId"]
        if offence == "frame_over_max_frame":
            bind = raw.bind("PULL", echo.port)
            raw.open_stream(1, int(bind.json()["bindId"]))
            raw.expect(OPEN_OK, stream_id=1)

        transfer = GatedTransfer(connect_local(client.pull_port(bulk_target.port)), SIZE)
        assert transfer.half_sent.wait(scaled_s(60)), "the transfer never got going"
        assert not transfer.errors, transfer.errors

        OFFENCES[offence](raw)
        frames, closed = raw.read_until_closed()

        if offence == "message_over_4_MiB":
            assert closed.code == 1009, f"{frames} then {closed}"
            kit.wait_log(rf"session closed: id={raw_session} .*reason=message_too_big")
        else:
            goaways = [frame for frame in frames if frame.type == GOAWAY]
            assert goaways, f"no GOAWAY: {frames} then {closed}"
            assert goaways[0].code == PROTOCOL_ERROR, (goaways[0].code, goaways[0].reason)
            assert frames[-1] is goaways[-1], f"frames after the GOAWAY: {frames}"
            assert closed.code is not None, f"no close frame after the GOAWAY: {closed}"
            kit.wait_log(rf"session closed: id={raw_session} .*reason=protocol_error")

        # The other session did not notice.
        assert client.process.poll() is None, client.output()
        transfer.gate.set()
        transfer.join(scaled_s(90))
        assert not transfer.errors, f"{transfer.errors}\n{client.output()}"
        [record] = bulk_target.wait_records(1, scaled_s(30))
        assert record.received_size == SIZE and record.received_sha == transfer.sent_sha
        assert transfer.received == (record.sent_sha, SIZE)
        assert client.process.poll() is None, client.output()
    finally:
        if transfer is not None:
            transfer.gate.set()
            transfer.sock.close()
        if raw is not None:
            raw.close()
        client.kill()
        bulk_target.close()
        echo.close()
