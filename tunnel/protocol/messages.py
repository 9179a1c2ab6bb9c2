"""Typed contents of the JSON control frames (HELLO, WELCOME, BIND, BIND_OK).

Parsing and validation of the JSON lives with the codec; these are the values handed around.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class BindKind(str, Enum):
    """What a binding does: EXPOSE (server listens, opens streams) or PULL (client opens)."""

    EXPOSE = "EXPOSE"
    PULL = "PULL"


class BindMode(str, Enum):
    """How a binding forwards: ``tcp`` (bytes as they are) or ``http`` (the kit parses HTTP/1.1
    request by request and adds forwarding headers: docs/http-mode.md)."""

    TCP = "tcp"
    HTTP = "http"


@dataclass(frozen=True, slots=True)
class StreamOffsets:
    """One entry of a resume ``received`` map: ``[receivedBytes, consumedBytes, finReceived]``."""

    received_bytes: int
    consumed_bytes: int
    fin_received: bool


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """The ``resume`` object of a v2 HELLO (docs/protocol.md §13.2)."""

    session_id: str
    resume_token: str
    received: dict[int, StreamOffsets] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Hello:
    """HELLO: the client's credential, name, per-stream window and optional resume."""

    token: str
    client: str
    window: int | None = None  # None: the peer's default (256 KiB)
    resume: ResumeRequest | None = None


@dataclass(frozen=True, slots=True)
class Welcome:
    """WELCOME: the session's id and the server's limits (docs/protocol.md §5.2)."""

    session_id: str
    protocol: str
    resumed: bool
    max_streams: int
    window: int
    max_frame: int
    heartbeat_ms: int
    server: str
    resume_token: str | None = None  # v2 only
    orphan_ttl_ms: int | None = None  # v2 only
    received: dict[int, StreamOffsets] | None = None  # v2, when resumed


@dataclass(frozen=True, slots=True)
class BindRequest:
    """A BIND whose values are valid (kind, port 1-65535, mode)."""

    req_id: int
    kind: BindKind
    port: int
    mode: BindMode
    # HTTP mode: the Host header the kit sets on every request (BIND "hostHeader";
    # docs/http-mode.md). None: the request's own Host goes through unchanged.
    host_header: str | None = None


@dataclass(frozen=True, slots=True)
class BindResult:
    """BIND_OK: the binding ``bind_id`` created for request ``req_id``."""

    req_id: int
    bind_id: int
    kind: BindKind
    port: int
    mode: BindMode
