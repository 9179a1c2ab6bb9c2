"""Session streams: open/accept/data/FIN, flow control, maxStreams, id rules, sending order."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from tunnel.protocol import (
    DataFrame,
    DataReceived,
    ErrorCode,
    Frame,
    GoAwayFrame,
    LocalProtocolError,
    OpenFrame,
    OpenOkFrame,
    RemoteProtocolError,
    Role,
    RstFrame,
    Session,
    SessionState,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamRefused,
    StreamReset,
    StreamState,
    WindowFrame,
    WindowUpdated,
    encode_frame,
)

from .pair import MAX_FRAME, MAX_STREAMS, WINDOW, SessionPair, frames_of, make_config


def data_of(events: Sequence[object]) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived))


# -- lifecycle ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_open_accept_data_half_close_and_close(version: int) -> None:
    pair = SessionPair(version)
    client, server = pair.client, pair.server
    stream_id = client.open_stream(7, origin="10.0.0.1:5555")
    assert stream_id == 1 and client.stream_state(1) is StreamState.OPEN_SENT
    assert pair.to_server() == [StreamOpened(1, 7, "10.0.0.1:5555")]
    assert server.stream_bind_id(1) == 7 and server.outbound_credit(1) == 0  # not accepted yet
    server.accept_stream(1)
    assert pair.to_client() == [StreamAccepted(1)]
    assert client.stream_state(1) is server.stream_state(1) is StreamState.OPEN
    client.send_data(1, b"GET / HTTP/1.0\r\n\r\n", end_stream=True)
    assert pair.to_server() == [DataReceived(1, b"GET / HTTP/1.0\r\n\r\n"), StreamEnded(1)]
    assert client.stream_state(1) is StreamState.HALF_CLOSED_LOCAL
    assert server.stream_state(1) is StreamState.HALF_CLOSED_REMOTE
    server.send_data(1, b"HTTP/1.0 200 OK\r\n\r\nhi")
    server.send_data(1, b"", end_stream=True)
    assert not server.is_open(1) and server.statistics().active_streams == 0
    assert pair.to_client() == [DataReceived(1, b"HTTP/1.0 200 OK\r\n\r\nhi"), StreamEnded(1)]
    assert not client.is_open(1) and client.stream_state(1) is StreamState.CLOSED
    assert client.stream_ids() == [] and client.outbound_credit(1) == 0
    stats = client.statistics()
    assert (stats.streams_opened_local, stats.data_bytes_sent, stats.data_bytes_received) == (1, 18, 21)
    assert server.statistics().streams_opened_remote == 1


def test_ids_are_odd_for_the_client_and_even_for_the_server() -> None:
    pair = SessionPair()
    assert [pair.open_stream(pair.client) for _ in range(3)] == [1, 3, 5]
    assert [pair.open_stream(pair.server) for _ in range(3)] == [2, 4, 6]
    assert pair.client.statistics().active_streams == 6


def test_early_data_and_early_fin_before_open_ok() -> None:
    pair = SessionPair()
    stream_id = pair.client.open_stream(1)
    pair.client.send_data(stream_id, b"early", end_stream=True)
    frames = frames_of(pair.client.messages_to_send())
    assert frames == [OpenFrame(1, 1), DataFrame(1, b"early", True)]
    for frame in frames:
        pair.server.receive_message(encode_frame(frame), 0.0)
    assert pair.server.events_received() == [StreamOpened(1, 1, None), DataReceived(1, b"early"), StreamEnded(1)]
    pair.server.accept_stream(1)
    assert pair.to_client() == [StreamAccepted(1)]
    assert pair.client.stream_state(1) is StreamState.HALF_CLOSED_LOCAL
    assert pair.server.stream_state(1) is StreamState.HALF_CLOSED_REMOTE


def test_refusing_a_stream_with_rst() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream(pair.server, accept=False)
    pair.server.send_data(stream_id, b"early")
    pair.client.reset_stream(stream_id, ErrorCode.CONNECT_FAILED, "connection refused")
    assert pair.to_server() == [
        StreamReset(stream_id, ErrorCode.CONNECT_FAILED, "connection refused", True)
    ]
    assert not pair.server.is_open(stream_id)
    assert pair.server.messages_to_send() == []  # the queued early data was dropped


def test_accept_stream_errors() -> None:
    pair = SessionPair()
    pair.client.accept_stream(99)  # unknown or closed: the peer may have reset it meanwhile
    assert not pair.client.has_data_to_send()
    stream_id = pair.client.open_stream(1)
    pair.client.messages_to_send()
    with pytest.raises(LocalProtocolError, match="stream 1: SEND_OPEN_OK not allowed in state OPEN_SENT"):
        pair.client.accept_stream(stream_id)
    # The table says CLOSED: the peer is told with RST(PROTOCOL_ERROR).
    assert not pair.client.is_open(stream_id)
    (frame,) = frames_of(pair.client.messages_to_send())
    assert isinstance(frame, RstFrame) and frame.error_code is ErrorCode.PROTOCOL_ERROR


def test_send_data_errors() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    pair.client.send_data(stream_id, b"", end_stream=True)
    with pytest.raises(LocalProtocolError, match="SEND_DATA not allowed in state HALF_CLOSED_LOCAL"):
        pair.client.send_data(stream_id, b"more")
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_data(stream_id, b"more")
    assert info.value.error_code is ErrorCode.STREAM_CLOSED
    peer_stream = pair.open_stream(pair.server, accept=False)
    with pytest.raises(LocalProtocolError, match="SEND_DATA not allowed in state OPEN_RECEIVED"):
        pair.client.send_data(peer_stream, b"before accepting")


def test_unknown_stream_frames_get_rst_stream_closed_but_a_window_is_ignored() -> None:
    pair = SessionPair()
    events = pair.inject(
        pair.server, DataFrame(9, b"x"), WindowFrame(9, 5), OpenOkFrame(11), RstFrame(13, 0)
    )
    assert events == []
    # A WINDOW can cross our FIN or RST in flight: it is dropped without an answer
    # (docs/protocol.md §15, item 29).
    assert frames_of(pair.server.messages_to_send()) == [
        RstFrame(9, ErrorCode.STREAM_CLOSED, "DATA for stream 9, which is not open"),
        RstFrame(11, ErrorCode.STREAM_CLOSED, "OPEN_OK for stream 11, which is not open"),
    ]
    assert pair.server.state is SessionState.OPEN
    # A closed stream is unknown too; no-ops on it.
    stream_id = pair.open_stream()
    pair.client.reset_stream(stream_id, ErrorCode.NORMAL)
    pair.to_server()
    pair.client.reset_stream(stream_id, ErrorCode.NORMAL)
    pair.client.acknowledge_data(stream_id, 10)
    assert not pair.client.has_data_to_send()
    pair.inject(pair.client, DataFrame(stream_id, b"late"))
    assert frames_of(pair.client.messages_to_send())[0].error_code is ErrorCode.STREAM_CLOSED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("frames", "text"),
    [
        ([OpenFrame(2, 1)], "OPEN of stream 2: the client opens odd ids"),
        ([OpenFrame(5, 1), OpenFrame(3, 1)], "OPEN of stream 3: ids must increase (last was 5)"),
        ([OpenFrame(5, 1), OpenFrame(5, 1)], "OPEN of stream 5: ids must increase (last was 5)"),
    ],
)
def test_open_id_rules_on_the_server(frames: list[Frame], text: str) -> None:
    pair = SessionPair()
    with pytest.raises(RemoteProtocolError) as info:
        pair.inject(pair.server, *frames)
    assert str(info.value) == text
    assert frames_of(pair.server.messages_to_send()) == [GoAwayFrame(ErrorCode.PROTOCOL_ERROR, text)]


def test_open_id_rules_on_the_client() -> None:
    pair = SessionPair()
    with pytest.raises(RemoteProtocolError, match="OPEN of stream 3: the server opens even ids"):
        pair.inject(pair.client, OpenFrame(3, 1))


def test_data_after_fin_is_stream_closed() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    events = pair.inject(pair.server, DataFrame(stream_id, b"a", True), DataFrame(stream_id, b"b"))
    assert events == [
        DataReceived(stream_id, b"a"),
        StreamEnded(stream_id),
        StreamReset(stream_id, ErrorCode.STREAM_CLOSED, f"stream {stream_id}: DATA after the peer's FIN", False),
    ]
    (frame,) = frames_of(pair.server.messages_to_send())
    assert frame == RstFrame(stream_id, ErrorCode.STREAM_CLOSED, f"stream {stream_id}: DATA after the peer's FIN")


def test_data_before_open_ok_is_a_stream_protocol_error() -> None:
    pair = SessionPair()
    stream_id = pair.client.open_stream(1)
    pair.to_server()
    (event,) = pair.inject(pair.client, DataFrame(stream_id, b"too soon"))
    assert isinstance(event, StreamReset) and event.error_code is ErrorCode.PROTOCOL_ERROR
    assert not event.remote and pair.client.state is SessionState.OPEN


# -- flow control ---------------------------------------------------------------------------------


def test_sender_cannot_exceed_credit() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    assert pair.client.outbound_credit(stream_id) == WINDOW
    pair.client.send_data(stream_id, bytes(WINDOW - 10))
    assert pair.client.outbound_credit(stream_id) == 10
    with pytest.raises(LocalProtocolError) as info:
        pair.client.send_data(stream_id, bytes(11), end_stream=True)
    assert info.value.error_code is ErrorCode.FLOW_CONTROL_ERROR
    assert pair.client.stream_state(stream_id) is StreamState.OPEN  # unchanged, nothing queued
    pair.client.send_data(stream_id, b"", end_stream=True)  # an empty FIN needs no credit
    assert pair.client.outbound_credit(stream_id) == 0


def test_receiver_grants_window_after_half_is_acknowledged() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    pair.client.send_data(stream_id, bytes(WINDOW))
    assert len(data_of(pair.to_server())) == WINDOW
    assert pair.client.outbound_credit(stream_id) == 0
    pair.server.acknowledge_data(stream_id, WINDOW // 2 - 1)
    assert not pair.server.has_data_to_send()  # batched
    pair.server.acknowledge_data(stream_id, 1)
    assert frames_of(pair.server.messages_to_send()) == [WindowFrame(stream_id, WINDOW // 2)]
    pair.server.acknowledge_data(stream_id, WINDOW // 2)
    assert pair.to_client() == [WindowUpdated(stream_id, WINDOW // 2)]
    assert pair.client.outbound_credit(stream_id) == WINDOW // 2
    with pytest.raises(LocalProtocolError, match="cannot acknowledge 1 bytes: 0 are unacknowledged"):
        pair.server.acknowledge_data(stream_id, 1)


def test_no_window_after_the_peer_finished() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    pair.client.send_data(stream_id, bytes(WINDOW), end_stream=True)
    pair.to_server()
    pair.server.acknowledge_data(stream_id, WINDOW)
    assert not pair.server.has_data_to_send()


def test_data_beyond_credit_resets_the_stream_only() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    other = pair.open_stream()
    chunk = bytes(MAX_FRAME)
    frames = [DataFrame(stream_id, chunk)] * (WINDOW // MAX_FRAME) + [DataFrame(stream_id, b"!")]
    events = pair.inject(pair.server, *frames)
    assert events[-1] == StreamReset(
        stream_id, ErrorCode.FLOW_CONTROL_ERROR, "DATA of 1 bytes exceeds the 0 bytes of credit granted", False
    )
    assert frames_of(pair.server.messages_to_send()) == [
        RstFrame(stream_id, ErrorCode.FLOW_CONTROL_ERROR, "DATA of 1 bytes exceeds the 0 bytes of credit granted")
    ]
    assert pair.server.state is SessionState.OPEN and pair.server.is_open(other)
    assert not pair.server.is_open(stream_id)


def test_window_overflow_resets_the_stream_and_zero_window_is_fatal() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    (event,) = pair.inject(pair.client, WindowFrame(stream_id, 2**31 - 1))
    assert isinstance(event, StreamReset) and event.error_code is ErrorCode.FLOW_CONTROL_ERROR
    (frame,) = frames_of(pair.client.messages_to_send())
    assert isinstance(frame, RstFrame) and frame.error_code is ErrorCode.FLOW_CONTROL_ERROR
    with pytest.raises(RemoteProtocolError, match="WINDOW increment of 0 on stream 1"):
        pair.client.receive_message(bytes.fromhex("13 00 00000001 00000004 00000000"), 0.0)


def test_oversized_data_is_a_session_error_before_flow_control() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    with pytest.raises(RemoteProtocolError, match=f"DATA: payload of {MAX_FRAME + 1} bytes exceeds maxFrame"):
        pair.inject(pair.server, DataFrame(stream_id, bytes(MAX_FRAME + 1)))


def test_send_data_is_split_at_the_peer_max_frame() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    payload = bytes(range(256)) * 160  # 40 KiB
    pair.client.send_data(stream_id, payload, end_stream=True)
    frames = frames_of(pair.client.messages_to_send())
    assert [(len(f.data), f.end_stream) for f in frames] == [  # type: ignore[union-attr]
        (MAX_FRAME, False),
        (MAX_FRAME, False),
        (len(payload) - 2 * MAX_FRAME, True),
    ]
    assert b"".join(bytes(f.data) for f in frames) == payload  # type: ignore[union-attr]


def test_writable_buffers_are_copied_once() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    buffer = bytearray(b"abc")
    pair.client.send_data(stream_id, memoryview(buffer))
    buffer[:] = b"XYZ"  # the caller reuses its buffer
    assert pair.to_server() == [DataReceived(stream_id, b"abc")]


def test_server_caps_frames_at_peer_max_frame_size() -> None:
    pair = SessionPair(server_config=make_config(Role.SERVER, peer_max_frame_size=1000))
    stream_id = pair.open_stream(pair.server)
    pair.server.send_data(stream_id, bytes(2500))
    assert [len(f.data) for f in frames_of(pair.server.messages_to_send())] == [1000, 1000, 500]  # type: ignore[union-attr]


# -- maxStreams -----------------------------------------------------------------------------------


def test_max_streams_is_counted_per_opening_side() -> None:
    pair = SessionPair()
    mine = [pair.open_stream(pair.client) for _ in range(MAX_STREAMS)]
    assert not pair.client.can_open_stream()
    with pytest.raises(LocalProtocolError, match=f"{MAX_STREAMS} streams already open") as info:
        pair.client.open_stream(1)
    assert info.value.error_code is ErrorCode.REFUSED
    # The server's own quota is separate.
    assert [pair.open_stream(pair.server) for _ in range(MAX_STREAMS)] == [2, 4, 6, 8]
    # Closing one frees a slot.
    pair.client.reset_stream(mine[0], ErrorCode.NORMAL)
    pair.to_server()
    assert pair.client.can_open_stream()
    new_id = pair.open_stream()
    assert new_id == mine[-1] + 2 and pair.server.is_open(new_id)
    # A peer beyond its quota (a buggy one: ours checks first) is refused, not fatal.
    events = pair.inject(pair.server, OpenFrame(new_id + 2, 3))
    assert events == [StreamRefused(new_id + 2, 3, ErrorCode.REFUSED)]
    assert frames_of(pair.server.messages_to_send()) == [
        RstFrame(new_id + 2, ErrorCode.REFUSED, f"maxStreams {MAX_STREAMS} reached")
    ]
    assert pair.server.statistics().streams_refused == 1
    assert pair.server.state is SessionState.OPEN


def test_a_fin_still_queued_keeps_the_slot_taken() -> None:
    pair = SessionPair(server_config=make_config(Role.SERVER, max_streams=1))
    stream_id = pair.open_stream()
    pair.server.send_data(stream_id, b"", end_stream=True)
    pair.to_client()
    pair.client.send_data(stream_id, b"bye", end_stream=True)  # closes the stream locally...
    assert not pair.client.is_open(stream_id)
    assert not pair.client.can_open_stream()  # ...but its FIN has not left yet
    pair.to_server()
    assert pair.client.can_open_stream()
    new_id = pair.open_stream()
    assert pair.server.is_open(new_id)


# -- sending order and batching -------------------------------------------------------------------


def test_control_frames_go_ahead_of_data_and_data_is_round_robin() -> None:
    pair = SessionPair()
    a, b = pair.open_stream(), pair.open_stream()
    pair.client.send_data(a, bytes(3 * MAX_FRAME))
    pair.client.send_data(b, b"small")
    pair.client.send_ping(b"pingpong")
    pair.client.reset_stream(b, ErrorCode.NORMAL)  # drops b's queued DATA
    c = pair.client.open_stream(1)
    pair.client.send_data(c, b"c1")
    frames = frames_of(pair.client.messages_to_send())
    assert [type(f).__name__ for f in frames[:3]] == ["PingFrame", "RstFrame", "OpenFrame"]
    assert [(f.stream_id, len(f.data)) for f in frames[3:]] == [  # type: ignore[union-attr]
        (a, MAX_FRAME),
        (c, 2),
        (a, MAX_FRAME),
        (a, MAX_FRAME),
    ]


def test_v1_sends_one_frame_per_message() -> None:
    pair = SessionPair(1)
    stream_id = pair.open_stream()
    pair.client.send_data(stream_id, bytes(3 * MAX_FRAME))
    pair.client.send_ping(bytes(8))
    messages = pair.client.messages_to_send()
    assert len(messages) == 4
    assert all(len(frames_of([m], version=1)) == 1 for m in messages)
    with pytest.raises(RemoteProtocolError, match="v1 message holds more than one frame"):
        pair.server.receive_message(messages[0] + messages[1], 0.0)


def test_v2_batches_up_to_max_message_size() -> None:
    pair = SessionPair(client_config=make_config(Role.CLIENT, max_message_size=100))
    for _ in range(10):
        pair.client.send_ping(bytes(8))  # 18 bytes each
    messages = pair.client.messages_to_send()
    assert [len(m) for m in messages] == [90, 90]
    stream_id = pair.open_stream()
    pair.client.send_data(stream_id, bytes(500))  # one frame larger than a message
    pair.client.send_ping(bytes(8))
    assert [len(m) for m in pair.client.messages_to_send()] == [18, 510]
    pair = SessionPair()
    for _ in range(10):
        pair.client.send_ping(bytes(8))
    assert len(pair.client.messages_to_send()) == 1


def test_max_bytes_leaves_the_rest_queued() -> None:
    pair = SessionPair(1)
    for _ in range(5):
        pair.client.send_ping(bytes(8))
    assert len(pair.client.messages_to_send(max_bytes=40)) == 2
    assert len(pair.client.messages_to_send(max_bytes=1)) == 1  # always at least one
    assert pair.client.has_data_to_send()
    assert len(pair.client.messages_to_send()) == 2
    assert not pair.client.has_data_to_send()
    pair = SessionPair(2)
    for _ in range(5):
        pair.client.send_ping(bytes(8))
    assert [len(m) for m in pair.client.messages_to_send(max_bytes=40)] == [36]


def test_statistics_count_both_directions() -> None:
    pair = SessionPair()
    a = pair.open_stream(pair.client)
    pair.open_stream(pair.server)
    pair.client.send_data(a, b"12345")
    pair.exchange()
    stats = pair.server.statistics()
    assert (stats.active_streams, stats.streams_opened_local, stats.streams_opened_remote) == (2, 1, 1)
    assert (stats.data_bytes_received, stats.data_bytes_sent) == (5, 0)
    assert stats.messages_received >= 3 and stats.messages_sent >= 2


def test_a_fresh_session_has_nothing() -> None:
    session = Session(make_config(Role.SERVER))
    assert session.messages_to_send() == [] and session.events_received() == []
    assert not session.has_data_to_send() and session.next_deadline() is None
    assert session.outbound_credit(1) == 0 and session.stream_bind_id(1) is None
    assert not session.is_open(1) and session.stream_state(1) is StreamState.CLOSED


@pytest.mark.parametrize("version", [1, 2])
def test_a_window_crossing_the_last_fin_does_not_reset_the_peer(version: int) -> None:
    """The kit's WINDOW for the client's stream leaves before the client's FIN arrives; the client
    has closed the stream (both FINs) when it comes. Nothing is answered, nothing is reset: the
    stream's last bytes still reach the kit's local socket."""
    pair = SessionPair(version=version)
    stream_id = pair.open_stream()
    pair.server.send_data(stream_id, b"", end_stream=True)  # the kit is done sending
    pair.to_client()  # the client has the kit's FIN
    pair.client.send_data(stream_id, b"x" * 1000, end_stream=True)  # last bytes, then FIN
    assert any(isinstance(event, StreamEnded) for event in pair.to_server())
    assert pair.client.statistics().active_streams == 0  # closed on the client's side
    # Before the FIN was processed the kit had written and acknowledged bytes: a WINDOW of its own
    # that now travels to a client whose stream is closed.
    window = WindowFrame(stream_id, 1000)
    pair.inject(pair.client, window)
    assert frames_of(pair.client.messages_to_send()) == []
    assert not any(isinstance(event, StreamReset) for event in pair.client.events_received())
