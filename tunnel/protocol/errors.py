"""Error codes of the wire protocol and the exceptions hoody-tunnel raises on purpose.

``ErrorCode`` is the wire contract (docs/protocol.md §3.1) and the only place error numbers appear.
A code received from the peer that this version does not know stays a plain ``int``
(:func:`error_code_from_wire`), so a newer peer never breaks an older one.

Exception tree (docs/architecture.md §5)::

    TunnelError                 root: everything we raise on purpose
    ├── ProtocolError           .error_code; abstract (h11): only the two subclasses are raised
    │   ├── LocalProtocolError  a command broke the rules: a bug in the calling code
    │   └── RemoteProtocolError the peer broke the rules; a Session already queued GOAWAY
    └── UpstreamError           server/: dialing or pumping the target failed

``ConfigError`` lives in :mod:`tunnel.config` (a subclass of :class:`TunnelError`).

The session sends a code and a reason text in RST, GOAWAY and BIND_ERR: :func:`check_code` and
:func:`truncate_text` (internal to the protocol core, not exported) make them fit the wire.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "TunnelError",
    "UpstreamError",
    "code_name",
    "error_code_from_wire",
]


class ErrorCode(IntEnum):
    """Error codes carried by RST, GOAWAY and BIND_ERR (u16 on the wire; docs/protocol.md §3.1)."""

    NORMAL = 0x0000
    ADMIN_CLOSE = 0x0001
    PROTOCOL_ERROR = 0x0002
    SHUTDOWN = 0x0003
    AUTH_FAILED = 0x0004
    TIMEOUT = 0x0005
    REFUSED = 0x0006
    RESOURCE_EXHAUSTED = 0x0007
    CONNECT_FAILED = 0x0008
    FLOW_CONTROL_ERROR = 0x0009
    NOT_FOUND = 0x000A
    FORBIDDEN = 0x000B
    SUPERSEDED = 0x000C
    RESUME_FAILED = 0x000D
    STREAM_CLOSED = 0x000E
    PORT_IN_USE = 0x000F


_KNOWN_CODES = frozenset(int(code) for code in ErrorCode)

#: Longest reason text put in an RST, GOAWAY or BIND_ERR we send (bytes of UTF-8).
MAX_REASON_SIZE = 1024


def error_code_from_wire(value: int) -> ErrorCode | int:
    """Map a code received from the peer to :class:`ErrorCode` when it is a known one.

    Args:
        value: the u16 (or JSON integer) code as received.

    Returns:
        The matching :class:`ErrorCode` member, or ``value`` unchanged (a plain ``int``) when
        this version does not know it.
    """
    if value in _KNOWN_CODES:
        return ErrorCode(value)
    return value


def code_name(code: int) -> str | None:
    """The name of a wire error code as the spec writes it (``"FLOW_CONTROL_ERROR"``).

    The one code-to-name helper: logs, metric labels and the client's messages all use it.

    Args:
        code: a known :class:`ErrorCode` or any integer received from a peer.

    Returns:
        The name, or None for a code this version does not know (callers say so their way:
        a bounded metric label, or the number in a message).
    """
    if code in _KNOWN_CODES:
        return ErrorCode(code).name
    return None


def truncate_text(text: str, max_size: int = MAX_REASON_SIZE) -> str:
    """Make ``text`` sendable: lone surrogates become ``?`` and its UTF-8 encoding is cut to
    ``max_size`` bytes (never mid-character).

    Args:
        text: any text.
        max_size: the byte limit.

    Returns:
        ``text`` or its longest prefix that fits.
    """
    # "replace": text that quotes the peer may hold lone surrogates (JSON "\ud800" escapes).
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= max_size:
        return encoded.decode()
    return encoded[:max_size].decode("utf-8", errors="ignore")


def check_code(code: int, what: str) -> None:
    """Raise LocalProtocolError unless ``code`` fits the u16 error code field (internal)."""
    if not isinstance(code, int) or not 0 <= code <= 0xFFFF:
        raise LocalProtocolError(f"{what}: error code must be a u16, got {code!r}")


class TunnelError(Exception):
    """Root of every error hoody-tunnel raises on purpose."""


class ProtocolError(TunnelError):
    """The rules of the wire protocol were broken. Abstract: raise a subclass.

    Attributes:
        error_code: the :class:`ErrorCode` that describes the violation (GOAWAY or RST code).
        stream_id: the stream concerned, or None for a session-level violation.

    Args:
        message: human-readable text (it also becomes the GOAWAY/RST reason).
        error_code: defaults to ``ErrorCode.PROTOCOL_ERROR``.
        stream_id: optional stream the violation concerns.

    Raises:
        TypeError: on direct instantiation of ``ProtocolError`` (as h11 does): say which side
            broke the rules by raising :class:`LocalProtocolError` or
            :class:`RemoteProtocolError`.
    """

    def __init__(
        self,
        message: str,
        error_code: ErrorCode = ErrorCode.PROTOCOL_ERROR,
        *,
        stream_id: int | None = None,
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract: raise LocalProtocolError or RemoteProtocolError")
        super().__init__(message)
        self.error_code = error_code
        self.stream_id = stream_id


class LocalProtocolError(ProtocolError):
    """A command broke the protocol's rules (wrong state, beyond credit, bad value...).

    Raised by Session commands and by :func:`~tunnel.protocol.frames.encode_frame`. It means the
    calling code has a bug; nothing was queued for the peer unless the docstring of the command
    says otherwise.
    """


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol's rules.

    Raised by the frame decoders, and by ``Session.receive_message`` only after it queued
    ``GOAWAY(error_code, str(exc))`` and moved to ``SessionState.CLOSED``: the driver writes
    what ``messages_to_send()`` returns, then closes the WebSocket.
    """


class UpstreamError(TunnelError):
    """Dialing or pumping a tunnel target failed (server/ raises it ``from`` the OSError).

    Args:
        message: for humans; names the address and the OS reason.
        error_code: the wire code to answer with (RST or BIND_ERR); CONNECT_FAILED by default.
    """

    def __init__(self, message: str, *, error_code: ErrorCode = ErrorCode.CONNECT_FAILED) -> None:
        super().__init__(message)
        self.error_code = error_code
