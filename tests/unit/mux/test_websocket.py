"""RFC 6455 framing (tunnel/mux/websocket.py): pure, no sockets, no gevent."""

from __future__ import annotations

import io
import os
import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.mux.websocket import (
    MAX_MESSAGE_SIZE,
    CloseCode,
    FrameHeader,
    FrameReader,
    WebSocketFramingError,
    IncompleteReadError,
    Message,
    Opcode,
    OversizeMessageError,
    PrefixedReader,
    apply_mask,
    apply_mask_inplace,
    decode_frame_header,
    encode_frame,
    encode_frame_header,
    frame_header_size,
    is_valid_close_code,
    pack_close_payload,
    parse_close_payload,
)

RFC_MASK_KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def reference_mask(data: bytes, key: bytes) -> bytes:
    """The per-byte definition of RFC 6455 §5.3 (what gevent-websocket does, slowly)."""
    return bytes(byte ^ key[i % 4] for i, byte in enumerate(data))


class StrictReader:
    """A byte stream that fails the test if asked for more than it holds (or is told to allow)."""

    def __init__(self, data: bytes, *, allowed_size: int | None = None) -> None:
        self._stream = io.BytesIO(data)
        self.allowed_size = len(data) if allowed_size is None else allowed_size
        self.consumed_size = 0

    def read(self, size: int) -> bytes:
        if self.consumed_size + size > self.allowed_size:
            raise AssertionError(f"asked for {size} bytes after {self.consumed_size}; allowed {self.allowed_size}")
        data = self._stream.read(size)
        self.consumed_size += len(data)
        return data

    def readinto(self, buffer: memoryview) -> int:
        if self.consumed_size + len(buffer) > self.allowed_size:
            raise AssertionError(f"asked for {len(buffer)} bytes after {self.consumed_size}")
        count = self._stream.readinto(buffer)
        self.consumed_size += count
        return count


class OneByteReader:
    """Returns at most one byte per call: exercises every short-read path."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int) -> bytes:
        return self._stream.read(min(size, 1))

    def readinto(self, buffer: memoryview) -> int:
        return self._stream.readinto(buffer[:1])


def reader_for(data: bytes, *, expect_masked: bool, mode: str = "read", max_message_size: int = MAX_MESSAGE_SIZE) -> FrameReader:
    if mode == "read":
        stream = io.BytesIO(data)
        return FrameReader(stream.read, expect_masked=expect_masked, max_message_size=max_message_size)
    if mode == "readinto":
        stream = io.BytesIO(data)
        return FrameReader(stream.read, readinto=stream.readinto, expect_masked=expect_masked, max_message_size=max_message_size)
    one = OneByteReader(data)
    return FrameReader(one.read, readinto=one.readinto, expect_masked=expect_masked, max_message_size=max_message_size)


READ_MODES = ["read", "readinto", "one_byte"]


# -- golden vectors (RFC 6455 §5.7), both directions --------------------------------------------

GOLDEN_FRAMES: list[tuple[str, bytes, FrameHeader, bytes]] = [
    ("unmasked text Hello", bytes.fromhex("810548656c6c6f"), FrameHeader(True, 0x1, 5), b"Hello"),
    (
        "masked text Hello",
        bytes.fromhex("818537fa213d7f9f4d5158"),
        FrameHeader(True, 0x1, 5, RFC_MASK_KEY),
        b"Hello",
    ),
    ("unmasked ping Hello", bytes.fromhex("890548656c6c6f"), FrameHeader(True, 0x9, 5), b"Hello"),
    (
        "masked pong Hello",
        bytes.fromhex("8a8537fa213d7f9f4d5158"),
        FrameHeader(True, 0xA, 5, RFC_MASK_KEY),
        b"Hello",
    ),
    ("first fragment Hel", bytes.fromhex("010348656c"), FrameHeader(False, 0x1, 3), b"Hel"),
    ("last fragment lo", bytes.fromhex("80026c6f"), FrameHeader(True, 0x0, 2), b"lo"),
    ("256 bytes binary", bytes.fromhex("827e0100") + bytes(range(256)), FrameHeader(True, 0x2, 256), bytes(range(256))),
    (
        "64 KiB binary",
        bytes.fromhex("827f0000000000010000") + b"\xab" * 65536,
        FrameHeader(True, 0x2, 65536),
        b"\xab" * 65536,
    ),
    ("empty binary", bytes.fromhex("8200"), FrameHeader(True, 0x2, 0), b""),
    ("125 bytes (7-bit max)", bytes.fromhex("827d") + b"x" * 125, FrameHeader(True, 0x2, 125), b"x" * 125),
    ("126 bytes (16-bit min)", bytes.fromhex("827e007e") + b"x" * 126, FrameHeader(True, 0x2, 126), b"x" * 126),
]


@pytest.mark.parametrize(("name", "wire", "header", "payload"), GOLDEN_FRAMES, ids=[g[0] for g in GOLDEN_FRAMES])
def test_golden_encode(name: str, wire: bytes, header: FrameHeader, payload: bytes) -> None:
    encoded_header = encode_frame_header(header.opcode, header.payload_size, fin=header.fin, mask_key=header.mask_key)
    assert encoded_header == wire[: len(encoded_header)]
    assert encode_frame(header.opcode, payload, fin=header.fin, mask_key=header.mask_key) == wire


@pytest.mark.parametrize(("name", "wire", "header", "payload"), GOLDEN_FRAMES, ids=[g[0] for g in GOLDEN_FRAMES])
def test_golden_decode(name: str, wire: bytes, header: FrameHeader, payload: bytes) -> None:
    size = frame_header_size(wire[:2])
    assert decode_frame_header(wire[:size]) == header
    body = wire[size:]
    if header.mask_key is not None:
        body = reference_mask(body, header.mask_key)
    assert body == payload


@pytest.mark.parametrize("mode", READ_MODES)
def test_golden_messages_fed_whole_bytewise_and_with_trailing_bytes(mode: str) -> None:
    # Server side (masked) and client side (unmasked) vectors through the FrameReader.
    server_wire = bytes.fromhex("818537fa213d7f9f4d5158") + bytes.fromhex("8a8537fa213d7f9f4d5158")
    client_wire = bytes.fromhex("010348656c") + bytes.fromhex("890548656c6c6f") + bytes.fromhex("80026c6f")
    trailing = encode_frame(Opcode.BINARY, b"tail")
    server = reader_for(server_wire + trailing, expect_masked=True, mode=mode)
    assert server.read_message() == Message(Opcode.TEXT, b"Hello")
    assert server.read_message() == Message(Opcode.PONG, b"Hello")
    client = reader_for(client_wire + trailing, expect_masked=False, mode=mode)
    # The ping between the fragments comes out first; the fragments are then reassembled.
    assert client.read_message() == Message(Opcode.PING, b"Hello")
    assert client.read_message() == Message(Opcode.TEXT, b"Hello")
    assert client.read_message() == Message(Opcode.BINARY, b"tail")  # trailing bytes intact


# -- masking ------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(min_size=0, max_size=2048),
        st.tuples(st.integers(min_value=0, max_value=70000), st.integers(0, 2**32)).map(
            lambda size_seed: random.Random(size_seed[1]).randbytes(size_seed[0])
        ),
    ),
    key=st.binary(min_size=4, max_size=4),
    offset=st.integers(min_value=0, max_value=7),
)
def test_masking_matches_the_per_byte_reference_at_every_length_and_alignment(data: bytes, key: bytes, offset: int) -> None:
    expected = reference_mask(data, key)
    # Source at an arbitrary address offset (unaligned uint32 view).
    source = memoryview(bytes(offset) + data)[offset:]
    result = apply_mask(source, key)
    assert result is not None and bytes(result) == expected
    # In place, inside a larger buffer at an arbitrary offset; neighbours untouched.
    backing = bytearray(b"\xee" * offset + data + b"\xee" * 3)
    with memoryview(backing) as view:
        apply_mask_inplace(view[offset : offset + len(data)], key)
    assert bytes(backing) == b"\xee" * offset + expected + b"\xee" * 3
    # Into a caller's buffer.
    out = bytearray(len(data) + offset)
    with memoryview(out) as view:
        assert apply_mask(data, key, out=view[offset:]) is None
    assert bytes(out[offset:]) == expected
    # Masking twice gives the data back.
    again = apply_mask(expected, key)
    assert again is not None and bytes(again) == data


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 511, 512, 513, 514, 515, 1 << 20, (1 << 20) + 3])
def test_masking_boundary_sizes(size: int) -> None:
    data = os.urandom(size)
    key = os.urandom(4)
    result = apply_mask(data, key)
    assert result is not None and bytes(result) == reference_mask(data, key)


def test_masking_rejects_bad_keys_and_sizes() -> None:
    with pytest.raises(ValueError):
        apply_mask(b"abc", b"abc")
    with pytest.raises(ValueError):
        apply_mask_inplace(bytearray(8), b"12345")
    with pytest.raises(ValueError):
        apply_mask(b"abcd", b"1234", out=bytearray(3))


# -- headers ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    opcode=st.sampled_from(list(Opcode)),
    fin=st.booleans(),
    size=st.one_of(st.integers(0, 130), st.integers(65530, 65540), st.integers(0, (1 << 63) - 1)),
    key=st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
)
def test_header_round_trip_uses_minimal_length_encoding(opcode: Opcode, fin: bool, size: int, key: bytes | None) -> None:
    wire = encode_frame_header(opcode, size, fin=fin, mask_key=key)
    expected_size = 2 + (0 if size < 126 else 2 if size < 65536 else 8) + (4 if key else 0)
    assert len(wire) == frame_header_size(wire[:2]) == expected_size
    assert decode_frame_header(wire) == FrameHeader(fin, opcode, size, key)


def test_header_encoding_rejects_out_of_range_values() -> None:
    for kwargs in ({"opcode": 16, "payload_size": 0}, {"opcode": 2, "payload_size": -1}, {"opcode": 2, "payload_size": 1 << 63}):
        with pytest.raises(ValueError):
            encode_frame_header(**kwargs)  # type: ignore[arg-type]


def test_decode_rejects_64_bit_length_with_msb_set() -> None:
    with pytest.raises(WebSocketFramingError):
        decode_frame_header(b"\x82\x7f" + struct.pack("!Q", 1 << 63))


# -- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", READ_MODES)
@pytest.mark.parametrize("masked", [True, False])
def test_fragmented_binary_with_interleaved_control_frames(mode: str, masked: bool) -> None:
    def key() -> bytes | None:
        return os.urandom(4) if masked else None

    parts = [os.urandom(700), b"", os.urandom(5), os.urandom(1000)]
    wire = encode_frame(Opcode.BINARY, parts[0], fin=False, mask_key=key())
    wire += encode_frame(Opcode.PING, b"p1", mask_key=key())
    wire += encode_frame(Opcode.CONTINUATION, parts[1], fin=False, mask_key=key())
    wire += encode_frame(Opcode.PONG, b"", mask_key=key())
    wire += encode_frame(Opcode.CONTINUATION, parts[2], fin=False, mask_key=key())
    wire += encode_frame(Opcode.CLOSE, pack_close_payload(1000, "x"), mask_key=key())
    wire += encode_frame(Opcode.CONTINUATION, parts[3], fin=True, mask_key=key())
    wire += encode_frame(Opcode.BINARY, b"next", mask_key=key())
    reader = reader_for(wire, expect_masked=masked, mode=mode)
    assert reader.read_message() == Message(Opcode.PING, b"p1")
    assert reader.read_message() == Message(Opcode.PONG, b"")
    assert reader.read_message() == Message(Opcode.CLOSE, b"\x03\xe8x")
    assert reader.read_message() == Message(Opcode.BINARY, b"".join(parts))
    assert reader.read_message() == Message(Opcode.BINARY, b"next")
    with pytest.raises(IncompleteReadError):
        reader.read_message()


@settings(max_examples=100, deadline=None)
@given(
    payload=st.binary(max_size=5000),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
    masked=st.booleans(),
)
def test_fragmentation_round_trip(payload: bytes, cuts: list[int], masked: bool) -> None:
    points = sorted({min(c, len(payload)) for c in cuts})
    pieces = [payload[a:b] for a, b in zip([0, *points], [*points, len(payload)])]
    wire = b""
    for index, piece in enumerate(pieces):
        opcode = Opcode.BINARY if index == 0 else Opcode.CONTINUATION
        wire += encode_frame(opcode, piece, fin=index == len(pieces) - 1, mask_key=os.urandom(4) if masked else None)
    message = reader_for(wire, expect_masked=masked, mode="readinto").read_message()
    assert message == Message(Opcode.BINARY, payload)


def test_message_of_exactly_the_limit_is_accepted() -> None:
    limit = 4096
    wire = encode_frame(Opcode.BINARY, b"a" * 1000, fin=False) + encode_frame(Opcode.CONTINUATION, b"b" * (limit - 1000))
    message = reader_for(wire, expect_masked=False, max_message_size=limit).read_message()
    assert len(message.payload) == limit


def test_default_limit_is_4_mib() -> None:
    assert MAX_MESSAGE_SIZE == 4 * 1024 * 1024
    header = encode_frame_header(Opcode.BINARY, MAX_MESSAGE_SIZE + 1, mask_key=b"abcd")
    reader = StrictReader(header, allowed_size=len(header))
    with pytest.raises(OversizeMessageError) as info:
        FrameReader(reader.read, readinto=reader.readinto, expect_masked=True).read_message()
    assert info.value.close_code == 1009
    assert CloseCode.MESSAGE_TOO_BIG.value == 1009
    assert info.value.message_size == MAX_MESSAGE_SIZE + 1


@pytest.mark.parametrize("claimed_size", [MAX_MESSAGE_SIZE + 1, 8 << 30, (1 << 63) - 1])
def test_oversize_header_is_rejected_before_any_payload_byte_is_read(claimed_size: int) -> None:
    header = encode_frame_header(Opcode.BINARY, claimed_size, mask_key=b"abcd")
    # The stream holds the header plus some payload, but the reader may only consume the header.
    reader = StrictReader(header + b"x" * 1000, allowed_size=len(header))
    frame_reader = FrameReader(reader.read, readinto=reader.readinto, expect_masked=True)
    with pytest.raises(OversizeMessageError):
        frame_reader.read_message()
    assert reader.consumed_size == len(header)


def test_running_total_of_fragments_is_checked_before_the_payload_is_read() -> None:
    limit = 10_000
    first = encode_frame(Opcode.BINARY, b"a" * 6000, fin=False)
    second_header = encode_frame_header(Opcode.CONTINUATION, 4001)
    reader = StrictReader(first + second_header + b"b" * 4001, allowed_size=len(first) + len(second_header))
    frame_reader = FrameReader(reader.read, readinto=reader.readinto, expect_masked=False, max_message_size=limit)
    with pytest.raises(OversizeMessageError) as info:
        frame_reader.read_message()
    assert info.value.message_size == 10_001
    assert reader.consumed_size == len(first) + len(second_header)


# -- protocol violations ------------------------------------------------------------------------

VIOLATIONS: list[tuple[str, bytes, bool, int]] = [
    ("unmasked client frame", encode_frame(Opcode.BINARY, b"x"), True, 1002),
    ("masked server frame", encode_frame(Opcode.BINARY, b"x", mask_key=b"abcd"), False, 1002),
    ("rsv1 set", b"\xc2\x00", False, 1002),
    ("rsv2 set", b"\xa2\x00", False, 1002),
    ("rsv3 set", b"\x92\x00", False, 1002),
    ("reserved data opcode 3", b"\x83\x00", False, 1002),
    ("reserved control opcode 0xB", b"\x8b\x00", False, 1002),
    ("fragmented ping", encode_frame(Opcode.PING, b"", fin=False), False, 1002),
    ("fragmented close", encode_frame(Opcode.CLOSE, b"", fin=False), False, 1002),
    ("ping of 126 bytes", encode_frame(Opcode.PING, b"x" * 126), False, 1002),
    ("close of 126 bytes", encode_frame(Opcode.CLOSE, b"\x03\xe8" + b"x" * 124), False, 1002),
    ("continuation without start", encode_frame(Opcode.CONTINUATION, b"x"), False, 1002),
    (
        "new message inside a fragmented one",
        encode_frame(Opcode.BINARY, b"x", fin=False) + encode_frame(Opcode.BINARY, b"y"),
        False,
        1002,
    ),
    (
        "text inside a fragmented binary",
        encode_frame(Opcode.BINARY, b"x", fin=False) + encode_frame(Opcode.TEXT, b"y"),
        False,
        1002,
    ),
    ("64-bit length msb", b"\x82\x7f" + struct.pack("!Q", 1 << 63), False, 1002),
]


@pytest.mark.parametrize(("name", "wire", "expect_masked", "close_code"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_protocol_violations_raise_framing_error(name: str, wire: bytes, expect_masked: bool, close_code: int) -> None:
    with pytest.raises(WebSocketFramingError) as info:
        reader_for(wire, expect_masked=expect_masked).read_message()
    assert info.value.close_code == close_code
    assert not isinstance(info.value, OversizeMessageError)


@pytest.mark.parametrize(
    "wire",
    [b"", b"\x82", b"\x82\x7e\x01", b"\x82\x05abc", b"\x82\x85ab", encode_frame(Opcode.BINARY, b"x", fin=False)],
    ids=["empty", "half header", "half length", "short payload", "short mask", "unfinished fragments"],
)
def test_truncated_streams_raise_incomplete_read(wire: bytes) -> None:
    with pytest.raises(IncompleteReadError):
        reader_for(wire, expect_masked=wire[1:2] == b"\x85").read_message()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_garbage_gives_messages_or_framing_errors_only(data: bytes, expect_masked: bool) -> None:
    reader = reader_for(data, expect_masked=expect_masked, mode="readinto", max_message_size=200)
    try:
        for _ in range(100):
            reader.read_message()
    except (WebSocketFramingError, IncompleteReadError):
        pass


# -- close payloads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, ""), (1001, "going away"), (4001, "bye"), (3000, "é" * 61), (1009, "x" * 123)],
)
def test_close_payload_round_trip(code: int, reason: str) -> None:
    payload = pack_close_payload(code, reason)
    assert payload[:2] == struct.pack("!H", code)
    assert parse_close_payload(payload) == (code, reason)


def test_close_reason_is_cut_to_123_bytes_at_a_character_boundary() -> None:
    payload = pack_close_payload(1000, "é" * 100)  # 200 bytes of UTF-8
    assert len(payload) <= 125
    code, reason = parse_close_payload(payload)
    assert code == 1000 and reason == "é" * 61  # 122 bytes: the 62nd char would split at 123
    assert parse_close_payload(pack_close_payload(1000, "x" * 500))[1] == "x" * 123


def test_empty_close_payload_means_no_code() -> None:
    assert pack_close_payload(None) == b""
    assert parse_close_payload(b"") == (None, "")
    with pytest.raises(ValueError):
        pack_close_payload(None, "reason without a code")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_forbidden_close_codes(code: int) -> None:
    assert not is_valid_close_code(code)
    with pytest.raises(ValueError):
        pack_close_payload(code)
    with pytest.raises(WebSocketFramingError) as info:
        parse_close_payload(struct.pack("!H", code))
    assert info.value.close_code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_allowed_close_codes(code: int) -> None:
    assert is_valid_close_code(code)


def test_close_payload_of_one_byte_is_a_protocol_error() -> None:
    with pytest.raises(WebSocketFramingError) as info:
        parse_close_payload(b"\x03")
    assert info.value.close_code == 1002


def test_close_reason_with_invalid_utf8_is_1007() -> None:
    with pytest.raises(WebSocketFramingError) as info:
        parse_close_payload(b"\x03\xe8\xff\xfe")
    assert info.value.close_code == 1007
    assert CloseCode.INVALID_DATA.value == 1007


# -- the per-byte loop is on no path -------------------------------------------------------------


def test_large_unmask_does_not_iterate_bytes_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 MiB payload through the reader must not call any Python function per byte."""
    import sys

    calls = 0

    def profiler(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    payload = os.urandom(1 << 20)
    wire = encode_frame(Opcode.BINARY, payload, mask_key=os.urandom(4))
    stream = io.BytesIO(wire)
    reader = FrameReader(stream.read, readinto=stream.readinto, expect_masked=True)
    read_message: Callable[[], Message] = reader.read_message
    sys.setprofile(profiler)
    try:
        message = read_message()
    finally:
        sys.setprofile(None)
    assert message.payload == payload
    assert calls < 200  # a per-byte path would make ~10^6 calls


@pytest.mark.parametrize("split", [0, 1, 2, 5, 11, 20])
@pytest.mark.parametrize("mode", ["read", "readinto"])
def test_prefixed_reader_loses_no_byte_at_any_split(split: int, mode: str) -> None:
    wire = encode_frame(Opcode.BINARY, b"first", mask_key=b"abcd") + encode_frame(Opcode.BINARY, b"x" * 600, mask_key=b"efgh")
    reader = PrefixedReader(wire[:split], io.BufferedReader(io.BytesIO(wire[split:])))
    frames = FrameReader(reader.read, readinto=reader.readinto if mode == "readinto" else None, expect_masked=True)
    assert frames.read_message() == Message(Opcode.BINARY, b"first")
    assert frames.read_message() == Message(Opcode.BINARY, b"x" * 600)
    reader.close()
