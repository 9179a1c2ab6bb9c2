"""Subprotocol negotiation: which hoody-tunnel version a WebSocket upgrade gets.

The version is the negotiated WebSocket subprotocol, not a header byte (docs/protocol.md §1.1, §2.1).
The client lists what it speaks in ``Sec-WebSocket-Protocol``; the server picks the highest
version it supports among those offered, comparing whole tokens. gevent-websocket's stock handler
matched by substring, so ``hoody-tunnel.v10`` passed for ``v1`` (docs/gevent-websocket.md §3);
here it never does.
"""

from __future__ import annotations

__all__ = ["SUPPORTED", "VERSIONS_HEADER", "VERSIONS_HEADER_VALUE", "choose_subprotocol"]

# Highest first: the order of preference.
SUPPORTED: tuple[str, ...] = ("hoody-tunnel.v2", "hoody-tunnel.v1")
# Sent with every refused upgrade (400) and with the 426 (docs/protocol.md §1.1).
VERSIONS_HEADER = "x-hoody-tunnel-versions"
VERSIONS_HEADER_VALUE = ", ".join(SUPPORTED)


def choose_subprotocol(header_value: str | None) -> str | None:
    """Pick the subprotocol to answer a ``Sec-WebSocket-Protocol`` offer with.

    Args:
        header_value: the header's value; several header lines joined with commas are fine.
            None or empty means nothing was offered.

    Returns:
        The highest supported version offered, compared as exact, case-sensitive tokens after
        splitting on commas and stripping whitespace (RFC 6455 §4.1: subprotocol names are
        tokens); None when none of the offered tokens is supported.
    """
    if not header_value:
        return None
    offered = {token.strip() for token in header_value.split(",")}
    for version in SUPPORTED:
        if version in offered:
            return version
    return None
