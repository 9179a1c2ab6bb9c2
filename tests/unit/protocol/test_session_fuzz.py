"""Random frames thrown at live sessions: only RemoteProtocolError, and always valid output."""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel.protocol import (
    BindRejected,
    DataReceived,
    DataFrame,
    ErrorCode,
    Event,
    Frame,
    GoAwayFrame,
    OpenFrame,
    RemoteProtocolError,
    SessionState,
    WindowFrame,
    encode_frame,
    encode_message,
)

from tunnel.protocol.errors import truncate_text

from .pair import SessionPair, frames_of
from .strategies import frames as any_frame

# Frames that make sense on a live session, with small ids so that they hit real streams.
small_ids = st.integers(1, 12)
live_frames = st.one_of(
    any_frame,
    st.builds(OpenFrame, small_ids, st.integers(0, 3)),
    st.builds(DataFrame, small_ids, st.binary(max_size=40), st.booleans()),
    st.builds(WindowFrame, small_ids, st.integers(1, 2**31)),
)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([1, 2]),
    st.booleans(),
    st.lists(st.lists(live_frames, min_size=1, max_size=3), max_size=12),
)
def test_random_frames(version: int, to_server: bool, batches: list[list[Frame]]) -> None:
    pair = SessionPair(version)
    pair.open_stream(pair.client)
    pair.open_stream(pair.server)
    receiver = pair.server if to_server else pair.client
    receiver.messages_to_send()
    for i, batch in enumerate(batches):
        message = encode_message(batch if version == 2 else batch[:1])
        try:
            receiver.receive_message(message, float(i))
        except RemoteProtocolError as exc:
            assert receiver.state is SessionState.CLOSED
            assert frames_of(receiver.messages_to_send(), version) == [
                GoAwayFrame(exc.error_code, truncate_text(str(exc)))
            ]
            return
        events = receiver.events_received()
        assert all(isinstance(e, Event) for e in events)
        # The driver writes what it received and acknowledges it.
        for event in events:
            if isinstance(event, DataReceived):
                receiver.acknowledge_data(event.stream_id, len(event.data))
        receiver.handle_timer(float(i))
        # Whatever the session answers is well formed for its peer.
        for message in receiver.messages_to_send(max_bytes=200):
            frames_of([message], version)
        stats = receiver.statistics()
        assert stats.active_streams == len(receiver.stream_ids())
        assert all(receiver.outbound_credit(s) <= 2**31 - 1 for s in receiver.stream_ids())


def test_lone_surrogates_from_the_peer_are_sent_back_safely() -> None:
    pair = SessionPair()
    payload = b'{"reqId":1,"kind":"\\ud800","port":80}'
    pair.server.receive_message(struct.pack("!BBII", 3, 0, 0, len(payload)) + payload, 0.0)
    (event,) = pair.server.events_received()
    assert isinstance(event, BindRejected) and event.error_code is ErrorCode.PROTOCOL_ERROR
    assert event.error == 'port 80: kind must be "EXPOSE" or "PULL", got "?"'
    (failed,) = pair.to_client()
    assert failed.error == event.error  # type: ignore[attr-defined]
    json.dumps(event.error)  # plain, encodable text
    assert encode_frame(GoAwayFrame(0, event.error))
