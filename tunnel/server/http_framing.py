"""HTTP/1.1 body framing, the pure part: where a message head and a message body end.

No I/O here. The kit relays message bytes unchanged, so it only needs to know where each message
ends in the byte stream: :func:`head_end` finds the end of a head, and a :class:`BodyScanner` is fed
the bytes that follow it, in pieces of any size, and says how many of them belong to the body.

Theory of operation. A scanner never copies body data: for LENGTH and CLOSE bodies it only counts,
and for chunked bodies it reads one chunk-size line, then skips that many bytes by arithmetic, then
checks the CRLF that must follow, and so on. Only the lines (chunk-size lines and the trailer
section) are looked at, with ``bytes.find`` and precompiled regular expressions, so a call costs
O(number of lines), never a Python loop over each byte. A line split across calls is kept in a
small buffer bounded by :data:`MAX_CHUNK_LINE` (or :data:`MAX_TRAILER_SIZE` for trailer lines).

Chunked framing is checked strictly against RFC 9112 §7.1: the kit forwards the raw bytes to
another parser, and anything two parsers could read differently is a request-smuggling risk
(RFC 9112 §11.2), so whatever the grammar does not allow is refused with :class:`FramingError`.
"""

from __future__ import annotations

import enum
import re
from tunnel.protocol import TunnelError

__all__ = [
    "BodyKind",
    "BodyScanner",
    "FramingError",
    "MAX_CHUNK_LINE",
    "MAX_HEAD_SIZE",
    "MAX_TRAILER_SIZE",
    "TOKEN",
    "append_bytes",
    "head_end",
    "skip_empty_lines",
]

#: The largest message head, in bytes (used by the callers of :func:`head_end`).
MAX_HEAD_SIZE = 64 * 1024
#: The longest chunk-size line, extensions included and its CRLF excluded, in bytes.
MAX_CHUNK_LINE = 4096
#: The largest trailer section, every line and the final CRLF included, in bytes.
MAX_TRAILER_SIZE = 64 * 1024

Buffer = bytes | bytearray | memoryview

# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# RFC 9110 §5.6.4: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE.
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ).
_CHUNK_EXT = rb"(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*" % (_TOKEN, _TOKEN, _QUOTED_STRING)
# RFC 9112 §7.1: chunk-size = 1*HEXDIG, here at most 16 digits (64 bits), then the extensions.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})" + _CHUNK_EXT)
# RFC 9112 §5.1 and RFC 9110 §5.5: field-name ":" OWS field-value OWS, no whitespace before ":".
# OWS, field-vchar (VCHAR / obs-text), SP and HTAB are one character class: no other CTL.
_FIELD_LINE = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*")
_LF = re.compile(rb"\n")
#: A token (RFC 9110 §5.6.2): methods, field names, chunk-extension names, RFC 7239 values.
TOKEN = re.compile(_TOKEN)
_EMPTY_LINES = re.compile(rb"(?:\r\n)*")
_HEAD_TERMINATOR = re.compile(rb"\r\n\r\n")
_CRLF = b"\r\n"
_LONG_SIZE_LINE = "a chunk-size line is too long"
_LONG_TRAILERS = "the trailer section is too long"


def append_bytes(buffer: bytes | bytearray, data: bytes | bytearray | memoryview) -> bytes | bytearray:
    """``buffer`` with ``data`` after it, for a head gathered over several reads: the first
    read is kept as it is (most heads come whole), later ones go into one growing bytearray, so
    a head trickling in byte by byte costs linear time."""
    if not buffer:
        return data if isinstance(data, bytes) else bytes(data)
    if isinstance(buffer, bytes):
        buffer = bytearray(buffer)
    buffer += data
    return buffer


def skip_empty_lines(buffer: bytes | bytearray) -> int:
    """How many leading bytes of ``buffer`` are empty lines (CRLF pairs), which a recipient
    ignores before a request line (RFC 9112 §2.2). One C-level match, whatever their number."""
    match = _EMPTY_LINES.match(buffer)
    return 0 if match is None else match.end()


class FramingError(TunnelError):
    """The body's framing is invalid. str(exc) is a short human reason that never quotes received bytes."""


def head_end(buffer: Buffer, start: int = 0) -> int:
    """Find the end of a message head.

    Args:
        buffer: the bytes received so far.
        start: how many leading bytes were already searched without success. The search begins at
            ``max(0, start - 3)``, so a terminator split across two reads is found.

    Returns:
        The index just past the first ``b"\\r\\n\\r\\n"`` that ends at or after ``start`` (its last
        byte is at index ``start`` or later), or -1.
    """
    begin = max(0, start - 3)
    if isinstance(buffer, memoryview):
        # memoryview has no find(); re searches any bytes-like object without a copy.
        match = _HEAD_TERMINATOR.search(buffer, begin)
        return -1 if match is None else match.end()
    index = buffer.find(b"\r\n\r\n", begin)
    return -1 if index == -1 else index + 4


def _find_lf(data: Buffer, begin: int, end: int) -> int:
    """Return the index of the first LF in ``data[begin:end]``, or -1, without copying."""
    if isinstance(data, memoryview):
        match = _LF.search(data, begin, end)
        return -1 if match is None else match.start()
    return data.find(b"\n", begin, end)


class BodyKind(enum.Enum):
    """How a message body is delimited (RFC 9112 §6.3)."""

    NONE = "none"  # no body: done at once
    LENGTH = "length"  # Content-Length bytes
    CHUNKED = "chunked"  # chunked transfer coding, up to and including the trailer section's final CRLF
    CLOSE = "close"  # until the connection closes (responses only)


class _Chunked(enum.Enum):
    """Where a chunked scanner stands."""

    SIZE_LINE = "size_line"  # reading a chunk-size line
    DATA = "data"  # skipping chunk data
    DATA_CR = "data_cr"  # expecting the CR after chunk data
    DATA_LF = "data_lf"  # expecting the LF after chunk data
    TRAILER = "trailer"  # reading trailer lines, up to the empty line
    DONE = "done"


# Aliases for the hot loop: looking a member up on an Enum class costs about 100 ns on CPython
# 3.11, ten times a global lookup.
_AT_SIZE_LINE = _Chunked.SIZE_LINE
_AT_DATA = _Chunked.DATA
_AT_DATA_CR = _Chunked.DATA_CR
_AT_DATA_LF = _Chunked.DATA_LF
_AT_TRAILER = _Chunked.TRAILER


class BodyScanner:
    """Finds where one message body ends in a byte stream fed in pieces.

    Args:
        kind: how the body is delimited.
        length: the body's size in bytes, for :attr:`BodyKind.LENGTH` only.

    Raises:
        ValueError: ``length`` is negative.
    """

    def __init__(self, kind: BodyKind, length: int = 0) -> None:
        if length < 0:
            raise ValueError("length must not be negative")
        self.kind = kind
        self._remaining_size = length if kind is BodyKind.LENGTH else 0
        self._body_size = 0
        self._state = _AT_SIZE_LINE
        self._line = bytearray()  # the start of a line split across calls, never chunk data
        self._trailer_size = 0  # bytes of complete trailer lines so far
        self._error: str | None = None
        self.done = kind is BodyKind.NONE or (kind is BodyKind.LENGTH and length == 0)

    @property
    def body_bytes(self) -> int:
        """Payload bytes seen so far: chunk data only for chunked bodies, every byte otherwise."""
        return self._body_size

    def scan(self, data: Buffer) -> int:
        """Say how many leading bytes of ``data`` belong to the body.

        Args:
            data: the next bytes of the stream (a memoryview must be of single bytes).

        Returns:
            ``len(data)``, unless the body ends inside ``data``: then :attr:`done` becomes True and
            the bytes after the returned count belong to what follows. 0 once done.

        Raises:
            FramingError: the chunked framing is invalid. The scanner then refuses any further input.
        """
        if self._error is not None:
            raise FramingError(self._error)
        if self.done:
            return 0
        size = len(data)
        if self.kind is BodyKind.CLOSE:
            self._body_size += size
            return size
        if self.kind is BodyKind.LENGTH:
            taken = min(size, self._remaining_size)
            self._remaining_size -= taken
            self._body_size += taken
            self.done = self._remaining_size == 0
            return taken
        try:
            return self._scan_chunked(data, size)
        except FramingError as exc:
            self._error = str(exc)
            raise

    def end_of_input(self) -> None:
        """Tell the scanner that the stream ended.

        Raises:
            FramingError: the body was not complete (a CLOSE body is complete here).
        """
        if self.kind is BodyKind.CLOSE:
            self.done = True
        if not self.done:
            raise FramingError("the body was cut short")

    def _scan_chunked(self, data: Buffer, size: int) -> int:
        """Walk the chunked framing in ``data`` one line or one chunk at a time.

        The state lives in locals during the walk (attribute access is the hot loop's main cost)
        and is written back before returning. After a FramingError it is never used again.
        """
        state, remaining, body_size = self._state, self._remaining_size, self._body_size
        position = 0
        while position < size:
            if state is _AT_SIZE_LINE:
                lf_index = -1 if self._line else _find_lf(data, position, position + MAX_CHUNK_LINE + 2)
                if lf_index > position and data[lf_index - 1] == 13:
                    # Fast path: the whole line is here, so match it in place, without a copy.
                    match = _SIZE_LINE.fullmatch(data, position, lf_index - 1)
                    position = lf_index + 1
                else:  # split across calls, bare LF or too long: the careful path
                    line, position = self._read_line(data, position, size, MAX_CHUNK_LINE + 2, _LONG_SIZE_LINE)
                    if line is None:
                        break
                    match = _SIZE_LINE.fullmatch(line)
                if match is None:
                    raise FramingError("a chunk-size line is not valid")
                remaining = int(match.group(1), 16)
                state = _AT_DATA if remaining else _AT_TRAILER
            elif state is _AT_DATA:
                end = position + remaining
                if end + 2 <= size:
                    # Fast path: the rest of the chunk and its CRLF are here (RFC 9112 §7.1).
                    if data[end] != 13 or data[end + 1] != 10:
                        raise FramingError("chunk data is not followed by CRLF")
                    body_size += remaining
                    remaining = 0
                    state = _AT_SIZE_LINE
                    position = end + 2
                else:
                    taken = min(size - position, remaining)
                    position += taken
                    body_size += taken
                    remaining -= taken
                    if remaining == 0:
                        state = _AT_DATA_CR
            elif state is _AT_DATA_CR or state is _AT_DATA_LF:
                # RFC 9112 §7.1: chunk-data is followed by exactly CRLF, here split across calls.
                if data[position] != (13 if state is _AT_DATA_CR else 10):
                    raise FramingError("chunk data is not followed by CRLF")
                position += 1
                state = _AT_DATA_LF if state is _AT_DATA_CR else _AT_SIZE_LINE
            else:  # _AT_TRAILER
                budget = MAX_TRAILER_SIZE - self._trailer_size
                line, position = self._read_line(data, position, size, budget, _LONG_TRAILERS)
                if line is None:
                    break
                self._trailer_size += len(line) + 2
                if self._parse_trailer_line(line):
                    state = _Chunked.DONE
                    self.done = True
                    break
        self._state, self._remaining_size, self._body_size = state, remaining, body_size
        return position

    def _read_line(
        self, data: Buffer, position: int, size: int, max_line_size: int, too_long: str
    ) -> tuple[bytes | None, int]:
        """Take a line, CRLF excluded, from ``data`` at ``position`` (joined to any buffered start).

        Returns the line (None if it is not complete yet; its start is then buffered) and the
        position after what was consumed. ``max_line_size`` bounds the line with its CRLF; beyond
        it, FramingError(too_long) is raised.
        """
        window_end = min(size, position + max_line_size - len(self._line))
        lf_index = _find_lf(data, position, window_end)
        if lf_index == -1:
            if len(self._line) + size - position >= max_line_size:
                # The LF would land beyond the bound: the line is too long, whatever follows.
                raise FramingError(too_long)
            self._line += data[position:size]
            return None, size
        line = bytes(self._line) + bytes(data[position : lf_index + 1])
        self._line.clear()
        if not line.endswith(_CRLF):
            raise FramingError("a line in the chunked framing ends with a bare LF")
        return line[:-2], lf_index + 1

    def _parse_trailer_line(self, line: bytes) -> bool:
        """Check a trailer line. Returns True for the empty line that ends the trailer section."""
        if not line:
            return True
        if line[0] in b" \t":
            # RFC 9112 §5.2: obs-fold is refused, not unfolded.
            raise FramingError("a trailer line is folded (obs-fold)")
        if _FIELD_LINE.fullmatch(line) is None:
            raise FramingError("a trailer field line is not valid")
        return False
