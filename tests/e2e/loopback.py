"""Plain sockets on 127.0.0.1 for the e2e tests: listening sockets, free ports, dialing, exact and
to-EOF reads, an echo round trip, and :class:`TcpServer` (an accept thread and a thread per
connection) that the tests' TCP targets build on.

Blocking stdlib sockets and threads: the e2e test process is not monkeypatched. The read helpers
take any socket object, so the integration tests use them on gevent sockets too.
"""

from __future__ import annotations

import random
import socket
import threading

from tests.waiting import scaled_s

HOST = "127.0.0.1"


def listen_loopback(port: int = 0, backlog: int = 128) -> socket.socket:
    """A TCP socket listening on 127.0.0.1:``port`` (0: a free one), with SO_REUSEADDR."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen(backlog)
    except BaseException:
        listener.close()
        raise
    return listener


def free_port_candidate() -> int:
    """A port below the ephemeral range that is free right now (EXPOSE tests retry on a clash)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        probe = socket.socket()
        try:
            probe.bind((HOST, port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise RuntimeError("no free port found")


def reserved_dead_port() -> socket.socket:
    """A socket bound to a loopback port but not listening: connects to it are refused, and no one
    else can take the port while the socket is open. Close it when done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    return sock


def connect_local(port: int, timeout_s: float = 10.0, *, read_timeout_s: float = 60.0) -> socket.socket:
    """A connection to 127.0.0.1:``port`` (connect within ``timeout_s``), whose reads and writes
    then time out after ``read_timeout_s``; both scaled by TUNNEL_TEST_TIMEOUT_FACTOR."""
    sock = socket.create_connection((HOST, port), timeout=scaled_s(timeout_s))
    sock.settimeout(scaled_s(read_timeout_s))
    return sock


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """``size`` bytes; AssertionError on EOF before them."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def recv_until(sock: socket.socket, marker: bytes, chunk_size: int = 65536) -> bytes:
    """Read until ``marker`` has arrived; returns all that was read, which may go on past the
    marker (``chunk_size=1`` stops right after it). AssertionError on EOF before the marker."""
    data = b""
    while marker not in data:
        chunk = sock.recv(chunk_size)
        if not chunk:
            raise AssertionError(f"EOF before {marker!r}: {data!r}")
        data += chunk
    return data


def recv_until_eof(sock: socket.socket, chunk_size: int = 65536) -> bytes:
    """Everything until the peer's EOF."""
    data = bytearray()
    while chunk := sock.recv(chunk_size):
        data += chunk
    return bytes(data)


def round_trip(sock: socket.socket, payload: bytes) -> None:
    """Send ``payload`` on a connection to an echo target and assert it comes back as it was."""
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


class TcpServer:
    """A threaded TCP server on 127.0.0.1: one thread accepts, and each connection is handed to
    :meth:`serve` in a thread of its own. ``accepted`` counts connections; :meth:`close` closes the
    listener and every accepted connection.

    Subclasses implement :meth:`serve` (which closes the connection when it is done with it) and
    set their own attributes before calling ``super().__init__()``, which starts accepting.
    ``lock`` is a condition guarding ``accepted``, ``connections`` and whatever a subclass records.
    """

    def __init__(self, *, port: int = 0, backlog: int = 128) -> None:
        self.listener = listen_loopback(port, backlog)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.connections: list[socket.socket] = []
        self.lock = threading.Condition()
        threading.Thread(target=self._accept_loop, name=f"tcp-server:{self.port}", daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.connections.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.close()
                except OSError:
                    pass
