"""Resume of a v2 session on a new WebSocket (docs/protocol.md §13): exchange offsets, retransmit.

Theory of operation
-------------------
When the WebSocket of an OPEN v2 session ends without GOAWAY, the driver calls
:meth:`Session.detach <tunnel.protocol.session.Session.detach>`: the session becomes DETACHED,
everything queued is dropped and the streams stay as they are. While DETACHED (and, on the
client, RESUMING) the outbox takes nothing: DATA sent meanwhile only goes into the streams'
replay buffers, acknowledged bytes only into the windows, OPEN_OK and RST only into the streams'
ledgers. All of that is regenerated when the session resumes, from the ledgers, so nothing
reaches the new connection before the handshake and nothing is sent twice.

The handshake: the client sends ``HELLO.resume {sessionId, resumeToken, received}``
(``Session.send_resume``); the server's driver checks the token and calls ``Session.resume`` on
the parked session, which answers ``WELCOME(resumed=true, received=…)``. The session states and
the handshake frames are the :class:`~tunnel.protocol.session.Session`'s; the bookkeeping is a
:class:`Resumer`'s, which works on the session's :class:`~tunnel.protocol.streams.Streams` and
:class:`~tunnel.protocol.outbox.Outbox`: :meth:`Resumer.received_map` builds our map, and
:meth:`Resumer.apply` applies the peer's, per stream:

* closed by RST: the RST is sent again if the peer still lists the stream; then forgotten;
* listed by the peer: DATA from the peer's ``receivedBytes`` on, a FIN it did not get, and an
  OPEN_OK it may have missed are queued; the send credit becomes peer window + peer's consumed
  bytes - bytes sent; the receive window restarts from our own consumed count as announced in
  our map; a closed stream whose bytes and FIN the peer has is forgotten;
* not listed by the peer: a stream we opened that the peer never answered is opened again (OPEN,
  then its data from offset 0); any other stream is closed locally (StreamReset, STREAM_CLOSED).

Streams opened again wait (:attr:`Resumer.reopens_pending`) until everything queued before them
is out; the session then calls :meth:`Resumer.flush_reopens`.
"""

from __future__ import annotations

from tunnel.protocol import events as ev
from tunnel.protocol.errors import ErrorCode
from tunnel.protocol.frames import OpenFrame, OpenOkFrame, RstFrame, WindowFrame
from tunnel.protocol.messages import StreamOffsets
from tunnel.protocol.outbox import Outbox
from tunnel.protocol.stream import Opener, Stream
from tunnel.protocol.streams import Streams

__all__ = ["Resumer"]


class Resumer:
    """The resume bookkeeping of one v2 session, over the streams and outbox it is given.

    Args:
        streams: the session's stream table.
        outbox: the session's send queue (retransmissions go there).
    """

    def __init__(self, streams: Streams, outbox: Outbox) -> None:
        self._streams = streams
        self._outbox = outbox
        #: Streams of ours to open again after a resume, once the DATA queued before is out.
        self._pending_reopens: list[Stream] = []
        #: DATA bytes queued again by resumes, in total.
        self.bytes_retransmitted = 0

    @property
    def reopens_pending(self) -> bool:
        """True while streams opened again at the last resume wait for :meth:`flush_reopens`."""
        return bool(self._pending_reopens)

    def detach(self) -> None:
        """The connection is gone: reopens not yet flushed are considered again at the next
        resume (the peer's map will still not list them)."""
        for stream in self._pending_reopens:
            stream.ledger.reopen_pending = False
        self._pending_reopens.clear()

    def received_map(self) -> dict[int, StreamOffsets]:
        """Our ``received`` map for a resume handshake.

        Also snapshots each window's consumed count: the receive window restarts from exactly
        what the peer is told here.

        Returns:
            ``[receivedBytes, consumedBytes, finReceived]`` of every stream still remembered
            (live, or closed since the last handshake), by stream id.
        """
        offsets: dict[int, StreamOffsets] = {}
        for stream_id, stream, _ in self._streams.remembered():
            window = stream.window
            window.mark_consumed_announced()
            offsets[stream_id] = StreamOffsets(
                window.received_bytes, window.consumed_bytes, stream.ledger.fin_received
            )
        return offsets

    def apply(
        self, peer: dict[int, StreamOffsets], *, peer_window_size: int, max_frame_size: int
    ) -> list[ev.Event]:
        """Apply the peer's ``received`` map (see the module docstring): queue what it misses.

        Args:
            peer: the peer's map.
            peer_window_size: the peer's window (the send credit restarts from it).
            max_frame_size: the largest DATA payload to send.

        Returns:
            The events for the driver: ``StreamReset(STREAM_CLOSED, remote=False)`` for each
            live stream closed here because the peer no longer knows it or disagrees.
        """
        events: list[ev.Event] = []
        streams = self._streams
        outbox = self._outbox
        for stream_id, stream, live in streams.remembered():
            ledger = stream.ledger
            entry = peer.get(stream_id)
            if ledger.reset_sent is not None or ledger.reset_received:
                if entry is not None and ledger.reset_sent is not None:
                    outbox.queue_control(RstFrame(stream_id, *ledger.reset_sent))
                streams.drop_record(stream_id)
                continue
            if entry is None:
                if live and stream.opener is Opener.LOCAL and not ledger.answered and ledger.replay_start == 0:
                    self._reopen(stream, peer_window_size)
                elif live:
                    events.append(self._drop_live(stream, "the peer no longer knows this stream"))
                else:
                    streams.drop_record(stream_id)
                continue
            data = ledger.retransmission(entry.received_bytes)
            credit = peer_window_size + entry.consumed_bytes - ledger.sent_bytes
            if data is None or credit < 0 or entry.consumed_bytes > entry.received_bytes:
                if live:
                    outbox.queue_control(
                        RstFrame(stream_id, ErrorCode.PROTOCOL_ERROR, "resume offsets disagree")
                    )
                    events.append(self._drop_live(stream, "resume offsets disagree"))
                else:
                    streams.drop_record(stream_id)
                continue
            ledger.trim_to(entry.consumed_bytes)
            ledger.resumed = True
            if stream.opener is Opener.REMOTE and ledger.accepted and entry.received_bytes == 0 and not entry.fin_received:
                outbox.queue_control(OpenOkFrame(stream_id))  # it may have been lost
            self._queue_replay(stream_id, data, ledger.fin_sent and not entry.fin_received, max_frame_size)
            stream.window.restart(send_credit=credit)
            if not live and ledger.delivered(entry.received_bytes, entry.fin_received):
                streams.drop_record(stream_id)
            elif live:
                self._announce_pending(stream)
        return events

    def flush_reopens(self, max_frame_size: int) -> None:
        """Queue the OPEN and all the data of each stream opened again (call once everything
        queued before them is out).

        Args:
            max_frame_size: the largest DATA payload to send.
        """
        for stream in self._pending_reopens:
            ledger = stream.ledger
            ledger.reopen_pending = False
            if stream.closed:
                continue  # reset meanwhile: the peer never knew it
            self._outbox.queue_control(OpenFrame(stream.stream_id, stream.bind_id, stream.origin))
            data = ledger.retransmission(ledger.replay_start) or b""  # all of it: from offset 0
            self._queue_replay(stream.stream_id, data, ledger.fin_sent, max_frame_size)
        self._pending_reopens.clear()

    def _queue_replay(self, stream_id: int, data: bytes, fin: bool, max_frame_size: int) -> None:
        view = memoryview(data)
        self.bytes_retransmitted += len(data)
        for offset in range(0, len(data), max_frame_size):
            last = offset + max_frame_size >= len(data)
            self._outbox.queue_data(stream_id, view[offset : offset + max_frame_size], fin and last)
        if fin and not data:
            self._outbox.queue_data(stream_id, b"", True)

    def _reopen(self, stream: Stream, peer_window_size: int) -> None:
        """Our OPEN never reached the peer: open it again, with all the data sent since.

        Deferred until everything queued before it is out: an OPEN is a control frame and would
        otherwise overtake the retransmitted FIN of a stream the peer still counts against
        maxStreams, and be refused.
        """
        stream.window.restart(send_credit=peer_window_size - stream.ledger.sent_bytes)
        stream.ledger.resumed = True
        stream.ledger.reopen_pending = True
        self._pending_reopens.append(stream)

    def _drop_live(self, stream: Stream, reason: str) -> ev.Event:
        self._streams.drop(stream)
        return ev.StreamReset(stream.stream_id, ErrorCode.STREAM_CLOSED, reason, False)

    def _announce_pending(self, stream: Stream) -> None:
        """Bytes consumed while detached were not announced: send their WINDOW when due."""
        if not stream.remote_open:
            return
        increment = stream.window.acknowledge(0, announce=True)
        if increment:
            self._outbox.queue_control(WindowFrame(stream.stream_id, increment))
