"""Sockets of streams, shared by the kit and the client: outgoing TCP connections (PULL on the
kit, EXPOSE on the client) and ``send_all``, the whole-buffer write of stream and WebSocket sockets.

``gevent.socket.create_connection`` resolves every host through gevent's resolver, by default a
thread pool: even ``127.0.0.1`` costs a thread hand-off per connection, which showed up as the
largest item in a connection-setup profile. An IP literal needs no resolution, so it is
connected directly; names still go through the resolver.
"""

from __future__ import annotations

import ipaddress
import socket

from gevent import socket as gsocket


def connect_tcp(host: str, port: int, *, timeout_s: float) -> socket.socket:
    """Connect to ``host:port``; the returned socket is blocking (no timeout).

    Raises:
        OSError: the connection failed (refused, unreachable, timed out: TimeoutError).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        sock = gsocket.create_connection((host, port), timeout=timeout_s)
    else:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = gsocket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
    sock.settimeout(None)
    return sock


def send_all(sock: socket.socket, data: bytes | bytearray | memoryview) -> None:
    """``sock.sendall(data)`` without gevent's per-call cost when one ``send`` takes it all.

    gevent's ``sendall`` asks the kernel for ``SO_SNDBUF`` on every call (a ``getsockopt``
    syscall: 4 % of the kit's CPU in an HTTP-mode profile); a first plain ``send`` usually takes
    the whole of a small write, and only a partial one falls back to ``sendall``.

    Raises:
        OSError: as ``sendall``.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])
