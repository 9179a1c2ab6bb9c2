"""Peak RSS of the kit's gunicorn worker (and of the tunnel client), sampled by a thread.

The worker is the master's child; it is looked up on every sample so a restarted worker is
still followed. With several children (there should be one: workers = 1) their RSS is summed.
"""

from __future__ import annotations

import threading

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
