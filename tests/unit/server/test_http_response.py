"""The response side's socket helpers (a socketpair, no tunnel)."""

from __future__ import annotations

import socket

from gevent import socket as gsocket

from tunnel.server.http_response import client_left


def test_client_left_peeks_without_consuming_or_blocking() -> None:
    ours, theirs = gsocket.socketpair()
    assert client_left(ours) is False  # nothing sent: still there, and no wait
    assert ours.gettimeout() is None  # left blocking, as the connection uses it
    theirs.sendall(b"GET")
    assert client_left(ours) is False  # a pipelined request is no departure
    assert ours.recv(3) == b"GET"  # and it was not consumed
    theirs.shutdown(socket.SHUT_WR)
    assert client_left(ours) is True
    theirs.close()
    ours.close()
    assert client_left(ours) is True  # closed here: nothing left to wait for
