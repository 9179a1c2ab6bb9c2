"""Subprocesses the bench starts, and the guarantee that every one of them is stopped.

Each child runs in its own session (process group), so stopping it reaches its own children
too (gunicorn's worker, sshd's per-connection process). ``ProcessSet.close()`` stops them in
reverse start order: the configured stop signal (SIGTERM, or SIGINT for the tunnel client),
then SIGKILL after a grace period. The bench calls it from ``finally`` and from ``atexit``, and
turns SIGTERM/SIGHUP into ``SystemExit`` so that ``finally`` runs for them as well.

Output goes to files in the bench's temporary directory (never to pipes nobody drains), except
when the caller wants to wait for a line on stdout: then a reader thread copies each line into
the log file and into a list that ``wait_for_line()`` watches.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

LOG_TAIL_BYTES = 4000


class BenchError(Exception):
    """A step of the bench failed; the message says what and includes the relevant output."""


class ConfigError(Exception):
    """A BENCH_* setting cannot be used; the message names it."""


def env_number(env: Mapping[str, str], name: str, default: float, kind: Callable[[str], float]) -> float:
    """A positive number from ``env[name]`` (``kind`` parses it), or ``default`` when unset.

    Raises:
        ConfigError: not a number, or not positive.
    """
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name}: must be positive, got {raw!r}")
    return value


def tail(path: Path, size_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``size_bytes`` of a log file, decoded leniently ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size_bytes))
            data = f.read()
    except OSError:
        return ""
    prefix = "...\n" if end > size_bytes else ""
    return prefix + data.decode("utf-8", "replace")


class Managed:
    """One started subprocess with its logs."""

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        stdout_path: Path,
        stderr_path: Path,
        stop_signal: int,
        stop_grace_s: float,
    ) -> None:
        self.name = name
        self.popen = popen
        self.stdout_path = stdout_path
        self.stderr_path = stderr_path
        self.stop_signal = stop_signal
        self.stop_grace_s = stop_grace_s
        self.lines: list[str] = []
        self._lines_changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self.exit_status: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def start_line_reader(self, stream: IO[bytes]) -> None:
        """Copy stdout lines to the log file and to ``self.lines`` (a daemon thread)."""

        def read() -> None:
            with open(self.stdout_path, "ab") as log:
                for raw in iter(stream.readline, b""):
                    log.write(raw)
                    log.flush()
                    with self._lines_changed:
                        self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                        self._lines_changed.notify_all()
            stream.close()
            with self._lines_changed:
                self._lines_changed.notify_all()

        self._reader = threading.Thread(target=read, name=f"{self.name}-stdout", daemon=True)
        self._reader.start()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout_s: float) -> str:
        """Block until a stdout line satisfies ``predicate``; BenchError on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._lines_changed:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                reader_done = self._reader is None or not self._reader.is_alive()
                if not self.alive() and reader_done:
                    raise BenchError(f"{self.name} exited with status {self.popen.returncode} "
                                     f"before it was ready\n{self.describe_output()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"{self.name} not ready after {timeout_s:.0f} s\n"
                                     f"{self.describe_output()}")
                self._lines_changed.wait(min(remaining, 0.2))

    def describe_output(self) -> str:
        """Both log tails, labelled, for error messages."""
        parts = []
        for label, path in (("stdout", self.stdout_path), ("stderr", self.stderr_path)):
            text = tail(path).strip()
            parts.append(f"--- {self.name} {label} ({path}) ---\n{text or '(empty)'}")
        return "\n".join(parts)

    def stop(self) -> int | None:
        """Stop signal to the process group, SIGKILL after the grace period; returns the status."""
        if self.popen.poll() is None:
            self._signal_group(self.stop_signal)
            try:
                self.popen.wait(self.stop_grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                try:
                    self.popen.wait(5.0)
                except subprocess.TimeoutExpired:
                    pass
        # A child of the group may outlive its leader (gunicorn's worker after the master died).
        self._signal_group(signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(2.0)
        self.exit_status = self.popen.returncode
        return self.exit_status

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass


class ProcessSet:
    """Every subprocess the bench started; ``close()`` stops them all (idempotent)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: list[Managed] = []
        self._lock = threading.Lock()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        pass_fds: Sequence[int] = (),
        read_stdout_lines: bool = False,
        stdin_pipe: bool = False,
        stop_signal: int = signal.SIGTERM,
        stop_grace_s: float = 8.0,
        user: str | None = None,
    ) -> Managed:
        """Start ``argv`` in a session of its own; ``user`` runs it as that user (and its primary
        group, no supplementary groups) -- a root bench starting a server that refuses root."""
        group = pwd.getpwnam(user).pw_gid if user is not None else None
        stdout_path = self.log_dir / f"{name}.stdout.log"
        stderr_path = self.log_dir / f"{name}.stderr.log"
        with open(stderr_path, "wb") as err_file:
            stdout_target: int | IO[bytes]
            out_file = None
            if read_stdout_lines:
                stdout_target = subprocess.PIPE
            else:
                out_file = open(stdout_path, "wb")
                stdout_target = out_file
            try:
                popen = subprocess.Popen(
                    list(argv),
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    pass_fds=tuple(pass_fds),
                    stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                    stdout=stdout_target,
                    stderr=err_file,
                    start_new_session=True,
                    user=user,
                    group=group,
                    extra_groups=[] if user is not None else None,
                )
            except OSError as exc:
                raise BenchError(f"cannot start {name} ({argv[0]}): {exc}") from exc
            finally:
                if out_file is not None:
                    out_file.close()
        managed = Managed(name, popen, stdout_path, stderr_path, stop_signal, stop_grace_s)
        with self._lock:
            self._procs.append(managed)
        if read_stdout_lines:
            assert popen.stdout is not None
            managed.start_line_reader(popen.stdout)
        return managed

    def stop(self, managed: Managed) -> int | None:
        with self._lock:
            if managed in self._procs:
                self._procs.remove(managed)
        return managed.stop()

    def close(self) -> None:
        while True:
            with self._lock:
                if not self._procs:
                    return
                managed = self._procs.pop()
            try:
                if managed.popen.stdin is not None:
                    managed.popen.stdin.close()
            except OSError:
                pass
            managed.stop()


def listening_socket(backlog: int = 1024) -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a port the kernel picked, already listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def unused_port() -> int:
    """A loopback port that was free a moment ago.

    Racy by nature, used only where a program takes a port number and not a socket (sshd, ssh -L,
    the tunnel client's PULL listener, the kit's EXPOSE listener); callers retry on a clash.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], timeout_s: float, what: str,
               alive: Managed | None = None, interval_s: float = 0.05) -> None:
    """Poll ``check`` until true; BenchError on timeout or when ``alive`` exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return
        if alive is not None and not alive.alive():
            raise BenchError(f"{alive.name} exited with status {alive.popen.returncode} while "
                             f"waiting for {what}\n{alive.describe_output()}")
        if time.monotonic() >= deadline:
            detail = f"\n{alive.describe_output()}" if alive is not None else ""
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(interval_s)
