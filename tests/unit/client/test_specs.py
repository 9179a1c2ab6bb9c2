"""The CLI's --expose / --pull syntax (issue: the client)."""

from __future__ import annotations

import pytest

from tunnel.client.specs import ExposeSpec, PullSpec, SpecError, parse_expose, parse_pull
from tunnel.protocol.messages import BindMode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3000", ExposeSpec(3000, "127.0.0.1", 3000, BindMode.TCP)),
        ("3000:4000", ExposeSpec(3000, "127.0.0.1", 4000, BindMode.TCP)),
        ("8080:3000/http", ExposeSpec(8080, "127.0.0.1", 3000, BindMode.HTTP)),
        ("3000/tcp", ExposeSpec(3000, "127.0.0.1", 3000, BindMode.TCP)),
        ("3000:192.168.1.5:80", ExposeSpec(3000, "192.168.1.5", 80, BindMode.TCP)),
        ("3000:localhost:80/http", ExposeSpec(3000, "localhost", 80, BindMode.HTTP)),
        ("3000:[::1]:80", ExposeSpec(3000, "::1", 80, BindMode.TCP)),
    ],
)
def test_expose_forms(text: str, expected: ExposeSpec) -> None:
    assert parse_expose(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5432", PullSpec("127.0.0.1", 5432, 5432)),
        ("15432:5432", PullSpec("127.0.0.1", 15432, 5432)),
        ("0.0.0.0:15432:5432", PullSpec("0.0.0.0", 15432, 5432)),
        ("localhost:5432", PullSpec("localhost", 5432, 5432)),
        ("[::1]:15432:5432", PullSpec("::1", 15432, 5432)),
    ],
)
def test_pull_forms(text: str, expected: PullSpec) -> None:
    assert parse_pull(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "0", "70000", "3000/udp", "3000:", "3000:host:", "-1", "3000:x:y"])
def test_bad_expose_names_the_value(text: str) -> None:
    with pytest.raises(SpecError, match=repr(text).replace("[", r"\[")):
        parse_expose(text)


@pytest.mark.parametrize("text", ["", "x", "1:2:3:4", "15432:abc", "[::1]15432", "65536", ":80"])
def test_bad_pull_names_the_value(text: str) -> None:
    with pytest.raises(SpecError):
        parse_pull(text)


def test_describe_matches_the_summary_format() -> None:
    assert parse_expose("3000").describe() == "container :3000 -> 127.0.0.1:3000 (tcp)"
    assert parse_pull("15432:5432").describe() == "127.0.0.1:15432 -> container :5432"


def test_pull_local_port_zero_means_any() -> None:
    assert parse_pull("0:5432") == PullSpec("127.0.0.1", 0, 5432)
    with pytest.raises(SpecError):
        parse_pull("0")  # the container port cannot be 0
