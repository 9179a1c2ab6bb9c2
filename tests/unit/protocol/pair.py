"""SessionPair: a client Session wired to a server Session in memory (h11's ConnectionPair).

Messages are carried by hand, so a test decides exactly when each side sees what the other
sent. Nothing here touches a socket, a clock or a thread.
"""

from __future__ import annotations

from dataclasses import replace

from tunnel.protocol import (
    Event,
    Frame,
    Hello,
    HelloReceived,
    Role,
    Session,
    SessionConfig,
    Welcome,
    WelcomeReceived,
    decode_message,
    encode_frame,
)

WINDOW = 64 * 1024
MAX_FRAME = 16 * 1024
MAX_STREAMS = 4
HEARTBEAT_S = 10.0
TOKEN = "secret-token"


def make_config(role: Role, version: int = 2, **changes: object) -> SessionConfig:
    """A small, test-friendly SessionConfig."""
    config = SessionConfig(
        role=role,
        version=version,
        receive_window_size=WINDOW,
        max_frame_size=MAX_FRAME,
        max_streams=MAX_STREAMS,
        heartbeat_interval_s=HEARTBEAT_S,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def make_welcome(config: SessionConfig, **changes: object) -> Welcome:
    """The WELCOME a server with ``config`` sends."""
    welcome = Welcome(
        session_id="sess_0123456789ab",
        protocol=config.subprotocol,
        resumed=False,
        max_streams=config.max_streams,
        window=config.receive_window_size,
        max_frame=config.max_frame_size,
        heartbeat_ms=int(config.heartbeat_interval_s * 1000),
        server="hoody-tunnel/0.1.0",
        resume_token="tok" if config.version >= 2 else None,
        orphan_ttl_ms=30000 if config.version >= 2 else None,
    )
    return replace(welcome, **changes)  # type: ignore[arg-type]


def frames_of(messages: list[bytes], version: int = 2) -> list[Frame]:
    """Decode messages sent by a session (generous max frame size)."""
    frames: list[Frame] = []
    for message in messages:
        frames.extend(decode_message(message, max_frame_size=4 * 1024 * 1024 - 10, version=version))
    return frames


class SessionPair:
    """A client and a server session, handshaken unless ``handshake=False``."""

    def __init__(
        self,
        version: int = 2,
        *,
        client_config: SessionConfig | None = None,
        server_config: SessionConfig | None = None,
        handshake: bool = True,
        now: float = 0.0,
    ) -> None:
        self.version = version
        self.now = now
        self.client = Session(client_config or make_config(Role.CLIENT, version))
        self.server = Session(server_config or make_config(Role.SERVER, version))
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        if handshake:
            self.handshake()

    def peer(self, session: Session) -> Session:
        return self.server if session is self.client else self.client

    def send(self, sender: Session, max_bytes: int | None = None) -> list[Event]:
        """Carry everything ``sender`` has queued to its peer; return the peer's new events."""
        receiver = self.peer(sender)
        for message in sender.messages_to_send(max_bytes):
            receiver.receive_message(message, self.now)
        return receiver.events_received()

    def to_server(self) -> list[Event]:
        return self.send(self.client)

    def to_client(self) -> list[Event]:
        return self.send(self.server)

    def exchange(self) -> tuple[list[Event], list[Event]]:
        """Carry messages both ways until neither side has anything queued.

        Returns:
            (client events, server events) gathered on the way.
        """
        client_events: list[Event] = []
        server_events: list[Event] = []
        for _ in range(1000):
            if not (self.client.has_data_to_send() or self.server.has_data_to_send()):
                break
            server_events += self.to_server()
            client_events += self.to_client()
        else:  # pragma: no cover
            raise AssertionError("the sessions never went quiet")
        return client_events, server_events

    def inject(self, receiver: Session, *frames: Frame) -> list[Event]:
        """Deliver hand-made frames (one message each) to ``receiver``; return its events."""
        for frame in frames:
            receiver.receive_message(encode_frame(frame), self.now)
        return receiver.events_received()

    def handshake(self, hello: Hello | None = None, welcome: Welcome | None = None) -> None:
        self.client.send_hello(hello or Hello(token=TOKEN, client="test/1.0"))
        events = self.to_server()
        assert len(events) == 1 and isinstance(events[0], HelloReceived), events
        self.server.send_welcome(welcome or make_welcome(self.server.config))
        events = self.to_client()
        assert len(events) == 1 and isinstance(events[0], WelcomeReceived), events

    def open_stream(self, opener: Session | None = None, bind_id: int = 7, *, accept: bool = True) -> int:
        """Open a stream from ``opener`` (default: the client) and, by default, accept it."""
        opener = opener or self.client
        acceptor = self.peer(opener)
        stream_id = opener.open_stream(bind_id, origin="10.0.0.1:5555")
        self.send(opener)
        if accept:
            acceptor.accept_stream(stream_id)
            self.send(acceptor)
        return stream_id
