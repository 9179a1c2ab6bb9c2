"""An in-memory :class:`~tunnel.mux.transport.Transport` for the driver layer's unit tests.

Two ends made by :func:`transport_pair` pass whole binary messages to each other through gevent
queues, with the Transport's semantics: ``close`` is idempotent and tells the other end with a
close code, ``abort`` drops without one, a closed end's ``receive_message`` and ``send_messages``
raise :class:`~tunnel.mux.transport.ConnectionClosed`. No socket, no WebSocket framing: what the
runner, the pumps and the kit's session do on top of it is what these tests look at.
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
        for message in messages:
            self.sent.append(bytes(message))
            if self.peer is not None and not self.peer.closed.is_set():
                self.peer.inbox.put(bytes(message))

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed.is_set():
            return
        self.close_code_sent = code
        self.closed.set()
        if self.peer is not None:
            self.peer.inbox.put(_Closed(code, reason))

    def abort(self) -> None:
        if self.closed.is_set():
            return
        self.aborted = True
        self.closed.set()
        if self.peer is not None:
            self.peer.inbox.put(_Closed(None, "connection reset"))

    # -- for tests -------------------------------------------------------------------------------

    def inject(self, message: bytes) -> None:
        """Deliver ``message`` to this end as if its peer sent it."""
        self.inbox.put(message)


def transport_pair(subprotocol: str = "hoody-tunnel.v2") -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends: (client's, kit's)."""
    client = MemoryTransport(subprotocol, name="client")
    server = MemoryTransport(subprotocol, name="kit")
    client.peer, server.peer = server, client
    return client, server
