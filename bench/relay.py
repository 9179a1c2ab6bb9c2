"""A plain gevent TCP relay: ``python -m bench.relay FD:HOST:PORT [FD:HOST:PORT ...]``.

The reference the bench calls ``gevent chain``: two of these processes, one after the other
(client -> relay A -> relay B -> target), are the floor of any two-process gevent tunnel -- no
framing, no multiplexing, no flow control of its own: accept, dial the next hop, and one
greenlet per direction copying with ``recv_into``/``sendall``, TCP_NODELAY on both sockets.

Each argument is an inherited listening socket (the parent bound it to port 0, so there is no
port race) and the address every connection accepted on it is relayed to. EOF one way is passed
on as a half-close (``shutdown(SHUT_WR)``); the connection closes once both ways have ended.
The process exits when its stdin reaches EOF, i.e. when the bench that started it goes away.
"""

from __future__ import annotations

import sys
from typing import Callable

BUFFER_SIZE = 64 * 1024
DIAL_TIMEOUT_S = 10.0


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.relay FD:HOST:PORT [FD:HOST:PORT ...]", file=sys.stderr)
        return 2
    import gevent
    from gevent import socket
    from gevent.server import StreamServer

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(view)
                if not n:
                    break
                dst.sendall(view[:n])
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def serve(next_hop: tuple[str, int]) -> Callable[[socket.socket, object], None]:
        def handle(conn: socket.socket, _address: object) -> None:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream = socket.create_connection(next_hop, timeout=DIAL_TIMEOUT_S)
            except OSError as exc:
                print(f"bench.relay: dial {next_hop}: {exc}", file=sys.stderr, flush=True)
                conn.close()
                return
            upstream.settimeout(None)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = gevent.spawn(pipe, upstream, conn)
            try:
                pipe(conn, upstream)
                back.join()
            finally:
                back.kill()
                upstream.close()
                conn.close()

        return handle

    servers: list[StreamServer] = []
    for spec in argv:
        fd, host, port = spec.split(":")
        listener = socket.socket(fileno=int(fd))
        server = StreamServer(listener, serve((host, int(port))))
        server.start()
        servers.append(server)
    print("bench.relay: serving", flush=True)
    # Exit when the bench that started us goes away (stdin EOF), even if it was SIGKILLed.
    gevent.get_hub().threadpool.spawn(sys.stdin.buffer.read).get()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
