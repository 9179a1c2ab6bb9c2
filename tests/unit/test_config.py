from __future__ import annotations

import pytest

from tunnel.config import ConfigError, PortRanges, Settings, default_state_dir
from tunnel.protocol.errors import TunnelError

# ---------------------------------------------------------------------------------------------
# PortRanges


def test_port_ranges_parse_and_membership() -> None:
    ranges = PortRanges.parse("1024-65535,80")
    assert 80 in ranges
    assert 1024 in ranges and 65535 in ranges and 30000 in ranges
    assert 81 not in ranges and 1023 not in ranges
    assert str(ranges) == "80,1024-65535"


def test_port_ranges_tolerates_spaces_and_single_ports() -> None:
    ranges = PortRanges.parse(" 22 , 8000-8002 ")
    assert [port for port in range(1, 9000) if port in ranges] == [22, 8000, 8001, 8002]


def test_port_ranges_rejects_non_ints() -> None:
    ranges = PortRanges.parse("1-65535")
    assert "80" not in ranges
    assert True not in ranges  # a bool is not a port


@pytest.mark.parametrize(
    "text", ["", "0", "65536", "80-79", "a", "1-", "-5", "1-2-3", "80,", "+80", "1_000", "٣"]
)
def test_port_ranges_rejects_bad_items(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid port range item"):
        PortRanges.parse(text)


# ---------------------------------------------------------------------------------------------
# Settings.from_env


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({"HOME": "/home/someone"})
    assert settings.port == 8080
    assert settings.tokens == ()
    assert settings.admin_token is None
    assert settings.fd_budget == 512
    assert settings.max_streams == 100
    assert settings.window_size == 262144
    assert settings.max_frame_size == 262144
    assert settings.heartbeat_s == 15.0
    assert settings.orphan_ttl_s == 30.0
    assert settings.expose_host == "0.0.0.0"
    assert str(settings.expose_ports) == "1024-65535"
    assert settings.pull_host == "127.0.0.1"
    assert str(settings.pull_ports) == "1-65535"
    assert settings.built is None
    assert settings.handshake_timeout_s == 10.0
    assert settings.send_timeout_s == 30.0
    assert settings.state_dir == "/home/someone/.config/hoody-tunnel"
    assert settings.graceful_timeout_s == 30.0
    assert settings.log_level == "info"


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "PORT": "9000",
            "HOODY_TUNNEL_TOKENS": " alpha , beta,,",
            "HOODY_TUNNEL_ADMIN_TOKEN": "root-secret",
            "HOODY_TUNNEL_FD_BUDGET": "64",
            "HOODY_TUNNEL_MAX_STREAMS": "7",
            "HOODY_TUNNEL_WINDOW": "16384",
            "HOODY_TUNNEL_MAX_FRAME": "4194294",
            "HOODY_TUNNEL_HEARTBEAT_MS": "2500",
            "HOODY_TUNNEL_ORPHAN_TTL_MS": "0",
            "HOODY_TUNNEL_EXPOSE_HOST": "127.0.0.1",
            "HOODY_TUNNEL_EXPOSE_PORTS": "3000-3010",
            "HOODY_TUNNEL_PULL_HOST": "::1",
            "HOODY_TUNNEL_PULL_PORTS": "5432",
            "HOODY_TUNNEL_BUILT": "2024-01-15T10:30:00Z",
            "HOODY_TUNNEL_HANDSHAKE_TIMEOUT_MS": "1500",
            "HOODY_TUNNEL_SEND_TIMEOUT_MS": "2000",
            "HOODY_TUNNEL_STATE_DIR": "/var/lib/hoody",
            "HOODY_TUNNEL_GRACEFUL_TIMEOUT_S": "12",
            "HOODY_TUNNEL_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.port == 9000
    assert settings.tokens == ("alpha", "beta")
    assert settings.admin_token == "root-secret"
    assert settings.fd_budget == 64
    assert settings.max_streams == 7
    assert settings.window_size == 16384
    assert settings.max_frame_size == 4 * 1024 * 1024 - 10
    assert settings.heartbeat_s == 2.5
    assert settings.orphan_ttl_s == 0.0
    assert settings.expose_host == "127.0.0.1"
    assert 3005 in settings.expose_ports and 3011 not in settings.expose_ports
    assert settings.pull_host == "::1"
    assert 5432 in settings.pull_ports and 5433 not in settings.pull_ports
    assert settings.built == "2024-01-15T10:30:00Z"
    assert settings.handshake_timeout_s == 1.5
    assert settings.send_timeout_s == 2.0
    assert settings.state_dir == "/var/lib/hoody"
    assert settings.graceful_timeout_s == 12.0
    assert settings.log_level == "debug"


def test_empty_values_count_as_unset() -> None:
    settings = Settings.from_env(
        {
            "HOME": "/h",
            "PORT": "",
            "HOODY_TUNNEL_TOKENS": " ",
            "HOODY_TUNNEL_ADMIN_TOKEN": "",
            "HOODY_TUNNEL_WINDOW": "",
            "HOODY_TUNNEL_BUILT": "",
            "HOODY_TUNNEL_STATE_DIR": "",
        }
    )
    assert settings.port == 8080
    assert settings.tokens == ()
    assert settings.admin_token is None
    assert settings.window_size == 262144
    assert settings.built is None
    assert settings.state_dir == "/h/.config/hoody-tunnel"


def test_bad_window_message_is_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"HOODY_TUNNEL_WINDOW": "abc"})
    assert str(info.value) == (
        "HOODY_TUNNEL_WINDOW: must be an integer from 16384 to 16777216, got 'abc'"
    )
    assert isinstance(info.value, TunnelError)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "http"),
        ("HOODY_TUNNEL_FD_BUDGET", "0"),
        ("HOODY_TUNNEL_FD_BUDGET", "-1"),
        ("HOODY_TUNNEL_MAX_STREAMS", "0"),
        ("HOODY_TUNNEL_WINDOW", "16383"),
        ("HOODY_TUNNEL_WINDOW", "16777217"),
        ("HOODY_TUNNEL_WINDOW", "+20000"),
        ("HOODY_TUNNEL_WINDOW", "1.5e5"),
        ("HOODY_TUNNEL_MAX_FRAME", "4194295"),
        ("HOODY_TUNNEL_MAX_FRAME", "1024"),
        ("HOODY_TUNNEL_HEARTBEAT_MS", "15s"),
        ("HOODY_TUNNEL_HEARTBEAT_MS", "0"),
        ("HOODY_TUNNEL_ORPHAN_TTL_MS", "-1"),
        ("HOODY_TUNNEL_HANDSHAKE_TIMEOUT_MS", "10.5"),
        ("HOODY_TUNNEL_SEND_TIMEOUT_MS", "x"),
        ("HOODY_TUNNEL_GRACEFUL_TIMEOUT_S", "30s"),
        ("HOODY_TUNNEL_EXPOSE_PORTS", "1024-99999"),
        ("HOODY_TUNNEL_PULL_PORTS", "ssh"),
        ("HOODY_TUNNEL_LOG_LEVEL", "verbose"),
        ("HOODY_TUNNEL_EXPOSE_HOST", "local host"),
    ],
)
def test_bad_values_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    assert repr(value.strip()) in message


def test_token_errors_never_echo_the_token() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"HOODY_TUNNEL_TOKENS": "good-one,bad secret"})
    assert str(info.value).startswith("HOODY_TUNNEL_TOKENS: ")
    assert "secret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"HOODY_TUNNEL_ADMIN_TOKEN": "adm\x00in"})
    assert str(info.value).startswith("HOODY_TUNNEL_ADMIN_TOKEN: ")
    assert "adm" not in str(info.value).split(":", 1)[1]


def test_repr_hides_tokens() -> None:
    settings = Settings(tokens=("client-secret",), admin_token="admin-secret", state_dir="/s")
    assert "client-secret" not in repr(settings)
    assert "admin-secret" not in repr(settings)
    assert "window_size=262144" in repr(settings)


# ---------------------------------------------------------------------------------------------
# direct construction and replace()


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^HOODY_TUNNEL_WINDOW: .*got 5$"):
        Settings(window_size=5, state_dir="/s")
    with pytest.raises(ConfigError, match=r"^HOODY_TUNNEL_HEARTBEAT_MS: "):
        Settings(heartbeat_s=0.0, state_dir="/s")
    with pytest.raises(ConfigError, match=r"^PORT: "):
        Settings(port=True, state_dir="/s")


def test_replace_validates_and_keeps_other_fields() -> None:
    settings = Settings(fd_budget=10, state_dir="/s")
    changed = settings.replace(tokens=("t",))
    assert changed.tokens == ("t",) and changed.fd_budget == 10
    assert settings.tokens == ()  # frozen: the original is untouched
    with pytest.raises(ConfigError, match="^HOODY_TUNNEL_FD_BUDGET: "):
        settings.replace(fd_budget=0)


# ---------------------------------------------------------------------------------------------
# state directory


def test_state_dir_prefers_xdg_config_home() -> None:
    assert default_state_dir({"XDG_CONFIG_HOME": "/x/cfg", "HOME": "/h"}) == "/x/cfg/hoody-tunnel"
    assert default_state_dir({"HOME": "/h"}) == "/h/.config/hoody-tunnel"
    # XDG Base Directory spec: a relative value is ignored.
    assert default_state_dir({"XDG_CONFIG_HOME": "rel", "HOME": "/h"}) == "/h/.config/hoody-tunnel"
    assert default_state_dir({"HOODY_TUNNEL_STATE_DIR": "/srv/ht", "HOME": "/h"}) == "/srv/ht"
    settings = Settings.from_env({"XDG_CONFIG_HOME": "/x/cfg"})
    assert settings.state_dir == "/x/cfg/hoody-tunnel"
