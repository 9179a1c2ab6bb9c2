"""Streams, the session's stream table, on its own: ids, counts, lookups, closing, closed records."""

from __future__ import annotations

import pytest

from tunnel.protocol import ErrorCode, LocalProtocolError, RemoteProtocolError, Role, StreamState
from tunnel.protocol.replay import MAX_CLOSED_RECORDS, MAX_CLOSED_REPLAY_SIZE
from tunnel.protocol.stream import Opener, StreamInput
from tunnel.protocol.streams import Streams

WINDOW = 64 * 1024


def make_streams(role: Role = Role.CLIENT, *, resumable: bool = True) -> Streams:
    return Streams(role, receive_window_size=WINDOW, resumable=resumable)


# -- ids ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("role", "first_ids"), [(Role.CLIENT, [1, 3, 5]), (Role.SERVER, [2, 4, 6])])
def test_local_ids_have_our_parity_and_increase(role: Role, first_ids: list[int]) -> None:
    streams = make_streams(role)
    opened = [streams.open_local(0, None, send_credit=10) for _ in first_ids]
    assert [stream.stream_id for stream in opened] == first_ids
    assert all(stream.opener is Opener.LOCAL for stream in opened)
    assert streams.ids() == first_ids


def test_a_new_stream_starts_idle_with_the_given_credit_and_our_window() -> None:
    stream = make_streams().open_local(7, "10.0.0.1:5555", send_credit=1234)
    assert (stream.bind_id, stream.origin, stream.state) == (7, "10.0.0.1:5555", StreamState.IDLE)
    assert stream.window.send_credit == 1234
    assert stream.window.receive_credit == WINDOW


@pytest.mark.parametrize(("role", "bad_id", "message"), [
    (Role.CLIENT, 3, "the server opens even ids"),
    (Role.SERVER, 2, "the client opens odd ids"),
])
def test_the_peer_must_use_its_own_parity(role: Role, bad_id: int, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        make_streams(role).claim_remote_id(bad_id)


def test_the_peers_ids_must_strictly_increase() -> None:
    streams = make_streams(Role.SERVER)
    streams.claim_remote_id(5)
    with pytest.raises(RemoteProtocolError, match=r"ids must increase \(last was 5\)"):
        streams.claim_remote_id(5)
    with pytest.raises(RemoteProtocolError, match="ids must increase"):
        streams.claim_remote_id(3)
    streams.claim_remote_id(7)  # gaps are fine (a refused OPEN still used its id)


def test_local_ids_run_out_at_the_u32_limit() -> None:
    streams = make_streams(Role.SERVER)
    assert not streams.local_ids_exhausted
    streams._next_local_id = 0xFFFFFFFE
    assert not streams.local_ids_exhausted
    assert streams.open_local(0, None, send_credit=0).stream_id == 0xFFFFFFFE
    assert streams.local_ids_exhausted


# -- lookups and counts ---------------------------------------------------------------------------


def test_lookups_of_live_and_unknown_streams() -> None:
    streams = make_streams(Role.SERVER)
    streams.claim_remote_id(1)
    stream = streams.open_remote(1, 9, None, send_credit=0)
    stream.process(StreamInput.RECV_OPEN)
    assert 1 in streams and 2 not in streams and len(streams) == 1
    assert streams.get(1) is stream and streams.get(2) is None
    assert streams.state(1) is StreamState.OPEN_RECEIVED and streams.state(2) is StreamState.CLOSED
    assert streams.bind_id(1) == 9 and streams.bind_id(2) is None
    assert streams.require(1, "x") is stream
    with pytest.raises(LocalProtocolError, match="send_data: stream 2 is not open") as info:
        streams.require(2, "send_data")
    assert info.value.error_code is ErrorCode.STREAM_CLOSED and info.value.stream_id == 2


def test_open_counts_and_totals_per_opener() -> None:
    streams = make_streams(Role.CLIENT)
    local = streams.open_local(0, None, send_credit=0)
    streams.open_local(0, None, send_credit=0)
    streams.claim_remote_id(2)
    streams.open_remote(2, 0, None, send_credit=0)
    assert (streams.open_count(Opener.LOCAL), streams.open_count(Opener.REMOTE)) == (2, 1)
    streams.forget(local)
    assert (streams.open_count(Opener.LOCAL), streams.open_count(Opener.REMOTE)) == (1, 1)
    assert (streams.opened_local, streams.opened_remote, streams.refused) == (2, 1, 0)
    streams.record_refusal(4, 0, ErrorCode.REFUSED, "full")
    assert streams.refused == 1 and 4 not in streams


def test_a_closed_stream_of_ours_with_data_still_queued_stays_in_use() -> None:
    streams = make_streams(Role.CLIENT)
    first = streams.open_local(0, None, send_credit=0)
    streams.open_local(0, None, send_credit=0)
    streams.forget(first)
    assert streams.local_in_use([]) == 1
    # Stream 1's FIN still queued; 2 is the peer's (other parity); 3 is live (counted once).
    assert streams.local_in_use([1, 2, 3]) == 2


# -- closing ------------------------------------------------------------------------------------


def test_forget_closes_and_remembers_drop_closes_without_a_record() -> None:
    streams = make_streams()
    forgotten = streams.open_local(0, None, send_credit=0)
    dropped = streams.open_local(0, None, send_credit=0)
    streams.forget(forgotten)
    streams.drop(dropped)
    assert forgotten.closed and dropped.closed and len(streams) == 0
    assert streams.closed_record(forgotten.stream_id) is forgotten
    assert streams.closed_record(dropped.stream_id) is None
    assert streams.open_count(Opener.LOCAL) == 0
    streams.forget(forgotten)  # twice: nothing changes
    assert streams.open_count(Opener.LOCAL) == 0 and streams.closed_records() == [forgotten]


def test_forget_all_closes_every_live_stream() -> None:
    streams = make_streams()
    opened = [streams.open_local(0, None, send_credit=0) for _ in range(3)]
    streams.forget_all()
    assert len(streams) == 0 and all(stream.closed for stream in opened)
    assert streams.closed_records() == opened


def test_v1_keeps_no_records_and_no_replay() -> None:
    streams = make_streams(resumable=False)
    stream = streams.open_local(0, None, send_credit=100)
    stream.ledger.record_sent(b"abc", False)
    assert stream.ledger.replay_size == 0
    streams.forget(stream)
    streams.record_refusal(2, 0, ErrorCode.REFUSED, "full")
    assert streams.closed_records() == [] and streams.remembered() == []
    assert streams.refused == 1


def test_a_refusal_is_remembered_with_its_rst() -> None:
    streams = make_streams(Role.SERVER)
    streams.record_refusal(3, 8, ErrorCode.REFUSED, "maxStreams 4 reached")
    record = streams.closed_record(3)
    assert record is not None and record.closed and record.opener is Opener.REMOTE
    assert record.bind_id == 8
    assert record.ledger.reset_sent == (ErrorCode.REFUSED, "maxStreams 4 reached")


def test_closed_records_are_bounded_in_number_oldest_first() -> None:
    streams = make_streams()
    for _ in range(MAX_CLOSED_RECORDS + 5):
        streams.forget(streams.open_local(0, None, send_credit=0))
    ids = [record.stream_id for record in streams.closed_records()]
    assert len(ids) == MAX_CLOSED_RECORDS
    assert ids[0] == 2 * 5 + 1  # the five oldest (1, 3, 5, 7, 9) were pushed out
    assert ids == sorted(ids)


def test_closed_records_are_bounded_in_replay_bytes_the_newest_kept() -> None:
    streams = make_streams()
    chunk = b"z" * (MAX_CLOSED_REPLAY_SIZE // 3)
    for _ in range(5):
        stream = streams.open_local(0, None, send_credit=len(chunk))
        stream.ledger.record_sent(chunk, False)
        streams.forget(stream)
    records = streams.closed_records()
    assert sum(record.ledger.replay_size for record in records) <= MAX_CLOSED_REPLAY_SIZE
    assert [record.stream_id for record in records] == [5, 7, 9]


def test_one_record_is_kept_even_beyond_the_byte_bound() -> None:
    streams = make_streams()
    stream = streams.open_local(0, None, send_credit=0)
    stream.ledger.record_sent(b"z" * (MAX_CLOSED_REPLAY_SIZE + 1), False)
    streams.forget(stream)
    assert streams.closed_records() == [stream]


def test_remembered_lists_live_and_closed_by_id_and_drop_record_forgets() -> None:
    streams = make_streams(Role.CLIENT)
    one, three, five = (streams.open_local(0, None, send_credit=0) for _ in range(3))
    streams.forget(three)
    streams.claim_remote_id(2)
    two = streams.open_remote(2, 0, None, send_credit=0)
    assert streams.remembered() == [(1, one, True), (2, two, True), (3, three, False), (5, five, True)]
    streams.drop_record(3)
    streams.drop_record(99)  # none: nothing happens
    assert [entry[0] for entry in streams.remembered()] == [1, 2, 5]
