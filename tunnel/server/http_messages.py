"""HTTP mode, the pure part: forwarding headers, request checks, the kit's own error pages.

No I/O and no gevent here: :mod:`tunnel.server.http_mode` drives the sockets and the stream and
calls these functions, and the unit tests call them directly (docs/http-mode.md).

Headers travel as llhttp gives them (:mod:`tunnel.server.http_heads`): a list of ``(name, value)`` byte
pairs with the sender's casing, in order. Names are compared case-insensitively.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tunnel.metrics import HTTP_METHODS
from tunnel.server.http_framing import TOKEN

__all__ = [
    "ERROR_HEADER",
    "ErrorPage",
    "access_path",
    "bad_request",
    "check_request",
    "connect_error",
    "forwarding_headers",
    "method_label",
    "render_error",
    "request_head",
    "wants_json",
]

#: The header that marks a response the kit answered itself; its value is the cause.
ERROR_HEADER = "x-hoody-tunnel-error"

RawHeaders = Sequence[tuple[bytes, bytes]]

_REASONS = {
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TITLES = {
    "bad_request": "The request is not valid HTTP/1.1",
    "connect_failed": "The tunnel's target is not reachable",
    "upstream_reset": "The tunnel's target did not answer",
    "bad_response": "The tunnel's target sent an invalid response",
    "max_streams": "The tunnel is busy",
    "fd_exhausted": "The tunnel is busy",
    "reconnecting": "The tunnel is reconnecting",
    "tunnel_closed": "The tunnel is closed",
}


@dataclass(frozen=True, slots=True)
class ErrorPage:
    """A response the kit answers itself.

    Attributes:
        status: the HTTP status (400, 431, 501, 505, 502 or 503).
        cause: one of :data:`tunnel.metrics.HTTP_ERROR_CAUSES`; the ``x-hoody-tunnel-error``
            value and the metrics label.
        message: one sentence for humans (no header values, no secrets).
        retry_after_s: the ``Retry-After`` value, for 503s.
    """

    status: int
    cause: str
    message: str
    retry_after_s: int | None = None


def bad_request(detail: str, status: int = 400) -> ErrorPage:
    """A malformed or refused request (never forwarded to the client's side)."""
    status = status if status in (400, 431, 501, 505) else 400
    return ErrorPage(status, "bad_request", f"The request was refused by the tunnel: {detail}.")


_TARGET_REASON = re.compile(r"^(\[[0-9A-Fa-f:.]+\]:\d+|[^\s:]+:\d+): (.+)$")


def connect_error(code_name: str, reason: str) -> ErrorPage:
    """The 502 for a stream the client reset (``reason`` is its RST text).

    The client answers an OPEN it cannot serve with ``RST(CONNECT_FAILED, "HOST:PORT: why")``
    (docs/protocol.md §7.1): the page then names that target.
    """
    match = _TARGET_REASON.match(reason)
    if code_name == "connect_failed" and match is not None:
        target, why = match.group(1), match.group(2)
        if why == "connection refused":
            message = f"Nothing is listening on {target} on the connected machine."
        else:
            message = f"The connected machine could not reach {target}: {why}."
        return ErrorPage(502, "connect_failed", message)
    if code_name == "not_found":
        return ErrorPage(502, "connect_failed", "The connected machine has no target for this port.")
    shown = f" ({reason})" if reason else ""
    return ErrorPage(
        502,
        "upstream_reset",
        f"The local connection on the connected machine failed before a whole response{shown}.",
    )


def check_request(http_version: bytes, headers: RawHeaders) -> ErrorPage | None:
    """Refuse what llhttp lets through but a proxy must not forward (request smuggling).

    llhttp and :func:`~tunnel.server.http_heads.parse_request_head` already refuse duplicate
    ``Content-Length`` values, both framings at once (RFC 9112 §6.1: "ought to be handled as an
    error") and any coding but ``chunked``; checked again here, with the HTTP version (1.0 and
    1.1 only) and ``Host`` (exactly one in HTTP/1.1, at most one in HTTP/1.0).
    """
    if http_version not in (b"1.0", b"1.1"):
        return bad_request(f"HTTP/{http_version.decode('ascii', 'replace')} is not supported", 505)
    has_length = has_chunked = False
    hosts = 0
    for name, _ in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            has_length = True
        elif lowered == b"transfer-encoding":
            has_chunked = True
        elif lowered == b"host":
            hosts += 1
    if has_length and has_chunked:
        return bad_request("both Content-Length and Transfer-Encoding are set")
    if hosts > 1:
        return bad_request("more than one Host header")  # RFC 9112 §3.2
    if hosts == 0 and http_version == b"1.1":
        return bad_request("an HTTP/1.1 request without a Host header")  # RFC 9112 §3.2
    return None


def _tokens(values: Iterable[bytes]) -> list[bytes]:
    return [token.strip() for value in values for token in value.split(b",") if token.strip()]


def _quoted(value: str) -> str:
    """An RFC 7239 value: a token as it is, anything else as a quoted-string."""
    if TOKEN.fullmatch(value.encode("latin-1")):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def forwarding_headers(
    headers: RawHeaders,
    *,
    peer_ip: str,
    port: int,
    host_header: str | None,
    default_host: str,
    cache: dict[bytes | None, tuple[bytes, bytes]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The request's headers as the kit forwards them.

    - ``X-Forwarded-For``: the peer's address appended to any value already present (the kit
      usually sits behind the platform's router, which sets the first one).
    - ``Forwarded`` (RFC 7239): an element ``for=...;host=...;proto=http`` appended.
    - ``X-Forwarded-Proto``, ``-Host``, ``-Port``: kept when present (the router's view of the
      original request), else set from the kit's view (``http``, the Host, the container port).
    - ``Host``: replaced by ``host_header`` when the binding has one; added when missing (an
      HTTP/1.0 request), since the request goes on as HTTP/1.1.
    - ``Upgrade: h2c`` is removed (with ``HTTP2-Settings``): the request is served as HTTP/1.1,
      which RFC 9113 §3.1's client accepts as the refusal.

    Args:
        headers: the received headers, ``(name, value)`` with the sender's casing.
        peer_ip: the address of the connection's peer (no port).
        port: the container port the request came in on.
        host_header: the binding's Host value, or None.
        default_host: the Host to add when the request has none and no ``host_header`` is set.
        cache: a dict kept by the caller for one peer (one connection): the values derived from
            the Host and the peer are computed once per Host value.

    Returns:
        A new list; the input is not changed.
    """
    out: list[tuple[bytes, bytes]] = []
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    host: bytes | None = None
    seen: set[bytes] = set()
    upgrade_values: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"x-forwarded-for":
            xff.append(value)
            continue
        if lowered == b"forwarded":
            forwarded.append(value)
            continue
        if lowered == b"host":
            if host is None:
                host = value
            if host_header is not None:
                continue  # replaced below
        if lowered == b"upgrade":
            upgrade_values.append(value)
        seen.add(lowered)
        out.append((name, value))

    if upgrade_values and any(t.lower() == b"h2c" for t in _tokens(upgrade_values)):
        out = _without_h2c(out, upgrade_values)

    derived = cache.get(host) if cache is not None else None
    if derived is None:
        original_host = (host or default_host.encode("ascii")).decode("latin-1")
        node = f"[{peer_ip}]" if ":" in peer_ip else peer_ip
        element = f"for={_quoted(node)};host={_quoted(original_host)};proto=http".encode("latin-1")
        derived = (original_host.encode("latin-1"), element)
        if cache is not None and len(cache) < 16:
            cache[host] = derived
    forwarded_host, element = derived
    if host_header is not None:
        out.append((b"Host", host_header.encode("ascii")))
    elif host is None:
        out.append((b"Host", default_host.encode("ascii")))
    peer = peer_ip.encode("ascii")
    out.append((b"X-Forwarded-For", b", ".join([*xff, peer]) if xff else peer))
    if b"x-forwarded-proto" not in seen:
        out.append((b"X-Forwarded-Proto", b"http"))
    if b"x-forwarded-host" not in seen:
        out.append((b"X-Forwarded-Host", forwarded_host))
    if b"x-forwarded-port" not in seen:
        out.append((b"X-Forwarded-Port", b"%d" % port))
    out.append((b"Forwarded", b", ".join([*forwarded, element]) if forwarded else element))
    return out


def _without_h2c(headers: list[tuple[bytes, bytes]], upgrade_values: list[bytes]) -> list[tuple[bytes, bytes]]:
    remaining = [t for t in _tokens(upgrade_values) if t.lower() != b"h2c"]
    out: list[tuple[bytes, bytes]] = []
    upgrade_written = False
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"http2-settings":
            continue
        if lowered == b"upgrade":
            if remaining and not upgrade_written:
                out.append((name, b", ".join(remaining)))
                upgrade_written = True
            continue
        if lowered == b"connection" and not remaining:
            kept = [t for t in _tokens([value]) if t.lower() not in (b"upgrade", b"http2-settings")]
            if kept:
                out.append((name, b", ".join(kept)))
            continue
        if lowered == b"connection":
            kept = [t for t in _tokens([value]) if t.lower() != b"http2-settings"]
            if kept:
                out.append((name, b", ".join(kept)))
            continue
        out.append((name, value))
    return out


def _quality(ranges: list[tuple[str, float]], media: str) -> tuple[float, int]:
    """The q-value ``ranges`` give ``media`` (the most specific matching range decides) and
    how specific that range was: 2 exact, 1 ``type/*``, 0 ``*/*``, -1 no match."""
    major = media.split("/", 1)[0]
    best: tuple[int, float] = (-1, 0.0)
    for pattern, q in ranges:
        if pattern == media or (media == "application/json" and pattern.endswith("+json")):
            rank = 2
        elif pattern == f"{major}/*":
            rank = 1
        elif pattern == "*/*":
            rank = 0
        else:
            continue
        if rank > best[0] or (rank == best[0] and q > best[1]):
            best = (rank, q)
    return best[1], best[0]


def wants_json(accept: bytes | None) -> bool:
    """True when ``Accept`` prefers JSON to HTML: a higher q-value, or the same one from a more
    specific range (``application/json, */*`` asks for JSON; ``*/*`` alone, or no Accept, gets
    HTML; ``+json`` types count as JSON)."""
    if not accept:
        return False
    ranges: list[tuple[str, float]] = []
    for item in accept.decode("latin-1").split(","):
        parts = [p.strip() for p in item.split(";")]
        media = parts[0].lower()
        if not media:
            continue
        q = 1.0
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        ranges.append((media, q))
    json_q, json_rank = _quality(ranges, "application/json")
    html_q, html_rank = _quality(ranges, "text/html")
    return json_q > 0.0 and (json_q, json_rank) > (html_q, html_rank)


def render_error(error: ErrorPage, *, accept: bytes | None, head_only: bool = False) -> bytes:
    """The whole response: status line, headers (``Connection: close``; the kit closes the
    connection after every response of its own) and a short HTML page, or JSON when the request
    prefers it. ``head_only`` (a HEAD request) leaves the body out but keeps its length."""
    reason = _REASONS.get(error.status, "Error")
    if wants_json(accept):
        content_type = "application/json"
        body = json.dumps(
            {"error": error.message, "cause": error.cause, "status": error.status}
        ).encode()
    else:
        content_type = "text/html; charset=utf-8"
        title = _TITLES.get(error.cause, reason)
        body = (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{error.status} {html.escape(reason)}</title></head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>{html.escape(error.message)}</p>\n"
            f"<p><small>{error.status} {html.escape(reason)} &middot; hoody-tunnel "
            f"({html.escape(error.cause)})</small></p>\n</body></html>\n"
        ).encode()
    lines = [
        f"HTTP/1.1 {error.status} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        f"{ERROR_HEADER}: {error.cause}",
    ]
    if error.retry_after_s is not None:
        lines.append(f"Retry-After: {error.retry_after_s}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


_METHOD_LABELS = {method.encode("ascii"): method for method in HTTP_METHODS}


def method_label(method: bytes) -> str:
    """The ``method`` metrics label: a standard method, else ``OTHER`` (methods are
    case-sensitive, RFC 9110 §9.1: ``get`` is not GET)."""
    return _METHOD_LABELS.get(method, "OTHER")


_UNSAFE = re.compile(r"[^\x21-\x7e]")
MAX_LOGGED_PATH = 200


def access_path(target: bytes) -> str:
    """The request target as the access log shows it: no query string, non-printable
    characters %-escaped, at most 200 characters."""
    path = target.partition(b"?")[0].partition(b"#")[0].decode("latin-1")
    if _UNSAFE.search(path) is not None:
        path = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8")), path)
    return path if len(path) <= MAX_LOGGED_PATH else path[: MAX_LOGGED_PATH - 3] + "..."


# -- request serialization (the head the kit forwards) ------------------------------------------


def request_head(method: bytes, target: bytes, version: bytes, headers: RawHeaders) -> bytes:
    """``METHOD TARGET HTTP/<version>`` and the headers, as the kit forwards them.

    Every value either came out of llhttp (validated: no CR, LF, NUL or other control character)
    or was built by :func:`forwarding_headers` from such values, the peer address and the BIND's
    validated ``hostHeader``, so they are written as they are.
    """
    parts = [method, b" ", target, b" HTTP/", version, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
