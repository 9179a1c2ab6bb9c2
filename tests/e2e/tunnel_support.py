"""Real TCP targets and the real ``hoody-tunnel connect`` CLI, for end-to-end tunnel tests.

Everything here uses plain blocking sockets and threads (the test process is not monkeypatched).
Waits are bounded by deadlines scaled with TUNNEL_TEST_TIMEOUT_FACTOR; nothing sleeps to
synchronise.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tests.e2e.harness import REPO_ROOT, KitProcess, scaled_s

CHUNK_SIZE = 256 * 1024


def pattern_bytes(seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes (fast: one random block repeated with a counter)."""
    block = random.Random(seed).randbytes(64 * 1024)
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += counter.to_bytes(8, "big") + block
        counter += 1
    return bytes(out[:size])


def sha256_stream(source: Callable[[int], bytes]) -> tuple[str, int]:
    """Read until EOF from ``source(n)``; return (hex digest, byte count)."""
    digest = hashlib.sha256()
    total = 0
    while True:
        data = source(CHUNK_SIZE)
        if not data:
            return digest.hexdigest(), total
        digest.update(data)
        total += len(data)


def send_pattern(sock: socket.socket, seed: int, size: int) -> str:
    """Send ``size`` pattern bytes in chunks, then SHUT_WR; return their sha256."""
    digest = hashlib.sha256()
    sent = 0
    block = pattern_bytes(seed, 4 * 1024 * 1024)
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        sock.sendall(piece)
        digest.update(piece)
        sent += len(piece)
    sock.shutdown(socket.SHUT_WR)
    return digest.hexdigest()


def bidirectional_transfer(sock: socket.socket, seed: int, size: int) -> tuple[str, str, int]:
    """Send ``size`` bytes while reading until EOF. Returns (sent sha, received sha, received n)."""
    result: dict[str, str] = {}
    sender = threading.Thread(target=lambda: result.update(sent=send_pattern(sock, seed, size)), daemon=True)
    sender.start()
    received_sha, received_n = sha256_stream(sock.recv)
    sender.join(scaled_s(120))
    return result.get("sent", "sender failed"), received_sha, received_n


@dataclass
class TransferRecord:
    sent_sha: str
    received_sha: str
    received_size: int


class TcpTarget:
    """A threaded TCP server on 127.0.0.1 with a per-connection behaviour.

    ``mode``: ``"echo"`` echoes until EOF then closes; ``"transfer"`` sends ``size`` pattern
    bytes (seed ``seed``) while hashing what it receives, recording a :class:`TransferRecord`;
    ``"blackhole"`` accepts and never reads.
    """

    def __init__(self, mode: str, *, size: int = 0, seed: int = 0, port: int = 0) -> None:
        self.mode = mode
        self.size = size
        self.seed = seed
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(512)
        self.port = self.listener.getsockname()[1]
        self.records: list[TransferRecord] = []
        self.accepted = 0
        self.connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._record_added = threading.Condition(self._lock)
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "echo":
                while data := conn.recv(CHUNK_SIZE):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            elif self.mode == "transfer":
                sent, received, count = bidirectional_transfer(conn, self.seed, self.size)
                with self._record_added:
                    self.records.append(TransferRecord(sent, received, count))
                    self._record_added.notify_all()
            elif self.mode == "blackhole":
                return  # keep the socket open, never read
        except OSError:
            pass
        finally:
            if self.mode != "blackhole":
                conn.close()

    def wait_records(self, count: int, timeout_s: float) -> list[TransferRecord]:
        with self._record_added:
            ok = self._record_added.wait_for(lambda: len(self.records) >= count, timeout_s)
            assert ok, f"only {len(self.records)} of {count} transfers finished on the target"
            return list(self.records)

    def close(self) -> None:
        self.listener.close()
        with self._lock:
            for conn in self.connections:
                try:
                    conn.close()
                except OSError:
                    pass


def free_port_candidate() -> int:
    """A port below the ephemeral range that is free right now (EXPOSE tests retry on a clash)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            probe.close()
        return port
    raise RuntimeError("no free port found")


SUMMARY_PULL = re.compile(r"pull\s+\S+:(\d+) -> container :(\d+)")


@dataclass
class ClientProcess:
    """``python -m tunnel.client connect ...`` as a subprocess, with its output collected."""

    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def launch(cls, kit: KitProcess, *args: str, token: str | None = None, env: dict[str, str] | None = None) -> ClientProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HOODY_TUNNEL_")}
        full_env["HOME"] = str(kit.state_dir.parent)
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        command = [sys.executable, "-m", "tunnel.client", "connect", kit.ws_url]
        if token is None:
            token = kit.client_token
        if token:
            command += ["--token", token]
        process = subprocess.Popen(
            command + list(args),
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        client = cls(process)
        threading.Thread(target=client._read, daemon=True).start()
        return client

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout_s: float = 20.0) -> str:
        """Wait for an output line containing ``pattern`` (or the process to exit: error)."""
        deadline = time.monotonic() + scaled_s(timeout_s)
        with self._changed:
            while True:
                for line in self.lines:
                    if pattern in line:
                        return line
                if self.process.poll() is not None and self.process.stdout is not None and self.process.stdout.closed:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.5))
        raise AssertionError(f"no line with {pattern!r}; exit={self.process.poll()}\n{self.output()}")

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        self.wait_line("ready", timeout_s)

    def pull_port(self, container_port: int) -> int:
        """The local port the summary shows for a --pull of ``container_port``."""
        for line in self.output().splitlines():
            match = SUMMARY_PULL.search(line)
            if match and int(match.group(2)) == container_port:
                return int(match.group(1))
        raise AssertionError(f"no pull line for :{container_port}\n{self.output()}")

    def interrupt(self) -> int:
        """Ctrl-C; returns the exit code."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        return self.wait_exit()

    def wait_exit(self, timeout_s: float = 20.0) -> int:
        try:
            return self.process.wait(timeout=scaled_s(timeout_s))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"client still running\n{self.output()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)


def connect_local(port: int, timeout_s: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=scaled_s(timeout_s))
    sock.settimeout(scaled_s(60.0))
    return sock
