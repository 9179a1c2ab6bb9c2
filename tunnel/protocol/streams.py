"""The stream table of a session: live streams, their ids and counts, and closed-stream records.

Theory of operation
-------------------
:class:`Streams` is the session's bookkeeping of streams and nothing more: it queues no frame
and emits no event (the :class:`~tunnel.protocol.session.Session` does, acting on what each
:class:`~tunnel.protocol.stream.Stream`'s state table returns). It knows:

* the live streams (not CLOSED), by id, in opening order;
* how many streams each side opened that are still live (the ``maxStreams`` limit counts these);
* stream ids: ours are allocated here, odd for the client and even for the server, increasing;
  the peer's are checked here (its parity, strictly increasing), else a session error;
* v2: the streams closed since the last resume handshake, remembered so that a FIN or RST lost
  in a cut is sent again instead of the stream being taken for unknown
  (:mod:`~tunnel.protocol.replay` explains the bounds: :data:`MAX_CLOSED_RECORDS` records and
  :data:`MAX_CLOSED_REPLAY_SIZE` replay bytes at most, the oldest forgotten first).

A stream leaves the live table in one of two ways: :meth:`Streams.forget` (it closed: v2
remembers it for a resume) or :meth:`Streams.drop` (a resume showed the peer no longer knows it:
nothing is remembered).
"""

from __future__ import annotations

from collections.abc import Iterable

from tunnel.protocol.config import Role
from tunnel.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel.protocol.flow import Window
from tunnel.protocol.replay import MAX_CLOSED_RECORDS, MAX_CLOSED_REPLAY_SIZE
from tunnel.protocol.stream import Opener, Stream, StreamState

__all__ = ["Streams"]

_U32_MAX = 0xFFFFFFFF


class Streams:
    """The streams of one session.

    Args:
        role: our side (it fixes the parity of our stream ids).
        receive_window_size: our receive window per stream.
        resumable: v2: keep replay buffers and closed-stream records for a resume.
    """

    __slots__ = (
        "_closed",
        "_last_remote_id",
        "_live",
        "_local_parity",
        "_next_local_id",
        "_open_counts",
        "opened_local",
        "opened_remote",
        "receive_window_size",
        "refused",
        "resumable",
        "role",
    )

    def __init__(self, role: Role, *, receive_window_size: int, resumable: bool) -> None:
        self.role = role
        self.receive_window_size = receive_window_size
        self.resumable = resumable
        self._live: dict[int, Stream] = {}
        #: v2: closed streams remembered for a resume (replay.py), oldest first.
        self._closed: dict[int, Stream] = {}
        self._open_counts = {Opener.LOCAL: 0, Opener.REMOTE: 0}
        # Client streams are odd, server streams even (docs/protocol.md §7.3).
        self._local_parity = 1 if role is Role.CLIENT else 0
        self._next_local_id = 1 if role is Role.CLIENT else 2
        self._last_remote_id = 0
        #: Streams this side opened, since the start.
        self.opened_local = 0
        #: Streams the peer opened that were not refused, since the start.
        self.opened_remote = 0
        #: OPENs of the peer refused (maxStreams, after GOAWAY), since the start.
        self.refused = 0

    # -- lookups ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._live

    def get(self, stream_id: int) -> Stream | None:
        """The live stream ``stream_id``, or None (unknown or CLOSED)."""
        return self._live.get(stream_id)

    def require(self, stream_id: int, what: str) -> Stream:
        """The live stream ``stream_id`` for a command.

        Args:
            stream_id: the stream.
            what: the command, for the error message.

        Returns:
            The stream.

        Raises:
            LocalProtocolError: ``STREAM_CLOSED``: the stream is unknown or CLOSED.
        """
        stream = self._live.get(stream_id)
        if stream is None:
            raise LocalProtocolError(
                f"{what}: stream {stream_id} is not open",
                ErrorCode.STREAM_CLOSED,
                stream_id=stream_id,
            )
        return stream

    def ids(self) -> list[int]:
        """Ids of the live streams, in opening order."""
        return list(self._live)

    def state(self, stream_id: int) -> StreamState:
        """The state of a stream; CLOSED when it is unknown."""
        stream = self._live.get(stream_id)
        return StreamState.CLOSED if stream is None else stream.state

    def bind_id(self, stream_id: int) -> int | None:
        """The binding of a live stream; None when it is unknown or CLOSED."""
        stream = self._live.get(stream_id)
        return None if stream is None else stream.bind_id

    def open_count(self, opener: Opener) -> int:
        """How many live streams ``opener`` opened."""
        return self._open_counts[opener]

    def local_in_use(self, queued_stream_ids: Iterable[int]) -> int:
        """How many streams we opened still count against the peer's ``maxStreams``.

        A stream we opened stays counted until its last queued DATA (its FIN) has been taken
        out: otherwise a new OPEN (a control frame, sent ahead of DATA) could overtake that FIN
        and reach the peer while it still counts the old stream, and be refused.

        Args:
            queued_stream_ids: the streams with DATA still queued (the outbox's).

        Returns:
            Live streams we opened, plus closed ones of ours with DATA still queued.
        """
        lingering = sum(
            1
            for stream_id in queued_stream_ids
            if stream_id % 2 == self._local_parity and stream_id not in self._live
        )
        return self._open_counts[Opener.LOCAL] + lingering

    @property
    def local_ids_exhausted(self) -> bool:
        """True once our next stream id would not fit a u32."""
        return self._next_local_id > _U32_MAX

    # -- birth ------------------------------------------------------------------------------------

    def _add(self, stream_id: int, bind_id: int, opener: Opener, origin: str | None, send_credit: int) -> Stream:
        window = Window(send_credit=send_credit, receive_window=self.receive_window_size)
        stream = Stream(stream_id, bind_id, opener, window, origin, keep_replay=self.resumable)
        self._live[stream_id] = stream
        self._open_counts[opener] += 1
        return stream

    def open_local(self, bind_id: int, origin: str | None, *, send_credit: int) -> Stream:
        """Add a stream we open, with the next id of ours (its state machine still IDLE).

        Args:
            bind_id: the binding.
            origin: the optional ``"ip:port"``.
            send_credit: its initial send credit (the peer's window).

        Returns:
            The new stream.
        """
        stream_id = self._next_local_id
        self._next_local_id += 2
        self.opened_local += 1
        return self._add(stream_id, bind_id, Opener.LOCAL, origin, send_credit)

    def claim_remote_id(self, stream_id: int) -> None:
        """Check the id of an OPEN received and take it: the peer's parity, increasing.

        Args:
            stream_id: the id the peer's OPEN names.

        Raises:
            RemoteProtocolError: wrong parity, or not above the peer's last id (a session error).
        """
        peer = "server" if self.role is Role.CLIENT else "client"
        if stream_id % 2 == self._local_parity:
            parity = "even" if peer == "server" else "odd"
            raise RemoteProtocolError(f"OPEN of stream {stream_id}: the {peer} opens {parity} ids")
        if stream_id <= self._last_remote_id:
            raise RemoteProtocolError(
                f"OPEN of stream {stream_id}: ids must increase (last was {self._last_remote_id})"
            )
        self._last_remote_id = stream_id

    def open_remote(self, stream_id: int, bind_id: int, origin: str | None, *, send_credit: int) -> Stream:
        """Add a stream the peer opened (its id already claimed; its state machine still IDLE).

        Args:
            stream_id: the id from the OPEN.
            bind_id: the binding from the OPEN.
            origin: the origin from the OPEN.
            send_credit: its initial send credit (the peer's window).

        Returns:
            The new stream.
        """
        self.opened_remote += 1
        return self._add(stream_id, bind_id, Opener.REMOTE, origin, send_credit)

    def record_refusal(self, stream_id: int, bind_id: int, code: int, reason: str) -> None:
        """Count an OPEN we refused; v2: remember it, so a refusal lost in a cut is sent again.

        Args:
            stream_id: the refused stream.
            bind_id: the binding its OPEN named.
            code: the RST code sent.
            reason: the RST reason sent (already truncated).
        """
        self.refused += 1
        if self.resumable:
            window = Window(send_credit=0, receive_window=self.receive_window_size)
            record = Stream(stream_id, bind_id, Opener.REMOTE, window)
            record.machine.state = StreamState.CLOSED
            record.ledger.reset_sent = (code, reason)
            self._remember(record)

    # -- death ------------------------------------------------------------------------------------

    def forget(self, stream: Stream) -> None:
        """The stream is CLOSED: take it out of the live table; v2 remembers it for a resume.

        Args:
            stream: the stream (its state is set to CLOSED; a stream already gone is not
                remembered twice).
        """
        stream.machine.state = StreamState.CLOSED
        if self._live.pop(stream.stream_id, None) is not None:
            self._open_counts[stream.opener] -= 1
            self._remember(stream)

    def forget_all(self) -> None:
        """Close and forget every live stream (the session ends)."""
        for stream in list(self._live.values()):
            self.forget(stream)

    def drop(self, stream: Stream) -> None:
        """Close a stream without remembering it (a resume showed the peer does not know it).

        Args:
            stream: the stream (its state is set to CLOSED).
        """
        stream.machine.state = StreamState.CLOSED
        if self._live.pop(stream.stream_id, None) is not None:
            self._open_counts[stream.opener] -= 1

    def _remember(self, stream: Stream) -> None:
        if not self.resumable:
            return
        closed = self._closed
        closed[stream.stream_id] = stream
        while len(closed) > MAX_CLOSED_RECORDS:
            del closed[next(iter(closed))]
        if stream.ledger.replay_size:
            kept = sum(record.ledger.replay_size for record in closed.values())
            while kept > MAX_CLOSED_REPLAY_SIZE and len(closed) > 1:
                oldest = closed.pop(next(iter(closed)))
                kept -= oldest.ledger.replay_size

    # -- closed-stream records (v2) ---------------------------------------------------------------

    def closed_record(self, stream_id: int) -> Stream | None:
        """The remembered closed stream ``stream_id``, or None."""
        return self._closed.get(stream_id)

    def closed_records(self) -> list[Stream]:
        """The remembered closed streams, oldest first."""
        return list(self._closed.values())

    def drop_record(self, stream_id: int) -> None:
        """Forget the record of a closed stream (nothing happens when there is none)."""
        self._closed.pop(stream_id, None)

    def remembered(self) -> list[tuple[int, Stream, bool]]:
        """Every stream a resume handshake is about: live ones and closed records.

        Returns:
            ``(stream_id, stream, live)`` for each, by stream id.
        """
        return sorted(
            [(stream_id, stream, True) for stream_id, stream in self._live.items()]
            + [(stream_id, stream, False) for stream_id, stream in self._closed.items()]
        )
