"""The admin subcommands of ``hoody-tunnel``: health, metrics, sessions, bindings, tunnels, kill.

::

    hoody-tunnel health|metrics|sessions|bindings|tunnels [--server URL] [--admin-token T] [--json]
    hoody-tunnel kill SESSION_ID [--grace-ms N] [--server URL] [--admin-token T] [--json]

Readable tables by default; ``--json`` prints the API's JSON body unchanged (``metrics`` has no
JSON of its own: there ``--json`` gives its samples as a JSON list, and the default output is the
exposition's sample lines). The server comes from ``--server``, else ``$HOODY_TUNNEL_SERVER``,
else ``http://127.0.0.1:8080``; the admin token from ``--admin-token``, else
``$HOODY_TUNNEL_ADMIN_TOKEN``, else the token a kit on this machine generated and stored
(tunnel.credentials). health and metrics need no token.

Exit codes (as ``connect``'s): 0 ok; 1 failure (the kit unreachable, ``Session not found``, any
other refusal); 2 usage (a bad option, no token, a grace_ms the kit refuses); 4 admin token
refused (401).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any, TextIO

from tunnel.client.admin import (
    DEFAULT_SERVER,
    AdminClient,
    AdminConnectionError,
    AdminError,
    BindingList,
    Health,
    Metrics,
    SessionClosing,
    SessionList,
    TunnelBinding,
    TunnelsOverview,
)
from tunnel.config import ConfigError, default_state_dir
from tunnel.credentials import credentials_path, load_local_credentials

__all__ = ["COMMANDS", "EXIT_AUTH", "EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "add_commands", "run"]

# The same numbers as `hoody-tunnel connect` (tunnel.client.connector); repeated here so the
# admin commands do not load the tunnel machinery (gevent, the protocol) to print a table.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 4

SERVER_ENV = "HOODY_TUNNEL_SERVER"
ADMIN_TOKEN_ENV = "HOODY_TUNNEL_ADMIN_TOKEN"

COMMANDS = ("health", "metrics", "sessions", "bindings", "tunnels", "kill")
_PUBLIC = ("health", "metrics")


def add_commands(
    commands: argparse._SubParsersAction[Any],
    common: argparse.ArgumentParser,
) -> None:
    """Add the admin subcommands to ``hoody-tunnel``'s subparsers.

    ``commands`` is typed loosely: argparse's subparsers action is generic in the parser class
    (cli.py uses its own), and invariant.
    """
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help=f"the kit's URL (default: ${SERVER_ENV}, else {DEFAULT_SERVER})",
    )
    options.add_argument("--json", action="store_true", help="print the API's JSON unchanged")
    token = argparse.ArgumentParser(add_help=False)
    token.add_argument(
        "--admin-token",
        default=None,
        metavar="T",
        help=f"admin token (default: ${ADMIN_TOKEN_ENV}, else the one a local kit generated)",
    )
    helps = {
        "health": "show the kit's health (no token needed)",
        "metrics": "show the kit's Prometheus metrics (no token needed)",
        "sessions": "list live tunnel sessions",
        "bindings": "list EXPOSE and PULL bindings of every session",
        "tunnels": "overview: sessions, bindings, streams, FD permits",
    }
    for name, text in helps.items():
        commands.add_parser(name, parents=[common, options, token], help=text, description=text)
    kill = commands.add_parser(
        "kill",
        parents=[common, options, token],
        help='close a session (GOAWAY "closed by admin"; it cannot resume)',
        description='Close a session: GOAWAY(ADMIN_CLOSE, "closed by admin"), drain, close.',
    )
    kill.add_argument("session_id", metavar="SESSION_ID", help="e.g. sess_abc123def456")
    kill.add_argument(
        "--grace-ms",
        type=int,
        default=None,
        metavar="N",
        help="drain budget in ms, 0-5000 (default: the kit's, 50)",
    )


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run one admin subcommand; returns the exit code."""
    command: str = args.command
    server = args.server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    admin_token: str | None = None
    if command not in _PUBLIC:
        try:
            admin_token = _admin_token(args.admin_token)
        except ConfigError as exc:
            err.write(f"hoody-tunnel: {exc}\n")
            return EXIT_FAILURE
        if not admin_token:
            err.write(
                f"hoody-tunnel: no admin token: pass --admin-token or set {ADMIN_TOKEN_ENV} "
                "(the kit prints its generated admin token at start-up)\n"
            )
            return EXIT_USAGE
    try:
        client = AdminClient(server, admin_token)
    except ValueError as exc:
        err.write(f"hoody-tunnel: --server: {exc}\n")
        return EXIT_USAGE
    try:
        if command == "kill":
            closing = client.kill_session(args.session_id, args.grace_ms)
            out.write(_raw(closing.raw) if args.json else _closing_text(closing))
        else:
            out.write(_show(client, command, json_output=bool(args.json)))
    except AdminError as exc:
        return _report(exc, command, args, err)
    out.flush()
    return EXIT_OK


def _admin_token(given: str | None) -> str | None:
    if given:
        return given
    from_env = os.environ.get(ADMIN_TOKEN_ENV)
    if from_env:
        return from_env
    stored = load_local_credentials(default_state_dir(os.environ))
    return stored.admin_token if stored is not None else None


def _report(exc: AdminError, command: str, args: argparse.Namespace, err: TextIO) -> int:
    if isinstance(exc, AdminConnectionError):
        err.write(f"hoody-tunnel: {exc.error} (is the kit running? --server or ${SERVER_ENV})\n")
        return EXIT_FAILURE
    if exc.status == 401:
        where = credentials_path(default_state_dir(os.environ))
        err.write(
            f"hoody-tunnel: admin token refused by the kit ({exc.error}); check --admin-token, "
            f"${ADMIN_TOKEN_ENV} or {where}\n"
        )
        return EXIT_AUTH
    if exc.status == 404 and command == "kill":
        err.write(f"hoody-tunnel: {exc.error}: {args.session_id}\n")
        return EXIT_FAILURE
    if exc.status == 400:
        err.write(f"hoody-tunnel: {exc.error}\n")
        return EXIT_USAGE
    status = f"HTTP {exc.status}: " if exc.status is not None else ""
    err.write(f"hoody-tunnel: {status}{exc.error}\n")
    return EXIT_FAILURE


# -- output ---------------------------------------------------------------------------------------


def _show(client: AdminClient, command: str, *, json_output: bool) -> str:
    if command == "health":
        health = client.health.check()
        return _raw(health.raw) if json_output else _health_text(health)
    if command == "metrics":
        metrics = client.get_metrics()
        return _metrics_json(metrics) if json_output else _metrics_text(metrics)
    if command == "sessions":
        sessions = client.list_sessions()
        return _raw(sessions.raw) if json_output else _sessions_text(sessions)
    if command == "bindings":
        bindings = client.list_bindings()
        return _raw(bindings.raw) if json_output else _bindings_text(bindings)
    tunnels = client.list_tunnels()
    return _raw(tunnels.raw) if json_output else _tunnels_text(tunnels)


def _raw(body: str) -> str:
    return body if body.endswith("\n") else body + "\n"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max([len(header[i]), *(len(row[i]) for row in rows)]) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}\n"


def _health_text(health: Health) -> str:
    memory = (
        "-"
        if health.memory is None
        else f"rss {human_bytes(health.memory.rss)}, heap {human_bytes(health.memory.heap)}"
    )
    rows = [
        ("status", health.status),
        ("service", health.service),
        ("built", health.built or "-"),
        ("started", health.started),
        ("memory", memory),
        ("fds", "-" if health.fds is None else str(health.fds)),
        ("pid", str(health.pid)),
        ("ip", health.ip),
        ("userAgent", health.user_agent),
    ]
    width = max(len(name) for name, _ in rows)
    return "".join(f"{name.ljust(width)}  {value}\n" for name, value in rows)


def _metrics_text(metrics: Metrics) -> str:
    rows = []
    for sample in metrics.samples:
        labels = ",".join(f'{name}="{value}"' for name, value in sample.labels)
        value = int(sample.value) if sample.value.is_integer() else sample.value
        rows.append((sample.name + (f"{{{labels}}}" if labels else ""), str(value)))
    return table(("METRIC", "VALUE"), rows)


def _metrics_json(metrics: Metrics) -> str:
    samples = [
        {"name": sample.name, "labels": dict(sample.labels), "value": sample.value}
        for sample in metrics.samples
    ]
    return json.dumps(samples, indent=2) + "\n"


def _short_protocol(protocol: str | None, is_v2: bool) -> str:
    if protocol:
        return protocol.rsplit(".", 1)[-1]
    return "v2" if is_v2 else "v1"


def _sessions_text(sessions: SessionList) -> str:
    if not sessions.sessions:
        return "no sessions\n"
    rows = []
    for s in sessions.sessions:
        bindings = ", ".join(f"{b.kind} {b.container_port}/{b.mode}" for b in s.bindings) or "-"
        rows.append(
            (
                s.session_id,
                s.peer_addr,
                _short_protocol(s.protocol, s.is_v2),
                s.state or "-",
                str(s.connections_granted),
                f"{s.active_streams}/{s.max_streams}",
                human_bytes(s.bytes_in),
                human_bytes(s.bytes_out),
                "-" if s.rtt_ms is None else f"{s.rtt_ms:.1f} ms",
                bindings,
            )
        )
    header = ("SESSION", "PEER", "PROTO", "STATE", "CONNS", "STREAMS", "IN", "OUT", "RTT", "BINDINGS")
    return table(header, rows) + _counted(sessions.total, "session")


def _bindings_text(bindings: BindingList) -> str:
    if not bindings.bindings:
        return "no bindings\n"
    rows = [(str(b.bind_id), b.kind, b.mode, str(b.port), b.session_id) for b in bindings.bindings]
    return table(("BIND", "KIND", "MODE", "PORT", "SESSION"), rows) + _counted(bindings.total, "binding")


def _tunnels_text(tunnels: TunnelsOverview) -> str:
    budget = f" of {tunnels.fd_budget}" if tunnels.fd_budget is not None else ""
    summary = (
        f"FD permits available: {tunnels.fd_permits_available}{budget}\n"
        f"orphaned sessions:    {tunnels.orphaned_sessions}\n"
        f"bindings:             {tunnels.total_bindings}\n"
        f"streams:              {tunnels.total_streams}\n"
    )
    if not tunnels.sessions:
        return summary + "no sessions\n"
    rows = [
        (
            s.session_id,
            s.peer_addr,
            s.protocol,
            s.state or "-",
            str(s.connections_granted),
            str(s.active_streams),
            _ports(s.expose_bindings),
            _ports(s.pull_bindings),
        )
        for s in tunnels.sessions
    ]
    header = ("SESSION", "PEER", "PROTOCOL", "STATE", "CONNS", "STREAMS", "EXPOSE", "PULL")
    return summary + "\n" + table(header, rows)


def _ports(bindings: Sequence[TunnelBinding]) -> str:
    return ", ".join(f":{binding.container_port}" for binding in bindings) or "-"


def _closing_text(closing: SessionClosing) -> str:
    return f"{closing.session_id}: {closing.status}\n"
