"""Outbox: sending order and packing, checked on random queues."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol import DataFrame, Frame, PingFrame, RstFrame, decode_message
from tunnel.protocol.frames import HEADER_SIZE
from tunnel.protocol.outbox import Outbox

# An operation: ("control", n) queues a PING tagged n; ("data", stream, size) queues DATA.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("control"), st.integers(0, 2**16)),
        st.tuples(st.just("data"), st.integers(1, 4), st.integers(0, 300)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    operations,
    st.sampled_from([1, 2]),
    st.integers(HEADER_SIZE + 1, 400),
    st.none() | st.integers(1, 500),
)
def test_order_and_packing(
    ops: list[tuple[object, ...]], version: int, max_message_size: int, max_bytes: int | None
) -> None:
    outbox = Outbox(version=version, max_message_size=max_message_size)
    controls: list[Frame] = []
    per_stream: dict[int, list[bytes]] = {}
    counter = 0
    for op in ops:
        if op[0] == "control":
            frame = PingFrame(int(op[1]).to_bytes(8, "big"))  # type: ignore[call-overload]
            outbox.queue_control(frame)
            controls.append(frame)
        else:
            _, stream_id, size = op
            counter += 1
            payload = bytes([counter % 256]) * int(size)  # type: ignore[call-overload]
            outbox.queue_data(int(stream_id), payload, False)  # type: ignore[call-overload]
            per_stream.setdefault(int(stream_id), []).append(payload)  # type: ignore[call-overload]
    sent: list[Frame] = []
    while outbox:
        messages = outbox.pop_messages(max_bytes)
        assert messages  # at least one message whenever something is queued
        if max_bytes is not None and len(messages) > 1:
            assert sum(map(len, messages)) <= max_bytes
        for message in messages:
            frames = decode_message(message, max_frame_size=10**6, version=version)
            if version == 1:
                assert len(frames) == 1
            elif len(frames) > 1:
                assert len(message) <= max_message_size
            sent += frames
    # Control frames first, in order; then each stream's DATA in its own order.
    assert sent[: len(controls)] == controls
    data = sent[len(controls) :]
    assert all(isinstance(f, DataFrame) for f in data)
    for stream_id, payloads in per_stream.items():
        assert [bytes(f.data) for f in data if f.stream_id == stream_id] == payloads  # type: ignore[union-attr]


def test_round_robin_and_drop() -> None:
    outbox = Outbox(version=2, max_message_size=10**6)
    for stream_id in (1, 3):
        for i in range(3):
            outbox.queue_data(stream_id, bytes([i]), i == 2)
    outbox.queue_data(5, b"x", False)
    outbox.drop_stream(5)
    outbox.drop_stream(7)  # unknown: nothing happens
    outbox.queue_control(RstFrame(5, 0))
    assert set(outbox.queued_stream_ids()) == {1, 3}
    (message,) = outbox.pop_messages()
    frames = decode_message(message, max_frame_size=100, version=2)
    assert frames == [
        RstFrame(5, 0),
        DataFrame(1, b"\x00"),
        DataFrame(3, b"\x00"),
        DataFrame(1, b"\x01"),
        DataFrame(3, b"\x01"),
        DataFrame(1, b"\x02", True),
        DataFrame(3, b"\x02", True),
    ]
    assert outbox.data_bytes_sent == 6 and outbox.messages_sent == 1 and not outbox
