"""Generated tokens: made when the operator sets none, stored where the local CLI finds them.

When ``HOODY_TUNNEL_TOKENS`` or ``HOODY_TUNNEL_ADMIN_TOKEN`` is unset, the server generates a
random token (``secrets.token_urlsafe(32)``, 256 bits), prints it once on stderr, and stores it in
``<state_dir>/credentials.json`` (directory 0700, file 0600)::

    {"token": "<client token or null>", "adminToken": "<admin token or null>"}

A key holds a token only while the server generated it; a token the operator set in the
environment is never written to disk (the key is null then). On restart, stored tokens are reused,
so clients keep working. A client on the same machine reads the file with
:func:`load_local_credentials`; remote clients must be given the token.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass

from tunnel.config import ConfigError, Settings, default_state_dir

__all__ = [
    "CREDENTIALS_FILE_NAME",
    "LocalCredentials",
    "credentials_path",
    "default_state_dir",
    "ensure_credentials",
    "load_local_credentials",
]

CREDENTIALS_FILE_NAME = "credentials.json"
_TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class LocalCredentials:
    """The generated tokens stored on this machine; None where the operator set the token."""

    token: str | None
    admin_token: str | None

    def __repr__(self) -> str:
        # Tokens never reach a log line, not even through a repr.
        return (
            f"LocalCredentials(token={'<set>' if self.token else None}, "
            f"admin_token={'<set>' if self.admin_token else None})"
        )


def credentials_path(state_dir: str) -> str:
    """Where the generated tokens live: ``<state_dir>/credentials.json``."""
    return os.path.join(state_dir, CREDENTIALS_FILE_NAME)


def load_local_credentials(state_dir: str) -> LocalCredentials | None:
    """Read the tokens a server on this machine generated.

    Returns:
        The stored credentials, or None when the file does not exist.

    Raises:
        ConfigError: the file exists but cannot be read or is not a credentials object.
    """
    path = credentials_path(state_dir)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read stored credentials: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: stored credentials must be a JSON object")
    token = data.get("token")
    admin_token = data.get("adminToken")
    for key, value in (("token", token), ("adminToken", admin_token)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{path}: {key!r} must be a non-empty string or null")
    return LocalCredentials(token=token, admin_token=admin_token)


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ensure_credentials(
    settings: Settings,
    *,
    announce: Callable[[str], None] = _print_to_stderr,
    announce_reuse: bool = True,
) -> Settings:
    """Fill unset tokens from the stored file, generating and storing any that are missing.

    Args:
        settings: validated settings; ``tokens == ()`` or ``admin_token is None`` mean unset.
        announce: receives one-line messages for the operator (stderr by default). A newly
            generated token is announced once, with its value; a reused one by its file only.
        announce_reuse: False to stay silent about reused tokens (the gunicorn worker: the
            master has already said where they come from).

    Returns:
        Settings with ``tokens`` and ``admin_token`` set.

    Raises:
        ConfigError: the state directory or the credentials file cannot be read or written.
    """
    need_client = not settings.tokens
    need_admin = settings.admin_token is None
    if not need_client and not need_admin:
        return settings

    path = credentials_path(settings.state_dir)
    stored = load_local_credentials(settings.state_dir)
    client_token = stored.token if stored is not None and need_client else None
    admin_token = stored.admin_token if stored is not None and need_admin else None
    messages: list[str] = []
    for kind, current, needed in (
        ("client", client_token, need_client),
        ("admin", admin_token, need_admin),
    ):
        if not needed:
            continue
        if current is None:
            messages.append(f"hoody-tunnel: generated {kind} token (stored in {path})")
        elif announce_reuse:
            messages.append(f"hoody-tunnel: using the generated {kind} token stored in {path}")
    generated_client = client_token is None and need_client
    generated_admin = admin_token is None and need_admin
    if generated_client:
        client_token = secrets.token_urlsafe(_TOKEN_BYTES)
    if generated_admin:
        admin_token = secrets.token_urlsafe(_TOKEN_BYTES)

    # Only generated tokens are kept on disk; one set in the environment is never written.
    wanted = LocalCredentials(token=client_token, admin_token=admin_token)
    if wanted != stored:
        _write_credentials(settings.state_dir, wanted)
    else:
        _restrict_mode(path)

    for line in messages:
        announce(line)
    # The token itself, once, when it is born: the operator copies it to remote clients.
    if generated_client:
        announce(f"hoody-tunnel: client token: {client_token}")
    if generated_admin:
        announce(f"hoody-tunnel: admin token: {admin_token}")

    return settings.replace(
        tokens=settings.tokens if not need_client else (client_token,),
        admin_token=settings.admin_token if not need_admin else admin_token,
    )


def _restrict_mode(path: str) -> None:
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot restrict stored credentials to the owner: {exc}") from None


def _write_credentials(state_dir: str, credentials: LocalCredentials) -> None:
    """Write the file atomically (temp file + rename), 0600 from the first byte, dir 0700."""
    path = credentials_path(state_dir)
    try:
        if not os.path.isdir(state_dir):
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
            # makedirs applies the umask; the directory we made is ours to tighten.
            os.chmod(state_dir, 0o700)
        payload = json.dumps(
            {"token": credentials.token, "adminToken": credentials.admin_token}, indent=2
        )
        temp_path = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                os.fchmod(file.fileno(), 0o600)
                file.write(payload + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp_path, path)
        except BaseException:
            try:
                os.unlink(temp_path)
            except FileNotFoundError:
                pass
            raise
    except OSError as exc:
        raise ConfigError(f"{path}: cannot store generated credentials: {exc}") from None
