"""The bytes on the wire, written from the specs alone (no ``tunnel.*`` import): the tunnel frames
of docs/protocol.md (docs/protocol.md §2.1 frame header and types, docs/protocol.md §3.1 error codes) and the client side of RFC 6455
framing.

The e2e tests check the kit against these, not against what the project's own protocol package
encodes or decodes: :class:`~tests.e2e.tunnel_support.RawClient` (hand-written WebSocket),
:class:`~tests.e2e.admin_support.WireClient` and the resume tests (the project's WebSocket
transport, hand-decoded frames) and :mod:`tests.e2e.fault_proxy` (frame boundaries for its cuts).
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Frame types (docs/protocol.md §2.2).
HELLO, WELCOME, BIND, BIND_OK, BIND_ERR, UNBIND = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
OPEN, OPEN_OK, DATA, WINDOW, RST = 0x10, 0x11, 0x12, 0x13, 0x14
PING, PONG, GOAWAY = 0x20, 0x21, 0x30
FLAG_FIN = 0x01
FRAME_NAMES = {
    HELLO: "HELLO", WELCOME: "WELCOME", BIND: "BIND", BIND_OK: "BIND_OK", BIND_ERR: "BIND_ERR",
    UNBIND: "UNBIND", OPEN: "OPEN", OPEN_OK: "OPEN_OK", DATA: "DATA", WINDOW: "WINDOW",
    RST: "RST", PING: "PING", PONG: "PONG", GOAWAY: "GOAWAY",
}

# Error codes (docs/protocol.md §3.1).
NORMAL, ADMIN_CLOSE, PROTOCOL_ERROR, SHUTDOWN, AUTH_FAILED, TIMEOUT = 0, 1, 2, 3, 4, 5
REFUSED, RESOURCE_EXHAUSTED, CONNECT_FAILED, FLOW_CONTROL_ERROR = 6, 7, 8, 9
NOT_FOUND, FORBIDDEN, SUPERSEDED, RESUME_FAILED, STREAM_CLOSED, PORT_IN_USE = 10, 11, 12, 13, 14, 15

# type u8, flags u8, stream id u32, payload length u32, network order.
HEADER = struct.Struct("!BBII")
# The largest WebSocket message the kit accepts (docs/protocol.md §2).
WS_MAX_MESSAGE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Frame:
    """One tunnel frame as decoded from the wire."""

    type: int
    flags: int
    stream_id: int
    payload: bytes

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.type, hex(self.type))

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def code(self) -> int:
        """u16 code of RST / GOAWAY."""
        return int(struct.unpack("!H", self.payload[:2])[0])

    @property
    def reason(self) -> str:
        """The UTF-8 reason after the code of RST / GOAWAY (invalid bytes shown as U+FFFD)."""
        return self.payload[2:].decode("utf-8", "replace")

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 80 else self.payload[:80] + b"..."
        return f"<{self.name} sid={self.stream_id} flags={self.flags} {shown!r}>"


def encode_frame(frame_type: int, stream_id: int = 0, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(frame_type, flags, stream_id, len(payload)) + payload


def code_payload(code: int, reason: str = "") -> bytes:
    """The payload of RST / GOAWAY: u16 code, then the UTF-8 reason."""
    return struct.pack("!H", code) + reason.encode()


def split_frames(message: bytes | bytearray | memoryview) -> list[Frame]:
    """The frames of one WebSocket message (v2 may batch several; v1 holds one)."""
    data = bytes(message)
    frames: list[Frame] = []
    offset = 0
    while offset < len(data):
        frame_type, flags, stream_id, length = HEADER.unpack_from(data, offset)
        start = offset + HEADER.size
        payload = data[start : start + length]
        assert len(payload) == length, f"truncated frame in {data[:100]!r}"
        frames.append(Frame(frame_type, flags, stream_id, payload))
        offset = start + length
    return frames


# -- RFC 6455, the client's side ---------------------------------------------------------------


def ws_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode()


def ws_upgrade_request(path: str, host: str, key: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A client's opening handshake (RFC 6455 §4.1): GET ``path`` with the upgrade headers and
    ``key``, then ``headers`` (e.g. Sec-WebSocket-Protocol)."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def mask(data: bytes, key: bytes) -> bytes:
    """``data`` XOR-ed with the 4-byte masking ``key`` (RFC 6455 §5.3)."""
    if not data:
        return b""
    n = len(data)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def ws_frame_header(opcode: int, length: int, *, fin: bool = True, mask_key: bytes = b"\0\0\0\0") -> bytes:
    """A client (masked) WebSocket frame header announcing ``length`` payload bytes."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask_key


def ws_client_frame(opcode: int, payload: bytes, mask_key: bytes) -> bytes:
    """A whole client frame: header, then ``payload`` masked with ``mask_key``."""
    return ws_frame_header(opcode, len(payload), mask_key=mask_key) + mask(payload, mask_key)
