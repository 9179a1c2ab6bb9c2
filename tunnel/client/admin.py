"""The admin API SDK: typed calls to a kit's management endpoints (docs/admin-api.md §2).

Method names follow the customer's TypeScript client (``client.tunnel.*``)::

    client.tunnel.health.check()   ->  AdminClient(...).health.check()
    client.tunnel.getMetrics()     ->  .get_metrics()
    client.tunnel.listSessions()   ->  .list_sessions()
    client.tunnel.listBindings()   ->  .list_bindings()
    client.tunnel.listTunnels()    ->  .list_tunnels()
    client.tunnel.killSession(...) ->  .kill_session(session_id, grace_ms=None)

Standard library only (``http.client``): the SDK never imports the server or the API, and works
under gevent's monkeypatching as well as without it. Every call returns frozen dataclasses; the
exact response body is kept in ``raw`` of the top-level result (``--json`` prints it unchanged).
Fields the reference does not define (``state``, ``bytesIn``...) are read when present and None
otherwise, so the SDK also reads a kit that only has the reference's fields. Unknown fields are
ignored.

Errors are :class:`AdminError` with ``status`` (the HTTP status, None when no answer came) and
``error`` (the API's ``{"error": ...}`` string, or a description of what went wrong).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from tunnel import __version__
from tunnel.protocol import TunnelError

__all__ = [
    "API_PREFIX",
    "DEFAULT_SERVER",
    "AdminClient",
    "AdminConnectionError",
    "AdminError",
    "AdminResponseError",
    "BindingDetail",
    "BindingInfo",
    "BindingList",
    "Health",
    "HealthApi",
    "Memory",
    "MetricSample",
    "Metrics",
    "SessionClosing",
    "SessionInfo",
    "SessionList",
    "TunnelBinding",
    "TunnelSession",
    "TunnelsOverview",
    "parse_metrics_text",
]

DEFAULT_SERVER = "http://127.0.0.1:8080"
API_PREFIX = "/api/v1/tunnel"
DEFAULT_TIMEOUT_S = 10.0


# -- errors ----------------------------------------------------------------------------------------


class AdminError(TunnelError):
    """A call failed: ``status`` is the HTTP status (None: no answer), ``error`` says why."""

    def __init__(self, status: int | None, error: str) -> None:
        super().__init__(f"{status} {error}" if status is not None else error)
        self.status = status
        self.error = error


class AdminConnectionError(AdminError):
    """The kit could not be reached (refused, unresolvable, timed out, connection dropped)."""

    def __init__(self, error: str) -> None:
        super().__init__(None, error)


class AdminResponseError(AdminError):
    """The kit answered, but not with what the reference says (not JSON, a field missing...)."""


# -- results -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    heap: int
    rss: int


@dataclass(frozen=True, slots=True)
class Health:
    status: str
    service: str
    built: str | None
    started: str
    memory: Memory | None
    fds: int | None
    pid: int
    ip: str
    user_agent: str
    raw: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class MetricSample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(frozen=True, slots=True)
class Metrics:
    """The Prometheus text, and its samples."""

    samples: tuple[MetricSample, ...]
    raw: str = field(default="", repr=False, compare=False)

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the sample ``name`` with exactly ``labels``, or None."""
        wanted = tuple(sorted(labels.items()))
        for sample in self.samples:
            if sample.name == name and sample.labels == wanted:
                return sample.value
        return None

    @property
    def sessions_active(self) -> float | None:
        return self.value("hoody_tunnel_sessions_active")

    @property
    def bindings_active(self) -> float | None:
        return self.value("hoody_tunnel_bindings_active")

    @property
    def fd_permits_available(self) -> float | None:
        return self.value("hoody_tunnel_fd_permits_available")


@dataclass(frozen=True, slots=True)
class BindingInfo:
    bind_id: int
    container_port: int
    kind: str
    mode: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    session_id: str
    peer_addr: str
    is_v2: bool
    connections_granted: int
    active_streams: int
    max_streams: int
    bindings: tuple[BindingInfo, ...]
    # Not in the reference: None when the kit does not send them.
    state: str | None = None
    protocol: str | None = None
    client: str | None = None
    user_agent: str | None = None
    created_at: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    rtt_ms: float | None = None


@dataclass(frozen=True, slots=True)
class SessionList:
    sessions: tuple[SessionInfo, ...]
    total: int
    raw: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class BindingDetail:
    bind_id: int
    kind: str
    mode: str
    port: int
    session_id: str


@dataclass(frozen=True, slots=True)
class BindingList:
    bindings: tuple[BindingDetail, ...]
    total: int
    raw: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class TunnelBinding:
    bind_id: int
    container_port: int
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class TunnelSession:
    session_id: str
    peer_addr: str
    protocol: str
    connections_granted: int
    active_streams: int
    expose_bindings: tuple[TunnelBinding, ...]
    pull_bindings: tuple[TunnelBinding, ...]
    state: str | None = None


@dataclass(frozen=True, slots=True)
class TunnelsOverview:
    fd_permits_available: int
    orphaned_sessions: int
    total_bindings: int
    total_streams: int
    sessions: tuple[TunnelSession, ...]
    fd_budget: int | None = None
    raw: str = field(default="", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class SessionClosing:
    session_id: str
    status: str
    raw: str = field(default="", repr=False, compare=False)


# -- reading JSON with types ---------------------------------------------------------------------------


class _Object:
    """A JSON object whose fields are read with their reference type, or AdminResponseError."""

    def __init__(self, value: object, where: str, status: int) -> None:
        if not isinstance(value, dict):
            raise AdminResponseError(status, f"{where}: expected a JSON object")
        self._value: dict[str, Any] = value
        self._where = where
        self._status = status

    def _get(self, key: str, types: tuple[type, ...], *, optional: bool, nullable: bool) -> Any:
        if key not in self._value:
            if optional:
                return None
            raise AdminResponseError(self._status, f"{self._where}: missing field {key!r}")
        value = self._value[key]
        if value is None and nullable:
            return None
        # bool is an int in Python, never in JSON.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise AdminResponseError(
                self._status, f"{self._where}: field {key!r} has the wrong type"
            )
        return value

    def text(self, key: str, *, optional: bool = False, nullable: bool = False) -> Any:
        return self._get(key, (str,), optional=optional, nullable=nullable)

    def integer(self, key: str, *, optional: bool = False, nullable: bool = False) -> Any:
        return self._get(key, (int,), optional=optional, nullable=nullable)

    def number(self, key: str, *, optional: bool = False, nullable: bool = False) -> Any:
        value = self._get(key, (int, float), optional=optional, nullable=nullable)
        return None if value is None else float(value)

    def boolean(self, key: str) -> bool:
        return bool(self._get(key, (bool,), optional=False, nullable=False))

    def objects(self, key: str) -> list[_Object]:
        items = self._get(key, (list,), optional=False, nullable=False)
        return [_Object(item, f"{self._where}.{key}[{i}]", self._status) for i, item in enumerate(items)]

    def nested(self, key: str, *, nullable: bool = False) -> _Object | None:
        value = self._get(key, (dict,), optional=False, nullable=nullable)
        return None if value is None else _Object(value, f"{self._where}.{key}", self._status)



# -- Prometheus text -------------------------------------------------------------------------------

_SAMPLE_LINE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_metrics_text(text: str) -> tuple[MetricSample, ...]:
    """Samples of a Prometheus text exposition (format 0.0.4); comments are skipped.

    Raises:
        ValueError: a line that is not a sample.
    """
    samples: list[MetricSample] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"not a metrics sample: {line[:80]!r}")
        name, label_text, value_text = match.groups()
        labels: list[tuple[str, str]] = []
        if label_text:
            inner = label_text[1:-1]
            position = 0
            while position < len(inner):
                label = _LABEL.match(inner, position)
                if label is None or label.end() == position:
                    raise ValueError(f"bad labels in: {line[:80]!r}")
                value = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], label.group(2))
                labels.append((label.group(1), value))
                position = label.end()
        samples.append(MetricSample(name, tuple(sorted(labels)), float(value_text)))
    return tuple(samples)


# -- the client ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    content_type: str
    body: str


class HealthApi:
    """``client.health``: GET /health (no token needed)."""

    def __init__(self, client: AdminClient) -> None:
        self._client = client

    def check(self) -> Health:
        reply = self._client._request("GET", "/health", authorize=False)
        body = self._client._json(reply)
        memory = body.nested("memory", nullable=True)
        return Health(
            status=body.text("status"),
            service=body.text("service"),
            built=body.text("built", nullable=True),
            started=body.text("started"),
            memory=None if memory is None else Memory(heap=memory.integer("heap"), rss=memory.integer("rss")),
            fds=body.integer("fds", nullable=True),
            pid=body.integer("pid"),
            ip=body.text("ip"),
            user_agent=body.text("userAgent"),
            raw=reply.body,
        )


class AdminClient:
    """A kit's admin API at ``server`` (``http://`` or ``https://``, optionally a base path).

    Args:
        server: the kit's URL; ``ws://``/``wss://`` are taken as ``http://``/``https://`` and a
            bare ``host:port`` as ``http://host:port``.
        admin_token: sent as ``Authorization: Bearer ...`` on the calls that need it.
        timeout_s: bound on connecting and on each read.

    Raises:
        ValueError: ``server`` is not a usable URL.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        admin_token: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        text = server.strip()
        if "://" not in text:
            text = f"http://{text}"
        parts = urlsplit(text)
        scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {server!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in URL: {server!r}") from None
        self.server = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._secure = scheme == "https"
        self._host = parts.hostname
        self._port = port
        self._base_path = parts.path.rstrip("/")
        self._admin_token = admin_token
        self._timeout_s = timeout_s
        self.health = HealthApi(self)

    def __repr__(self) -> str:
        # The token never shows, not even in a repr.
        return f"AdminClient(server={self.server!r}, admin_token={'<set>' if self._admin_token else None})"

    # -- calls -----------------------------------------------------------------------------------

    def get_metrics(self) -> Metrics:
        """GET /metrics (no token needed)."""
        reply = self._request("GET", "/metrics", authorize=False)
        try:
            samples = parse_metrics_text(reply.body)
        except ValueError as exc:
            raise AdminResponseError(reply.status, f"metrics: {exc}") from None
        return Metrics(samples=samples, raw=reply.body)

    def list_sessions(self) -> SessionList:
        """GET /sessions."""
        reply = self._request("GET", "/sessions")
        body = self._json(reply)
        return SessionList(
            sessions=tuple(_session_info(item) for item in body.objects("sessions")),
            total=body.integer("total"),
            raw=reply.body,
        )

    def list_bindings(self) -> BindingList:
        """GET /bindings."""
        reply = self._request("GET", "/bindings")
        body = self._json(reply)
        return BindingList(
            bindings=tuple(
                BindingDetail(
                    bind_id=item.integer("bindId"),
                    kind=item.text("kind"),
                    mode=item.text("mode"),
                    port=item.integer("port"),
                    session_id=item.text("sessionId"),
                )
                for item in body.objects("bindings")
            ),
            total=body.integer("total"),
            raw=reply.body,
        )

    def list_tunnels(self) -> TunnelsOverview:
        """GET /tunnels."""
        reply = self._request("GET", "/tunnels")
        body = self._json(reply)
        return TunnelsOverview(
            fd_permits_available=body.integer("fdPermitsAvailable"),
            orphaned_sessions=body.integer("orphanedSessions"),
            total_bindings=body.integer("totalBindings"),
            total_streams=body.integer("totalStreams"),
            sessions=tuple(_tunnel_session(item) for item in body.objects("sessions")),
            fd_budget=body.integer("fdBudget", optional=True),
            raw=reply.body,
        )

    def kill_session(self, session_id: str, grace_ms: int | None = None) -> SessionClosing:
        """DELETE /sessions/{session_id}[?grace_ms=N]: close a session (GOAWAY "closed by admin").

        Raises:
            AdminError: 400 for a grace_ms outside 0-5000, 404 ``Session not found``, 401...
        """
        path = f"/sessions/{quote(session_id, safe='')}"
        if grace_ms is not None:
            path += f"?grace_ms={int(grace_ms)}"
        reply = self._request("DELETE", path)
        body = self._json(reply)
        return SessionClosing(session_id=body.text("sessionId"), status=body.text("status"), raw=reply.body)

    # -- HTTP ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, authorize: bool = True) -> _Reply:
        headers = {"Accept": "application/json", "User-Agent": f"hoody-tunnel-admin/{__version__}"}
        if authorize and self._admin_token:
            headers["Authorization"] = f"Bearer {self._admin_token}"
        connection: http.client.HTTPConnection
        if self._secure:
            connection = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout_s)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        try:
            connection.request(method, f"{self._base_path}{API_PREFIX}{path}", headers=headers)
            response = connection.getresponse()
            raw = response.read()
            content_type = response.getheader("Content-Type", "") or ""
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            raise AdminConnectionError(f"cannot reach the kit at {self.server}: {_reason(exc)}") from exc
        finally:
            connection.close()
        body = raw.decode("utf-8", "replace")
        if status >= 400:
            raise AdminError(status, _error_text(body, response.reason))
        return _Reply(status, content_type, body)

    @staticmethod
    def _json(reply: _Reply) -> _Object:
        try:
            value = json.loads(reply.body)
        except ValueError:
            raise AdminResponseError(reply.status, "the kit's answer is not JSON") from None
        return _Object(value, "response", reply.status)


def _error_text(body: str, reason: str) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        return reason
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    return reason


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _session_info(item: _Object) -> SessionInfo:
    return SessionInfo(
        session_id=item.text("sessionId"),
        peer_addr=item.text("peerAddr"),
        is_v2=item.boolean("isV2"),
        connections_granted=item.integer("connectionsGranted"),
        active_streams=item.integer("activeStreams"),
        max_streams=item.integer("maxStreams"),
        bindings=tuple(
            BindingInfo(
                bind_id=binding.integer("bindId"),
                container_port=binding.integer("containerPort"),
                kind=binding.text("kind"),
                mode=binding.text("mode"),
            )
            for binding in item.objects("bindings")
        ),
        state=item.text("state", optional=True),
        protocol=item.text("protocol", optional=True),
        client=item.text("client", optional=True),
        user_agent=item.text("userAgent", optional=True),
        created_at=item.text("createdAt", optional=True),
        bytes_in=item.integer("bytesIn", optional=True),
        bytes_out=item.integer("bytesOut", optional=True),
        rtt_ms=item.number("rttMs", optional=True, nullable=True),
    )


def _tunnel_session(item: _Object) -> TunnelSession:
    def bindings(key: str) -> tuple[TunnelBinding, ...]:
        return tuple(
            TunnelBinding(
                bind_id=binding.integer("bindId"),
                container_port=binding.integer("containerPort"),
                mode=binding.text("mode", optional=True),
            )
            for binding in item.objects(key)
        )

    return TunnelSession(
        session_id=item.text("sessionId"),
        peer_addr=item.text("peerAddr"),
        protocol=item.text("protocol"),
        connections_granted=item.integer("connectionsGranted"),
        active_streams=item.integer("activeStreams"),
        expose_bindings=bindings("exposeBindings"),
        pull_bindings=bindings("pullBindings"),
        state=item.text("state", optional=True),
    )
