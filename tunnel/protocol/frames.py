"""Frames of the wire protocol: types, the codec and the decoders (docs/protocol.md §2).

Every frame is a 10-byte header in network byte order (``type:u8 flags:u8 stream:u32
length:u32``) followed by ``length`` payload bytes. One precompiled ``struct.Struct('!BBII')``
packs and unpacks every header.

Two decoders share the same per-frame rules:

* :func:`decode_message` decodes one WebSocket message, the unit a Session receives. In v1 a
  message holds exactly one frame; in v2 it holds one or more whole frames back to back; a frame
  never spans messages. DATA payloads are ``memoryview`` slices of the message (no copy).
* :class:`FrameDecoder` is a streaming decoder for a byte stream cut at arbitrary points (tests,
  tools). It checks each header, including the length against ``max_frame_size``, as soon as
  the 10 header bytes are in, before it buffers any of the payload.

Per-frame rules, all :class:`~tunnel.protocol.errors.RemoteProtocolError` with
``PROTOCOL_ERROR`` (the one exception: a ``resume`` key in a v1 HELLO gives ``RESUME_FAILED``):
unknown type; a flag bit other than FIN, or FIN on anything but DATA; a control frame (HELLO,
WELCOME, BIND, BIND_OK, BIND_ERR, UNBIND, PING, PONG, GOAWAY) on a stream other than 0; a stream
frame (OPEN, OPEN_OK, DATA, WINDOW, RST) on stream 0; a payload longer than ``max_frame_size``;
a truncated frame; a payload of the wrong shape (OPEN shorter than 4 bytes, OPEN_OK not empty,
WINDOW not 4 bytes or an increment of 0, RST/GOAWAY shorter than 2 bytes, PING/PONG not exactly
8 bytes, text that is not UTF-8, JSON rules of :mod:`tunnel.protocol.payloads`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar, TypeAlias

from tunnel.protocol import payloads
from tunnel.protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
    error_code_from_wire,
)
from tunnel.protocol.messages import BindRequest, BindResult, Hello, Welcome

__all__ = [
    "BindErrFrame",
    "BindFrame",
    "BindOkFrame",
    "DataFrame",
    "Flags",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "GoAwayFrame",
    "HEADER_SIZE",
    "HelloFrame",
    "MAX_FRAME_SIZE_LIMIT",
    "MAX_MESSAGE_SIZE",
    "OpenFrame",
    "OpenOkFrame",
    "PingFrame",
    "PongFrame",
    "RstFrame",
    "UnbindFrame",
    "WelcomeFrame",
    "WindowFrame",
    "decode_message",
    "encode_frame",
    "encode_message",
]

HEADER = struct.Struct("!BBII")
HEADER_SIZE = HEADER.size  # 10
#: Largest WebSocket message either side accepts (docs/protocol.md §1.2).
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
#: Largest payload that still fits one message with its header.
MAX_FRAME_SIZE_LIMIT = MAX_MESSAGE_SIZE - HEADER_SIZE

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class FrameType(IntEnum):
    """The ``type`` byte of a frame header."""

    HELLO = 0x01
    WELCOME = 0x02
    BIND = 0x03
    BIND_OK = 0x04
    BIND_ERR = 0x05
    UNBIND = 0x06
    OPEN = 0x10
    OPEN_OK = 0x11
    DATA = 0x12
    WINDOW = 0x13
    RST = 0x14
    PING = 0x20
    PONG = 0x21
    GOAWAY = 0x30


class Flags(IntFlag):
    """The ``flags`` byte. FIN is valid on DATA only; every other bit is a protocol error."""

    FIN = 0x01


_TYPES = {int(t): t for t in FrameType}
#: Frame types that travel on stream 0 only (all others need a non-zero stream id).
CONTROL_FRAME_TYPES = frozenset(
    {
        FrameType.HELLO,
        FrameType.WELCOME,
        FrameType.BIND,
        FrameType.BIND_OK,
        FrameType.BIND_ERR,
        FrameType.UNBIND,
        FrameType.PING,
        FrameType.PONG,
        FrameType.GOAWAY,
    }
)


@dataclass(frozen=True, slots=True)
class HelloFrame:
    """HELLO (C→S, stream 0): the client's first frame. Payload: JSON (docs/protocol.md §5.1)."""

    frame_type: ClassVar[FrameType] = FrameType.HELLO
    hello: Hello


@dataclass(frozen=True, slots=True)
class WelcomeFrame:
    """WELCOME (S→C, stream 0): the server accepted the session. Payload: JSON."""

    frame_type: ClassVar[FrameType] = FrameType.WELCOME
    welcome: Welcome


@dataclass(frozen=True, slots=True)
class BindFrame:
    """BIND (C→S, stream 0): ask for a binding.

    Only ``req_id`` is validated by the codec. ``kind``, ``port`` and ``mode`` are the raw JSON
    values (None when absent or null): the session validates them and answers BIND_ERR for bad
    ones (docs/protocol.md §6.1).
    """

    frame_type: ClassVar[FrameType] = FrameType.BIND
    req_id: int
    kind: object = None
    port: object = None
    mode: object = None
    host_header: object = None  # BIND "hostHeader" (HTTP mode, docs/http-mode.md)

    @classmethod
    def from_request(cls, request: BindRequest) -> BindFrame:
        """Build the frame for a typed :class:`~tunnel.protocol.messages.BindRequest`.

        Args:
            request: the request.

        Returns:
            A BindFrame with the JSON values of ``request``.
        """
        return cls(request.req_id, request.kind.value, request.port, request.mode.value, request.host_header)


@dataclass(frozen=True, slots=True)
class BindOkFrame:
    """BIND_OK (S→C, stream 0): the binding exists."""

    frame_type: ClassVar[FrameType] = FrameType.BIND_OK
    result: BindResult


@dataclass(frozen=True, slots=True)
class BindErrFrame:
    """BIND_ERR (S→C, stream 0): the BIND ``req_id`` failed; ``error`` names the port and why."""

    frame_type: ClassVar[FrameType] = FrameType.BIND_ERR
    req_id: int
    error_code: ErrorCode | int
    error: str


@dataclass(frozen=True, slots=True)
class UnbindFrame:
    """UNBIND (both, stream 0): close binding ``bind_id``; the server echoes it."""

    frame_type: ClassVar[FrameType] = FrameType.UNBIND
    bind_id: int


@dataclass(frozen=True, slots=True)
class OpenFrame:
    """OPEN (both): open stream ``stream_id`` for binding ``bind_id``.

    ``origin`` is the optional ``"ip:port"`` of the connection that caused it (an empty origin
    on the wire decodes as None).
    """

    frame_type: ClassVar[FrameType] = FrameType.OPEN
    stream_id: int
    bind_id: int
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class OpenOkFrame:
    """OPEN_OK (both): the receiver of OPEN connected its side of the stream."""

    frame_type: ClassVar[FrameType] = FrameType.OPEN_OK
    stream_id: int


@dataclass(frozen=True, slots=True)
class DataFrame:
    """DATA (both): stream bytes. ``end_stream`` is the FIN flag (no more data will follow).

    ``data`` may be a memoryview slice of a received message (no copy on the hot path).
    """

    frame_type: ClassVar[FrameType] = FrameType.DATA
    stream_id: int
    data: bytes | memoryview
    end_stream: bool = False


@dataclass(frozen=True, slots=True)
class WindowFrame:
    """WINDOW (both): grant ``increment`` (> 0) more bytes of credit on a stream."""

    frame_type: ClassVar[FrameType] = FrameType.WINDOW
    stream_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class RstFrame:
    """RST (both): the stream ends abnormally with ``error_code``."""

    frame_type: ClassVar[FrameType] = FrameType.RST
    stream_id: int
    error_code: ErrorCode | int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PingFrame:
    """PING (both, stream 0): 8 opaque bytes, answered by a PONG carrying the same bytes."""

    frame_type: ClassVar[FrameType] = FrameType.PING
    payload: bytes


@dataclass(frozen=True, slots=True)
class PongFrame:
    """PONG (both, stream 0): the 8 bytes of the PING it answers."""

    frame_type: ClassVar[FrameType] = FrameType.PONG
    payload: bytes


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    """GOAWAY (both, stream 0): the sender opens no new streams and will close."""

    frame_type: ClassVar[FrameType] = FrameType.GOAWAY
    error_code: ErrorCode | int
    reason: str = ""


Frame: TypeAlias = (
    HelloFrame
    | WelcomeFrame
    | BindFrame
    | BindOkFrame
    | BindErrFrame
    | UnbindFrame
    | OpenFrame
    | OpenOkFrame
    | DataFrame
    | WindowFrame
    | RstFrame
    | PingFrame
    | PongFrame
    | GoAwayFrame
)


# -- encoding -----------------------------------------------------------------------------------


def _code_and_text(code: int, text: str) -> bytes:
    return b"".join((_U16.pack(code), text.encode()))


def _frame_parts(frame: Frame) -> tuple[bytes, bytes | memoryview]:
    """Encode a frame as ``(header, payload)`` without joining them (internal; the outbox packs
    several frames into one message with a single join).

    Raises:
        LocalProtocolError: a value does not fit its wire field (stream id, code, increment,
            PING payload size).
    """
    flags = 0
    stream_id = 0
    payload: bytes | memoryview
    try:
        if isinstance(frame, DataFrame):
            stream_id, payload = frame.stream_id, frame.data
            flags = Flags.FIN if frame.end_stream else 0
        elif isinstance(frame, WindowFrame):
            if frame.increment <= 0:
                raise LocalProtocolError(f"WINDOW increment must be > 0, got {frame.increment}")
            stream_id, payload = frame.stream_id, _U32.pack(frame.increment)
        elif isinstance(frame, OpenFrame):
            stream_id = frame.stream_id
            payload = _U32.pack(frame.bind_id) + (frame.origin or "").encode()
        elif isinstance(frame, OpenOkFrame):
            stream_id, payload = frame.stream_id, b""
        elif isinstance(frame, RstFrame):
            stream_id, payload = frame.stream_id, _code_and_text(frame.error_code, frame.reason)
        elif isinstance(frame, (PingFrame, PongFrame)):
            if len(frame.payload) != 8:
                raise LocalProtocolError(
                    f"{frame.frame_type.name} payload must be 8 bytes, got {len(frame.payload)}"
                )
            payload = bytes(frame.payload)
        elif isinstance(frame, GoAwayFrame):
            payload = _code_and_text(frame.error_code, frame.reason)
        elif isinstance(frame, HelloFrame):
            payload = payloads.hello_to_json(frame.hello)
        elif isinstance(frame, WelcomeFrame):
            payload = payloads.welcome_to_json(frame.welcome)
        elif isinstance(frame, BindFrame):
            payload = payloads.bind_to_json(frame.req_id, frame.kind, frame.port, frame.mode, frame.host_header)
        elif isinstance(frame, BindOkFrame):
            payload = payloads.bind_result_to_json(frame.result)
        elif isinstance(frame, BindErrFrame):
            payload = payloads.bind_error_to_json(frame.req_id, frame.error_code, frame.error)
        elif isinstance(frame, UnbindFrame):
            payload = payloads.unbind_to_json(frame.bind_id)
        else:  # pragma: no cover - exhaustive over Frame
            raise LocalProtocolError(f"not a frame: {frame!r}")
        if (stream_id == 0) != (frame.frame_type in CONTROL_FRAME_TYPES):
            raise LocalProtocolError(f"{frame.frame_type.name} on stream {stream_id}")
        header = HEADER.pack(frame.frame_type, flags, stream_id, len(payload))
    except (struct.error, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode {frame.frame_type.name}: {exc}") from None
    return header, payload


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame: its 10-byte header followed by its payload.

    Args:
        frame: any frame dataclass.

    Returns:
        The bytes of the frame.

    Raises:
        LocalProtocolError: a value does not fit its wire field (e.g. a stream id above 2^32-1,
            a control frame given a stream id, a PING payload that is not 8 bytes).
    """
    return b"".join(_frame_parts(frame))


def encode_message(frames: Iterable[Frame]) -> bytes:
    """Encode frames back to back as one v2 WebSocket message (for v1, pass one frame).

    Args:
        frames: the frames, in order.

    Returns:
        The message bytes.

    Raises:
        LocalProtocolError: as :func:`encode_frame`.
    """
    parts: list[bytes | memoryview] = []
    for frame in frames:
        parts.extend(_frame_parts(frame))
    return b"".join(parts)


# -- decoding -----------------------------------------------------------------------------------


def _check_header(
    type_byte: int, flags: int, stream_id: int, length: int, max_frame_size: int
) -> FrameType:
    """Validate a frame header before its payload is looked at.

    Raises:
        RemoteProtocolError: unknown type or flags, wrong stream id for the type, or a payload
            longer than ``max_frame_size``.
    """
    frame_type = _TYPES.get(type_byte)
    if frame_type is None:
        raise RemoteProtocolError(f"unknown frame type 0x{type_byte:02x}")
    if flags and (flags != Flags.FIN or frame_type is not FrameType.DATA):
        raise RemoteProtocolError(f"{frame_type.name}: invalid flags 0x{flags:02x}")
    if frame_type in CONTROL_FRAME_TYPES:
        if stream_id != 0:
            raise RemoteProtocolError(f"{frame_type.name} must be on stream 0, got {stream_id}")
    elif stream_id == 0:
        raise RemoteProtocolError(f"{frame_type.name} must not be on stream 0")
    if length > max_frame_size:
        raise RemoteProtocolError(
            f"{frame_type.name}: payload of {length} bytes exceeds maxFrame {max_frame_size}"
        )
    return frame_type


def _text(payload: memoryview, what: str) -> str:
    try:
        return str(payload, "utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what}: text is not valid UTF-8") from None


def _parse_payload(
    frame_type: FrameType, flags: int, stream_id: int, payload: memoryview, version: int
) -> Frame:
    """Build the frame for a checked header and its complete payload.

    Raises:
        RemoteProtocolError: the payload has the wrong shape for its type.
    """
    if frame_type is FrameType.DATA:
        return DataFrame(stream_id, payload, bool(flags))
    size = len(payload)
    name = frame_type.name
    if frame_type is FrameType.WINDOW:
        if size != 4:
            raise RemoteProtocolError(f"WINDOW payload must be 4 bytes, got {size}")
        (increment,) = _U32.unpack(payload)
        if increment == 0:
            raise RemoteProtocolError(f"WINDOW increment of 0 on stream {stream_id}")
        return WindowFrame(stream_id, increment)
    if frame_type is FrameType.OPEN:
        if size < 4:
            raise RemoteProtocolError(f"OPEN payload must be at least 4 bytes, got {size}")
        (bind_id,) = _U32.unpack_from(payload)
        origin = _text(payload[4:], "OPEN origin") if size > 4 else None
        return OpenFrame(stream_id, bind_id, origin)
    if frame_type is FrameType.OPEN_OK:
        if size:
            raise RemoteProtocolError(f"OPEN_OK payload must be empty, got {size} bytes")
        return OpenOkFrame(stream_id)
    if frame_type in (FrameType.RST, FrameType.GOAWAY):
        if size < 2:
            raise RemoteProtocolError(f"{name} payload must be at least 2 bytes, got {size}")
        (raw_code,) = _U16.unpack_from(payload)
        code = error_code_from_wire(raw_code)
        reason = _text(payload[2:], f"{name} reason")
        if frame_type is FrameType.RST:
            return RstFrame(stream_id, code, reason)
        return GoAwayFrame(code, reason)
    if frame_type in (FrameType.PING, FrameType.PONG):
        if size != 8:
            raise RemoteProtocolError(f"{name} payload must be 8 bytes, got {size}")
        return PingFrame(bytes(payload)) if frame_type is FrameType.PING else PongFrame(bytes(payload))
    if frame_type is FrameType.HELLO:
        return HelloFrame(payloads.hello_from_json(payload, version))
    if frame_type is FrameType.WELCOME:
        return WelcomeFrame(payloads.welcome_from_json(payload))
    if frame_type is FrameType.BIND:
        return BindFrame(*payloads.bind_from_json(payload))
    if frame_type is FrameType.BIND_OK:
        return BindOkFrame(payloads.bind_result_from_json(payload))
    if frame_type is FrameType.BIND_ERR:
        req_id, code_value, error = payloads.bind_error_from_json(payload)
        return BindErrFrame(req_id, error_code_from_wire(code_value), error)
    assert frame_type is FrameType.UNBIND
    return UnbindFrame(payloads.unbind_from_json(payload))


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def decode_message(
    data: bytes | bytearray | memoryview, *, max_frame_size: int, version: int
) -> list[Frame]:
    """Decode one WebSocket binary message into its frames (docs/protocol.md §2).

    Args:
        data: the whole message.
        max_frame_size: the largest payload this side accepts (its maxFrame).
        version: the negotiated protocol version, 1 or 2. v1: the message holds exactly one
            frame. v2: one or more whole frames back to back.

    Returns:
        The frames in order. DATA payloads are memoryview slices of ``data``: keep ``data``
        unmodified while they are in use.

    Raises:
        RemoteProtocolError: an empty or over-4 MiB message, a truncated frame, more than one
            frame in a v1 message, or any per-frame rule (see the module docstring). Nothing is
            returned for a message with an error, even if its first frames were fine.
    """
    view = _as_bytes_view(data)
    total = len(view)
    if total == 0:
        raise RemoteProtocolError("empty message")
    if total > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError(f"message of {total} bytes exceeds 4 MiB")
    frames: list[Frame] = []
    pos = 0
    while pos < total:
        if frames and version < 2:
            raise RemoteProtocolError("v1 message holds more than one frame")
        if total - pos < HEADER_SIZE:
            raise RemoteProtocolError(
                f"truncated frame header: {total - pos} of {HEADER_SIZE} bytes"
            )
        type_byte, flags, stream_id, length = HEADER.unpack_from(view, pos)
        frame_type = _check_header(type_byte, flags, stream_id, length, max_frame_size)
        pos += HEADER_SIZE
        if total - pos < length:
            raise RemoteProtocolError(
                f"truncated {frame_type.name} frame: {total - pos} of {length} payload bytes"
            )
        frames.append(_parse_payload(frame_type, flags, stream_id, view[pos : pos + length], version))
        pos += length
    return frames


class FrameDecoder:
    """Streaming decoder: bytes in, frames out, whatever the cut points.

    Each header is checked (type, flags, stream id, and length against ``max_frame_size``) as
    soon as its 10 bytes have arrived, before any of the payload is buffered. After an error the
    decoder is broken: every later :meth:`feed` raises the same error again.

    Args:
        max_frame_size: the largest payload accepted.
        version: protocol version for the HELLO ``resume`` rule (default 2).
    """

    def __init__(self, max_frame_size: int, *, version: int = 2) -> None:
        self.max_frame_size = max_frame_size
        self.version = version
        self._buffer = bytearray()
        self._header: tuple[FrameType, int, int, int] | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def buffered_size(self) -> int:
        """Bytes received but not yet part of a returned frame (0 at a frame boundary)."""
        return len(self._buffer) + (HEADER_SIZE if self._header is not None else 0)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes and return every frame they complete.

        Args:
            data: the next bytes of the stream (may be empty).

        Returns:
            The completed frames, in order (possibly none). DATA payloads are ``bytes`` owned
            by the frame.

        Raises:
            RemoteProtocolError: the stream broke a frame rule.
        """
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames: list[Frame] = []
        pos = 0
        buf = self._buffer
        try:
            while True:
                if self._header is None:
                    if len(buf) - pos < HEADER_SIZE:
                        break
                    type_byte, flags, stream_id, length = HEADER.unpack_from(buf, pos)
                    frame_type = _check_header(
                        type_byte, flags, stream_id, length, self.max_frame_size
                    )
                    self._header = (frame_type, flags, stream_id, length)
                    pos += HEADER_SIZE
                frame_type, flags, stream_id, length = self._header
                if len(buf) - pos < length:
                    break
                payload = bytes(buf[pos : pos + length])
                pos += length
                self._header = None
                if frame_type is FrameType.DATA:
                    frames.append(DataFrame(stream_id, payload, bool(flags)))
                else:
                    frames.append(
                        _parse_payload(frame_type, flags, stream_id, memoryview(payload), self.version)
                    )
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        finally:
            del buf[:pos]
        return frames
