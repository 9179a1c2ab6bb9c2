"""KitProcess: a real gunicorn running gunicorn.conf.py and tunnel.wsgi:app, for e2e tests.

The test binds and listens on 127.0.0.1 port 0 itself, then hands the socket to gunicorn with
``--bind fd://N`` (Popen ``pass_fds``): the port is known before the server starts, with no racy
"find a free port" step, and connections made before the worker is up wait in the backlog.
Readiness is polled on GET /api/v1/tunnel/health with ``tests.waiting.wait_until`` (a scaled
deadline); on failure the server's stdout and stderr are part of the error, as they are when
:meth:`KitProcess.wait_log` waits for a log line. Teardown sends SIGTERM to the process group
(``start_new_session=True``), then SIGKILL after a deadline.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.loopback import listen_loopback
from tests.waiting import scaled_s, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
HEALTH_PATH = "/api/v1/tunnel/health"

# Known credentials for tests; a test that needs generated ones passes tokens="" to make_kit.
TEST_CLIENT_TOKEN = "e2e-client-token-0123456789abcdef"
TEST_ADMIN_TOKEN = "e2e-admin-token-0123456789abcdef"


def base_env(state_dir: Path) -> dict[str, str]:
    """The process environment without any HOODY_TUNNEL_*/PORT of the caller, plus test values."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("HOODY_TUNNEL_") and key not in ("PORT", "XDG_CONFIG_HOME")
    }
    env.update(
        {
            "HOODY_TUNNEL_STATE_DIR": str(state_dir),
            "HOODY_TUNNEL_TOKENS": TEST_CLIENT_TOKEN,
            "HOODY_TUNNEL_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "HOODY_TUNNEL_LOG_LEVEL": "info",
            # A short drain keeps teardown fast; tests of draining set their own.
            "HOODY_TUNNEL_GRACEFUL_TIMEOUT_S": "5",
            # Keep gunicorn and anything else that looks at $HOME inside the test's directory.
            "HOME": str(state_dir.parent),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class KitProcess:
    """One gunicorn server on 127.0.0.1:``port``. Build with :meth:`launch`."""

    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    stdout_path: Path
    stderr_path: Path
    state_dir: Path
    _stopped: bool = field(default=False, repr=False)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def client_token(self) -> str | None:
        return self.env.get("HOODY_TUNNEL_TOKENS") or None

    @property
    def admin_token(self) -> str | None:
        return self.env.get("HOODY_TUNNEL_ADMIN_TOKEN") or None

    @classmethod
    def launch(
        cls, work_dir: Path, env_overrides: dict[str, str] | None = None, *, port: int = 0
    ) -> KitProcess:
        """Start gunicorn on a fresh loopback socket. Does not wait for readiness.

        ``env_overrides`` values replace the test defaults; an empty string unsets a variable
        (e.g. ``HOODY_TUNNEL_TOKENS=""`` to have tokens generated).
        """
        work_dir.mkdir(parents=True, exist_ok=True)
        state_dir = work_dir / "state"
        env = base_env(state_dir)
        for key, value in (env_overrides or {}).items():
            if value == "":
                env.pop(key, None)
            else:
                env[key] = value
        state_dir = Path(env.get("HOODY_TUNNEL_STATE_DIR", str(state_dir)))

        listener = listen_loopback(port)  # port: a restarted kit takes over the old one
        try:
            port = listener.getsockname()[1]
            fd = listener.fileno()
            stdout_path = work_dir / "gunicorn.stdout"
            stderr_path = work_dir / "gunicorn.stderr"
            with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
                process = subprocess.Popen(
                    [
                        sys.executable, "-m", "gunicorn",
                        "-c", str(REPO_ROOT / "gunicorn.conf.py"),
                        "--bind", f"fd://{fd}",
                        "tunnel.wsgi:app",
                    ],
                    cwd=REPO_ROOT,
                    env=env,
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                )
        finally:
            # Only the server holds the listening socket now: once it exits, connects are refused
            # instead of hanging in a backlog nobody reads.
            listener.close()
        return cls(process, port, env, stdout_path, stderr_path, state_dir)

    # -- observing ---------------------------------------------------------------------------

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def output(self) -> str:
        """Both streams, labelled: for failure messages."""
        return (
            f"--- gunicorn exit status: {self.process.poll()}\n"
            f"--- gunicorn stdout:\n{self.stdout()}\n--- gunicorn stderr:\n{self.stderr()}"
        )

    def wait_log(self, pattern: str, timeout_s: float = 10.0) -> re.Match[str]:
        """Wait for the server's output (stderr, then stdout) to match the regex ``pattern``."""
        regex = re.compile(pattern)
        return wait_until(
            lambda: regex.search(self.stderr() + self.stdout()),
            timeout_s,
            f"a kit log line matching {pattern!r}",
            interval_s=0.05,
            context=self.output,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout_s: float | None = None,
    ) -> HttpReply:
        connection = http.client.HTTPConnection(
            self.host, self.port, timeout=timeout_s or scaled_s(10.0)
        )
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return HttpReply(
                response.status,
                {name.lower(): value for name, value in response.getheaders()},
                response.read(),
            )
        finally:
            connection.close()

    def get(self, path: str, **kwargs: Any) -> HttpReply:
        return self.request("GET", path, **kwargs)

    def wait_ready(self, timeout_s: float = 30.0) -> HttpReply:
        """Poll GET /health until it answers 200 (``timeout_s`` scaled); raise with the server's
        output otherwise.

        The socket listens before gunicorn starts, so each attempt simply waits in the backlog
        until the worker accepts; the per-attempt timeout only bounds how long the process can
        have died unnoticed.
        """
        last_error = "no attempt made"

        def healthy() -> HttpReply | None:
            nonlocal last_error
            exit_status = self.process.poll()
            if exit_status is not None:
                raise RuntimeError(f"gunicorn exited ({exit_status}) before ready\n{self.output()}")
            try:
                reply = self.get(HEALTH_PATH, timeout_s=1.0)
            except (OSError, http.client.HTTPException) as exc:
                last_error = repr(exc)
                return None
            if reply.status == 200:
                return reply
            last_error = f"health answered {reply.status}: {reply.body[:200]!r}"
            return None

        return wait_until(
            healthy,
            timeout_s,
            f"gunicorn to answer GET {HEALTH_PATH} with 200",
            context=lambda: f"last attempt: {last_error}\n{self.output()}",
        )

    def wait_exit(self, timeout_s: float | None = None) -> int:
        """Wait for the server to exit by itself; returns its exit status."""
        try:
            return self.process.wait(timeout=timeout_s if timeout_s is not None else scaled_s(30.0))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"gunicorn still running\n{self.output()}") from None

    # -- stopping ----------------------------------------------------------------------------

    def stop(self, timeout_s: float | None = None) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout_s``; returns the exit status."""
        if self._stopped:
            return self.process.returncode
        self._stopped = True
        grace_s = timeout_s if timeout_s is not None else scaled_s(20.0)
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=scaled_s(10.0))
        # The worker may outlive the master for an instant; nothing of the group may linger.
        self._signal_group(signal.SIGKILL)
        return self.process.returncode

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass
