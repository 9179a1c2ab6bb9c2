"""Metrics: every Prometheus metric of the kit, built against an explicit CollectorRegistry.

Nothing here is module-level: each ``create_app()`` builds its own ``Metrics(CollectorRegistry())``,
so a second app (tests) never collides with the first.

Live state (sessions, bindings, FD permits, orphans) is not kept in Gauges that code must remember
to move: a custom collector reads it at scrape time from the callable given to
:meth:`Metrics.set_live_source` (the kit's ``live_gauges``), so the numbers cannot drift from the
registry. The three gauges of the customer's reference keep their exact names and HELP texts
(docs/admin-api.md §5).

Labels stay low-cardinality: reasons, codes, kinds and directions from fixed sets; never a token,
session id, port or peer address (docs/admin-api.md §5).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "HTTP_ERROR_CAUSES",
    "HTTP_METHODS",
    "HTTP_REQUEST_DURATION_BUCKETS_S",
    "HttpStats",
    "LiveGauges",
    "Metrics",
    "STREAM_OPEN_LATENCY_BUCKETS_S",
]

# Loopback opens take well under a millisecond; a remote client's OPEN_OK takes an RTT or more.
STREAM_OPEN_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


# HTTP mode (docs/http-mode.md). Request durations run from a request head's arrival to the last
# byte of its response: an app's own latency is in them.
HTTP_REQUEST_DURATION_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
#: The ``method`` label's values: anything else counts as ``OTHER`` (bounded cardinality).
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
#: The ``cause`` label of kit-generated responses; the same words go in ``x-hoody-tunnel-error``.
HTTP_ERROR_CAUSES = (
    "bad_request",  # 400 (431, 501): malformed, smuggling-prone or unsupported request
    "connect_failed",  # 502: the client could not reach its local target
    "upstream_reset",  # 502: the local connection failed before a whole response came
    "bad_response",  # 502: the local target's answer is not valid HTTP/1.x
    "max_streams",  # 503: the session has maxStreams streams open
    "fd_exhausted",  # 503: no file descriptor permit left on the kit
    "reconnecting",  # 503: the session is parked and did not resume in time
    "tunnel_closed",  # 503: the session is closing or closed
)


@dataclass(frozen=True, slots=True)
class LiveGauges:
    """A snapshot of the kit's live state, taken at scrape time."""

    sessions_active: int
    bindings_active: int
    fd_permits_available: int
    sessions_orphaned: int


# (attribute of LiveGauges, metric name, HELP text). The first three are the customer's reference.
_LIVE_GAUGES = (
    ("sessions_active", "hoody_tunnel_sessions_active", "Number of active tunnel sessions"),
    ("bindings_active", "hoody_tunnel_bindings_active", "Number of active bindings"),
    (
        "fd_permits_available",
        "hoody_tunnel_fd_permits_available",
        "Available file descriptor permits",
    ),
    (
        "sessions_orphaned",
        "hoody_tunnel_sessions_orphaned",
        "Number of orphaned (parked, resumable) tunnel sessions",
    ),
)


class _LiveGaugeCollector(Collector):
    """Reads the live source at every scrape. Without a source it exports nothing."""

    def __init__(self) -> None:
        self.source: Callable[[], LiveGauges] | None = None

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check names at register time without calling the source.
        return [GaugeMetricFamily(name, help_text) for _, name, help_text in _LIVE_GAUGES]

    def collect(self) -> Iterable[Metric]:
        source = self.source
        if source is None:
            return []
        snapshot = source()
        return [
            GaugeMetricFamily(name, help_text, value=getattr(snapshot, attribute))
            for attribute, name, help_text in _LIVE_GAUGES
        ]


class Metrics:
    """The kit's metrics, registered in ``registry``. The kit increments the attributes directly.

    Counters (Prometheus adds ``_total`` to the exported name):

    - ``sessions_opened_total``: sessions that completed HELLO/WELCOME (resumes not included).
    - ``sessions_closed_total{reason}``: sessions that ended (parking is not an end); reason is
      how the connection ended (``peer_closed``, ``dead``, ``send_failed``, ``protocol_error``,
      ``message_too_big``, ``internal_error``), or for a close by the kit the GOAWAY code
      (``normal``, ``admin_close``, ``shutdown``, ``auth_failed``...), or ``expired`` (a parked
      session's TTL ran out).
    - ``handshake_failures_total{reason}``: connections that never got a WELCOME; reason
      ``auth``, ``timeout``, ``protocol_error`` or ``resource_exhausted`` (refused resumes are
      counted in ``resumes_total{outcome="failed"}``).
    - ``streams_opened_total{kind}``: streams opened, kind ``expose`` or ``pull``.
    - ``streams_refused_total{reason}``: OPENs answered with RST, reason e.g. ``refused``,
      ``resource_exhausted``, ``connect_failed``, ``not_found``.
    - ``bytes_total{direction}``: DATA payload bytes through the kit; ``in`` = received from
      tunnel clients, ``out`` = sent to tunnel clients.
    - ``goaways_sent_total{code}`` / ``goaways_received_total{code}``: by error code name
      (``NORMAL``, ``SHUTDOWN``, ...).
    - ``fd_permit_exhausted_total{path}``: times an FD permit was wanted and none was left;
      path ``session``, ``bind``, ``pull_stream`` or ``expose_accept``.

    - ``sessions_parked_total``: v2 sessions parked (WebSocket lost without GOAWAY).
    - ``resumes_total{outcome}``: HELLO.resume attempts, ``resumed`` or ``failed``.

    Histograms: ``stream_open_latency_seconds``: OPEN sent or received until the stream is
    established (OPEN_OK), in seconds; ``outage_duration_seconds``: how long resumed sessions
    were parked.

    HTTP mode (EXPOSE bindings with mode ``http``):

    - ``http_requests_total{method,status_class}``: requests answered (by the app or the kit);
      method from :data:`HTTP_METHODS` or ``OTHER``, status class ``1xx``..``5xx``.
    - ``http_request_duration_seconds``: from the request head to the response's last byte.
    - ``http_bytes_total{direction}``: HTTP message bytes, ``request`` (to the app, as
      forwarded) or ``response`` (to the HTTP client).
    - ``http_error_responses_total{cause}``: responses the kit answered itself, cause from
      :data:`HTTP_ERROR_CAUSES`.
    - ``http_requests_held_total{outcome}``: new requests that arrived while the session was
      parked: ``served`` after the resume, or ``timed_out`` (answered 503).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._live = _LiveGaugeCollector()
        registry.register(self._live)

        self.sessions_opened_total = Counter(
            "hoody_tunnel_sessions_opened",
            "Tunnel sessions opened (HELLO accepted, WELCOME sent)",
            registry=registry,
        )
        self.sessions_closed_total = Counter(
            "hoody_tunnel_sessions_closed",
            "Tunnel sessions closed, by reason",
            ["reason"],
            registry=registry,
        )
        self.handshake_failures_total = Counter(
            "hoody_tunnel_handshake_failures",
            "WebSocket connections that ended before a WELCOME, by reason",
            ["reason"],
            registry=registry,
        )
        self.streams_opened_total = Counter(
            "hoody_tunnel_streams_opened",
            "Streams opened, by binding kind (EXPOSE or PULL)",
            ["kind"],
            registry=registry,
        )
        self.streams_refused_total = Counter(
            "hoody_tunnel_streams_refused",
            "Stream OPENs refused with RST, by reason",
            ["reason"],
            registry=registry,
        )
        self.bytes_total = Counter(
            "hoody_tunnel_bytes",
            "Stream payload bytes carried, by direction (in: from tunnel clients, out: to them)",
            ["direction"],
            registry=registry,
        )
        self.goaways_sent_total = Counter(
            "hoody_tunnel_goaways_sent",
            "GOAWAY frames sent, by error code name",
            ["code"],
            registry=registry,
        )
        self.goaways_received_total = Counter(
            "hoody_tunnel_goaways_received",
            "GOAWAY frames received, by error code name",
            ["code"],
            registry=registry,
        )
        self.fd_permit_exhausted_total = Counter(
            "hoody_tunnel_fd_permit_exhausted",
            "Times a file descriptor permit was needed and none was available, by path",
            ["path"],
            registry=registry,
        )
        self.sessions_parked_total = Counter(
            "hoody_tunnel_sessions_parked",
            "v2 sessions parked after losing their WebSocket without GOAWAY",
            registry=registry,
        )
        self.resumes_total = Counter(
            "hoody_tunnel_resumes",
            "Resume attempts (HELLO.resume), by outcome: resumed or failed",
            ["outcome"],
            registry=registry,
        )
        self.outage_duration_seconds = Histogram(
            "hoody_tunnel_outage_duration_seconds",
            "How long resumed sessions were parked, in seconds",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=registry,
        )
        self.stream_open_latency_seconds = Histogram(
            "hoody_tunnel_stream_open_latency_seconds",
            "Time from a stream's OPEN to its OPEN_OK, in seconds",
            buckets=STREAM_OPEN_LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Four HTTP-mode metrics are counted per request in plain integers and turned into
        # metric families at scrape time (HttpStats).
        self.http = HttpStats()
        registry.register(_HttpStatsCollector(self.http))
        self.http_requests_held_total = Counter(
            "hoody_tunnel_http_requests_held",
            "HTTP-mode requests held while their session was parked, by outcome (served, timed_out)",
            ["outcome"],
            registry=registry,
        )
        # Both directions exist from the first scrape, so rate() works before any traffic.
        for direction in ("in", "out"):
            self.bytes_total.labels(direction=direction)

    def set_live_source(self, source: Callable[[], LiveGauges]) -> None:
        """Read the live gauges from ``source()`` at every scrape (replaces any earlier source)."""
        self._live.source = source


class HttpStats:
    """HTTP mode's per-request numbers, as plain numbers read by a collector at scrape time.

    Each request moves four metrics (requests, duration, bytes, kit errors). Through
    prometheus_client's Counter and Histogram every move takes a lock, a Python-level one in
    gevent's patched worker: together about 6 % of the kit's CPU in the HTTP bench. The kit runs
    in one thread of greenlets, so plain numbers are safe, and the scrape reads them as they are.
    """

    __slots__ = ("duration_buckets", "duration_sum_s", "errors", "request_bytes", "requests", "response_bytes")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (method, status class) -> count
        self.request_bytes = 0
        self.response_bytes = 0
        self.errors: dict[str, int] = {}  # cause -> count
        # One count per bucket of HTTP_REQUEST_DURATION_BUCKETS_S, and a last one for +Inf.
        self.duration_buckets = [0] * (len(HTTP_REQUEST_DURATION_BUCKETS_S) + 1)
        self.duration_sum_s = 0.0

    def observe(
        self,
        method: str,
        status_class: str,
        duration_s: float,
        bytes_in: int,
        bytes_out: int,
        error_cause: str | None,
    ) -> None:
        """One request answered: ``method`` from HTTP_METHODS or ``OTHER``, ``status_class``
        ``1xx``..``5xx`` or ``none``, bytes to the app and to the HTTP client."""
        key = (method, status_class)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self.duration_buckets[bisect_left(HTTP_REQUEST_DURATION_BUCKETS_S, duration_s)] += 1
        self.duration_sum_s += duration_s
        self.request_bytes += bytes_in
        self.response_bytes += bytes_out
        if error_cause is not None:
            self.errors[error_cause] = self.errors.get(error_cause, 0) + 1


class _HttpStatsCollector(Collector):
    """HttpStats as the metric families a Counter and a Histogram would expose."""

    def __init__(self, stats: HttpStats) -> None:
        self.stats = stats

    def describe(self) -> Iterable[Metric]:
        return self._families(HttpStats())

    def collect(self) -> Iterable[Metric]:
        return self._families(self.stats)

    @staticmethod
    def _families(stats: HttpStats) -> list[Metric]:
        requests = CounterMetricFamily(
            "hoody_tunnel_http_requests",
            "HTTP-mode requests answered, by method and status class",
            labels=["method", "status_class"],
        )
        for (method, status_class), count in sorted(stats.requests.items()):
            requests.add_metric([method, status_class], count)
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*HTTP_REQUEST_DURATION_BUCKETS_S, float("inf")), stats.duration_buckets):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        duration = HistogramMetricFamily(
            "hoody_tunnel_http_request_duration_seconds",
            "HTTP-mode request duration, from the request head to the response's last byte, in seconds",
            buckets=buckets,
            sum_value=stats.duration_sum_s,
        )
        http_bytes = CounterMetricFamily(
            "hoody_tunnel_http_bytes",
            "HTTP-mode message bytes, by direction (request: to the app, response: to the HTTP client)",
            labels=["direction"],
        )
        http_bytes.add_metric(["request"], stats.request_bytes)
        http_bytes.add_metric(["response"], stats.response_bytes)
        errors = CounterMetricFamily(
            "hoody_tunnel_http_error_responses",
            "HTTP-mode responses generated by the kit itself, by cause",
            labels=["cause"],
        )
        for cause, count in sorted(stats.errors.items()):
            errors.add_metric([cause], count)
        return [requests, duration, http_bytes, errors]
