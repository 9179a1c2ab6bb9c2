"""Results: one ``PathResult`` per path, the fixed-width table, the ratios and the JSON document."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MIB = 1 << 20

PATH_ORDER = ("direct", "pull", "expose", "ssh -L", "gevent chain")
CHAIN = "gevent chain"
# RTT p50 of PULL and EXPOSE against the gevent chain's (the floor of a two-process gevent tunnel)
CHAIN_RTT_TARGET = 1.2
# Who spends the CPU per round trip on each path: (server side, client side).
CPU_SIDES = {
    "pull": ("kit worker", "tunnel client"),
    "expose": ("kit worker", "tunnel client"),
    "ssh -L": ("sshd", "ssh"),
    CHAIN: ("relay B", "relay A"),
}
# (path, baseline) pairs of the ratio table, in order.
RATIO_PAIRS = (
    ("pull", "direct"), ("expose", "direct"), ("ssh -L", "direct"), (CHAIN, "direct"),
    ("pull", "ssh -L"), ("expose", "ssh -L"), (CHAIN, "ssh -L"),
    ("pull", CHAIN), ("expose", CHAIN),
)

# (key, heading, format, higher is better)
COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("up_mb_s", "up MB/s", "{:.1f}", True),
    ("down_mb_s", "down MB/s", "{:.1f}", True),
    ("rtt_p50_us", "rtt p50 µs", "{:.0f}", False),
    ("rtt_p99_us", "rtt p99 µs", "{:.0f}", False),
    ("echo_s", "{conns}-conn echo s (err)", "{:.2f}", False),
    ("setups_per_s", "setups/s", "{:.0f}", True),
)


@dataclass
class PathResult:
    name: str
    up_mb_s: float | None = None
    down_mb_s: float | None = None
    rtt_p50_us: float | None = None
    rtt_p99_us: float | None = None
    echo_s: float | None = None
    echo_errors: int | None = None
    echo_first_error: str | None = None
    echo_ok_s: float | None = None  # when the last successful echo connection finished
    setups_per_s: float | None = None
    setups_count: int | None = None
    setups_errors: int | None = None
    setups_first_error: str | None = None
    # CPU (user + system) per measured round trip of the RTT phase, in µs: the kit worker or
    # server side, and the tunnel client or client side (see CPU_SIDES); None: not measured
    rtt_server_cpu_us: float | None = None
    rtt_client_cpu_us: float | None = None
    rtt_cpu_error: str | None = None
    # metric key -> why it has no value (failed, or skipped after the path died)
    failures: dict[str, str] = field(default_factory=dict)
    # set when the path could not be set up at all
    row_error: str | None = None
    # the path cannot exist on this machine (no OpenSSH): not a failure of the bench
    unavailable: bool = False
    duration_s: float | None = None

    def value(self, key: str) -> float | None:
        result: float | None = getattr(self, key)
        return result


@dataclass
class Report:
    config: dict[str, Any]
    paths: dict[str, PathResult]
    kit_peak_rss_mib: float | None = None
    kit_idle_rss_mib: float | None = None
    kit_phase_peak_rss_mib: dict[str, float] = field(default_factory=dict)
    client_peak_rss_mib: float | None = None
    notes: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)


def _short(reason: str, limit: int = 240) -> str:
    first = reason.strip().splitlines()[0] if reason.strip() else "unknown"
    return first if len(first) <= limit else first[: limit - 3] + "..."


def format_table(report: Report) -> str:
    conns = report.config.get("conns", 200)
    headings = ["path"] + [h.format(conns=conns) for _, h, _, _ in COLUMNS]
    rows: list[list[str]] = []
    footnotes: list[str] = []

    def note(text: str) -> str:
        if text not in footnotes:
            footnotes.append(text)
        return f"[{footnotes.index(text) + 1}]"

    for name in PATH_ORDER:
        result = report.paths.get(name)
        if result is None:
            continue
        if result.row_error is not None:
            rows.append([name, f"FAILED {note(f'{name}: ' + _short(result.row_error))}"])
            continue
        cells = [name]
        for key, _, fmt, _ in COLUMNS:
            value = result.value(key)
            if value is None:
                reason = result.failures.get(key, "not measured")
                cells.append(f"fail{note(f'{name}: ' + _short(reason))}")
            elif key == "echo_s":
                cell = f"{fmt.format(value)} ({result.echo_errors})"
                if result.echo_errors and result.echo_first_error:
                    ok = conns - result.echo_errors
                    done = f" ({ok} ok, the last after {result.echo_ok_s:.2f} s)" \
                        if result.echo_ok_s is not None else ""
                    cell += note(f"{name} echo: {result.echo_errors} errors{done}; first: "
                                 f"{_short(result.echo_first_error)}")
                cells.append(cell)
            elif key == "setups_per_s" and result.setups_errors:
                cells.append(fmt.format(value) + note(
                    f"{name} setups: {result.setups_errors} failed of "
                    f"{(result.setups_count or 0) + result.setups_errors}; first: "
                    f"{_short(result.setups_first_error or '')}"))
            else:
                cells.append(fmt.format(value))
        rows.append(cells)

    widths = [len(h) for h in headings]
    widths[0] = max([widths[0]] + [len(row[0]) for row in rows])
    for row in rows:
        if len(row) == len(headings):
            widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i])
                       for i, h in enumerate(headings))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if len(row) == len(headings):
            lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                                   for i, c in enumerate(row)))
        else:
            lines.append(f"{row[0].ljust(widths[0])}  {row[1]}")
    lines.append("")
    lines.append(format_rss(report))
    cpu = format_cpu(report)
    if cpu:
        lines.append(cpu)
    commit = report.environment.get("kit_commit")
    if commit:
        dirty = " + uncommitted changes" if report.environment.get("kit_uncommitted_changes") else ""
        lines.append(f"kit measured: tunnel/ at {commit}{dirty}")
    ratios = format_ratios(report)
    if ratios:
        lines.append("")
        lines.append(ratios)
    if footnotes:
        lines.append("")
        lines.extend(f"[{i}] {text}" for i, text in enumerate(footnotes, 1))
    if report.notes:
        lines.append("")
        lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)


def format_rss(report: Report) -> str:
    if report.kit_peak_rss_mib is None:
        return "kit peak RSS (gunicorn worker): not measured (the kit did not run)"
    text = f"kit peak RSS (gunicorn worker): {report.kit_peak_rss_mib:.1f} MiB"
    extras = []
    if report.kit_idle_rss_mib is not None:
        extras.append(f"idle after start {report.kit_idle_rss_mib:.1f} MiB")
    for phase in ("pull", "expose"):
        if phase in report.kit_phase_peak_rss_mib:
            extras.append(f"peak during {phase} {report.kit_phase_peak_rss_mib[phase]:.1f} MiB")
    if report.client_peak_rss_mib is not None:
        extras.append(f"tunnel client peak {report.client_peak_rss_mib:.1f} MiB")
    if extras:
        text += " (" + "; ".join(extras) + ")"
    return text


def ratios(report: Report) -> dict[str, dict[str, float]]:
    """{"pull / direct": {"up_mb_s": 0.12, ...}, ...}: path value divided by the baseline's."""
    out: dict[str, dict[str, float]] = {}
    for path, base in RATIO_PAIRS:
        pr, br = report.paths.get(path), report.paths.get(base)
        if pr is None or br is None or pr.row_error or br.row_error:
            continue
        values: dict[str, float] = {}
        for key, _, _, _ in COLUMNS:
            if key == "echo_s" and (pr.echo_errors or br.echo_errors):
                continue  # a wall time held up by failed connections compares nothing
            a, b = pr.value(key), br.value(key)
            if a is not None and b is not None and b > 0:
                values[key] = a / b
        path_cpu, base_cpu = _cpu_total(pr), _cpu_total(br)
        if path_cpu is not None and base_cpu:
            values["rtt_cpu_us"] = path_cpu / base_cpu
        if values:
            out[f"{path} / {base}"] = values
    return out


def _cpu_total(result: PathResult) -> float | None:
    if result.rtt_server_cpu_us is None or result.rtt_client_cpu_us is None:
        return None
    return result.rtt_server_cpu_us + result.rtt_client_cpu_us


def format_cpu(report: Report) -> str:
    """CPU per round trip of the RTT phase, per path that has processes of its own."""
    rtt_count = report.config.get("rtt_count", 0)
    payload = report.config.get("rtt_payload_bytes", 64)
    rows = []
    for name in PATH_ORDER:
        result = report.paths.get(name)
        if result is None or name not in CPU_SIDES or result.row_error:
            continue
        server, client = CPU_SIDES[name]
        total = _cpu_total(result)
        if total is None:
            why = result.rtt_cpu_error or result.failures.get("rtt_p50_us") or "not measured"
            rows.append(f"  {name:<13} not measured ({_short(why)})")
            continue
        assert result.rtt_server_cpu_us is not None and result.rtt_client_cpu_us is not None
        rows.append(f"  {name:<13} {server} {result.rtt_server_cpu_us:5.1f} µs + {client} "
                    f"{result.rtt_client_cpu_us:5.1f} µs = {total:5.1f} µs")
    if not rows:
        return ""
    return "\n".join([f"CPU per {payload} B round trip (user + system, over the {rtt_count} "
                      f"measured round trips; read from /proc/PID/task/*/schedstat):", *rows])


def format_ratios(report: Report) -> str:
    table = ratios(report)
    if not table:
        return ""
    keys = [k for k, _, _, _ in COLUMNS] + ["rtt_cpu_us"]
    headings = ["ratio"] + [h.split(" (")[0].format(conns=report.config.get("conns", 200))
                            for _, h, _, _ in COLUMNS] + ["cpu µs/rtt"]
    rows = []
    for label, values in table.items():
        rows.append([label] + [f"{values[k]:.2f}x" if k in values else "-" for k in keys])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headings)]
    lines = ["  ".join(h.ljust(widths[0]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(headings))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(row)))
    lines.append("(path value / baseline value: above 1x is better for MB/s and setups/s, "
                 "below 1x is better for µs and echo seconds)")
    verdicts = []
    for path in ("pull", "expose"):
        value = table.get(f"{path} / {CHAIN}", {}).get("rtt_p50_us")
        if value is not None:
            verdict = "meets" if value <= CHAIN_RTT_TARGET else "MISSES"
            verdicts.append(f"{path} {value:.2f}x ({verdict})")
    if verdicts:
        lines.append(f"rtt p50 against the gevent chain, target <= {CHAIN_RTT_TARGET:.1f}x: "
                     + "; ".join(verdicts))
    return "\n".join(lines)


def write_json(report: Report, path: Path) -> None:
    document = {
        "config": report.config,
        "environment": report.environment,
        "paths": {name: asdict(result) for name, result in report.paths.items()},
        "kit_peak_rss_mib": report.kit_peak_rss_mib,
        "kit_idle_rss_mib": report.kit_idle_rss_mib,
        "kit_phase_peak_rss_mib": report.kit_phase_peak_rss_mib,
        "client_peak_rss_mib": report.client_peak_rss_mib,
        "ratios": ratios(report),
        "notes": report.notes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
