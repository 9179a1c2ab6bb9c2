"""RFC 6455 framing shared by both ends of the tunnel.

Theory of operation
-------------------
This module does no I/O of its own. Encoding is pure (`encode_frame_header`, `encode_frame`,
`pack_close_payload`); decoding is `decode_frame_header` plus a `FrameReader` that pulls bytes from
a *blocking* ``read(n)`` callable (and, when given, ``readinto(buffer)``), such as the ``read`` of
an ``io.BufferedReader`` over a gevent socket. `FrameReader.read_message` returns one whole data
message (fragments reassembled) or one control frame; control frames may arrive between the
fragments of a data message (RFC 6455 §5.4) and are returned as they come, the fragment state
being kept for the next call.

Every length is checked before any payload byte is read (docs/protocol.md §1.2,
docs/gevent-websocket.md §9): a header claiming 8 GiB, or a fragment that would take the running
total over ``max_message_size``, raises `OversizeMessageError` while the payload still sits in
the socket.

(Un)masking (RFC 6455 §5.3) never loops over bytes in Python (docs/gevent-websocket.md §4):
payloads of 512 bytes or more are XORed by numpy as uint32 words against the mask key viewed as
one native uint32 (both sides share the native byte order, so the XOR is bytewise correct); the
0-3 byte tail and short payloads are XORed as one big integer.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
from tunnel.protocol import TunnelError

__all__ = [
    "MAX_CONTROL_PAYLOAD_SIZE",
    "MAX_CLOSE_REASON_SIZE",
    "MAX_MESSAGE_SIZE",
    "CloseCode",
    "FrameHeader",
    "FrameReader",
    "WebSocketFramingError",
    "IncompleteReadError",
    "Message",
    "Opcode",
    "OversizeMessageError",
    "PrefixedReader",
    "apply_mask",
    "apply_mask_inplace",
    "check_switching_headers",
    "compute_accept_key",
    "decode_frame_header",
    "encode_frame",
    "encode_frame_header",
    "frame_header_size",
    "is_valid_close_code",
    "pack_close_payload",
    "parse_close_payload",
]

#: docs/protocol.md §1.2: messages over 4 MiB are refused with close 1009.
MAX_MESSAGE_SIZE: Final = 4 * 1024 * 1024
#: RFC 6455 §5.5: control frames carry at most 125 bytes and are never fragmented.
MAX_CONTROL_PAYLOAD_SIZE: Final = 125
#: 125 - 2 bytes of close code.
MAX_CLOSE_REASON_SIZE: Final = 123

# Below this size the big-integer XOR beats numpy's per-call overhead (measured: 64 B 0.6 us
# vs 2 us; 1 KiB 3.4 us vs 2.1 us).
_NUMPY_MIN_SIZE: Final = 512

_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")
_HEAD: Final = struct.Struct("!BB")
_HEAD16: Final = struct.Struct("!BBH")
_HEAD64: Final = struct.Struct("!BBQ")


class Opcode(enum.IntEnum):
    """RFC 6455 §5.2 opcodes. Any other value is a protocol error."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_DATA_OPCODES: Final = frozenset({Opcode.TEXT, Opcode.BINARY})
_KNOWN_OPCODES: Final = frozenset(int(op) for op in Opcode)


class CloseCode(enum.IntEnum):
    """RFC 6455 §7.4.1 status codes used by the tunnel. Unknown received codes stay plain ints."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire: "the close frame had no payload"
    ABNORMAL = 1006  # never on the wire: "no close frame at all"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # registered by IANA: the server is overloaded (no FD permit left)


class WebSocketFramingError(TunnelError):
    """The peer broke RFC 6455. ``close_code`` is what to send before dropping the connection."""

    def __init__(self, message: str, *, close_code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


class OversizeMessageError(WebSocketFramingError):
    """A message would exceed ``max_message_size``; detected from headers, payload unread."""

    def __init__(self, message_size: int, max_message_size: int) -> None:
        super().__init__(
            f"message of at least {message_size} bytes exceeds the limit of {max_message_size} bytes",
            close_code=CloseCode.MESSAGE_TOO_BIG,
        )
        self.message_size = message_size
        self.max_message_size = max_message_size


class IncompleteReadError(TunnelError, EOFError):
    """The byte stream ended (EOF) before ``expected_size`` bytes could be read."""

    def __init__(self, expected_size: int, partial_size: int) -> None:
        super().__init__(f"stream ended after {partial_size} of {expected_size} bytes")
        self.expected_size = expected_size
        self.partial_size = partial_size


# ---------------------------------------------------------------------------------------------
# Masking (RFC 6455 §5.3)
# ---------------------------------------------------------------------------------------------

Buffer = bytes | bytearray | memoryview


def _xor_small(data: Buffer, mask_key: bytes) -> bytes:
    """XOR ``data`` with the repeated key as one big integer (no per-byte loop)."""
    size = len(data)
    if size == 0:
        return b""
    key = (mask_key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(size, "little")


def _check_mask_key(mask_key: bytes) -> None:
    if len(mask_key) != 4:
        raise ValueError(f"a mask key is 4 bytes, got {len(mask_key)}")


def apply_mask(data: Buffer, mask_key: bytes, *, out: memoryview | bytearray | None = None) -> bytearray | None:
    """XOR ``data`` with ``mask_key`` repeated (masking and unmasking are the same operation).

    Args:
        data: the payload, any contiguous bytes-like object, any alignment.
        mask_key: the 4-byte key of the frame.
        out: optional writable buffer of exactly ``len(data)`` bytes to write into.

    Returns:
        A new bytearray, or None when ``out`` was given.
    """
    _check_mask_key(mask_key)
    size = len(data)
    if out is None:
        result: bytearray | None = bytearray(size)
        target: memoryview | bytearray = result  # type: ignore[assignment]
    else:
        if len(out) != size:
            raise ValueError(f"out has {len(out)} bytes, data has {size}")
        result, target = None, out
    if size < _NUMPY_MIN_SIZE:
        target[:] = _xor_small(data, mask_key)
        return result
    word_count = size // 4
    mask_word = np.frombuffer(mask_key, dtype=np.uint32)[0]
    np.bitwise_xor(
        np.frombuffer(data, dtype=np.uint32, count=word_count),
        mask_word,
        out=np.frombuffer(target, dtype=np.uint32, count=word_count),
    )
    tail_start = word_count * 4
    if tail_start != size:
        # The tail starts at a multiple of 4, so the key phase restarts at mask_key[0].
        target[tail_start:] = _xor_small(memoryview(data)[tail_start:], mask_key)
    return result


def apply_mask_inplace(buffer: bytearray | memoryview, mask_key: bytes) -> None:
    """XOR a writable buffer with ``mask_key`` repeated, in place (see `apply_mask`)."""
    _check_mask_key(mask_key)
    size = len(buffer)
    if size < _NUMPY_MIN_SIZE:
        buffer[:] = _xor_small(buffer, mask_key)
        return
    word_count = size // 4
    words = np.frombuffer(buffer, dtype=np.uint32, count=word_count)
    np.bitwise_xor(words, np.frombuffer(mask_key, dtype=np.uint32)[0], out=words)
    del words  # release the buffer export before the caller may resize a bytearray
    tail_start = word_count * 4
    if tail_start != size:
        buffer[tail_start:] = _xor_small(memoryview(buffer)[tail_start:], mask_key)


# ---------------------------------------------------------------------------------------------
# Frame headers (RFC 6455 §5.2)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """One decoded frame header. ``mask_key`` is None for an unmasked frame."""

    fin: bool
    opcode: int
    payload_size: int
    mask_key: bytes | None = None
    rsv: int = 0  # the three RSV bits as a 3-bit number (RSV1 = 4)


def encode_frame_header(
    opcode: int, payload_size: int, *, fin: bool = True, mask_key: bytes | None = None, rsv: int = 0
) -> bytes:
    """Encode a frame header with the minimal length encoding.

    Raises:
        ValueError: negative size, bad mask key or opcode/rsv out of range.
    """
    if not 0 <= opcode <= 0xF or not 0 <= rsv <= 7:
        raise ValueError(f"opcode {opcode} / rsv {rsv} out of range")
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0
    if mask_key is not None:
        _check_mask_key(mask_key)
        mask_bit = 0x80
    if payload_size < 0:
        raise ValueError("negative payload size")
    if payload_size < 126:
        head = _HEAD.pack(first, mask_bit | payload_size)
    elif payload_size < 0x10000:
        head = _HEAD16.pack(first, mask_bit | 126, payload_size)
    elif payload_size < 1 << 63:
        head = _HEAD64.pack(first, mask_bit | 127, payload_size)
    else:
        raise ValueError("payload size does not fit in 63 bits")
    return head + mask_key if mask_key is not None else head


def encode_frame(opcode: int, payload: Buffer, *, fin: bool = True, mask_key: bytes | None = None) -> bytes:
    """Encode one whole frame; the payload is masked when ``mask_key`` is given."""
    header = encode_frame_header(opcode, len(payload), fin=fin, mask_key=mask_key)
    if mask_key is None:
        return header + bytes(payload)
    masked = apply_mask(payload, mask_key)
    assert masked is not None
    return header + masked


def frame_header_size(first_two: Buffer) -> int:
    """Total header size (2-14 bytes) announced by the first two bytes of a frame."""
    second = first_two[1]
    size = 2 + (4 if second & 0x80 else 0)
    length7 = second & 0x7F
    if length7 == 126:
        size += 2
    elif length7 == 127:
        size += 8
    return size


def decode_frame_header(header: Buffer) -> FrameHeader:
    """Decode a whole header (``frame_header_size`` bytes). Does not check the RFC's rules
    (opcode, RSV, masking direction); `FrameReader` does.

    Raises:
        WebSocketFramingError: the 64-bit length has its most significant bit set (RFC 6455 §5.2).
        ValueError: ``header`` is not exactly the announced size.
    """
    if len(header) < 2 or len(header) != frame_header_size(header):
        raise ValueError("incomplete or oversized frame header")
    first, second = header[0], header[1]
    length7 = second & 0x7F
    offset = 2
    if length7 == 126:
        (payload_size,) = _U16.unpack_from(header, 2)
        offset = 4
    elif length7 == 127:
        (payload_size,) = _U64.unpack_from(header, 2)
        offset = 10
        if payload_size >> 63:
            raise WebSocketFramingError("64-bit payload length with the most significant bit set")
    else:
        payload_size = length7
    mask_key = bytes(header[offset : offset + 4]) if second & 0x80 else None
    return FrameHeader(
        fin=bool(first & 0x80),
        opcode=first & 0x0F,
        payload_size=payload_size,
        mask_key=mask_key,
        rsv=(first >> 4) & 0x7,
    )


# ---------------------------------------------------------------------------------------------
# Close payloads (RFC 6455 §5.5.1, §7.4)
# ---------------------------------------------------------------------------------------------


def is_valid_close_code(code: int) -> bool:
    """True for a code that may appear in a close frame (RFC 6455 §7.4.1, IANA registry):
    1000-1003, 1007-1014 and the application/library ranges 3000-4999."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def pack_close_payload(code: int | None, reason: str = "") -> bytes:
    """``!H`` code then the UTF-8 reason, cut to 123 bytes at a character boundary.

    ``code=None`` gives an empty payload (allowed only with an empty reason).

    Raises:
        ValueError: a code that must not be sent, or a reason without a code.
    """
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    if not is_valid_close_code(code):
        raise ValueError(f"close code {code} may not be sent")
    encoded = reason.encode("utf-8")
    if len(encoded) > MAX_CLOSE_REASON_SIZE:
        encoded = encoded[:MAX_CLOSE_REASON_SIZE].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(code) + encoded


def parse_close_payload(payload: Buffer) -> tuple[int | None, str]:
    """Parse a close frame payload into ``(code, reason)``; ``code`` is None when empty.

    Raises:
        WebSocketFramingError: a 1-byte payload or a forbidden code (1002), a reason that is not
            UTF-8 (1007).
    """
    if len(payload) == 0:
        return None, ""
    if len(payload) == 1:
        raise WebSocketFramingError("close payload of 1 byte")
    (code,) = _U16.unpack_from(payload, 0)
    if not is_valid_close_code(code):
        raise WebSocketFramingError(f"invalid close code {code}")
    try:
        reason = bytes(payload[2:]).decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketFramingError("close reason is not valid UTF-8", close_code=CloseCode.INVALID_DATA) from None
    return code, reason


# ---------------------------------------------------------------------------------------------
# Opening handshake (RFC 6455 §4)
# ---------------------------------------------------------------------------------------------

_WEBSOCKET_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


def compute_accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _WEBSOCKET_GUID).digest()).decode("ascii")


def check_switching_headers(headers: Sequence[tuple[str, str]], key: str, offered: Sequence[str]) -> str:
    """Check the headers of a 101 answer (RFC 6455 §4.1, client steps 2-6).

    Args:
        headers: (lower-case name, value) pairs of the 101 response.
        key: the Sec-WebSocket-Key the client sent.
        offered: the subprotocols the client offered.

    Returns:
        The chosen subprotocol, ``""`` when none was offered nor chosen.

    Raises:
        ValueError: what is wrong, for a human.
    """
    values: dict[str, str] = {}
    for name, value in headers:
        values[name] = f"{values[name]}, {value}" if name in values else value
    if values.get("upgrade", "").strip().lower() != "websocket":
        raise ValueError("missing Upgrade: websocket")
    if "upgrade" not in [token.strip().lower() for token in values.get("connection", "").split(",")]:
        raise ValueError("missing Connection: Upgrade")
    if values.get("sec-websocket-accept", "").strip() != compute_accept_key(key):
        raise ValueError("wrong Sec-WebSocket-Accept")
    chosen = values.get("sec-websocket-protocol", "").strip()
    if (offered and chosen not in offered) or (not offered and chosen):
        raise ValueError(f"server chose subprotocol {chosen!r}, offered {list(offered)}")
    return chosen


# ---------------------------------------------------------------------------------------------
# Reading messages
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A whole data message (TEXT/BINARY) or a control frame (CLOSE/PING/PONG)."""

    opcode: Opcode
    payload: bytes | bytearray


class FrameReader:
    """Reads whole messages from a blocking byte stream.

    Args:
        read: ``read(n)`` returns up to n bytes, ``b""`` only at EOF (short reads are retried).
        readinto: optional ``readinto(buffer) -> int``; when given, payloads are read straight
            into their final bytearray and unmasked in place (one copy fewer).
        expect_masked: True on the server (client frames must be masked), False on the client
            (server frames must not be), RFC 6455 §5.1.
        max_message_size: limit on a whole (reassembled) data message.

    One reader per connection, used by one greenlet at a time.
    """

    def __init__(
        self,
        read: Callable[[int], bytes],
        *,
        readinto: Callable[[memoryview], int | None] | None = None,
        expect_masked: bool,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self._read = read
        self._readinto = readinto
        self._expect_masked = expect_masked
        self.max_message_size = max_message_size
        # Fragmented message in progress (RFC 6455 §5.4): its opcode, parts and running size.
        self._fragment_opcode: Opcode | None = None
        self._fragments: list[bytes | bytearray] = []
        self._fragment_total_size = 0

    def read_message(self) -> Message:
        """Block until one whole data message or one control frame has been read.

        Raises:
            OversizeMessageError: before reading the payload that would exceed the limit.
            WebSocketFramingError: any RFC 6455 violation (``close_code`` says which close to send).
            IncompleteReadError: EOF, at a frame boundary or inside a frame.
        """
        while True:
            header = self._read_header()
            opcode = header.opcode
            if opcode >= 0x8:  # control frame, possibly between fragments (RFC 6455 §5.4)
                payload = self._read_payload(header.payload_size, header.mask_key)
                return Message(Opcode(opcode), payload)
            if opcode == Opcode.CONTINUATION:
                if self._fragment_opcode is None:
                    raise WebSocketFramingError("continuation frame without a message in progress")
            elif self._fragment_opcode is not None:
                raise WebSocketFramingError("new data frame while a fragmented message is in progress")
            total_size = self._fragment_total_size + header.payload_size
            if total_size > self.max_message_size:  # docs/gevent-websocket.md §9: before reading the payload
                raise OversizeMessageError(total_size, self.max_message_size)
            payload = self._read_payload(header.payload_size, header.mask_key)
            if opcode != Opcode.CONTINUATION:
                if header.fin:  # the common case: a single-frame message, no extra copy
                    return Message(Opcode(opcode), payload)
                self._fragment_opcode = Opcode(opcode)
            self._fragments.append(payload)
            self._fragment_total_size = total_size
            if header.fin:
                message = Message(self._fragment_opcode, b"".join(self._fragments))  # type: ignore[arg-type]
                self._fragment_opcode = None
                self._fragments = []
                self._fragment_total_size = 0
                return message

    def _read_header(self) -> FrameHeader:
        first_two = self._read_exactly(2)
        size = frame_header_size(first_two)
        raw = first_two + self._read_exactly(size - 2) if size > 2 else first_two
        header = decode_frame_header(raw)
        if header.rsv:
            raise WebSocketFramingError(f"RSV bits {header.rsv:#o} set without a negotiated extension")
        if header.opcode not in _KNOWN_OPCODES:
            raise WebSocketFramingError(f"unknown opcode {header.opcode:#x}")
        if header.opcode >= 0x8:
            if not header.fin:
                raise WebSocketFramingError("fragmented control frame")
            if header.payload_size > MAX_CONTROL_PAYLOAD_SIZE:
                raise WebSocketFramingError(f"control frame of {header.payload_size} bytes (max 125)")
        if (header.mask_key is not None) != self._expect_masked:
            raise WebSocketFramingError("unmasked client frame" if self._expect_masked else "masked server frame")
        return header

    def _read_exactly(self, size: int) -> bytes:
        data = self._read(size)
        if len(data) == size:
            return data
        parts = [data]
        got = len(data)
        while got < size:
            if not data:
                raise IncompleteReadError(size, got)
            data = self._read(size - got)
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def _read_payload(self, size: int, mask_key: bytes | None) -> bytes | bytearray:
        if size == 0:
            return b""
        if self._readinto is None:
            data = self._read_exactly(size)
            if mask_key is None:
                return data
            unmasked = apply_mask(data, mask_key)
            assert unmasked is not None
            return unmasked
        buffer = bytearray(size)
        with memoryview(buffer) as view:
            got = 0
            while got < size:
                count = self._readinto(view[got:])
                if not count:
                    raise IncompleteReadError(size, got)
                got += count
            if mask_key is not None:
                apply_mask_inplace(view, mask_key)
        return buffer


class _ByteReader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...
    def readinto(self, buffer: memoryview, /) -> int | None: ...
    def close(self) -> None: ...


class PrefixedReader:
    """A reader that serves ``prefix`` first, then reads from ``reader`` (e.g. the bytes an HTTP
    parser read past the 101 response, then the socket's buffered reader)."""

    def __init__(self, prefix: bytes, reader: _ByteReader) -> None:
        self._prefix = memoryview(prefix)
        self._reader = reader

    def read(self, size: int = -1, /) -> bytes:
        if self._prefix:
            chunk = bytes(self._prefix[:size] if size >= 0 else self._prefix)
            self._prefix = self._prefix[len(chunk) :]
            return chunk
        return self._reader.read(size)

    def readinto(self, buffer: memoryview, /) -> int | None:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        return self._reader.readinto(buffer)

    def close(self) -> None:
        self._reader.close()
