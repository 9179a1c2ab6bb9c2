from __future__ import annotations

import pytest

from tunnel.protocol.versions import (
    SUPPORTED,
    VERSIONS_HEADER,
    VERSIONS_HEADER_VALUE,
    choose_subprotocol,
)


def test_supported_versions_highest_first() -> None:
    assert SUPPORTED == ("hoody-tunnel.v2", "hoody-tunnel.v1")
    assert VERSIONS_HEADER_VALUE == "hoody-tunnel.v2, hoody-tunnel.v1"
    assert VERSIONS_HEADER == "x-hoody-tunnel-versions"


@pytest.mark.parametrize(
    ("offer", "chosen"),
    [
        ("hoody-tunnel.v2", "hoody-tunnel.v2"),
        ("hoody-tunnel.v1", "hoody-tunnel.v1"),
        # The highest supported version wins, whatever the client's order.
        ("hoody-tunnel.v1, hoody-tunnel.v2", "hoody-tunnel.v2"),
        ("hoody-tunnel.v2,hoody-tunnel.v1", "hoody-tunnel.v2"),
        ("chat, hoody-tunnel.v1", "hoody-tunnel.v1"),
        ("  hoody-tunnel.v1  ,\thoody-tunnel.v9 ", "hoody-tunnel.v1"),
        # Several header lines arrive joined with commas.
        ("hoody-tunnel.v1, chat, hoody-tunnel.v2", "hoody-tunnel.v2"),
    ],
)
def test_chooses_the_highest_offered(offer: str, chosen: str) -> None:
    assert choose_subprotocol(offer) == chosen


@pytest.mark.parametrize(
    "offer",
    [
        None,
        "",
        " , ",
        "chat",
        # Exact tokens only, never substrings (docs/gevent-websocket.md §3).
        "hoody-tunnel.v10",
        "hoody-tunnel.v10, hoody-tunnel.v20",
        "hoody-tunnel.v1.1",
        "xhoody-tunnel.v1",
        "hoody-tunnel.v",
        "hoody-tunnel",
        # Subprotocol names are case-sensitive tokens (RFC 6455 §4.1).
        "HOODY-TUNNEL.V1",
        "hoody-tunnel.v1;q=1",
        "hoody-tunnel.v1 hoody-tunnel.v2",
    ],
)
def test_refuses_anything_not_exactly_supported(offer: str | None) -> None:
    assert choose_subprotocol(offer) is None
