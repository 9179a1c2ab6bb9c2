"""The TCP target every path reaches: ``python -m bench.target SINK_FD SOURCE_FD ECHO_FD``.

Three listeners, inherited as already listening sockets (the parent bound them to port 0, so
there is no port race), one per mode; one thread per connection with plain blocking sockets:

sink    the client sends an 8-byte big-endian length N, then N bytes; the target reads them
        and answers with the 8-byte count it received. Upload time ends when that answer
        arrives, so it measures delivery, not just buffering.
source  the client sends an 8-byte length N; the target sends N bytes.
echo    everything read is written back, until EOF.

No mode needs a half-close, which a tunnel may not carry. The process exits when its stdin
reaches EOF, i.e. when the bench that started it goes away, even if the bench was SIGKILLed.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading

LENGTH = struct.Struct("!Q")
CHUNK_SIZE = 1 << 20
ECHO_BUFFER_SIZE = 256 * 1024
# A connection idle this long is dead (a failed bench run); its thread gives up.
IDLE_TIMEOUT_S = 300.0


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("EOF before the length header")
        data += chunk
    return bytes(data)


def _wait_eof(conn: socket.socket) -> None:
    while conn.recv(65536):
        pass


def handle_sink(conn: socket.socket) -> None:
    (size,) = LENGTH.unpack(_recv_exact(conn, LENGTH.size))
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    received = 0
    while received < size:
        n = conn.recv_into(view, min(CHUNK_SIZE, size - received))
        if n == 0:
            break
        received += n
    conn.sendall(LENGTH.pack(received))
    _wait_eof(conn)


def handle_source(conn: socket.socket, block: bytes) -> None:
    (size,) = LENGTH.unpack(_recv_exact(conn, LENGTH.size))
    view = memoryview(block)
    remaining = size
    while remaining > 0:
        n = min(remaining, len(view))
        conn.sendall(view[:n])
        remaining -= n
    _wait_eof(conn)


def handle_echo(conn: socket.socket) -> None:
    buf = bytearray(ECHO_BUFFER_SIZE)
    view = memoryview(buf)
    while True:
        n = conn.recv_into(view)
        if n == 0:
            return
        conn.sendall(view[:n])


def _serve_connection(mode: str, conn: socket.socket, block: bytes) -> None:
    try:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(IDLE_TIMEOUT_S)
        if mode == "sink":
            handle_sink(conn)
        elif mode == "source":
            handle_source(conn, block)
        else:
            handle_echo(conn)
    except OSError:
        pass  # the peer went away (a failed or aborted measurement): nothing to report here
    finally:
        conn.close()


def _accept_loop(mode: str, listener: socket.socket, block: bytes) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            print(f"bench.target: accept on {mode} failed: {exc}", file=sys.stderr, flush=True)
            continue
        threading.Thread(target=_serve_connection, args=(mode, conn, block), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m bench.target SINK_FD SOURCE_FD ECHO_FD", file=sys.stderr)
        return 2
    block = os.urandom(CHUNK_SIZE)
    threading.stack_size(512 * 1024)
    for mode, fd in zip(("sink", "source", "echo"), argv):
        listener = socket.socket(fileno=int(fd))
        listener.setblocking(True)
        threading.Thread(target=_accept_loop, args=(mode, listener, block), daemon=True).start()
    print("bench.target: serving", flush=True)
    sys.stdin.buffer.read()  # returns at EOF: the bench has gone
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
