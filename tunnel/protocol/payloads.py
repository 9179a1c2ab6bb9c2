"""JSON payloads of the control frames (HELLO, WELCOME, BIND, BIND_OK, BIND_ERR, UNBIND).

Rules (docs/protocol.md §5, §6):

* A JSON payload is a UTF-8 encoded JSON object. Anything else (invalid UTF-8, a UTF-16 text,
  invalid JSON, ``NaN``/``Infinity``, nesting deep enough to hit the recursion limit, a non-object
  top level value) is a protocol error.
* Unknown keys are ignored, so fields can be added. A missing required key or a value of the
  wrong JSON type is a protocol error. ``true``/``false`` are not integers.
* ``null`` for an optional key means the key is absent.
* BIND is the exception: only ``reqId`` is checked here (a BIND that is not an object or has no
  integer ``reqId`` is a protocol error of the session); its other values are handed on raw so
  that the session can answer ``BIND_ERR(PROTOCOL_ERROR)`` for bad ones (docs/protocol.md §6.1).

Encoding is compact (no spaces) and keeps the key order of the wire spec, so golden vectors are
stable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tunnel.protocol.errors import ErrorCode, RemoteProtocolError
from tunnel.protocol.messages import (
    BindKind,
    BindMode,
    BindRequest,
    BindResult,
    Hello,
    ResumeRequest,
    StreamOffsets,
    Welcome,
)

__all__ = [
    "DEFAULT_WINDOW_SIZE",
    "MAX_WINDOW_SIZE",
    "MIN_WINDOW_SIZE",
]

#: Per-stream receive window bounds of HELLO/WELCOME ``window`` (docs/protocol.md §5.1).
MIN_WINDOW_SIZE = 16 * 1024
MAX_WINDOW_SIZE = 16 * 1024 * 1024
#: The window assumed when a HELLO has no ``window`` key (docs/protocol.md §5.1).
DEFAULT_WINDOW_SIZE = 256 * 1024

_U32_MAX = 0xFFFFFFFF
_MISSING = object()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def dump_json(obj: Mapping[str, object]) -> bytes:
    """Encode a JSON object compactly as UTF-8 (internal helper of the codec)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def load_json_object(payload: bytes | memoryview, what: str) -> dict[str, Any]:
    """Decode a control frame's payload into a dict (internal helper of the codec).

    Raises:
        RemoteProtocolError: not a UTF-8 JSON object.
    """
    try:
        text = bytes(payload).decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError are ValueErrors
        raise RemoteProtocolError(f"{what}: payload is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what}: payload must be a JSON object")
    return value


def is_json_int(value: object) -> bool:
    """True for a JSON integer (``bool`` is excluded: ``true`` is not an integer)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _get(obj: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or (value is None and optional):
        if optional:
            return None
        raise RemoteProtocolError(f"{what}: missing key {key!r}")
    return value


def _int(
    obj: Mapping[str, Any],
    key: str,
    what: str,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> int | None:
    value = _get(obj, key, what, optional=optional)
    if value is None and optional:
        return None
    if not is_json_int(value):
        raise RemoteProtocolError(f"{what}: {key!r} must be an integer")
    if (low is not None and value < low) or (high is not None and value > high):
        raise RemoteProtocolError(f"{what}: {key!r} must be from {low} to {high}, got {value}")
    return int(value)


def _req_int(obj: Mapping[str, Any], key: str, what: str, *, low: int | None = None,
             high: int | None = None) -> int:
    value = _int(obj, key, what, low=low, high=high)
    assert value is not None
    return value


def _str(obj: Mapping[str, Any], key: str, what: str, *, optional: bool = False) -> str | None:
    value = _get(obj, key, what, optional=optional)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise RemoteProtocolError(f"{what}: {key!r} must be a string")
    return value


def _req_str(obj: Mapping[str, Any], key: str, what: str) -> str:
    value = _str(obj, key, what)
    assert value is not None
    return value


def _bool(obj: Mapping[str, Any], key: str, what: str) -> bool:
    value = _get(obj, key, what)
    if not isinstance(value, bool):
        raise RemoteProtocolError(f"{what}: {key!r} must be true or false")
    return value


# -- resume "received" maps ---------------------------------------------------------------------


def _received_to_json(received: Mapping[int, StreamOffsets]) -> dict[str, list[object]]:
    return {
        str(stream_id): [o.received_bytes, o.consumed_bytes, o.fin_received]
        for stream_id, o in received.items()
    }


def _received_from_json(value: object, what: str) -> dict[int, StreamOffsets]:
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what}: 'received' must be a JSON object")
    result: dict[int, StreamOffsets] = {}
    for key, entry in value.items():
        if not (
            0 < len(key) <= 10
            and key.isascii()
            and key.isdigit()
            and key == str(int(key))
            and 0 < int(key) <= _U32_MAX
        ):
            raise RemoteProtocolError(f"{what}: 'received' key {key!r} is not a stream id")
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or not is_json_int(entry[0])
            or not is_json_int(entry[1])
            or not isinstance(entry[2], bool)
            or entry[0] < 0
            or entry[1] < 0
        ):
            raise RemoteProtocolError(
                f"{what}: 'received' entry of stream {key} must be "
                "[receivedBytes, consumedBytes, finReceived]"
            )
        result[int(key)] = StreamOffsets(entry[0], entry[1], entry[2])
    return result


# -- HELLO --------------------------------------------------------------------------------------


def hello_to_json(hello: Hello) -> bytes:
    """Encode a :class:`Hello` (keys with a None value are left out)."""
    obj: dict[str, object] = {"token": hello.token, "client": hello.client}
    if hello.window is not None:
        obj["window"] = hello.window
    if hello.resume is not None:
        obj["resume"] = {
            "sessionId": hello.resume.session_id,
            "resumeToken": hello.resume.resume_token,
            "received": _received_to_json(hello.resume.received),
        }
    return dump_json(obj)


def hello_from_json(payload: bytes | memoryview, version: int) -> Hello:
    """Decode and validate a HELLO payload.

    Raises:
        RemoteProtocolError: ``PROTOCOL_ERROR`` for a malformed HELLO or a window outside
            16 KiB-16 MiB; ``RESUME_FAILED`` for a ``resume`` key (any value) when ``version``
            is 1 (docs/protocol.md §4).
    """
    what = "HELLO"
    obj = load_json_object(payload, what)
    # docs/protocol.md §4: a missing token is refused like a wrong one (AUTH_FAILED, by the
    # driver), not as a malformed HELLO.
    token = _str(obj, "token", what, optional=True) or ""
    client = _req_str(obj, "client", what)
    window = _int(obj, "window", what, low=MIN_WINDOW_SIZE, high=MAX_WINDOW_SIZE, optional=True)
    resume: ResumeRequest | None = None
    if "resume" in obj:
        if version < 2:
            raise RemoteProtocolError("resume needs hoody-tunnel.v2", ErrorCode.RESUME_FAILED)
        raw = obj["resume"]
        if raw is not None:
            if not isinstance(raw, dict):
                raise RemoteProtocolError(f"{what}: 'resume' must be a JSON object")
            received_raw = raw.get("received")
            resume = ResumeRequest(
                session_id=_req_str(raw, "sessionId", "HELLO resume"),
                resume_token=_req_str(raw, "resumeToken", "HELLO resume"),
                received={} if received_raw is None else _received_from_json(received_raw, what),
            )
    return Hello(token=token, client=client, window=window, resume=resume)


# -- WELCOME ------------------------------------------------------------------------------------


def welcome_to_json(welcome: Welcome) -> bytes:
    """Encode a :class:`Welcome` (optional v2 keys with a None value are left out)."""
    obj: dict[str, object] = {
        "sessionId": welcome.session_id,
        "protocol": welcome.protocol,
        "resumed": welcome.resumed,
        "maxStreams": welcome.max_streams,
        "window": welcome.window,
        "maxFrame": welcome.max_frame,
        "heartbeatMs": welcome.heartbeat_ms,
        "server": welcome.server,
    }
    if welcome.resume_token is not None:
        obj["resumeToken"] = welcome.resume_token
    if welcome.orphan_ttl_ms is not None:
        obj["orphanTtlMs"] = welcome.orphan_ttl_ms
    if welcome.received is not None:
        obj["received"] = _received_to_json(welcome.received)
    return dump_json(obj)


def welcome_from_json(payload: bytes | memoryview) -> Welcome:
    """Decode and validate a WELCOME payload.

    ``maxStreams``, ``maxFrame`` and ``heartbeatMs`` must be positive, ``window`` within
    16 KiB-16 MiB and ``orphanTtlMs`` (when present) not negative.

    Raises:
        RemoteProtocolError: a malformed WELCOME.
    """
    what = "WELCOME"
    obj = load_json_object(payload, what)
    received_raw = obj.get("received")
    return Welcome(
        session_id=_req_str(obj, "sessionId", what),
        protocol=_req_str(obj, "protocol", what),
        resumed=_bool(obj, "resumed", what),
        max_streams=_req_int(obj, "maxStreams", what, low=1, high=_U32_MAX),
        window=_req_int(obj, "window", what, low=MIN_WINDOW_SIZE, high=MAX_WINDOW_SIZE),
        max_frame=_req_int(obj, "maxFrame", what, low=1, high=_U32_MAX),
        heartbeat_ms=_req_int(obj, "heartbeatMs", what, low=1, high=_U32_MAX),
        server=_req_str(obj, "server", what),
        resume_token=_str(obj, "resumeToken", what, optional=True),
        orphan_ttl_ms=_int(obj, "orphanTtlMs", what, low=0, optional=True),
        received=None if received_raw is None else _received_from_json(received_raw, what),
    )


# -- BIND, BIND_OK, BIND_ERR, UNBIND ------------------------------------------------------------


def bind_to_json(
    req_id: int, kind: object, port: object, mode: object, host_header: object = None
) -> bytes:
    """Encode a BIND payload (values as given; None values are left out)."""
    obj: dict[str, object] = {"reqId": req_id}
    for key, value in (("kind", kind), ("port", port), ("mode", mode), ("hostHeader", host_header)):
        if value is not None:
            obj[key] = value.value if isinstance(value, (BindKind, BindMode)) else value
    return dump_json(obj)


def bind_from_json(payload: bytes | memoryview) -> tuple[int, object, object, object, object]:
    """Decode a BIND payload: ``(reqId, kind, port, mode, hostHeader)``, the last four raw (None
    if absent).

    Raises:
        RemoteProtocolError: not a JSON object, or no integer ``reqId``.
    """
    obj = load_json_object(payload, "BIND")
    req_id = _req_int(obj, "reqId", "BIND")
    return req_id, obj.get("kind"), obj.get("port"), obj.get("mode"), obj.get("hostHeader")


def bind_result_to_json(result: BindResult) -> bytes:
    """Encode a BIND_OK payload."""
    return dump_json(
        {
            "reqId": result.req_id,
            "bindId": result.bind_id,
            "kind": result.kind.value,
            "port": result.port,
            "mode": result.mode.value,
        }
    )


def bind_result_from_json(payload: bytes | memoryview) -> BindResult:
    """Decode and validate a BIND_OK payload.

    Raises:
        RemoteProtocolError: malformed, or a kind/mode/port/bindId value out of range.
    """
    what = "BIND_OK"
    obj = load_json_object(payload, what)
    kind = _req_str(obj, "kind", what)
    mode = _req_str(obj, "mode", what)
    if kind not in ("EXPOSE", "PULL"):
        raise RemoteProtocolError(f"{what}: unknown kind {kind!r}")
    if mode not in ("tcp", "http"):
        raise RemoteProtocolError(f"{what}: unknown mode {mode!r}")
    return BindResult(
        req_id=_req_int(obj, "reqId", what),
        bind_id=_req_int(obj, "bindId", what, low=0, high=_U32_MAX),
        kind=BindKind(kind),
        port=_req_int(obj, "port", what, low=1, high=65535),
        mode=BindMode(mode),
    )


def bind_error_to_json(req_id: int, code: int, error: str) -> bytes:
    """Encode a BIND_ERR payload."""
    return dump_json({"reqId": req_id, "code": code, "error": error})


def bind_error_from_json(payload: bytes | memoryview) -> tuple[int, int, str]:
    """Decode a BIND_ERR payload: ``(reqId, code, error)``; ``code`` is a u16.

    Raises:
        RemoteProtocolError: malformed.
    """
    what = "BIND_ERR"
    obj = load_json_object(payload, what)
    return (
        _req_int(obj, "reqId", what),
        _req_int(obj, "code", what, low=0, high=0xFFFF),
        _req_str(obj, "error", what),
    )


def unbind_to_json(bind_id: int) -> bytes:
    """Encode an UNBIND payload."""
    return dump_json({"bindId": bind_id})


def unbind_from_json(payload: bytes | memoryview) -> int:
    """Decode an UNBIND payload: the ``bindId`` (a u32).

    Raises:
        RemoteProtocolError: malformed.
    """
    return _req_int(load_json_object(payload, "UNBIND"), "bindId", "UNBIND", low=0, high=_U32_MAX)


def validate_bind_values(
    req_id: int, kind: object, port: object, mode: object, host_header: object = None
) -> BindRequest | str:
    """Check the values of a received BIND (docs/protocol.md §6), on the server.

    Args:
        req_id: the BIND's ``reqId`` (already known to be an integer).
        kind, port, mode: the raw JSON values (None when absent or null; mode defaults to tcp).
        host_header: the raw ``hostHeader`` value (optional; HTTP mode only, ignored for tcp):
            1 to 255 visible ASCII characters (docs/http-mode.md).

    Returns:
        The typed :class:`BindRequest`, or the text for BIND_ERR(PROTOCOL_ERROR). The text
        names the port and the reason, e.g. ``"port 70000: must be an integer from 1 to 65535"``.
    """
    prefix = f"port {_shown(port, 'missing')}"
    if not is_json_int(port) or not 1 <= port <= 65535:  # type: ignore[operator]
        return f"{prefix}: must be an integer from 1 to 65535"
    if kind not in ("EXPOSE", "PULL"):
        return f"{prefix}: kind must be \"EXPOSE\" or \"PULL\", got {_shown(kind)}"
    if mode is None:
        mode = "tcp"
    if mode not in ("tcp", "http"):
        return f"{prefix}: mode must be \"tcp\" or \"http\", got {_shown(mode)}"
    if kind == "PULL" and mode != "tcp":
        return f"{prefix}: PULL needs mode \"tcp\", got {_shown(mode)}"
    if host_header is not None and not _is_header_token(host_header):
        return f"{prefix}: hostHeader must be 1 to 255 visible ASCII characters, got {_shown(host_header)}"
    assert isinstance(port, int) and isinstance(kind, str) and isinstance(mode, str)
    return BindRequest(
        req_id=req_id,
        kind=BindKind(kind),
        port=port,
        mode=BindMode(mode),
        host_header=host_header if mode == "http" and isinstance(host_header, str) else None,
    )


def _is_header_token(value: object) -> bool:
    """A Host value the kit may write into a request head as it is: no space, no control."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= 255
        and all("\x21" <= ch <= "\x7e" for ch in value)
    )


def _shown(value: object, absent: str = "nothing") -> str:
    if value is None:
        return absent
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
