"""The BIND "hostHeader" key (protocol) and the CLI's --host-header (client specs)."""

from __future__ import annotations

import json

import pytest

from tunnel.client.specs import SpecError, apply_host_header, parse_expose
from tunnel.protocol import BindKind, BindMode, BindRequest
from tunnel.protocol.frames import BindFrame, decode_message, encode_frame
from tunnel.protocol.payloads import validate_bind_values


def test_bind_frame_carries_host_header_both_ways() -> None:
    frame = BindFrame.from_request(BindRequest(1, BindKind.EXPOSE, 8080, BindMode.HTTP, "127.0.0.1:3000"))
    wire = encode_frame(frame)
    assert json.loads(wire[10:]) == {"reqId": 1, "kind": "EXPOSE", "port": 8080, "mode": "http", "hostHeader": "127.0.0.1:3000"}
    assert decode_message(wire, max_frame_size=1 << 20, version=2) == [frame]


def test_bind_without_host_header_is_unchanged_on_the_wire() -> None:
    frame = BindFrame(1, "EXPOSE", 8080, "tcp")
    assert json.loads(encode_frame(frame)[10:]) == {"reqId": 1, "kind": "EXPOSE", "port": 8080, "mode": "tcp"}


def test_validate_host_header() -> None:
    ok = validate_bind_values(1, "EXPOSE", 8080, "http", "api.local:9000")
    assert isinstance(ok, BindRequest) and ok.host_header == "api.local:9000"
    ignored = validate_bind_values(1, "EXPOSE", 8080, "tcp", "api.local")
    assert isinstance(ignored, BindRequest) and ignored.host_header is None
    for bad in ("", "has space", "x" * 256, 42, "tab\there", "é"):
        text = validate_bind_values(1, "EXPOSE", 8080, "http", bad)
        assert isinstance(text, str) and text.startswith("port 8080: hostHeader must be"), text


def test_cli_host_header_rewrite_and_literal() -> None:
    exposes = [parse_expose("8080:3000/http"), parse_expose("9000:[::1]:4000/http"), parse_expose("5432")]
    rewritten = apply_host_header(exposes, "rewrite")
    assert [e.host_header for e in rewritten] == ["127.0.0.1:3000", "[::1]:4000", None]
    assert rewritten[0].describe() == "container :8080 -> 127.0.0.1:3000 (http, Host: 127.0.0.1:3000)"
    assert apply_host_header(exposes, "app.test")[0].host_header == "app.test"
    assert parse_expose("8080:3000/http").describe() == "container :8080 -> 127.0.0.1:3000 (http)"


@pytest.mark.parametrize("value", ["", "a b", "x" * 300])
def test_cli_host_header_refuses_bad_values(value: str) -> None:
    with pytest.raises(SpecError):
        apply_host_header([parse_expose("8080:3000/http")], value)


def test_cli_host_header_needs_an_http_expose() -> None:
    with pytest.raises(SpecError, match="needs an --expose"):
        apply_host_header([parse_expose("8080:3000")], "rewrite")
