"""Moves bytes between one local TCP socket and one tunnel stream, honouring credit.

Theory of operation
-------------------
A :class:`StreamPump` exists from the moment a stream is known to the driver (opened by us, or
announced by the peer), even before its local socket is connected: DATA that arrives early is held
in ``_inbound`` (the peer's credit bounds it to one window, docs/protocol.md §7.1 "early data").
Once :meth:`StreamPump.connect` hands it a socket, two greenlets run, spawned through its
:class:`StreamOwner` (the runner), so an unexpected exception in either fails the session:

* the *upstream* greenlet reads the local socket, but never more than the stream's send credit,
  and passes the bytes to ``Session.send_data``. With no credit it waits on ``_credit_changed``,
  which the runner sets on ``WindowUpdated``. Local EOF becomes an empty DATA with FIN.
* the *downstream* greenlet writes what the reader greenlet queued with :meth:`deliver` to the
  local socket, and only then acknowledges it (``Session.acknowledge_data``), so the WINDOW the
  peer gets reflects bytes really written (docs/protocol.md §8). The peer's FIN becomes ``shutdown(SHUT_WR)``.

The runner's reader greenlet never blocks on a local socket, so one slow local reader never stalls
other streams. When the downstream greenlet is idle (nothing queued, nothing being written), the
reader offers the DATA to the local socket itself with a non-blocking ``send`` and acknowledges
what the kernel took; only the rest is queued for the downstream greenlet. A small message then
reaches the local app without a greenlet switch, and the order of bytes is kept because nothing
else is queued or in flight for the socket at that moment.

The stream is finished when both directions have carried their FIN, or on reset; then the socket
is closed and ``on_finished`` runs exactly once (the owner releases its FD permit there).

A pump knows its session only through :class:`StreamOwner`, a small interface declared here and
implemented by :class:`~tunnel.mux.runner.SessionRunner`: the pump never reaches the protocol
session or the greenlet group itself.
"""

from __future__ import annotations

import collections
import errno
import logging
import socket
import struct
from typing import Callable, Protocol

import gevent
from gevent.event import Event

from tunnel.mux.dialing import send_all
from tunnel.protocol import ErrorCode

log = logging.getLogger(__name__)

#: Largest single recv from a local socket. Bigger reads amortise per-frame Python overhead;
#: credit (one window) caps it anyway.
MAX_READ_SIZE = 256 * 1024
MIN_READ_SIZE = 16 * 1024

_LINGER_ABORT = struct.pack("ii", 1, 0)


def read_size_for(peer_window_size: int) -> int:
    """How much a pump reads from its local socket at a time, given the peer's window.

    At most half the window, so credit comes back in pieces while the rest is in flight
    (pipelining) instead of stop-and-wait per window; within [MIN_READ_SIZE, MAX_READ_SIZE].
    """
    return max(MIN_READ_SIZE, min(MAX_READ_SIZE, (peer_window_size or MAX_READ_SIZE) // 2))


class StreamOwner(Protocol):
    """What a pump needs from the driver of its session (:class:`~tunnel.mux.runner.SessionRunner`).

    Every call is a session command or query for one stream; none blocks.
    """

    def outbound_credit(self, stream_id: int) -> int:
        """Bytes the stream may send now."""

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Queue DATA (FIN with ``end_stream``) and wake the writer."""

    def acknowledge_data(self, stream_id: int, size: int, *, drained: bool = False) -> None:
        """``size`` bytes were written to the local socket: credit the peer."""

    def reset_stream(self, stream_id: int, code: int, reason: str = "") -> None:
        """Queue RST for the stream."""

    def spawn(self, func: Callable[..., object], *args: object) -> gevent.Greenlet[..., object]:
        """Start a greenlet in the session's group; an unexpected exception fails the session."""


class StreamPump:
    """One stream's byte mover. Created by :meth:`~tunnel.mux.runner.SessionRunner.open_stream`
    or when the peer opens a stream, and driven by the runner."""

    def __init__(
        self,
        owner: StreamOwner,
        stream_id: int,
        *,
        read_size: int = MAX_READ_SIZE,
        on_finished: Callable[[StreamPump], None] | None = None,
    ) -> None:
        self.owner = owner
        self.stream_id = stream_id
        self.sock: socket.socket | None = None
        self._on_finished = on_finished
        self._inbound: collections.deque[bytes | memoryview] = collections.deque()
        self._inbound_ready = Event()
        self._credit_changed = Event()
        self._peer_fin = False  # the peer sent FIN: after _inbound drains, SHUT_WR the socket
        self._sent_fin = False  # we sent FIN (local EOF)
        self._wrote_fin = False  # we shut down the local write side
        self._finished = False
        #: The downstream greenlet waits for DATA with nothing in hand: the reader may write to
        #: the socket directly (see the module docstring).
        self._downstream_idle = False
        self._greenlets: list[gevent.Greenlet[..., object]] = []
        self.bytes_to_local = 0
        self.bytes_from_local = 0
        self.read_size = read_size
        #: Why the stream was reset: the RST's code and text; None after :meth:`reset` without a
        #: code (the session ended under the stream).
        self.reset_code: int | None = None
        self.reset_reason = ""

    # -- called by the runner's reader greenlet: never blocks --------------------------------

    def deliver(self, data: bytes | memoryview) -> None:
        """DATA from the peer for the local socket: written at once when the socket takes it
        without blocking and nothing is ahead of it, else queued for the downstream greenlet."""
        if self._finished:
            return
        if self._downstream_idle and not self._inbound:
            sock = self.sock
            assert sock is not None  # the downstream greenlet runs only once connected
            try:
                sent = sock.send(data, 0, timeout=0.0)  # type: ignore[call-arg]  # gevent: never wait
            except OSError:
                sent = 0  # full (EAGAIN) or failed: the downstream greenlet writes, or sees the error
            if sent:
                self.bytes_to_local += sent
                self.owner.acknowledge_data(self.stream_id, sent, drained=sent == len(data))
                if sent == len(data):
                    return
                data = memoryview(data)[sent:]
        self._inbound.append(data)
        self._inbound_ready.set()

    def deliver_eof(self) -> None:
        """The peer sent FIN."""
        self._peer_fin = True
        self._inbound_ready.set()

    def credit_changed(self) -> None:
        """The peer granted credit (WINDOW)."""
        self._credit_changed.set()

    def reset(self, code: int | None = None, reason: str = "") -> None:
        """The stream was reset: abort the local connection.

        Args:
            code: the RST's error code (sent by the peer, or by our session); None when the
                session ended under the stream.
            reason: the RST's text.
        """
        if not self._finished:
            self.reset_code = code
            self.reset_reason = reason
        self._finish(abort=True)

    # -- lifecycle ------------------------------------------------------------------------------

    def connect(self, sock: socket.socket) -> None:
        """Start moving bytes over ``sock`` (already connected). Takes ownership of it."""
        if self._finished:
            _close_quietly(sock, abort=True)
            return
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._greenlets = [
            self.owner.spawn(self._upstream_loop),
            self.owner.spawn(self._downstream_loop),
        ]

    @property
    def finished(self) -> bool:
        return self._finished

    def _finish(self, *, abort: bool) -> None:
        if self._finished:
            return
        self._finished = True
        self._inbound.clear()
        current = gevent.getcurrent()
        for greenlet in self._greenlets:
            if greenlet is not current:
                greenlet.kill(block=False)
        if self.sock is not None:
            _close_quietly(self.sock, abort=abort)
        # Wake anything still parked on our events so killed loops exit promptly.
        self._inbound_ready.set()
        self._credit_changed.set()
        if self._on_finished is not None:
            self._on_finished(self)

    def _maybe_done(self) -> None:
        if self._sent_fin and self._wrote_fin:
            self._finish(abort=False)

    # -- greenlets --------------------------------------------------------------------------------

    def _upstream_loop(self) -> None:
        """Local socket -> stream, within credit."""
        assert self.sock is not None
        owner = self.owner
        sid = self.stream_id
        sock = self.sock
        while not self._finished:
            credit = owner.outbound_credit(sid)
            if credit <= 0:
                self._credit_changed.clear()
                if owner.outbound_credit(sid) <= 0:
                    self._credit_changed.wait()
                continue
            try:
                data = sock.recv(min(credit, self.read_size))
            except OSError as exc:
                self._local_failed("read", exc)
                return
            if self._finished:
                return
            if not data:
                self._sent_fin = True
                owner.send_data(sid, b"", end_stream=True)
                self._maybe_done()
                return
            self.bytes_from_local += len(data)
            owner.send_data(sid, data)

    def _downstream_loop(self) -> None:
        """Stream -> local socket; acknowledge only what was written."""
        assert self.sock is not None
        sock = self.sock
        inbound = self._inbound
        while not self._finished:
            if not inbound:
                if self._peer_fin:
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError as exc:
                        # The local peer already closed: nothing left to tell it.
                        if exc.errno not in (errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET):
                            self._local_failed("shutdown", exc)
                            return
                    self._wrote_fin = True
                    self._maybe_done()
                    return
                self._inbound_ready.clear()
                if not inbound and not self._peer_fin:
                    self._downstream_idle = True
                    try:
                        self._inbound_ready.wait()
                    finally:
                        self._downstream_idle = False
                continue
            chunk = inbound.popleft()
            try:
                send_all(sock, chunk)
            except OSError as exc:
                self._local_failed("write", exc)
                return
            size = len(chunk)
            self.bytes_to_local += size
            self.owner.acknowledge_data(self.stream_id, size, drained=not inbound)

    def _local_failed(self, what: str, exc: OSError) -> None:
        if self._finished:
            return
        log.debug("stream %d: local %s failed: %s", self.stream_id, what, exc)
        self.owner.reset_stream(
            self.stream_id, ErrorCode.CONNECT_FAILED, f"local connection {what} failed: {exc.strerror or exc}"
        )
        self._finish(abort=True)


def _close_quietly(sock: socket.socket, *, abort: bool) -> None:
    """Close a local socket; ``abort`` sends a TCP RST so the local app sees the failure."""
    try:
        if abort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
    except OSError:
        pass  # already dead: close() below is all that is left to do
    sock.close()
