"""Parsing of the CLI's ``--expose`` and ``--pull`` arguments (pure, no I/O).

``--expose CONTAINER_PORT[:[LOCAL_HOST:]LOCAL_PORT][/tcp|/http]``
    the kit listens on CONTAINER_PORT and forwards each connection to LOCAL_HOST:LOCAL_PORT on
    this machine (default 127.0.0.1 and the same port, mode tcp).
``--host-header rewrite|VALUE``
    for every ``/http`` expose, the Host header the kit sets on each request: ``rewrite`` sends
    the local target (``LOCAL_HOST:LOCAL_PORT``), anything else is sent as it is
    (docs/http-mode.md).
``--pull [BIND_HOST:]LOCAL_PORT[:CONTAINER_PORT]``
    this machine listens on BIND_HOST:LOCAL_PORT (default 127.0.0.1) and forwards each connection
    to CONTAINER_PORT in the container (default the same port). ``0:CONTAINER_PORT`` lets the OS
    pick the local port.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tunnel.protocol.messages import BindMode
from tunnel.protocol import TunnelError

#: ``--host-header rewrite``: the Host becomes the local target.
HOST_HEADER_REWRITE = "rewrite"


class SpecError(TunnelError, ValueError):
    """A malformed --expose/--pull value; the message is for the user."""


@dataclass(frozen=True, slots=True)
class ExposeSpec:
    container_port: int
    local_host: str
    local_port: int
    mode: BindMode
    host_header: str | None = None  # http mode: the Host the kit sets (None: unchanged)

    def describe(self) -> str:
        mode = self.mode.value if self.host_header is None else f"{self.mode.value}, Host: {self.host_header}"
        return f"container :{self.container_port} -> {_hostport(self.local_host, self.local_port)} ({mode})"


@dataclass(frozen=True, slots=True)
class PullSpec:
    bind_host: str
    local_port: int
    container_port: int

    def describe(self) -> str:
        return f"{_hostport(self.bind_host, self.local_port)} -> container :{self.container_port}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(text: str, what: str, spec: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if not text.isdigit() or not low <= int(text) <= 65535:
        raise SpecError(f"{spec!r}: {what} must be a port number from {low} to 65535, got {text!r}")
    return int(text)


def _split_host(text: str, spec: str) -> tuple[str | None, str]:
    """Split ``[HOST:]PORT`` (HOST may be ``[v6]``)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise SpecError(f"{spec!r}: expected [IPV6]:PORT")
        return text[1:end], text[end + 2 :]
    if ":" in text:
        host, _, port = text.rpartition(":")
        if not host:
            raise SpecError(f"{spec!r}: empty host")
        return host, port
    return None, text


def parse_expose(spec: str) -> ExposeSpec:
    """Parse one ``--expose`` value.

    Raises:
        SpecError: with a message naming the value and what is wrong.
    """
    body, mode = spec, BindMode.TCP
    if "/" in spec:
        body, _, mode_text = spec.rpartition("/")
        try:
            mode = BindMode(mode_text)
        except ValueError:
            raise SpecError(f"{spec!r}: mode must be tcp or http, got {mode_text!r}") from None
    container_text, sep, local = body.partition(":")
    container_port = _port(container_text, "CONTAINER_PORT", spec)
    if not sep:
        return ExposeSpec(container_port, "127.0.0.1", container_port, mode)
    host, port_text = _split_host(local, spec)
    return ExposeSpec(container_port, host or "127.0.0.1", _port(port_text, "LOCAL_PORT", spec), mode)


def parse_pull(spec: str) -> PullSpec:
    """Parse one ``--pull`` value.

    Raises:
        SpecError: with a message naming the value and what is wrong.
    """
    host: str | None = None
    text = spec
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise SpecError(f"{spec!r}: expected [IPV6]:LOCAL_PORT[:CONTAINER_PORT]")
        host, text = text[1:end], text[end + 2 :]
    parts = text.split(":")
    if host is None and (len(parts) == 3 or (len(parts) == 2 and not parts[0].isdigit())):
        host, parts = parts[0], parts[1:]  # BIND_HOST:LOCAL_PORT[:CONTAINER_PORT]
        if not host:
            raise SpecError(f"{spec!r}: empty BIND_HOST")
    bind_host = host or "127.0.0.1"
    if len(parts) == 1:
        port = _port(parts[0], "LOCAL_PORT", spec)
        return PullSpec(bind_host, port, port)
    if len(parts) == 2:
        # LOCAL_PORT 0: the OS picks a free port; the summary line shows which.
        local_port = _port(parts[0], "LOCAL_PORT", spec, allow_zero=True)
        return PullSpec(bind_host, local_port, _port(parts[1], "CONTAINER_PORT", spec))
    raise SpecError(f"{spec!r}: expected [BIND_HOST:]LOCAL_PORT[:CONTAINER_PORT]")


def apply_host_header(exposes: list[ExposeSpec], value: str) -> list[ExposeSpec]:
    """Give every ``/http`` expose the Host that ``--host-header value`` asks for.

    Raises:
        SpecError: no ``/http`` expose, or a value that cannot be a Host header (1 to 255
            visible ASCII characters).
    """
    if not any(expose.mode is BindMode.HTTP for expose in exposes):
        raise SpecError("--host-header needs an --expose ending in /http")
    if not (0 < len(value) <= 255 and all("\x21" <= ch <= "\x7e" for ch in value)):
        raise SpecError(f"--host-header: must be 'rewrite' or a Host value (visible ASCII, no spaces), got {value!r}")
    return [
        dataclasses.replace(
            expose,
            host_header=_hostport(expose.local_host, expose.local_port) if value == HOST_HEADER_REWRITE else value,
        )
        if expose.mode is BindMode.HTTP
        else expose
        for expose in exposes
    ]
