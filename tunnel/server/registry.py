"""Live sessions, process-unique bind ids, exposed ports and the FD budget.

One :class:`Registry` exists per kit (per app); nothing here is module-global.

The FD budget (docs/protocol.md §12) is one :class:`gevent.lock.BoundedSemaphore`. Every descriptor
the kit opens for a session (its WebSocket, each EXPOSE listener, each stream's local socket) is
covered by a permit, and each session counts the permits it holds. Acquiring or releasing a
permit and updating that count never yields, so at every point another greenlet can observe,
``available + sum(session.permits_held) == budget`` holds exactly.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Iterator

from gevent.lock import BoundedSemaphore

if TYPE_CHECKING:
    from tunnel.server.kit_session import KitSession


class FdBudget:
    """The server-wide pool of FD permits."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._semaphore = BoundedSemaphore(size)

    @property
    def available(self) -> int:
        return int(self._semaphore.counter)

    def try_acquire(self) -> bool:
        """Take a permit if one is free; never blocks."""
        return bool(self._semaphore.acquire(blocking=False))

    def acquire(self, timeout_s: float | None = None) -> bool:
        """Wait for a permit (up to ``timeout_s``)."""
        return bool(self._semaphore.acquire(blocking=True, timeout=timeout_s))

    def release(self) -> None:
        self._semaphore.release()


class PortInUse(Exception):
    """Another session already exposes that port (not an OS error: our own bookkeeping)."""


class Registry:
    """Sessions by id, bind ids, and which session exposes which container port."""

    def __init__(self, fd_budget: int) -> None:
        self.budget = FdBudget(fd_budget)
        self._sessions: dict[str, KitSession] = {}
        self._bind_ids = itertools.count(1)
        self._exposed_ports: dict[int, str] = {}

    def add(self, session: KitSession) -> None:
        self._sessions[session.session_id] = session

    def remove(self, session: KitSession) -> None:
        if self._sessions.get(session.session_id) is session:
            del self._sessions[session.session_id]

    def get(self, session_id: str) -> KitSession | None:
        return self._sessions.get(session_id)

    def __iter__(self) -> Iterator[KitSession]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def next_bind_id(self) -> int:
        """A bind id unique across the whole process (docs/protocol.md §6.1)."""
        return next(self._bind_ids)

    def claim_port(self, port: int, session_id: str) -> None:
        """Reserve ``port`` for one session's EXPOSE binding; raises :class:`PortInUse`."""
        if port in self._exposed_ports:
            raise PortInUse(port)
        self._exposed_ports[port] = session_id

    def port_owner(self, port: int) -> str | None:
        return self._exposed_ports.get(port)

    def release_port(self, port: int, session_id: str) -> None:
        if self._exposed_ports.get(port) == session_id:
            del self._exposed_ports[port]

    def permits_granted(self) -> int:
        return sum(session.permits_held for session in self._sessions.values())
