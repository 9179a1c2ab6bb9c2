from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client import generate_latest

from tunnel.metrics import LiveGauges, Metrics


def scrape(registry: CollectorRegistry) -> dict[str, tuple[str, str, list[tuple[dict[str, str], float]]]]:
    families = text_string_to_metric_families(generate_latest(registry).decode())
    return {
        family.name: (
            family.type,
            family.documentation,
            [(sample.labels, sample.value) for sample in family.samples],
        )
        for family in families
    }


def test_reference_gauges_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    state = {"sessions": 3}
    metrics.set_live_source(
        lambda: LiveGauges(
            sessions_active=state["sessions"],
            bindings_active=7,
            fd_permits_available=450,
            sessions_orphaned=1,
        )
    )
    scraped = scrape(registry)
    assert scraped["hoody_tunnel_sessions_active"] == (
        "gauge", "Number of active tunnel sessions", [({}, 3.0)]
    )
    assert scraped["hoody_tunnel_bindings_active"] == (
        "gauge", "Number of active bindings", [({}, 7.0)]
    )
    assert scraped["hoody_tunnel_fd_permits_available"] == (
        "gauge", "Available file descriptor permits", [({}, 450.0)]
    )
    assert scraped["hoody_tunnel_sessions_orphaned"][2] == [({}, 1.0)]

    state["sessions"] = 4
    assert scrape(registry)["hoody_tunnel_sessions_active"][2] == [({}, 4.0)]


def test_without_a_live_source_no_gauges_are_exported() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    assert "hoody_tunnel_sessions_active" not in scrape(registry)


def test_exact_reference_exposition_lines() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_live_source(lambda: LiveGauges(3, 7, 450, 0))
    text = generate_latest(registry).decode()
    assert (
        "# HELP hoody_tunnel_sessions_active Number of active tunnel sessions\n"
        "# TYPE hoody_tunnel_sessions_active gauge\n"
        "hoody_tunnel_sessions_active 3.0\n"
    ) in text
    assert "# HELP hoody_tunnel_fd_permits_available Available file descriptor permits\n" in text


def test_counters_and_histogram_have_prometheus_names() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.sessions_opened_total.inc()
    metrics.sessions_closed_total.labels(reason="normal").inc()
    metrics.handshake_failures_total.labels(reason="auth_failed").inc(2)
    metrics.streams_opened_total.labels(kind="PULL").inc()
    metrics.streams_refused_total.labels(reason="refused").inc()
    metrics.bytes_total.labels(direction="in").inc(100)
    metrics.goaways_sent_total.labels(code="SHUTDOWN").inc()
    metrics.goaways_received_total.labels(code="NORMAL").inc()
    metrics.fd_permit_exhausted_total.labels(path="session").inc()
    metrics.stream_open_latency_seconds.observe(0.003)

    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert values[("hoody_tunnel_sessions_opened_total", ())] == 1
    assert values[("hoody_tunnel_sessions_closed_total", (("reason", "normal"),))] == 1
    assert values[("hoody_tunnel_handshake_failures_total", (("reason", "auth_failed"),))] == 2
    assert values[("hoody_tunnel_streams_opened_total", (("kind", "PULL"),))] == 1
    assert values[("hoody_tunnel_streams_refused_total", (("reason", "refused"),))] == 1
    assert values[("hoody_tunnel_bytes_total", (("direction", "in"),))] == 100
    # Both directions exist before any traffic, so rate() has a series from the start.
    assert values[("hoody_tunnel_bytes_total", (("direction", "out"),))] == 0
    assert values[("hoody_tunnel_goaways_sent_total", (("code", "SHUTDOWN"),))] == 1
    assert values[("hoody_tunnel_goaways_received_total", (("code", "NORMAL"),))] == 1
    assert values[("hoody_tunnel_fd_permit_exhausted_total", (("path", "session"),))] == 1
    assert values[("hoody_tunnel_stream_open_latency_seconds_count", ())] == 1
    assert values[("hoody_tunnel_stream_open_latency_seconds_bucket", (("le", "0.005"),))] == 1
    assert values[("hoody_tunnel_stream_open_latency_seconds_bucket", (("le", "0.0025"),))] == 0


def test_two_instances_never_collide() -> None:
    # Module-level metrics would raise "Duplicated timeseries" on the second create_app().
    first, second = Metrics(CollectorRegistry()), Metrics(CollectorRegistry())
    first.sessions_opened_total.inc()
    assert second.sessions_opened_total._value.get() == 0  # noqa: SLF001
