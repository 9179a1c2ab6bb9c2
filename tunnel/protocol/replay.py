"""Per-stream bookkeeping that lets a v2 session resume on a new WebSocket (docs/protocol.md §13.5).

Theory of operation
-------------------
A sender keeps every byte it sent on a stream that the peer has not yet credited back with
WINDOW. Credit comes back only for bytes the peer has *written to its local socket*, so bytes
not credited back are exactly those that may still be lost in a cut: in flight, or received
but not yet acknowledged. Their number never exceeds the peer's window (the sender may not
send beyond its credit), so the replay buffer of a stream is bounded by one window.

At a resume each side tells the other, per stream, ``[receivedBytes, consumedBytes,
finReceived]``. The sender then retransmits from the peer's ``receivedBytes`` (which is always
at least what was credited back, so those bytes are still in the buffer), resends a FIN that
was not received, and both sides restart the window from the peer's ``consumedBytes``:
new credit = peer window + consumed - sent.

Streams that closed since the last handshake are remembered (a FIN or RST lost in the cut is
then resent instead of the stream being mistaken for unknown) until a handshake shows the peer
has everything, or until too many closed streams pile up (:data:`MAX_CLOSED_RECORDS`).
"""

from __future__ import annotations

from collections import deque

#: Closed streams remembered for a resume at most; older ones are forgotten first. A stream is
#: only at risk if it is forgotten while its last bytes or its FIN are still in flight, which at
#: this count means thousands of streams closing within one round trip.
MAX_CLOSED_RECORDS = 1024
#: Replay bytes all closed records of a session may keep together. No WINDOW follows a FIN, so
#: a closed stream keeps its last uncredited bytes (up to a window) until the next handshake;
#: without this cap a session with many short streams and no cut could hold 1024 windows.
MAX_CLOSED_REPLAY_SIZE = 4 * 1024 * 1024


class StreamLedger:
    """What one stream has sent and received, for retransmission after a resume.

    Args:
        keep_replay: False for v1 sessions, which never resume (nothing is buffered then).
    """

    __slots__ = (
        "accepted",
        "answered",
        "fin_received",
        "fin_sent",
        "keep_replay",
        "replay",
        "replay_size",
        "replay_start",
        "reopen_pending",
        "reset_received",
        "reset_sent",
        "resumed",
        "sent_bytes",
    )

    def __init__(self, *, keep_replay: bool) -> None:
        self.keep_replay = keep_replay
        #: Payload bytes handed to the session for sending, in total.
        self.sent_bytes = 0
        #: The stream offset of the first replay byte: everything before it was credited back.
        self.replay_start = 0
        #: The bytes sent and not yet credited back, as the very chunks handed to ``send_data``
        #: (immutable: ``bytes`` or read-only views), so keeping them copies nothing.
        self.replay: deque[bytes | memoryview] = deque()
        self.replay_size = 0
        self.fin_sent = False
        self.fin_received = False
        #: Opener side: the peer answered our OPEN (OPEN_OK, RST or DATA came back).
        self.answered = False
        #: Acceptor side: we sent OPEN_OK.
        self.accepted = False
        #: (code, reason) of the RST we sent / that closed the stream from the peer's side.
        self.reset_sent: tuple[int, str] | None = None
        self.reset_received = False
        #: A resume happened while the stream was alive (a repeated OPEN_OK is then tolerated).
        self.resumed = False
        #: Our OPEN is to be sent again, after the DATA queued before it (resume.py).
        self.reopen_pending = False

    def record_sent(self, payload: bytes | memoryview, end_stream: bool) -> None:
        """Keep ``payload`` (just queued as DATA) until the peer credits it back."""
        size = len(payload)
        self.sent_bytes += size
        if self.keep_replay and size:
            self.replay.append(payload)
            self.replay_size += size
        if end_stream:
            self.fin_sent = True

    def credited(self, increment: int) -> None:
        """The peer granted ``increment`` bytes of credit: it has written that many bytes."""
        drop = min(increment, self.replay_size)
        self.replay_start += drop
        self.replay_size -= drop
        replay = self.replay
        while drop:
            head = replay[0]
            if len(head) <= drop:
                replay.popleft()
                drop -= len(head)
            else:
                replay[0] = memoryview(head)[drop:]
                drop = 0

    def trim_to(self, consumed_bytes: int) -> None:
        """Forget the bytes before ``consumed_bytes`` (the peer says it wrote them)."""
        if consumed_bytes > self.replay_start:
            self.credited(consumed_bytes - self.replay_start)

    def retransmission(self, received_bytes: int) -> bytes | None:
        """The bytes to send again from the peer's ``received_bytes`` on.

        Returns:
            The bytes (possibly empty), or None when ``received_bytes`` is outside what we can
            replay (before the buffer or beyond what was sent): the peer's ledger disagrees.
        """
        if not self.replay_start <= received_bytes <= self.sent_bytes:
            return None
        if not self.keep_replay and received_bytes != self.sent_bytes:
            return None
        skip = received_bytes - self.replay_start
        parts: list[bytes | memoryview] = []
        for chunk in self.replay:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            parts.append(memoryview(chunk)[skip:] if skip else chunk)
            skip = 0
        return b"".join(parts)

    def delivered(self, received_bytes: int, fin_received: bool) -> bool:
        """True when the peer's offsets show it has everything this side sent on the stream."""
        return received_bytes == self.sent_bytes and (fin_received or not self.fin_sent)
