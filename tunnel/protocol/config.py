"""Per-session parameters of a :class:`~tunnel.protocol.session.Session`.

Not to be confused with :mod:`tunnel.config` (the server's Settings): the driver builds one
``SessionConfig`` per WebSocket from its Settings and the negotiated subprotocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tunnel.protocol.errors import LocalProtocolError
from tunnel.protocol.frames import HEADER_SIZE, MAX_FRAME_SIZE_LIMIT, MAX_MESSAGE_SIZE
from tunnel.protocol.payloads import MAX_WINDOW_SIZE, MIN_WINDOW_SIZE

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "Role", "SessionConfig"]

#: Default v2 batching target.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20


class Role(Enum):
    """Which end of the WebSocket a session is."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Parameters of one session.

    Attributes:
        role: CLIENT or SERVER.
        version: the negotiated subprotocol, 1 (``hoody-tunnel.v1``) or 2 (``hoody-tunnel.v2``).
        receive_window_size: the per-stream window WE grant (client: HELLO.window; server:
            WELCOME.window), 16 KiB..16 MiB.
        max_frame_size: the largest payload WE accept, 1..4 MiB-10 (server: WELCOME.maxFrame;
            a client should use 4 MiB-10: HELLO cannot announce a limit).
        max_streams: how many streams each side may have open that it opened itself (server:
            its limit, WELCOME.maxStreams; client: any value, replaced by WELCOME.maxStreams).
        heartbeat_interval_s: seconds of silence before a PING (server: its own; client: any
            value, replaced by WELCOME.heartbeatMs / 1000).
        max_message_size: v2 batching target in bytes (at most 4 MiB); v1 ignores it.
        peer_max_frame_size: server only: cap the DATA frames sent to the client at this size
            (the client accepts up to 4 MiB-10); None: the server's own ``max_frame_size``.
            The client always uses WELCOME.maxFrame.

    Raises:
        LocalProtocolError: a value out of range (a bug of the caller).
    """

    role: Role
    version: int
    receive_window_size: int
    max_frame_size: int
    max_streams: int
    heartbeat_interval_s: float
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    peer_max_frame_size: int | None = None

    def __post_init__(self) -> None:
        def check(ok: bool, text: str) -> None:
            if not ok:
                raise LocalProtocolError(f"SessionConfig: {text}")

        check(isinstance(self.role, Role), f"role must be a Role, got {self.role!r}")
        check(self.version in (1, 2), f"version must be 1 or 2, got {self.version!r}")
        check(
            MIN_WINDOW_SIZE <= self.receive_window_size <= MAX_WINDOW_SIZE,
            f"receive_window_size must be from {MIN_WINDOW_SIZE} to {MAX_WINDOW_SIZE}, "
            f"got {self.receive_window_size}",
        )
        check(
            1 <= self.max_frame_size <= MAX_FRAME_SIZE_LIMIT,
            f"max_frame_size must be from 1 to {MAX_FRAME_SIZE_LIMIT}, got {self.max_frame_size}",
        )
        check(1 <= self.max_streams <= 0xFFFFFFFF, f"max_streams must be >= 1, got {self.max_streams}")
        check(
            self.heartbeat_interval_s > 0,
            f"heartbeat_interval_s must be > 0, got {self.heartbeat_interval_s}",
        )
        check(
            HEADER_SIZE < self.max_message_size <= MAX_MESSAGE_SIZE,
            f"max_message_size must be from {HEADER_SIZE + 1} to {MAX_MESSAGE_SIZE}, "
            f"got {self.max_message_size}",
        )
        check(
            self.peer_max_frame_size is None or 1 <= self.peer_max_frame_size <= MAX_FRAME_SIZE_LIMIT,
            f"peer_max_frame_size must be from 1 to {MAX_FRAME_SIZE_LIMIT}, "
            f"got {self.peer_max_frame_size}",
        )

    @property
    def subprotocol(self) -> str:
        """The WebSocket subprotocol of :attr:`version` (``"hoody-tunnel.v2"``...)."""
        return f"hoody-tunnel.v{self.version}"
