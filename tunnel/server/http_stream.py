"""The stream of one HTTP-mode connection (see :mod:`tunnel.server.http_mode`).

An :class:`HttpStream` is a :class:`~tunnel.mux.pump.StreamPump` without a socket while the
connection speaks HTTP: the connection pushes request bytes with
:meth:`HttpStream.send_within_credit` and pulls the response's DATA with
:meth:`HttpStream.next_inbound`, acknowledging it with :meth:`HttpStream.consumed` once written
out. After a protocol switch (101), :meth:`HttpStream.start_relay` hands it the socket and it moves
bytes as any pump does.

A reset from the runner (RST received, or the session ended) finishes the stream without touching
any socket: the connection answers 502/503 instead, from the RST's code and text that the runner
hands to :meth:`HttpStream.reset`.
"""

from __future__ import annotations

import collections
import socket
import time
from collections.abc import Callable

from gevent.event import Event

from tunnel.mux.pump import MAX_READ_SIZE, StreamOwner, StreamPump
from tunnel.protocol import ErrorCode, LocalProtocolError
from tunnel.protocol import TunnelError

#: After our FIN, how long the client's side has to close the stream before it is reset.
LINGER_S = 5.0


class StreamGone(TunnelError):
    """The stream was reset or finished while a request still needed it."""


class HttpStream(StreamPump):
    """The stream of one HTTP connection: a StreamPump whose local side is the kit's HTTP relay.

    While the connection speaks HTTP it has no socket: :class:`HttpConnection` pushes request
    bytes with :meth:`send_within_credit` and its responder pulls DATA with
    :meth:`next_inbound`. After an upgrade, :meth:`start_relay` hands it the socket and it moves
    bytes as any pump does.
    """

    def __init__(
        self,
        owner: StreamOwner,
        stream_id: int,
        *,
        read_size: int = MAX_READ_SIZE,
        on_finished: Callable[[StreamPump], None] | None = None,
    ) -> None:
        super().__init__(owner, stream_id, read_size=read_size, on_finished=on_finished)
        self._received_before_reset: collections.deque[bytes | memoryview] = collections.deque()
        self._relaying = False
        self._finished_event = Event()
        self.tainted = False  # the target sent bytes beyond a response: do not reuse

    # -- called by the runner (reader greenlet: never blocks) -------------------------------

    def reset(self, code: int | None = None, reason: str = "") -> None:
        """RST from the client (``code``, ``reason``), or the session ended (no code). In the
        HTTP phase: wake the responder, which answers 502/503 from them; relaying: abort the
        socket as a tcp pump does."""
        if self._relaying:
            super().reset(code, reason)
            return
        if self._finished:
            return
        self.reset_code = code
        self.reset_reason = reason
        # DATA that came before the RST is still the target's answer (an app that answers 413
        # and closes mid-upload resets its connection): the responder may relay it yet.
        received_before = list(self._inbound)
        self._finish(abort=False)
        self._received_before_reset.extend(received_before)

    def _finish(self, *, abort: bool) -> None:
        if self._finished:
            return
        super()._finish(abort=abort)
        self._finished_event.set()

    # -- the HTTP phase -------------------------------------------------------------------------

    def reusable(self) -> bool:
        """True when the next request of the connection can go on this stream."""
        return (
            not self._finished
            and not self._peer_fin
            and not self._sent_fin
            and not self._inbound  # bytes nobody asked for: the target is not speaking HTTP
            and not self.tainted
        )

    def send_within_credit(self, data: bytes | bytearray | memoryview) -> int:
        """Send ``data`` on the stream, waiting for credit as needed. Returns its size.

        Raises:
            StreamGone: the stream was reset or finished meanwhile.
        """
        owner = self.owner
        stream_id = self.stream_id
        # The session keeps bytes as they are and would copy a writable buffer anyway.
        rest = data if isinstance(data, bytes) else bytes(data)
        size = len(rest)
        while rest:
            if self._finished:
                raise StreamGone()
            credit = owner.outbound_credit(stream_id)
            if credit <= 0:
                self._credit_changed.clear()
                if owner.outbound_credit(stream_id) <= 0 and not self._finished:
                    self._credit_changed.wait()
                continue
            if credit >= len(rest):
                owner.send_data(stream_id, rest)
                break
            owner.send_data(stream_id, rest[:credit])
            rest = rest[credit:]
        self.bytes_from_local += size
        return size

    def next_inbound(self) -> bytes | memoryview | None:
        """The next DATA from the client's side (the caller acknowledges it with
        :meth:`consumed` once written out); None at its FIN. After a reset, the DATA that came
        before it, then StreamGone.

        Raises:
            StreamGone: the stream was reset or finished.
        """
        inbound = self._inbound
        while True:
            if self._finished:
                if self._received_before_reset:
                    return self._received_before_reset.popleft()
                raise StreamGone()
            if inbound:
                return inbound.popleft()
            if self._peer_fin:
                return None
            self._inbound_ready.clear()
            if not inbound and not self._peer_fin and not self._finished:
                self._inbound_ready.wait()

    def wait_inbound(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for :meth:`next_inbound` to have something to say (DATA, the
        FIN, or the stream's end). False: nothing came meanwhile."""
        if self._inbound or self._peer_fin or self._finished:
            return True
        self._inbound_ready.clear()
        if self._inbound or self._peer_fin or self._finished:
            return True
        return bool(self._inbound_ready.wait(timeout_s))

    def consumed(self, size: int) -> None:
        """``size`` bytes from :meth:`next_inbound` are written out: give the credit back."""
        if size and not self._finished:
            self.bytes_to_local += size
            self.owner.acknowledge_data(self.stream_id, size, drained=not self._inbound)

    def abort(self, reason: str) -> None:
        """Reset the stream from our side (the request cannot go on)."""
        if self._finished:
            return
        self.owner.reset_stream(self.stream_id, ErrorCode.NORMAL, reason)
        self._finish(abort=False)

    def release(self) -> None:
        """The connection is done with the stream: FIN, then (in a greenlet) wait for the
        client's side to close it too, dropping whatever it still sends."""
        if self._finished or self._relaying:
            return
        if not self._sent_fin:
            self._sent_fin = True
            try:
                self.owner.send_data(self.stream_id, b"", end_stream=True)
            except LocalProtocolError:
                # The session dropped the stream meanwhile (it is closing): nothing left to end.
                self._finish(abort=False)
                return
        self.owner.spawn(self._linger)

    def _linger(self) -> None:
        deadline = time.monotonic() + LINGER_S
        inbound = self._inbound
        while not self._finished:
            if inbound:
                size = len(inbound.popleft())
                self.owner.acknowledge_data(self.stream_id, size, drained=not inbound)
                continue
            if self._peer_fin:
                self._finish(abort=False)
                return
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                self.abort("http: the stream was not closed in time after the connection ended")
                return
            self._inbound_ready.clear()
            if not inbound and not self._peer_fin:
                self._inbound_ready.wait(remaining_s)

    # -- after a 101 ----------------------------------------------------------------------------

    def start_relay(self, sock: socket.socket) -> None:
        """The protocol switched: move bytes between ``sock`` and the stream, as a tcp pump does.
        The stream now owns the socket and closes it when done."""
        self._relaying = True
        self.connect(sock)

    def wait_finished(self) -> None:
        self._finished_event.wait()


__all__ = ["HttpStream", "StreamGone"]
