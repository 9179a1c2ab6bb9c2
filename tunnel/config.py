"""Settings: the server's configuration, built once from the environment and validated.

Every environment key is ``HOODY_TUNNEL_*`` (plus ``PORT``). An empty value counts as unset. A bad
value raises :class:`ConfigError` whose message starts with the variable's name, e.g.
``HOODY_TUNNEL_WINDOW: must be an integer from 16384 to 16777216, got 'abc'``; the launcher
(gunicorn.conf.py, the CLI) prints it as one line and exits non-zero.

Durations are given in the environment in whole milliseconds (``*_MS``) or seconds (``*_S``) and
held here in seconds (``*_s`` fields). Sizes are bytes.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from tunnel.protocol import TunnelError

__all__ = ["ConfigError", "PortRanges", "Settings", "default_state_dir"]

MIN_WINDOW_SIZE = 16 * 1024
MAX_WINDOW_SIZE = 16 * 1024 * 1024
MIN_FRAME_SIZE = 16 * 1024
# A frame (10-byte header + payload) must fit in one 4 MiB WebSocket message (docs/protocol.md §1.2, §2.1).
MAX_FRAME_SIZE = 4 * 1024 * 1024 - 10
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_PORT_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")


class ConfigError(TunnelError):
    """A configuration value is missing or invalid. Raised at start-up only."""


@dataclass(frozen=True, slots=True)
class PortRanges:
    """A set of TCP ports, parsed from comma-separated items ``N`` or ``N-M`` (docs/protocol.md §6.1).

    ``port in ranges`` tests membership; ``str(ranges)`` gives the canonical text form.
    """

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> PortRanges:
        """Parse ``"1024-65535,80"``.

        Raises:
            ConfigError: an item is not ``N`` or ``N-M`` with ``1 <= N <= M <= 65535``, or the
                text holds no item at all.
        """
        ranges: list[tuple[int, int]] = []
        for raw_item in text.split(","):
            item = raw_item.strip()
            match = _PORT_ITEM.fullmatch(item)
            if match is None:
                raise ConfigError(f"invalid port range item {item!r} (expected N or N-M)")
            low = int(match.group(1))
            high = int(match.group(2)) if match.group(2) is not None else low
            if not 1 <= low <= high <= 65535:
                raise ConfigError(
                    f"invalid port range item {item!r} (ports are 1-65535, N-M needs N <= M)"
                )
            ranges.append((low, high))
        return cls(tuple(sorted(ranges)))

    def __contains__(self, port: object) -> bool:
        if not isinstance(port, int) or isinstance(port, bool):
            return False
        return any(low <= port <= high for low, high in self.ranges)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ranges)

    def __str__(self) -> str:
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges)


def default_state_dir(env: Mapping[str, str]) -> str:
    """The state directory an environment implies, for the server and the CLI alike.

    ``$HOODY_TUNNEL_STATE_DIR`` when set, else ``$XDG_CONFIG_HOME/hoody-tunnel``, else
    ``$HOME/.config/hoody-tunnel``.
    """
    explicit = env.get("HOODY_TUNNEL_STATE_DIR", "").strip()
    if explicit:
        return explicit
    xdg_config_home = env.get("XDG_CONFIG_HOME", "")
    # XDG Base Directory spec: a relative XDG_CONFIG_HOME is invalid and must be ignored.
    if xdg_config_home and os.path.isabs(xdg_config_home):
        return os.path.join(xdg_config_home, "hoody-tunnel")
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".config", "hoody-tunnel")


def _state_dir_from_process_env() -> str:
    return default_state_dir(os.environ)


@dataclass(frozen=True, slots=True)
class Settings:
    """The server's configuration. Frozen; build it with :meth:`from_env` or keywords (tests).

    Construction validates every range and raises :class:`ConfigError` naming the environment
    variable behind the bad field. Tokens are kept out of ``repr()``.
    """

    port: int = 8080
    # Client tokens accepted in HELLO; an empty tuple means unset (ensure_credentials fills it).
    tokens: tuple[str, ...] = field(default=(), repr=False)
    admin_token: str | None = field(default=None, repr=False)
    fd_budget: int = 512
    max_streams: int = 100
    window_size: int = 262144
    max_frame_size: int = 262144
    heartbeat_s: float = 15.0
    orphan_ttl_s: float = 30.0
    expose_host: str = "0.0.0.0"
    expose_ports: PortRanges = field(default_factory=lambda: PortRanges(((1024, 65535),)))
    pull_host: str = "127.0.0.1"
    pull_ports: PortRanges = field(default_factory=lambda: PortRanges(((1, 65535),)))
    built: str | None = None
    handshake_timeout_s: float = 10.0
    send_timeout_s: float = 30.0
    connect_timeout_s: float = 10.0  # dialing a PULL target (HOODY_TUNNEL_CONNECT_TIMEOUT_MS)
    state_dir: str = field(default_factory=_state_dir_from_process_env)
    # gunicorn's graceful_timeout: how long a SIGTERM'd worker drains its sessions.
    graceful_timeout_s: float = 30.0
    # HTTP mode: how long a new request waits for a parked session's resume before the kit
    # answers 503 (HOODY_TUNNEL_HTTP_HOLD_MS; docs/http-mode.md).
    http_hold_s: float = 10.0
    log_level: str = "info"

    def __post_init__(self) -> None:
        for spec in _INT_SPECS:
            _check_int(spec, getattr(self, spec.field_name))
        for spec in _DURATION_SPECS:
            _check_duration(spec, getattr(self, spec.field_name))
        for token in self.tokens:
            _check_token("HOODY_TUNNEL_TOKENS", token)
        if self.admin_token is not None:
            _check_token("HOODY_TUNNEL_ADMIN_TOKEN", self.admin_token)
        for name, host in (
            ("HOODY_TUNNEL_EXPOSE_HOST", self.expose_host),
            ("HOODY_TUNNEL_PULL_HOST", self.pull_host),
        ):
            if not host or any(ch.isspace() for ch in host):
                raise ConfigError(f"{name}: must be a host name or IP address, got {host!r}")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"HOODY_TUNNEL_LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}, "
                f"got {self.log_level!r}"
            )
        if not self.state_dir:
            raise ConfigError("HOODY_TUNNEL_STATE_DIR: must be a directory path, got ''")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build Settings from an environment mapping (``os.environ`` in production).

        Raises:
            ConfigError: a value is malformed or out of range; the message names the variable.
        """

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        values: dict[str, object] = {}
        for int_spec in _INT_SPECS:
            raw = get(int_spec.env_name)
            if raw is not None:
                values[int_spec.field_name] = _parse_int(int_spec, raw)
        for duration_spec in _DURATION_SPECS:
            raw = get(duration_spec.env_name)
            if raw is not None:
                values[duration_spec.field_name] = (
                    _parse_int(duration_spec, raw) / duration_spec.per_second
                )
        raw_tokens = get("HOODY_TUNNEL_TOKENS")
        if raw_tokens is not None:
            values["tokens"] = tuple(t.strip() for t in raw_tokens.split(",") if t.strip())
        values["admin_token"] = get("HOODY_TUNNEL_ADMIN_TOKEN")
        for field_name, env_name in (
            ("expose_host", "HOODY_TUNNEL_EXPOSE_HOST"),
            ("pull_host", "HOODY_TUNNEL_PULL_HOST"),
            ("built", "HOODY_TUNNEL_BUILT"),
        ):
            raw = get(env_name)
            if raw is not None:
                values[field_name] = raw
        for field_name, env_name in (
            ("expose_ports", "HOODY_TUNNEL_EXPOSE_PORTS"),
            ("pull_ports", "HOODY_TUNNEL_PULL_PORTS"),
        ):
            raw = get(env_name)
            if raw is not None:
                try:
                    values[field_name] = PortRanges.parse(raw)
                except ConfigError as exc:
                    raise ConfigError(f"{env_name}: {exc}, got {raw!r}") from None
        raw_level = get("HOODY_TUNNEL_LOG_LEVEL")
        if raw_level is not None:
            values["log_level"] = raw_level.lower()
        values["state_dir"] = default_state_dir(env)
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Settings:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class _IntSpec:
    field_name: str
    env_name: str
    minimum: int
    maximum: int
    # Units as the environment gives them; for durations the field holds seconds.
    per_second: int = 1
    unit: str = ""


_INT_SPECS = (
    _IntSpec("port", "PORT", 1, 65535),
    _IntSpec("fd_budget", "HOODY_TUNNEL_FD_BUDGET", 1, 1_048_576),
    _IntSpec("max_streams", "HOODY_TUNNEL_MAX_STREAMS", 1, 1_000_000),
    _IntSpec("window_size", "HOODY_TUNNEL_WINDOW", MIN_WINDOW_SIZE, MAX_WINDOW_SIZE),
    _IntSpec("max_frame_size", "HOODY_TUNNEL_MAX_FRAME", MIN_FRAME_SIZE, MAX_FRAME_SIZE),
)
_DURATION_SPECS = (
    _IntSpec("heartbeat_s", "HOODY_TUNNEL_HEARTBEAT_MS", 100, 3_600_000, 1000, " milliseconds"),
    _IntSpec("orphan_ttl_s", "HOODY_TUNNEL_ORPHAN_TTL_MS", 0, 86_400_000, 1000, " milliseconds"),
    _IntSpec(
        "handshake_timeout_s", "HOODY_TUNNEL_HANDSHAKE_TIMEOUT_MS", 100, 600_000, 1000,
        " milliseconds",
    ),
    _IntSpec(
        "send_timeout_s", "HOODY_TUNNEL_SEND_TIMEOUT_MS", 100, 3_600_000, 1000, " milliseconds"
    ),
    _IntSpec(
        "connect_timeout_s", "HOODY_TUNNEL_CONNECT_TIMEOUT_MS", 100, 600_000, 1000, " milliseconds"
    ),
    _IntSpec("graceful_timeout_s", "HOODY_TUNNEL_GRACEFUL_TIMEOUT_S", 0, 3600, 1, " seconds"),
    _IntSpec("http_hold_s", "HOODY_TUNNEL_HTTP_HOLD_MS", 0, 600_000, 1000, " milliseconds"),
)


def _range_text(spec: _IntSpec) -> str:
    return f"must be an integer from {spec.minimum} to {spec.maximum}{spec.unit}"


def _parse_int(spec: _IntSpec, raw: str) -> int:
    # Decimal digits only: int() would also take "+5", " 5", "1_000" and "٣".
    if not (raw.isascii() and raw.isdigit()):
        raise ConfigError(f"{spec.env_name}: {_range_text(spec)}, got {raw!r}")
    value = int(raw)
    if not spec.minimum <= value <= spec.maximum:
        raise ConfigError(f"{spec.env_name}: {_range_text(spec)}, got {raw!r}")
    return value


def _check_int(spec: _IntSpec, value: object) -> None:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not spec.minimum <= value <= spec.maximum
    ):
        raise ConfigError(f"{spec.env_name}: {_range_text(spec)}, got {value!r}")


def _check_duration(spec: _IntSpec, value_s: object) -> None:
    if isinstance(value_s, bool) or not isinstance(value_s, (int, float)):
        raise ConfigError(f"{spec.env_name}: {_range_text(spec)}, got {value_s!r} s")
    in_env_units = value_s * spec.per_second
    if not spec.minimum <= in_env_units <= spec.maximum:
        raise ConfigError(f"{spec.env_name}: {_range_text(spec)}, got {value_s!r} s")


def _check_token(env_name: str, token: object) -> None:
    # Never echo the value: tokens must not reach a log line (docs/protocol.md §4).
    if not isinstance(token, str) or not token:
        raise ConfigError(f"{env_name}: tokens must be non-empty strings")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigError(f"{env_name}: tokens must not contain whitespace or control characters")
