"""``hoody-tunnel``: the command line.

``main(argv=None) -> int`` never raises for a user's mistake: it prints one line and returns an
exit code (0 ok, 1 failure, 2 usage, 3 closed by admin, 4 token refused).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Sequence, TextIO

from tunnel.client.connector import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ClientOptions,
    TunnelClient,
)
from tunnel.client import admin_cli
from tunnel.client.specs import SpecError, apply_host_header, parse_expose, parse_pull
from tunnel.credentials import load_local_credentials, default_state_dir
from tunnel.protocol import TunnelError


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() returns the code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(f"{self.prog}: {message}")


class _UsageError(TunnelError):
    pass


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--log-level",
        default=os.environ.get("HOODY_TUNNEL_LOG_LEVEL", "warning"),
        choices=["debug", "info", "warning", "error"],
        help="diagnostics on stderr (default: warning)",
    )
    parser = _Parser(prog="hoody-tunnel", description="Tunnel kit: PULL and EXPOSE ports over one WebSocket.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    connect = commands.add_parser("connect", parents=[common], help="connect to a kit and forward ports")
    connect.add_argument("url", help="kit URL, e.g. ws://127.0.0.1:8080 (path /api/v1/tunnel/connect implied)")
    connect.add_argument("--token", help="client token (default: $HOODY_TUNNEL_TOKEN, or the local kit's)")
    connect.add_argument("--protocol", choices=["v1", "v2"], help="force a protocol version (default: v2, else v1)")
    connect.add_argument(
        "--expose",
        action="append",
        default=[],
        metavar="CONTAINER_PORT[:[LOCAL_HOST:]LOCAL_PORT][/tcp|/http]",
        help="the kit listens on CONTAINER_PORT and forwards to this machine",
    )
    connect.add_argument(
        "--host-header",
        metavar="rewrite|VALUE",
        help="for /http exposes: the Host header the kit sets ('rewrite': the local target)",
    )
    connect.add_argument(
        "--pull",
        action="append",
        default=[],
        metavar="[BIND_HOST:]LOCAL_PORT[:CONTAINER_PORT]",
        help="this machine listens on LOCAL_PORT and forwards to the container",
    )

    commands.add_parser("serve", parents=[common], help="start the kit server (gunicorn, as the Procfile does)")
    admin_cli.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        err.write(f"{exc}\n")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    logging.basicConfig(level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(err)
    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(args, out, err)
    return _connect(args, out, err)


def _connect(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        exposes = [parse_expose(value) for value in args.expose]
        if args.host_header is not None:
            exposes = apply_host_header(exposes, args.host_header)
        pulls = [parse_pull(value) for value in args.pull]
    except SpecError as exc:
        err.write(f"hoody-tunnel: {exc}\n")
        return EXIT_USAGE
    if not exposes and not pulls:
        err.write("hoody-tunnel: nothing to do: give at least one --expose or --pull\n")
        return EXIT_USAGE
    token = args.token or os.environ.get("HOODY_TUNNEL_TOKEN")
    if not token:
        local = load_local_credentials(default_state_dir(os.environ))
        token = local.token if local is not None else None
    if not token:
        err.write(
            "hoody-tunnel: no token: pass --token or set HOODY_TUNNEL_TOKEN "
            "(the kit prints its generated token at start-up)\n"
        )
        return EXIT_USAGE
    url = args.url if "://" in args.url else f"ws://{args.url}"
    client = TunnelClient(
        ClientOptions(url=url, token=token, protocol=args.protocol, exposes=exposes, pulls=pulls), out=out, err=err
    )
    import gc

    import gevent

    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, client.stop)
    gc.freeze()  # start-up objects live as long as the process: keep full collections short
    try:
        return client.run()
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _serve(err: TextIO) -> int:
    """Replace this process with gunicorn, configured as the Procfile does."""
    argv = ["gunicorn", "-c", "python:tunnel.gunicorn_conf", "tunnel.wsgi:app"]
    try:
        os.execvp(sys.executable, [sys.executable, "-m", *argv])
    except OSError as exc:
        err.write(f"hoody-tunnel: cannot start gunicorn: {exc}\n")
        return EXIT_FAILURE
    return EXIT_FAILURE  # pragma: no cover - execvp does not return
