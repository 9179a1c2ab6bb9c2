"""The frame codec: golden vectors both ways, cut points, garbage, and every rejection rule."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnel.protocol import (
    MAX_FRAME_SIZE_LIMIT,
    BindErrFrame,
    BindFrame,
    BindKind,
    BindMode,
    BindOkFrame,
    BindResult,
    DataFrame,
    ErrorCode,
    Flags,
    Frame,
    FrameDecoder,
    FrameType,
    GoAwayFrame,
    Hello,
    HelloFrame,
    LocalProtocolError,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    ProtocolError,
    RemoteProtocolError,
    ResumeRequest,
    RstFrame,
    StreamOffsets,
    UnbindFrame,
    Welcome,
    WelcomeFrame,
    WindowFrame,
    decode_message,
    encode_frame,
    encode_message,
)

from .strategies import frames as frame_strategy

MAX = MAX_FRAME_SIZE_LIMIT


def h(header_hex: str, payload: bytes = b"") -> bytes:
    """A golden vector: a header written out in hex, then the payload."""
    return bytes.fromhex(header_hex) + payload


# (frame, its exact bytes). Headers are spelled out by hand: type flags stream(4) length(4).
GOLDEN: list[tuple[Frame, bytes]] = [
    (
        HelloFrame(Hello(token="t0k", client="cli/1", window=65536)),
        h("01 00 00000000 0000002f", b'{"token":"t0k","client":"cli/1","window":65536}'),
    ),
    (
        HelloFrame(
            Hello(
                token="t0k",
                client="cli/1",
                resume=ResumeRequest("sess_0123456789ab", "rt", {3: StreamOffsets(10, 5, True)}),
            )
        ),
        h(
            "01 00 00000000 0000007b",
            b'{"token":"t0k","client":"cli/1","resume":{"sessionId":"sess_0123456789ab",'
            b'"resumeToken":"rt","received":{"3":[10,5,true]}}}',
        ),
    ),
    (
        WelcomeFrame(
            Welcome(
                "sess_0123456789ab", "hoody-tunnel.v1", False, 100, 262144, 262144, 15000,
                "hoody-tunnel/0.1.0",
            )
        ),
        h(
            "02 00 00000000 000000b3",
            b'{"sessionId":"sess_0123456789ab","protocol":"hoody-tunnel.v1","resumed":false,'
            b'"maxStreams":100,"window":262144,"maxFrame":262144,"heartbeatMs":15000,'
            b'"server":"hoody-tunnel/0.1.0"}',
        ),
    ),
    (
        BindFrame(1, "EXPOSE", 8080, "tcp"),
        h("03 00 00000000 00000034", b'{"reqId":1,"kind":"EXPOSE","port":8080,"mode":"tcp"}'),
    ),
    (
        BindOkFrame(BindResult(1, 42, BindKind.PULL, 5432, BindMode.TCP)),
        h(
            "04 00 00000000 0000003e",
            b'{"reqId":1,"bindId":42,"kind":"PULL","port":5432,"mode":"tcp"}',
        ),
    ),
    (
        BindErrFrame(2, ErrorCode.FORBIDDEN, "port 22: not allowed"),
        h("05 00 00000000 00000034", b'{"reqId":2,"code":11,"error":"port 22: not allowed"}'),
    ),
    (UnbindFrame(42), h("06 00 00000000 0000000d", b'{"bindId":42}')),
    (OpenFrame(2, 42, "1.2.3.4:5"), h("10 00 00000002 0000000d", b"\x00\x00\x00\x2a1.2.3.4:5")),
    (OpenFrame(3, 7), h("10 00 00000003 00000004", b"\x00\x00\x00\x07")),
    (OpenOkFrame(3), h("11 00 00000003 00000000")),
    (DataFrame(5, b"abc"), h("12 00 00000005 00000003", b"abc")),
    (DataFrame(0x01020304, b"xy", end_stream=True), h("12 01 01020304 00000002", b"xy")),
    (DataFrame(5, b"", end_stream=True), h("12 01 00000005 00000000")),
    (WindowFrame(5, 65536), h("13 00 00000005 00000004", b"\x00\x01\x00\x00")),
    (RstFrame(5, ErrorCode.CONNECT_FAILED, "refused"), h("14 00 00000005 00000009", b"\x00\x08refused")),
    (PingFrame(bytes(range(8))), h("20 00 00000000 00000008", bytes(range(8)))),
    (PongFrame(b"\xff" * 8), h("21 00 00000000 00000008", b"\xff" * 8)),
    (
        GoAwayFrame(ErrorCode.ADMIN_CLOSE, "closed by admin"),
        h("30 00 00000000 00000011", b"\x00\x01closed by admin"),
    ),
]
GOLDEN_IDS = [f"{type(frame).__name__}-{i}" for i, (frame, _) in enumerate(GOLDEN)]


def test_golden_vectors_cover_every_frame_type() -> None:
    assert {frame.frame_type for frame, _ in GOLDEN} == set(FrameType)


@pytest.mark.parametrize(("frame", "data"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_encode(frame: Frame, data: bytes) -> None:
    assert encode_frame(frame) == data


@pytest.mark.parametrize(("frame", "data"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_decode_message(frame: Frame, data: bytes) -> None:
    assert decode_message(data, max_frame_size=MAX, version=2) == [frame]
    assert decode_message(bytearray(data), max_frame_size=MAX, version=2) == [frame]


@pytest.mark.parametrize(("frame", "data"), GOLDEN, ids=GOLDEN_IDS)
def test_golden_stream_whole_bytewise_and_trailing(frame: Frame, data: bytes) -> None:
    # Whole.
    assert FrameDecoder(MAX).feed(data) == [frame]
    # One byte at a time: nothing comes out before the last byte.
    decoder = FrameDecoder(MAX)
    for i in range(len(data) - 1):
        assert decoder.feed(data[i : i + 1]) == []
    assert decoder.feed(data[-1:]) == [frame]
    assert decoder.buffered_size == 0
    # Followed by trailing bytes (the start of another frame): they stay buffered.
    decoder = FrameDecoder(MAX)
    trailing = bytes.fromhex("12 00 00000001 00")
    assert decoder.feed(data + trailing) == [frame]
    assert decoder.buffered_size == len(trailing)
    assert decoder.feed(bytes.fromhex("000002") + b"ok") == [DataFrame(1, b"ok")]


def test_data_payload_is_a_slice_of_the_message() -> None:
    message = h("12 00 00000001 00000003", b"abc") + h("12 01 00000003 00000002", b"de")
    first, second = decode_message(message, max_frame_size=MAX, version=2)
    assert isinstance(first, DataFrame) and isinstance(second, DataFrame)
    assert isinstance(first.data, memoryview) and first.data.obj is message
    assert bytes(first.data) == b"abc" and bytes(second.data) == b"de" and second.end_stream


def test_unknown_error_code_stays_a_plain_int() -> None:
    (frame,) = decode_message(h("14 00 00000001 00000002", b"\x12\x34"), max_frame_size=MAX, version=2)
    assert isinstance(frame, RstFrame)
    assert frame.error_code == 0x1234 and type(frame.error_code) is int
    (frame,) = decode_message(h("30 00 00000000 00000002", b"\x00\x0e"), max_frame_size=MAX, version=2)
    assert isinstance(frame, GoAwayFrame) and frame.error_code is ErrorCode.STREAM_CLOSED


def json_frame(frame_type: int, obj: object, *, raw: bytes | None = None) -> bytes:
    payload = raw if raw is not None else json.dumps(obj).encode()
    return struct.pack("!BBII", frame_type, 0, 0, len(payload)) + payload


def test_json_unknown_keys_ignored_and_null_optionals_absent() -> None:
    message = json_frame(1, {"token": "", "client": "c", "window": None, "extra": [1, {"x": 2}]})
    assert decode_message(message, max_frame_size=MAX, version=2) == [
        HelloFrame(Hello(token="", client="c", window=None))
    ]


def test_bind_values_are_left_raw_for_the_session() -> None:
    message = json_frame(3, {"reqId": 9, "kind": "FOO", "port": "80", "extra": 1})
    assert decode_message(message, max_frame_size=MAX, version=2) == [BindFrame(9, "FOO", "80", None)]


DEEP = b"[" * 100_000 + b"]" * 100_000

BAD: list[tuple[str, bytes, str]] = [
    ("unknown type", h("07 00 00000000 00000000"), "unknown frame type 0x07"),
    ("unknown flag on DATA", h("12 02 00000001 00000000"), "invalid flags 0x02"),
    ("FIN on WINDOW", h("13 01 00000001 00000004", b"\x00\x00\x00\x01"), "WINDOW: invalid flags"),
    ("FIN on PING", h("20 01 00000000 00000008", bytes(8)), "PING: invalid flags"),
    ("control frame on a stream", h("20 00 00000001 00000008", bytes(8)), "PING must be on stream 0"),
    ("HELLO on a stream", json_frame(1, {})[:2] + b"\x00\x00\x00\x01" + json_frame(1, {})[6:],
     "HELLO must be on stream 0"),
    ("stream frame on stream 0", h("12 00 00000000 00000001", b"x"), "DATA must not be on stream 0"),
    ("truncated header", bytes.fromhex("12 00 0000"), "truncated frame header"),
    ("truncated payload", h("12 00 00000001 00000005", b"abc"), "truncated DATA frame: 3 of 5"),
    ("short OPEN", h("10 00 00000001 00000003", b"\x00\x00\x00"), "OPEN payload must be at least 4"),
    ("OPEN origin not UTF-8", h("10 00 00000001 00000005", b"\x00\x00\x00\x01\xff"), "not valid UTF-8"),
    ("OPEN_OK with payload", h("11 00 00000001 00000001", b"x"), "OPEN_OK payload must be empty"),
    ("WINDOW 3 bytes", h("13 00 00000001 00000003", b"\x00\x00\x01"), "WINDOW payload must be 4"),
    ("WINDOW of 0", h("13 00 00000001 00000004", bytes(4)), "WINDOW increment of 0"),
    ("RST 1 byte", h("14 00 00000001 00000001", b"\x00"), "RST payload must be at least 2"),
    ("GOAWAY reason not UTF-8", h("30 00 00000000 00000003", b"\x00\x00\xc3"), "not valid UTF-8"),
    ("PING 7 bytes", h("20 00 00000000 00000007", bytes(7)), "PING payload must be 8 bytes"),
    ("PONG 9 bytes", h("21 00 00000000 00000009", bytes(9)), "PONG payload must be 8 bytes"),
    ("JSON not JSON", json_frame(1, None, raw=b"{token"), "not valid UTF-8 JSON"),
    ("JSON not UTF-8", json_frame(1, None, raw=b'{"token":"\xff"}'), "not valid UTF-8 JSON"),
    ("JSON UTF-16", json_frame(6, None, raw='{"bindId":1}'.encode("utf-16")), "not valid UTF-8 JSON"),
    ("JSON array", json_frame(6, [1]), "must be a JSON object"),
    ("JSON NaN", json_frame(1, None, raw=b'{"token":"t","client":"c","window":NaN}'), "not valid"),
    ("JSON deep nesting", json_frame(6, None, raw=DEEP), "not valid UTF-8 JSON"),
    ("JSON huge int", json_frame(6, None, raw=b'{"bindId":' + b"9" * 5000 + b"}"), "not valid"),
    ("HELLO token int", json_frame(1, {"token": 5, "client": "c"}), "'token' must be a string"),
    ("HELLO client null", json_frame(1, {"token": "t", "client": None}), "'client' must be a string"),
    ("HELLO window bool", json_frame(1, {"token": "t", "client": "c", "window": True}),
     "'window' must be an integer"),
    ("HELLO window small", json_frame(1, {"token": "t", "client": "c", "window": 16383}),
     "'window' must be from 16384 to 16777216, got 16383"),
    ("HELLO window big", json_frame(1, {"token": "t", "client": "c", "window": 16 * 2**20 + 1}),
     "'window' must be from 16384"),
    ("HELLO resume not object", json_frame(1, {"token": "t", "client": "c", "resume": 1}),
     "'resume' must be a JSON object"),
    ("HELLO resume bad map", json_frame(1, {"token": "t", "client": "c", "resume": {
        "sessionId": "s", "resumeToken": "r", "received": {"x": [1, 1, True]}}}), "not a stream id"),
    ("HELLO resume bad entry", json_frame(1, {"token": "t", "client": "c", "resume": {
        "sessionId": "s", "resumeToken": "r", "received": {"1": [1, 1]}}}), "receivedBytes"),
    ("WELCOME missing key", json_frame(2, {"sessionId": "s"}), "WELCOME: missing key"),
    ("WELCOME maxStreams 0", json_frame(2, {
        "sessionId": "s", "protocol": "p", "resumed": False, "maxStreams": 0, "window": 65536,
        "maxFrame": 1, "heartbeatMs": 1, "server": "x"}), "'maxStreams' must be from 1"),
    ("WELCOME resumed int", json_frame(2, {
        "sessionId": "s", "protocol": "p", "resumed": 0, "maxStreams": 1, "window": 65536,
        "maxFrame": 1, "heartbeatMs": 1, "server": "x"}), "'resumed' must be true or false"),
    ("BIND not object", json_frame(3, "bind"), "BIND: payload must be a JSON object"),
    ("BIND no reqId", json_frame(3, {"kind": "EXPOSE", "port": 1}), "BIND: missing key 'reqId'"),
    ("BIND reqId string", json_frame(3, {"reqId": "1"}), "'reqId' must be an integer"),
    ("BIND reqId bool", json_frame(3, {"reqId": True}), "'reqId' must be an integer"),
    ("BIND_OK bad kind", json_frame(4, {"reqId": 1, "bindId": 1, "kind": "X", "port": 1,
                                        "mode": "tcp"}), "unknown kind 'X'"),
    ("BIND_OK bad port", json_frame(4, {"reqId": 1, "bindId": 1, "kind": "PULL", "port": 0,
                                        "mode": "tcp"}), "'port' must be from 1 to 65535"),
    ("BIND_ERR code text", json_frame(5, {"reqId": 1, "code": "2", "error": "x"}),
     "'code' must be an integer"),
    ("UNBIND no bindId", json_frame(6, {}), "UNBIND: missing key 'bindId'"),
    ("UNBIND bindId float", json_frame(6, {"bindId": 1.5}), "'bindId' must be an integer"),
]


@pytest.mark.parametrize(("data", "text"), [(d, t) for _, d, t in BAD], ids=[n for n, _, _ in BAD])
def test_rejected(data: bytes, text: str) -> None:
    with pytest.raises(RemoteProtocolError, match=None) as info:
        decode_message(data, max_frame_size=10**6, version=2)
    assert text in str(info.value)
    assert info.value.error_code is ErrorCode.PROTOCOL_ERROR
    if "truncated" not in text:  # the stream decoder simply waits for more bytes
        with pytest.raises(RemoteProtocolError) as info2:
            FrameDecoder(10**6).feed(data)
        assert text in str(info2.value)


def test_resume_key_in_v1_hello_is_resume_failed() -> None:
    for resume in ({"sessionId": "s", "resumeToken": "r", "received": {}}, None, "junk"):
        data = json_frame(1, {"token": "t", "client": "c", "resume": resume})
        with pytest.raises(RemoteProtocolError) as info:
            decode_message(data, max_frame_size=MAX, version=1)
        assert info.value.error_code is ErrorCode.RESUME_FAILED
        assert str(info.value) == "resume needs hoody-tunnel.v2"
    # v2: a null resume is no resume.
    data = json_frame(1, {"token": "t", "client": "c", "resume": None})
    assert decode_message(data, max_frame_size=MAX, version=2) == [HelloFrame(Hello("t", "c"))]


def test_oversize_rejected_from_the_header_alone() -> None:
    decoder = FrameDecoder(100)
    assert decoder.feed(h("12 00 00000001 00000064")[:9]) == []
    with pytest.raises(RemoteProtocolError, match="payload of 101 bytes exceeds maxFrame 100"):
        decoder.feed(bytes.fromhex("65"))  # the last header byte: length 101, no payload yet
    # The decoder stays broken.
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")
    assert FrameDecoder(100).feed(h("12 00 00000001 00000064") + bytes(100)) == [
        DataFrame(1, bytes(100))
    ]
    with pytest.raises(RemoteProtocolError, match="exceeds maxFrame 100"):
        decode_message(h("12 00 00000001 00000065"), max_frame_size=100, version=2)


def test_v1_message_holds_exactly_one_frame() -> None:
    one = encode_frame(DataFrame(1, b"a"))
    assert decode_message(one, max_frame_size=MAX, version=1) == [DataFrame(1, b"a")]
    with pytest.raises(RemoteProtocolError, match="v1 message holds more than one frame"):
        decode_message(one + one, max_frame_size=MAX, version=1)
    assert decode_message(one + one, max_frame_size=MAX, version=2) == [DataFrame(1, b"a")] * 2
    for version in (1, 2):
        with pytest.raises(RemoteProtocolError, match="empty message"):
            decode_message(b"", max_frame_size=MAX, version=version)
    with pytest.raises(RemoteProtocolError, match="truncated"):  # a frame never spans messages
        decode_message(one + one[:-1], max_frame_size=MAX, version=2)


def test_message_over_4_mib_rejected() -> None:
    big = h("12 00 00000001 003ffff7") + bytes(4 * 2**20 - 9)
    with pytest.raises(RemoteProtocolError, match="exceeds 4 MiB"):
        decode_message(big, max_frame_size=MAX, version=2)


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProtocolError("x")
    assert LocalProtocolError("x").error_code is ErrorCode.PROTOCOL_ERROR
    exc = RemoteProtocolError("y", ErrorCode.FLOW_CONTROL_ERROR, stream_id=3)
    assert (exc.error_code, exc.stream_id, str(exc)) == (ErrorCode.FLOW_CONTROL_ERROR, 3, "y")


@pytest.mark.parametrize(
    "frame",
    [
        PingFrame(b"short"),
        PongFrame(bytes(9)),
        WindowFrame(1, 0),
        WindowFrame(1, 2**32),
        DataFrame(2**32, b""),
        DataFrame(0, b"x"),
        OpenFrame(1, -1),
        RstFrame(1, 0x10000),
        GoAwayFrame(-1),
        RstFrame(1, 0, "\ud800"),
    ],
)
def test_encode_rejects_values_that_do_not_fit(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(frame)


def test_flags_enum() -> None:
    assert int(Flags.FIN) == 1 and int(FrameType.GOAWAY) == 0x30


# -- Hypothesis ------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_strategy, min_size=1, max_size=6), st.data())
def test_round_trip_at_random_cut_points(frames: list[Frame], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(frame) for frame in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder(MAX)
    decoded: list[Frame] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoded += decoder.feed(stream[start:cut])
        start = cut
    assert decoded == frames
    assert decoder.buffered_size == 0
    # The same frames as one v2 message.
    assert decode_message(encode_message(frames), max_frame_size=MAX, version=2) == frames


def _only_frames_or_remote_errors(blob: bytes) -> None:
    for version in (1, 2):
        try:
            result = decode_message(blob, max_frame_size=1024, version=version)
        except RemoteProtocolError:
            pass
        else:
            assert result
    decoder = FrameDecoder(1024, version=1)
    try:
        for i in range(0, len(blob), 7):
            decoder.feed(blob[i : i + 7])
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_gives_frames_or_remote_protocol_error(blob: bytes) -> None:
    _only_frames_or_remote_errors(blob)


@settings(max_examples=300, deadline=None)
@given(frame_strategy, st.data())
def test_mutated_frames_give_frames_or_remote_protocol_error(frame: Frame, data: st.DataObject) -> None:
    blob = bytearray(encode_frame(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    _only_frames_or_remote_errors(bytes(blob[:cut]))
    _only_frames_or_remote_errors(bytes(blob))



def test_hello_without_token_decodes_as_empty_token() -> None:
    # docs/protocol.md §4: a missing token is refused as AUTH_FAILED by the kit, like a wrong one.
    payload = b'{"client": "c"}'
    data = bytes([1, 0, 0, 0, 0, 0, 0, 0, 0, len(payload)]) + payload
    [frame] = FrameDecoder(max_frame_size=1024).feed(data)
    assert isinstance(frame, HelloFrame) and frame.hello.token == ""
