"""Peak RSS of the kit's gunicorn worker (and of the tunnel client), sampled by a thread.

The worker is the master's child; it is looked up on every sample so a restarted worker is
still followed. With several children (there should be one: workers = 1) their RSS is summed.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Iterable

import psutil

MIB = 1 << 20


class RssMonitor:
    """Samples every ``interval_s`` until ``stop()``; peaks are kept overall and per phase."""

    def __init__(self, master_pid: int, interval_s: float = 0.05) -> None:
        self._master_pid = master_pid
        self._client_pid: int | None = None
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._phase = "idle"
        self.worker_pids: set[int] = set()
        self.kit_peak_bytes = 0
        self.client_peak_bytes = 0
        self.kit_phase_peak_bytes: dict[str, int] = {}
        self.samples = 0
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def set_client(self, pid: int | None) -> None:
        """Also follow this tunnel client's RSS (None: no client now)."""
        with self._lock:
            self._client_pid = pid

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sample()

    def kit_rss_bytes(self) -> int | None:
        try:
            master = psutil.Process(self._master_pid)
            children = master.children()
            if not children:
                return None
            total = 0
            for child in children:
                try:
                    total += child.memory_info().rss
                    self.worker_pids.add(child.pid)
                except psutil.NoSuchProcess:
                    continue
            return total
        except psutil.Error as exc:
            if len(self.errors) < 5:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return None

    def sample(self) -> None:
        kit = self.kit_rss_bytes()
        client = None
        with self._lock:
            client_pid = self._client_pid
        if client_pid is not None:
            try:
                client = psutil.Process(client_pid).memory_info().rss
            except psutil.Error:
                client = None
        with self._lock:
            self.samples += 1
            if kit is not None:
                self.kit_peak_bytes = max(self.kit_peak_bytes, kit)
                peak = self.kit_phase_peak_bytes.get(self._phase, 0)
                self.kit_phase_peak_bytes[self._phase] = max(peak, kit)
            if client is not None:
                self.client_peak_bytes = max(self.client_peak_bytes, client)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()


# -- CPU time ---------------------------------------------------------------------------------------


def _schedstat_ns(pid: int) -> int | None:
    """On-CPU nanoseconds (user + system) of every thread of ``pid``, from
    /proc/PID/task/*/schedstat: exact, where /proc/PID/stat counts in clock ticks (10 ms), too
    coarse for the fraction of a second an RTT phase takes. None where schedstat is missing."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        except (OSError, ValueError, IndexError):
            return None
    return total


def cpu_seconds(pids: Iterable[int]) -> float | None:
    """User + system CPU seconds spent so far by ``pids`` (all their threads); None when one of
    them is gone."""
    total = 0.0
    for pid in pids:
        ns = _schedstat_ns(pid)
        if ns is not None:
            total += ns / 1e9
            continue
        try:
            total += sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.Error:
            return None
    return total


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (e.g. sshd and its per-connection processes)."""
    try:
        parent = psutil.Process(pid)
        return [pid] + [child.pid for child in parent.children(recursive=True)]
    except psutil.Error:
        return [pid]


def worker_pids(master_pid: int) -> list[int]:
    """The gunicorn master's workers (its children)."""
    try:
        return [child.pid for child in psutil.Process(master_pid).children()]
    except psutil.Error:
        return []


class CpuMeter:
    """CPU spent by two groups of processes (the kit or server side, the client side) between
    ``start()`` and ``stop()``. The groups are given as functions returning pids, called at
    ``start()``; the same pids are read at ``stop()``."""

    def __init__(self, server_side: Callable[[], list[int]],
                 client_side: Callable[[], list[int]]) -> None:
        self._groups = (server_side, client_side)
        self._pids: list[list[int]] = [[], []]
        self._before: list[float | None] = [None, None]
        self.spent_s: list[float | None] = [None, None]  # [server side, client side]

    def start(self) -> None:
        self._pids = [group() for group in self._groups]
        self._before = [cpu_seconds(pids) if pids else None for pids in self._pids]

    def stop(self) -> None:
        for i, pids in enumerate(self._pids):
            before = self._before[i]
            after = cpu_seconds(pids) if pids else None
            self.spent_s[i] = None if before is None or after is None else after - before
