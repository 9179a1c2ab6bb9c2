"""HTTP mode, the pure part: request and response heads, and how their bodies are framed.

A head (the start line and the header fields, up to and including the empty line that ends
them; :func:`tunnel.server.http_framing.head_end` finds it) is parsed by llhttp, Node.js's
HTTP/1.1 parser, through ``httptools`` (pinned in requirements.txt). llhttp is strict by default
and refuses what a proxy must not pass on: bare LF line ends, obs-fold, whitespace before a
colon, control characters in values, duplicate ``Content-Length``, ``Content-Length`` beside
``Transfer-Encoding``, a request ``Transfer-Encoding`` that does not end in ``chunked``.

How the body that follows is framed (RFC 9112 §6.3) is decided here; where it ends in the byte
stream is told by :class:`~tunnel.server.http_framing.BodyScanner`. The kit forwards the bytes of
a body as they came and only checks their framing, so the chunked coding (extensions and trailers
included) reaches the other side unchanged.

No I/O and no gevent here (docs/http-mode.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import httptools

from tunnel.server.http_framing import TOKEN, BodyKind
from tunnel.protocol import TunnelError

__all__ = [
    "HeadError",
    "RequestHead",
    "ResponseHead",
    "parse_request_head",
    "parse_response_head",
]

RawHeaders = list[tuple[bytes, bytes]]



class HeadError(TunnelError):
    """The head is not valid HTTP/1.1, or is refused.

    Attributes:
        detail: why, in a few words, never quoting the received bytes.
        status: the status to answer a request with (400, 501 or 505).
    """

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


@dataclass(slots=True)
class RequestHead:
    """A parsed request head.

    Attributes:
        method: as sent (``b"GET"``).
        target: the request target as sent.
        version: ``b"1.1"`` or ``b"1.0"``.
        headers: ``(name, value)`` pairs as sent (casing kept), in order.
        keep_alive: the client may send another request on the connection after this one.
        body: how the request body is framed (NONE, LENGTH or CHUNKED).
        length: the body size for LENGTH.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: RawHeaders
    keep_alive: bool
    body: BodyKind
    length: int


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head.

    Attributes:
        status: the status code.
        keep_alive: the target keeps its connection after this response.
        switched: a 101, or a 2xx to CONNECT: the stream is a byte relay after this head.
        body: how the body is framed (NONE, LENGTH, CHUNKED or CLOSE).
        length: the body size for LENGTH.
    """

    status: int
    keep_alive: bool
    switched: bool
    body: BodyKind
    length: int


#: The fields that decide framing and keep-alive, gathered by the collector as they come.
_FRAMING_FIELDS = frozenset((b"content-length", b"transfer-encoding", b"connection"))


class _Collector:
    """llhttp's callbacks for one head."""

    __slots__ = ("complete", "framing", "headers", "target")

    # httptools looks every callback up with getattr(protocol, name, None): a missing one costs
    # a raised and caught AttributeError per parser, present-and-None costs nothing.
    on_message_begin = on_status = on_body = on_message_complete = None
    on_chunk_header = on_chunk_complete = None

    def __init__(self) -> None:
        self.target = b""
        self.headers: RawHeaders = []
        self.framing: RawHeaders = []  # (lower-cased name, value) of _FRAMING_FIELDS
        self.complete = False

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered in _FRAMING_FIELDS:
            self.framing.append((lowered, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _feed(parser: httptools.HttpRequestParser | httptools.HttpResponseParser, head: bytes | bytearray, collector: _Collector) -> None:
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # CONNECT, Upgrade or a 101: llhttp stops right after the head
    except httptools.HttpParserError as exc:
        reason = _reason(exc)
        if not collector.complete or not reason.startswith("Pause on CONNECT/Upgrade"):
            # ("Pause on CONNECT/Upgrade" after a whole head: a switch llhttp did not expect,
            # e.g. a 101 without an Upgrade header.)
            raise HeadError(reason, 501 if "invalid `Transfer-Encoding`" in reason else 400) from None
    if not collector.complete:
        raise HeadError("incomplete head")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".") or "malformed head"
    return text[:120]


def _tokens(framing: RawHeaders, name: bytes) -> list[bytes]:
    """The comma-separated tokens of every ``name`` field, lower-cased."""
    out: list[bytes] = []
    for key, value in framing:
        if key == name:
            out += [token.strip().lower() for token in value.split(b",") if token.strip()]
    return out


def _content_length(framing: RawHeaders) -> int | None:
    for key, value in framing:
        if key == b"content-length":
            value = value.strip()
            if not value.isdigit() or len(value) > 18:
                raise HeadError("invalid Content-Length")
            return int(value)
    return None


def _keep_alive(version: bytes, framing: RawHeaders) -> bool:
    connection = _tokens(framing, b"connection")
    if version == b"1.1":
        return b"close" not in connection
    return b"keep-alive" in connection


def parse_request_head(head: bytes | bytearray) -> RequestHead:
    """Parse a request head (ending with its empty line).

    Raises:
        HeadError: malformed (400), a method llhttp does not know (501), a transfer coding other
            than chunked (501), or an HTTP version other than 1.0 and 1.1 (505).
    """
    collector = _Collector()
    parser = httptools.HttpRequestParser(collector)
    try:
        _feed(parser, head, collector)
    except HeadError as exc:
        # A well-formed request line with a method llhttp does not know: 501, not 400.
        parts = bytes(head[: head.find(b"\r\n")]).split(b" ")
        if (
            exc.detail.startswith("Invalid method")
            and len(parts) == 3
            and parts[0]
            and TOKEN.fullmatch(parts[0]) is not None
            and parts[2] in (b"HTTP/1.1", b"HTTP/1.0")
        ):
            raise HeadError("the method is not supported", 501) from None
        raise
    line_end = head.find(b"\r\n")
    version = bytes(head[line_end - 3 : line_end])
    if head[line_end - 9 : line_end - 3] != b" HTTP/" or version not in (b"1.1", b"1.0"):
        raise HeadError(f"HTTP/{parser.get_http_version()} is not supported", 505)
    framing = collector.framing
    method = bytes(head[: head.index(b" ")])
    if not framing:  # most requests: no body, no Connection header
        return RequestHead(
            method, collector.target, version, collector.headers, version == b"1.1", BodyKind.NONE, 0
        )
    coding = _tokens(framing, b"transfer-encoding")
    if coding:
        if coding != [b"chunked"]:
            raise HeadError("a transfer coding other than chunked", 501)
        body, length = BodyKind.CHUNKED, 0
    else:
        size = _content_length(framing)
        body, length = (BodyKind.NONE, 0) if not size else (BodyKind.LENGTH, size)
    return RequestHead(
        method=method,
        target=collector.target,
        version=version,
        headers=collector.headers,
        keep_alive=_keep_alive(version, framing),
        body=body,
        length=length,
    )


def parse_response_head(head: bytes | bytearray, request_method: bytes) -> ResponseHead:
    """Parse a response head (ending with its empty line) to a ``request_method`` request.

    Raises:
        HeadError: not a valid HTTP/1.x response head.
    """
    collector = _Collector()
    parser = httptools.HttpResponseParser(collector)
    _feed(parser, head, collector)
    if not head.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
        raise HeadError("not an HTTP/1.1 response")
    status = parser.get_status_code()
    framing = collector.framing
    switched = status == 101 or (request_method == b"CONNECT" and 200 <= status < 300)
    if switched or status < 200 or status in (204, 304) or request_method == b"HEAD":
        body, length = BodyKind.NONE, 0
    else:
        coding = _tokens(framing, b"transfer-encoding")
        if coding:
            body, length = (BodyKind.CHUNKED, 0) if coding[-1] == b"chunked" else (BodyKind.CLOSE, 0)
        else:
            size = _content_length(framing)
            body, length = (BodyKind.CLOSE, 0) if size is None else (BodyKind.LENGTH, size)
    keep_alive = body is not BodyKind.CLOSE and _keep_alive(bytes(head[5:8]), framing)
    return ResponseHead(status, keep_alive, switched, body, length)
