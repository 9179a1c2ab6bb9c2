"""Resumer on its own: the received map and what applying the peer's map queues, per stream.

The Resumer works on a Streams table and an Outbox it is given; here both are built by hand, so
each rule of the resume bookkeeping (resume.py's module docstring) is checked without a Session.
test_resume.py checks the same rules end to end, through two Sessions and connection cuts.
"""

from __future__ import annotations

from tunnel.protocol import (
    DataFrame,
    ErrorCode,
    OpenFrame,
    OpenOkFrame,
    Role,
    RstFrame,
    StreamOffsets,
    StreamReset,
    WindowFrame,
)
from tunnel.protocol.frames import Frame
from tunnel.protocol.outbox import Outbox
from tunnel.protocol.resume import Resumer
from tunnel.protocol.stream import Stream, StreamInput
from tunnel.protocol.streams import Streams

from .pair import frames_of

WINDOW = 64 * 1024
MAX_FRAME = 4


def make_resumer(role: Role = Role.CLIENT) -> tuple[Resumer, Streams, Outbox]:
    streams = Streams(role, receive_window_size=WINDOW, resumable=True)
    outbox = Outbox(version=2, max_message_size=64 * 1024)
    return Resumer(streams, outbox), streams, outbox


def sent(outbox: Outbox) -> list[Frame]:
    return frames_of(outbox.pop_messages())


def apply(resumer: Resumer, peer: dict[int, StreamOffsets]) -> list[object]:
    return list(resumer.apply(peer, peer_window_size=WINDOW, max_frame_size=MAX_FRAME))


def opened_by_us(streams: Streams, *, answered: bool = True) -> Stream:
    stream = streams.open_local(3, "10.0.0.1:1", send_credit=WINDOW)
    stream.process(StreamInput.SEND_OPEN)
    if answered:
        stream.process(StreamInput.RECV_OPEN_OK)
        stream.ledger.answered = True
    return stream


def send(stream: Stream, data: bytes, *, fin: bool = False) -> None:
    stream.process(StreamInput.SEND_FIN if fin else StreamInput.SEND_DATA)
    stream.window.consume_send_credit(len(data))
    stream.ledger.record_sent(data, fin)


# -- the received map -------------------------------------------------------------------------------


def test_received_map_lists_live_and_closed_streams_by_id() -> None:
    resumer, streams, _ = make_resumer(Role.SERVER)
    for stream_id in (1, 3):
        streams.claim_remote_id(stream_id)
        stream = streams.open_remote(stream_id, 0, None, send_credit=WINDOW)
        stream.process(StreamInput.RECV_OPEN)
        stream.window.record_received(10 * stream_id)
    first = streams.get(1)
    assert first is not None
    first.window.acknowledge(4)
    first.ledger.fin_received = True
    streams.forget(first)
    assert resumer.received_map() == {1: StreamOffsets(10, 4, True), 3: StreamOffsets(30, 0, False)}


def test_received_map_snapshots_the_consumed_count_the_window_restarts_from() -> None:
    resumer, streams, _ = make_resumer(Role.SERVER)
    streams.claim_remote_id(1)
    stream = streams.open_remote(1, 0, None, send_credit=WINDOW)
    stream.process(StreamInput.RECV_OPEN)
    stream.window.record_received(100)
    stream.window.acknowledge(40)
    resumer.received_map()  # the peer is told consumed = 40
    stream.window.acknowledge(60)  # consumed while the handshake runs
    stream.window.restart(send_credit=0)
    assert stream.window.receive_credit == WINDOW - 60  # granted from 40 on; 100 received


# -- applying the peer's map ------------------------------------------------------------------------


def test_data_and_fin_the_peer_lacks_are_sent_again_from_its_offset() -> None:
    resumer, streams, outbox = make_resumer()
    stream = opened_by_us(streams)
    send(stream, b"abcdefghij", fin=True)
    assert apply(resumer, {1: StreamOffsets(3, 2, False)}) == []
    frames = sent(outbox)
    assert frames == [DataFrame(1, b"defg"), DataFrame(1, b"hij", end_stream=True)]
    assert resumer.bytes_retransmitted == 7
    assert stream.window.send_credit == WINDOW + 2 - 10  # peer window + consumed - sent
    assert stream.ledger.replay_start == 2 and stream.ledger.resumed


def test_a_lost_fin_alone_is_sent_again_as_an_empty_data_fin() -> None:
    resumer, streams, outbox = make_resumer()
    stream = opened_by_us(streams)
    send(stream, b"abc")
    send(stream, b"", fin=True)
    apply(resumer, {1: StreamOffsets(3, 3, False)})
    assert sent(outbox) == [DataFrame(1, b"", end_stream=True)]


def test_an_open_ok_the_peer_may_have_missed_is_sent_again() -> None:
    resumer, streams, outbox = make_resumer(Role.SERVER)
    streams.claim_remote_id(1)
    stream = streams.open_remote(1, 0, None, send_credit=WINDOW)
    stream.process(StreamInput.RECV_OPEN)
    stream.process(StreamInput.SEND_OPEN_OK)
    stream.ledger.accepted = True
    apply(resumer, {1: StreamOffsets(0, 0, False)})
    assert sent(outbox) == [OpenOkFrame(1)]


def test_bytes_consumed_while_detached_are_announced_by_window() -> None:
    resumer, streams, outbox = make_resumer(Role.SERVER)
    streams.claim_remote_id(1)
    stream = streams.open_remote(1, 0, None, send_credit=WINDOW)
    stream.process(StreamInput.RECV_OPEN)
    stream.process(StreamInput.SEND_OPEN_OK)
    stream.window.record_received(WINDOW)
    resumer.received_map()  # consumed 0 announced
    stream.window.acknowledge(WINDOW, announce=False)  # written while detached
    apply(resumer, {1: StreamOffsets(0, 0, False)})
    assert sent(outbox) == [WindowFrame(1, WINDOW)]


def test_a_reset_stream_gets_its_rst_again_only_if_the_peer_still_lists_it() -> None:
    resumer, streams, outbox = make_resumer()
    listed, unlisted = opened_by_us(streams), opened_by_us(streams)
    for stream in (listed, unlisted):
        stream.ledger.reset_sent = (ErrorCode.NORMAL, "bye")
        streams.forget(stream)
    assert apply(resumer, {1: StreamOffsets(0, 0, False)}) == []
    assert sent(outbox) == [RstFrame(1, ErrorCode.NORMAL, "bye")]
    assert streams.closed_records() == []  # both forgotten after the handshake


def test_a_stream_the_peer_reset_is_forgotten_silently() -> None:
    resumer, streams, outbox = make_resumer()
    stream = opened_by_us(streams)
    stream.ledger.reset_received = True
    streams.forget(stream)
    assert apply(resumer, {1: StreamOffsets(0, 0, False)}) == []
    assert sent(outbox) == [] and streams.closed_records() == []


def test_an_unlisted_stream_of_ours_never_answered_is_opened_again_after_the_queue() -> None:
    resumer, streams, outbox = make_resumer()
    stream = opened_by_us(streams, answered=False)
    send(stream, b"early", fin=True)
    assert apply(resumer, {}) == []
    assert sent(outbox) == [] and resumer.reopens_pending and stream.ledger.reopen_pending
    assert stream.window.send_credit == WINDOW - 5
    resumer.flush_reopens(MAX_FRAME)
    assert not resumer.reopens_pending and not stream.ledger.reopen_pending
    assert sent(outbox) == [
        OpenFrame(1, 3, "10.0.0.1:1"),
        DataFrame(1, b"earl"),
        DataFrame(1, b"y", end_stream=True),
    ]


def test_a_reopen_of_a_stream_reset_meanwhile_sends_nothing() -> None:
    resumer, streams, outbox = make_resumer()
    stream = opened_by_us(streams, answered=False)
    apply(resumer, {})
    streams.forget(stream)
    resumer.flush_reopens(MAX_FRAME)
    assert sent(outbox) == [] and not resumer.reopens_pending


def test_detach_puts_pending_reopens_back_to_be_considered_at_the_next_resume() -> None:
    resumer, streams, outbox = make_resumer()
    stream = opened_by_us(streams, answered=False)
    apply(resumer, {})
    resumer.detach()
    assert not resumer.reopens_pending and not stream.ledger.reopen_pending
    apply(resumer, {})  # the peer still does not know it
    resumer.flush_reopens(MAX_FRAME)
    assert sent(outbox) == [OpenFrame(1, 3, "10.0.0.1:1")]


def test_an_unlisted_live_stream_is_closed_here_with_an_event() -> None:
    resumer, streams, outbox = make_resumer()
    stream = opened_by_us(streams)
    events = apply(resumer, {})
    assert events == [StreamReset(1, ErrorCode.STREAM_CLOSED, "the peer no longer knows this stream", False)]
    assert stream.closed and 1 not in streams and streams.closed_records() == []
    assert sent(outbox) == []


def test_offsets_that_disagree_reset_a_live_stream_and_drop_a_record() -> None:
    resumer, streams, outbox = make_resumer()
    live, closed = opened_by_us(streams), opened_by_us(streams)
    send(live, b"abc")
    send(closed, b"abc", fin=True)
    streams.forget(closed)
    events = apply(resumer, {1: StreamOffsets(4, 0, False), 3: StreamOffsets(2, 3, False)})
    assert events == [StreamReset(1, ErrorCode.STREAM_CLOSED, "resume offsets disagree", False)]
    assert sent(outbox) == [RstFrame(1, ErrorCode.PROTOCOL_ERROR, "resume offsets disagree")]
    assert streams.closed_records() == [] and 1 not in streams


def test_a_closed_stream_is_forgotten_once_the_peer_has_everything() -> None:
    resumer, streams, outbox = make_resumer()
    done, short = opened_by_us(streams), opened_by_us(streams)
    for stream in (done, short):
        send(stream, b"abc", fin=True)
        streams.forget(stream)
    apply(resumer, {1: StreamOffsets(3, 3, True), 3: StreamOffsets(3, 3, False)})
    assert sent(outbox) == [DataFrame(3, b"", end_stream=True)]
    assert streams.closed_records() == [short]  # kept until a handshake shows the FIN arrived
    apply(resumer, {3: StreamOffsets(3, 3, True)})
    assert streams.closed_records() == []
