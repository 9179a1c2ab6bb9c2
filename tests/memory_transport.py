"""An in-memory :class:`~tunnel.mux.transport.Transport` for the driver layer's unit tests.

Two ends made by :func:`transport_pair` pass whole binary messages to each other through gevent
queues, with the Transport's semantics: ``close`` is idempotent and tells the other end with a
close code, ``abort`` drops without one, a closed end's ``receive_message`` and ``send_messages``
raise :class:`~tunnel.mux.transport.ConnectionClosed`. No socket, no WebSocket framing: what the
runner, the pumps and the kit's session do on top of it is what these tests look at.

Stalling: :meth:`MemoryTransport.hold` makes ``send_messages`` block (as a real send blocks on a
full socket buffer) until :meth:`MemoryTransport.release`; ``send_blocked`` tells a test that a
writer is waiting there. A send still waiting when its end is closed fails with
ConnectionClosed, as a real write on a closed socket does. ``stalled`` instead makes every send
fail at once with SendTimeout (a peer that never reads, after the send timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from gevent.event import Event
from gevent.queue import Queue

from tunnel.mux.transport import ConnectionClosed, SendTimeout


@dataclass(frozen=True)
class _Closed:
    code: int | None
    reason: str


class MemoryTransport:
    """One end of an in-memory WebSocket."""

    def __init__(self, subprotocol: str = "hoody-tunnel.v2", *, name: str = "memory") -> None:
        self._subprotocol = subprotocol
        self.name = name
        self.peer: MemoryTransport | None = None
        self.inbox: Queue[bytes | _Closed] = Queue()
        self.sent: list[bytes] = []  # every message this end sent, in order
        self.close_code_sent: int | None = None
        self.closed = Event()  # set once this end closed or aborted
        self.aborted = False
        self._close_code_received: int | None = None
        self.stalled = False  # while True, send_messages raises SendTimeout (a peer that never reads)
        self._gate = Event()  # cleared by hold(): sends wait until release()
        self._gate.set()
        self.send_blocked = Event()  # set while a send waits at the held gate

    # -- Transport ----------------------------------------------------------------------------

    @property
    def subprotocol(self) -> str:
        return self._subprotocol

    @property
    def peer_address(self) -> str:
        return "127.0.0.1:1"

    @property
    def local_address(self) -> str:
        return "127.0.0.1:2"

    @property
    def close_code_received(self) -> int | None:
        return self._close_code_received

    def receive_message(self) -> bytes | bytearray:
        if self.closed.is_set():
            raise ConnectionClosed(None, "closed locally")
        item = self.inbox.get()
        if isinstance(item, _Closed):
            self._close_code_received = item.code
            self.inbox.put(item)  # every later call sees the end too
            raise ConnectionClosed(item.code, item.reason)
        return item

    def send_messages(self, messages: list[bytes]) -> None:
        if self.closed.is_set():
            raise ConnectionClosed(None, "closed locally")
        if self.stalled:
            raise SendTimeout(0.0)
        while not self._gate.is_set():
            self.send_blocked.set()
            self._gate.wait()
            self.send_blocked.clear()
            if self.closed.is_set():
                raise ConnectionClosed(None, "closed locally while sending")
        for message in messages:
            self.sent.append(bytes(message))
            if self.peer is not None and not self.peer.closed.is_set():
                self.peer.inbox.put(bytes(message))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed.is_set():
            return
        self.close_code_sent = code
        self.closed.set()
        self._gate.set()  # a send waiting at the gate fails now (closed)
        if self.peer is not None:
            self.peer.inbox.put(_Closed(code, reason))

    def abort(self) -> None:
        if self.closed.is_set():
            return
        self.aborted = True
        self.closed.set()
        self._gate.set()
        if self.peer is not None:
            self.peer.inbox.put(_Closed(None, "connection reset"))

    # -- for tests -------------------------------------------------------------------------------

    def hold(self) -> None:
        """From now on ``send_messages`` blocks (a full send buffer) until :meth:`release`."""
        self._gate.clear()

    def release(self) -> None:
        """Let held and later sends through."""
        self._gate.set()

    def inject(self, message: bytes) -> None:
        """Deliver ``message`` to this end as if its peer sent it."""
        self.inbox.put(message)


def transport_pair(subprotocol: str = "hoody-tunnel.v2") -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends: (client's, kit's)."""
    client = MemoryTransport(subprotocol, name="client")
    server = MemoryTransport(subprotocol, name="kit")
    client.peer, server.peer = server, client
    return client, server
