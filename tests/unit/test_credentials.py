from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tunnel.config import ConfigError, Settings
from tunnel.credentials import (
    LocalCredentials,
    credentials_path,
    ensure_credentials,
    load_local_credentials,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _ensure(settings: Settings) -> tuple[Settings, list[str]]:
    lines: list[str] = []
    return ensure_credentials(settings, announce=lines.append), lines


def test_generates_both_tokens_and_stores_them_owner_only(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "hoody-tunnel"
    filled, lines = _ensure(Settings(state_dir=str(state_dir)))

    assert len(filled.tokens) == 1
    client_token = filled.tokens[0]
    admin_token = filled.admin_token
    assert admin_token is not None
    # token_urlsafe(32): 256 bits, 43 URL-safe characters; two independent draws.
    assert len(client_token) == 43 and len(admin_token) == 43
    assert client_token != admin_token

    path = state_dir / "credentials.json"
    assert json.loads(path.read_text()) == {"token": client_token, "adminToken": admin_token}
    assert _mode(path) == 0o600
    assert _mode(state_dir) == 0o700
    assert [p.name for p in state_dir.iterdir()] == ["credentials.json"]  # no temp file left

    # Each token is announced once, with its value, and each line names the file.
    assert sum(client_token in line for line in lines) == 1
    assert sum(admin_token in line for line in lines) == 1
    assert any("generated client token" in line and str(path) in line for line in lines)
    assert any("generated admin token" in line and str(path) in line for line in lines)
    assert all(line.startswith("hoody-tunnel: ") and "\n" not in line for line in lines)


def test_restart_reuses_stored_tokens_without_printing_them(tmp_path: Path) -> None:
    settings = Settings(state_dir=str(tmp_path))
    first, _ = _ensure(settings)
    path = tmp_path / "credentials.json"
    before = path.stat().st_mtime_ns, path.read_text()

    second, lines = _ensure(settings)

    assert second.tokens == first.tokens
    assert second.admin_token == first.admin_token
    assert (path.stat().st_mtime_ns, path.read_text()) == before  # not rewritten
    assert first.tokens[0] not in "".join(lines)
    assert str(first.admin_token) not in "".join(lines)
    assert any("using the generated client token" in line for line in lines)


def test_reuse_can_be_silent_but_generation_never_is(tmp_path: Path) -> None:
    lines: list[str] = []
    generated = ensure_credentials(
        Settings(state_dir=str(tmp_path)), announce=lines.append, announce_reuse=False
    )
    assert sum(generated.tokens[0] in line for line in lines) == 1  # a new token is always shown
    lines.clear()
    reused = ensure_credentials(
        Settings(state_dir=str(tmp_path)), announce=lines.append, announce_reuse=False
    )
    assert reused.tokens == generated.tokens
    assert lines == []


def test_tokens_from_the_environment_are_used_and_never_stored(tmp_path: Path) -> None:
    settings = Settings(tokens=("env-client",), state_dir=str(tmp_path))
    filled, lines = _ensure(settings)

    assert filled.tokens == ("env-client",)
    assert filled.admin_token is not None
    stored = json.loads((tmp_path / "credentials.json").read_text())
    assert stored == {"token": None, "adminToken": filled.admin_token}
    assert "env-client" not in "".join(lines)
    assert not any("client token" in line for line in lines)


def test_a_token_set_later_in_the_environment_is_dropped_from_the_file(tmp_path: Path) -> None:
    generated, _ = _ensure(Settings(state_dir=str(tmp_path)))
    filled, _ = _ensure(Settings(tokens=("env-client",), state_dir=str(tmp_path)))

    assert filled.tokens == ("env-client",)
    assert filled.admin_token == generated.admin_token  # the admin token is still reused
    stored = load_local_credentials(str(tmp_path))
    assert stored == LocalCredentials(token=None, admin_token=generated.admin_token)


def test_nothing_is_written_when_both_tokens_are_configured(tmp_path: Path) -> None:
    state_dir = tmp_path / "absent"
    settings = Settings(tokens=("a", "b"), admin_token="adm", state_dir=str(state_dir))
    filled, lines = _ensure(settings)
    assert filled is settings
    assert lines == []
    assert not state_dir.exists()


def test_existing_file_with_loose_mode_is_tightened(tmp_path: Path) -> None:
    _ensure(Settings(state_dir=str(tmp_path)))
    path = tmp_path / "credentials.json"
    path.chmod(0o644)
    _ensure(Settings(state_dir=str(tmp_path)))
    assert _mode(path) == 0o600


def test_load_local_credentials(tmp_path: Path) -> None:
    assert load_local_credentials(str(tmp_path)) is None
    filled, _ = _ensure(Settings(state_dir=str(tmp_path)))
    loaded = load_local_credentials(str(tmp_path))
    assert loaded == LocalCredentials(token=filled.tokens[0], admin_token=filled.admin_token)
    assert filled.tokens[0] not in repr(loaded)
    assert credentials_path(str(tmp_path)) == str(tmp_path / "credentials.json")


@pytest.mark.parametrize(
    "content",
    ["not json", "[1, 2]", '{"token": 5, "adminToken": null}', '{"token": "", "adminToken": null}'],
)
def test_a_malformed_file_is_an_error_not_a_silent_new_token(tmp_path: Path, content: str) -> None:
    (tmp_path / "credentials.json").write_text(content)
    with pytest.raises(ConfigError, match="credentials.json"):
        load_local_credentials(str(tmp_path))
    with pytest.raises(ConfigError, match="credentials.json"):
        ensure_credentials(Settings(state_dir=str(tmp_path)), announce=lambda line: None)
    assert (tmp_path / "credentials.json").read_text() == content


def test_a_state_dir_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"blocker/sub/credentials\.json: cannot "):
        ensure_credentials(Settings(state_dir=str(blocker / "sub")), announce=lambda line: None)
