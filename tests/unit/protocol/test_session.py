"""Session: handshake, bindings, GOAWAY, heartbeat and session-level errors (SessionPair)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from tunnel.protocol import (
    BindAccepted,
    BindErrFrame,
    BindFailed,
    BindFrame,
    BindKind,
    BindMode,
    BindOkFrame,
    BindRejected,
    BindRequest,
    BindRequested,
    BindResult,
    ConnectionDead,
    DataFrame,
    ErrorCode,
    GoAwayFrame,
    GoAwayReceived,
    Hello,
    HelloFrame,
    HelloReceived,
    LocalProtocolError,
    OpenFrame,
    PingFrame,
    PongFrame,
    PongReceived,
    RemoteProtocolError,
    Role,
    RstFrame,
    Session,
    SessionConfig,
    SessionState,
    StreamOpened,
    StreamRefused,
    UnbindReceived,
    WelcomeReceived,
    WelcomeFrame,
    WindowFrame,
    encode_frame,
)

from .pair import HEARTBEAT_S, MAX_STREAMS, TOKEN, WINDOW, SessionPair, frames_of, make_config, make_welcome


def goaway_of(session: Session) -> GoAwayFrame:
    frames = frames_of(session.messages_to_send())
    assert len(frames) == 1 and isinstance(frames[0], GoAwayFrame), frames
    return frames[0]


def expect_session_error(
    receiver: Session, message: bytes, text: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR
) -> None:
    """``message`` makes ``receiver`` fail: RemoteProtocolError, GOAWAY(code, text), CLOSED."""
    receiver.events_received()
    receiver.messages_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        receiver.receive_message(message, 0.0)
    assert str(info.value) == text
    assert info.value.error_code is code
    assert receiver.state is SessionState.CLOSED
    assert goaway_of(receiver) == GoAwayFrame(code, text)
    receiver.receive_message(message, 0.0)  # ignored once CLOSED
    assert receiver.messages_to_send() == [] and receiver.events_received() == []


# -- handshake ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_handshake(version: int) -> None:
    pair = SessionPair(version, handshake=False)
    assert (pair.client.state, pair.server.state) == (SessionState.IDLE, SessionState.IDLE)
    pair.client.send_hello(Hello(token=TOKEN, client="test/1.0"))
    assert pair.client.state is SessionState.HELLO_SENT
    (event,) = pair.to_server()
    assert event == HelloReceived(Hello(token=TOKEN, client="test/1.0", window=WINDOW))
    assert pair.server.statistics().state is SessionState.HELLO_RECEIVED
    welcome = make_welcome(pair.server.config, max_streams=MAX_STREAMS, heartbeat_ms=2500)
    pair.server.send_welcome(welcome)
    assert pair.server.statistics().state is SessionState.OPEN
    assert pair.to_client() == [WelcomeReceived(welcome)]
    assert pair.client.statistics().state is SessionState.OPEN
    assert pair.client.welcome == welcome and pair.server.hello is not None
    assert pair.client.max_streams == MAX_STREAMS
    assert pair.client.peer_max_frame_size == welcome.max_frame
    assert pair.client.peer_window_size == welcome.window
    assert pair.server.peer_window_size == WINDOW
    assert pair.client.statistics().state is SessionState.OPEN


def test_client_takes_limits_from_welcome_not_its_config() -> None:
    pair = SessionPair(handshake=False, client_config=make_config(Role.CLIENT, max_streams=99))
    pair.handshake(welcome=make_welcome(pair.server.config, heartbeat_ms=1500))
    assert pair.client.max_streams == MAX_STREAMS
    pair.client.handle_timer(0.0)
    assert pair.client.next_deadline() == 1.5


def test_hello_without_window_means_256_kib() -> None:
    server = Session(make_config(Role.SERVER))
    server.receive_message(encode_frame(HelloFrame(Hello("t", "c"))), 0.0)
    assert server.events_received() == [HelloReceived(Hello("t", "c"))]
    server.send_welcome(make_welcome(server.config))
    assert server.peer_window_size == 256 * 1024


def test_auth_rejection_path() -> None:
    pair = SessionPair(handshake=False)
    pair.client.send_hello(Hello(token="", client="c"))  # the codec allows an empty token
    (event,) = pair.to_server()
    assert isinstance(event, HelloReceived) and event.hello.token == ""
    pair.server.send_goaway(ErrorCode.AUTH_FAILED, "invalid token")
    assert pair.server.state is SessionState.CLOSED
    assert pair.to_client() == [GoAwayReceived(ErrorCode.AUTH_FAILED, "invalid token")]
    assert pair.client.state is SessionState.CLOSED
    assert pair.client.goaway_received == ErrorCode.AUTH_FAILED
    with pytest.raises(LocalProtocolError):
        pair.client.open_stream(1)


def test_server_may_goaway_before_any_hello() -> None:
    server = Session(make_config(Role.SERVER))
    server.send_goaway(ErrorCode.TIMEOUT, "no HELLO within 10 s")
    assert goaway_of(server) == GoAwayFrame(ErrorCode.TIMEOUT, "no HELLO within 10 s")
    server.send_goaway(ErrorCode.NORMAL)  # no-op once CLOSED
    assert not server.has_data_to_send()


ping = encode_frame(PingFrame(bytes(8)))
bind = encode_frame(BindFrame(1, "EXPOSE", 8080, "tcp"))


def hello(version: int = 2, **extra: object) -> bytes:
    payload = json.dumps({"token": "t", "client": "c", **extra}).encode()
    return struct.pack("!BBII", 1, 0, 0, len(payload)) + payload


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (ping, "expected HELLO as the first frame, got PING"),
        (bind, "expected HELLO as the first frame, got BIND"),
        (encode_frame(DataFrame(1, b"x")), "expected HELLO as the first frame, got DATA"),
        (encode_frame(GoAwayFrame(0)), "expected HELLO as the first frame, got GOAWAY"),
        (encode_frame(WelcomeFrame(make_welcome(make_config(Role.SERVER)))), "WELCOME sent by the client (wrong direction)"),
        (hello(window=1024), "HELLO: 'window' must be from 16384 to 16777216, got 1024"),
        (hello(token=7), "HELLO: 'token' must be a string"),
        (b"\x01\x00", "truncated frame header: 2 of 10 bytes"),
    ],
)
def test_server_first_message_errors(message: bytes, text: str) -> None:
    expect_session_error(Session(make_config(Role.SERVER)), message, text)


def test_second_hello_and_frames_before_welcome() -> None:
    server = Session(make_config(Role.SERVER))
    server.receive_message(hello(), 0.0)
    expect_session_error(server, hello(), "second HELLO")
    server = Session(make_config(Role.SERVER))
    server.receive_message(hello(), 0.0)
    expect_session_error(server, bind, "BIND before WELCOME")
    pair = SessionPair()
    expect_session_error(pair.server, hello(), "second HELLO")


def test_resume_key_in_v1_hello() -> None:
    server = Session(make_config(Role.SERVER, version=1))
    resume = {"sessionId": "sess_0123456789ab", "resumeToken": "x", "received": {}}
    expect_session_error(
        server, hello(resume=resume), "resume needs hoody-tunnel.v2", ErrorCode.RESUME_FAILED
    )
    client = Session(make_config(Role.CLIENT, version=1))
    from tunnel.protocol import ResumeRequest

    with pytest.raises(LocalProtocolError, match="resume needs hoody-tunnel.v2"):
        client.send_hello(Hello("t", "c", resume=ResumeRequest("s", "r")))


@pytest.mark.parametrize(
    ("frame", "text"),
    [
        (BindOkFrame(BindResult(1, 1, BindKind.PULL, 80, BindMode.TCP)), "BIND_OK sent by the client (wrong direction)"),
        (BindErrFrame(1, 2, "x"), "BIND_ERR sent by the client (wrong direction)"),
    ],
)
def test_wrong_direction_to_server(frame: BindOkFrame | BindErrFrame, text: str) -> None:
    expect_session_error(SessionPair().server, encode_frame(frame), text)


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (hello(), "HELLO sent by the server (wrong direction)"),
        (bind, "BIND sent by the server (wrong direction)"),
        (encode_frame(WelcomeFrame(make_welcome(make_config(Role.SERVER)))), "second WELCOME"),
    ],
)
def test_wrong_direction_to_client(message: bytes, text: str) -> None:
    expect_session_error(SessionPair().client, message, text)


def test_client_frames_before_welcome() -> None:
    client = Session(make_config(Role.CLIENT))
    expect_session_error(client, ping, "PING before the client sent HELLO")
    client = Session(make_config(Role.CLIENT))
    client.send_hello(Hello("t", "c"))
    client.messages_to_send()
    expect_session_error(client, encode_frame(OpenFrame(2, 1)), "OPEN before WELCOME")
    client = Session(make_config(Role.CLIENT))
    client.send_hello(Hello("t", "c"))
    client.messages_to_send()
    welcome = make_welcome(make_config(Role.SERVER), protocol="hoody-tunnel.v1")
    expect_session_error(
        client,
        encode_frame(WelcomeFrame(welcome)),
        "WELCOME protocol 'hoody-tunnel.v1' is not the negotiated 'hoody-tunnel.v2'",
    )


def test_commands_in_the_wrong_state_are_local_errors() -> None:
    client = Session(make_config(Role.CLIENT))
    for call in (
        lambda: client.open_stream(1),
        lambda: client.send_bind(BindRequest(1, BindKind.EXPOSE, 80, BindMode.TCP)),
        lambda: client.send_ping(bytes(8)),
        lambda: client.send_goaway(ErrorCode.NORMAL),
        lambda: client.send_welcome(make_welcome(client.config)),
    ):
        with pytest.raises(LocalProtocolError):
            call()
    client.send_hello(Hello("t", "c"))
    with pytest.raises(LocalProtocolError, match="send_hello: not allowed in session state HELLO_SENT"):
        client.send_hello(Hello("t", "c"))
    with pytest.raises(LocalProtocolError, match="open_stream: not allowed in session state HELLO_SENT"):
        client.open_stream(1)
    server = Session(make_config(Role.SERVER))
    with pytest.raises(LocalProtocolError, match="send_hello: only the client may do this"):
        server.send_hello(Hello("t", "c"))
    with pytest.raises(LocalProtocolError, match="send_welcome: not allowed in session state IDLE"):
        server.send_welcome(make_welcome(server.config))
    with pytest.raises(LocalProtocolError, match="window 20000 differs"):
        Session(make_config(Role.CLIENT)).send_hello(Hello("t", "c", window=20000))


def test_send_welcome_must_match_the_config() -> None:
    server = Session(make_config(Role.SERVER))
    server.receive_message(hello(), 0.0)
    with pytest.raises(LocalProtocolError, match="send_welcome: max_streams 5 differs from 4"):
        server.send_welcome(make_welcome(server.config, max_streams=5))
    with pytest.raises(LocalProtocolError, match="protocol 'hoody-tunnel.v1' differs"):
        server.send_welcome(make_welcome(server.config, protocol="hoody-tunnel.v1"))


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 3},
        {"receive_window_size": 1000},
        {"max_frame_size": 0},
        {"max_frame_size": 4 * 1024 * 1024},
        {"max_streams": 0},
        {"heartbeat_interval_s": 0},
        {"max_message_size": 5 * 1024 * 1024},
        {"peer_max_frame_size": 0},
    ],
)
def test_session_config_checks_its_values(changes: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError, match="SessionConfig: "):
        make_config(Role.SERVER, **changes)


# -- bindings -------------------------------------------------------------------------------------


def test_bind_ok_and_error() -> None:
    pair = SessionPair()
    request = BindRequest(7, BindKind.EXPOSE, 8080, BindMode.HTTP)
    pair.client.send_bind(request)
    assert pair.to_server() == [BindRequested(request)]
    result = BindResult(7, 1234, BindKind.EXPOSE, 8080, BindMode.HTTP)
    pair.server.send_bind_ok(result)
    assert pair.to_client() == [BindAccepted(result)]
    pair.client.send_bind(BindRequest(8, BindKind.EXPOSE, 22, BindMode.TCP))
    pair.to_server()
    pair.server.send_bind_error(8, ErrorCode.FORBIDDEN, "port 22: not in the allowed ranges")
    assert pair.to_client() == [BindFailed(8, ErrorCode.FORBIDDEN, "port 22: not in the allowed ranges")]
    with pytest.raises(LocalProtocolError, match="only the server"):
        pair.client.send_bind_ok(result)
    with pytest.raises(LocalProtocolError, match="error code must be a u16"):
        pair.server.send_bind_error(8, 70000, "x")


def raw_bind(obj: object) -> bytes:
    payload = json.dumps(obj).encode()
    return struct.pack("!BBII", 3, 0, 0, len(payload)) + payload


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({"reqId": 1, "kind": "EXPOSE", "port": 70000}, "port 70000: must be an integer from 1 to 65535"),
        ({"reqId": 1, "kind": "EXPOSE", "port": 0}, "port 0: must be an integer from 1 to 65535"),
        ({"reqId": 1, "kind": "EXPOSE", "port": "80"}, 'port "80": must be an integer from 1 to 65535'),
        ({"reqId": 1, "kind": "EXPOSE", "port": True}, "port true: must be an integer from 1 to 65535"),
        ({"reqId": 1, "kind": "EXPOSE"}, "port missing: must be an integer from 1 to 65535"),
        ({"reqId": 1, "kind": "LISTEN", "port": 80}, 'port 80: kind must be "EXPOSE" or "PULL", got "LISTEN"'),
        ({"reqId": 1, "port": 80}, 'port 80: kind must be "EXPOSE" or "PULL", got nothing'),
        ({"reqId": 1, "kind": "EXPOSE", "port": 80, "mode": "udp"}, 'port 80: mode must be "tcp" or "http", got "udp"'),
        ({"reqId": 1, "kind": "EXPOSE", "port": 80, "mode": 1}, 'port 80: mode must be "tcp" or "http", got 1'),
        ({"reqId": 1, "kind": "PULL", "port": 5432, "mode": "http"}, 'port 5432: PULL needs mode "tcp", got "http"'),
    ],
)
def test_bind_with_invalid_values_is_answered_by_the_session(obj: object, error: str) -> None:
    pair = SessionPair()
    pair.server.receive_message(raw_bind(obj), 0.0)
    assert pair.server.events_received() == [BindRejected(1, ErrorCode.PROTOCOL_ERROR, error)]
    assert pair.to_client() == [BindFailed(1, ErrorCode.PROTOCOL_ERROR, error)]
    assert pair.server.state is SessionState.OPEN


def test_bind_mode_defaults_to_tcp() -> None:
    pair = SessionPair()
    pair.server.receive_message(raw_bind({"reqId": 3, "kind": "PULL", "port": 5432, "x": 1}), 0.0)
    assert pair.server.events_received() == [BindRequested(BindRequest(3, BindKind.PULL, 5432, BindMode.TCP))]


@pytest.mark.parametrize(
    ("obj", "text"),
    [
        ([1, 2], "BIND: payload must be a JSON object"),
        ({"kind": "EXPOSE", "port": 80}, "BIND: missing key 'reqId'"),
        ({"reqId": "1", "kind": "EXPOSE", "port": 80}, "BIND: 'reqId' must be an integer"),
    ],
)
def test_bind_without_an_object_or_req_id_is_a_session_error(obj: object, text: str) -> None:
    expect_session_error(SessionPair().server, raw_bind(obj), text)


def test_unbind_is_echoed_by_the_server() -> None:
    pair = SessionPair()
    pair.client.send_unbind(1234)
    assert pair.to_server() == [UnbindReceived(1234)]
    assert pair.to_client() == [UnbindReceived(1234)]
    assert not pair.client.has_data_to_send()  # the client does not echo the echo


# -- GOAWAY ---------------------------------------------------------------------------------------


def test_goaway_from_the_server() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    pair.server.send_goaway(ErrorCode.SHUTDOWN, "server shutting down")
    assert pair.server.state is SessionState.DRAINING
    assert pair.to_client() == [GoAwayReceived(ErrorCode.SHUTDOWN, "server shutting down")]
    assert pair.client.state is SessionState.DRAINING
    assert not pair.client.can_open_stream() and not pair.server.can_open_stream()
    with pytest.raises(LocalProtocolError, match="open_stream: not allowed in session state DRAINING"):
        pair.client.open_stream(1)
    with pytest.raises(LocalProtocolError):
        pair.server.open_stream(1)
    # Existing streams carry on.
    pair.client.send_data(stream_id, b"still here")
    assert [type(e).__name__ for e in pair.to_server()] == ["DataReceived"]
    # An OPEN that crossed the GOAWAY is refused.
    events = pair.inject(pair.server, OpenFrame(stream_id + 2, 9))
    assert events == [StreamRefused(stream_id + 2, 9, ErrorCode.REFUSED)]
    assert frames_of(pair.server.messages_to_send()) == [
        RstFrame(stream_id + 2, ErrorCode.REFUSED, "GOAWAY sent: no new streams")
    ]
    assert pair.server.statistics().goaway_sent == ErrorCode.SHUTDOWN


def test_goaway_from_the_client_and_admin_close() -> None:
    pair = SessionPair()
    pair.client.send_goaway(ErrorCode.NORMAL)
    assert pair.to_server() == [GoAwayReceived(ErrorCode.NORMAL, "")]
    assert pair.server.state is SessionState.DRAINING
    pair = SessionPair()
    pair.server.send_goaway(ErrorCode.ADMIN_CLOSE, "closed by admin")
    (event,) = pair.to_client()
    assert event == GoAwayReceived(ErrorCode.ADMIN_CLOSE, "closed by admin")
    assert pair.client.statistics().goaway_received == ErrorCode.ADMIN_CLOSE


def test_goaway_reason_is_cut_to_1_kib() -> None:
    pair = SessionPair()
    pair.server.send_goaway(ErrorCode.NORMAL, "é" * 2000)
    (event,) = pair.to_client()
    assert isinstance(event, GoAwayReceived) and event.reason == "é" * 512


# -- PING / PONG / heartbeat ----------------------------------------------------------------------


def test_ping_is_answered_at_once_and_ahead_of_data() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    pair.server.send_data(stream_id, b"x" * 100)
    assert pair.inject(pair.server, PingFrame(b"12345678")) == []
    frames = frames_of(pair.server.messages_to_send())
    assert frames[0] == PongFrame(b"12345678") and isinstance(frames[1], DataFrame)
    # A PONG nobody asked for is ignored.
    assert pair.inject(pair.client, PongFrame(b"abcdefgh")) == []
    assert pair.client.statistics().rtt_s is None
    with pytest.raises(LocalProtocolError, match="payload must be 8 bytes, got 3"):
        pair.client.send_ping(b"abc")
    pair.client.send_ping(b"userping")
    assert pair.to_server() == [] and pair.to_client() == []  # answered, no PongReceived


def test_heartbeat_ping_pong_rtt_and_dead_connection() -> None:
    pair = SessionPair(handshake=False)
    assert pair.client.next_deadline() is None and pair.server.next_deadline() is None
    pair.handshake()
    server = pair.server
    assert server.next_deadline() == HEARTBEAT_S  # last received at 0.0
    server.handle_timer(HEARTBEAT_S - 0.001)
    assert not server.has_data_to_send()
    server.handle_timer(HEARTBEAT_S)
    (frame,) = frames_of(server.messages_to_send())
    assert frame == PingFrame(struct.pack("!Q", 1))
    server.handle_timer(HEARTBEAT_S + 1)  # still outstanding: nothing new
    assert not server.has_data_to_send()
    assert server.next_deadline() == 2 * HEARTBEAT_S
    # The client answers 0.25 s later.
    pair.client.receive_message(encode_frame(frame), HEARTBEAT_S + 0.25)
    server.receive_message(pair.client.messages_to_send()[0], HEARTBEAT_S + 0.5)
    assert server.events_received() == [PongReceived(0.5)]
    assert server.statistics().rtt_s == 0.5
    # Then silence: PINGs at 1 and 2 intervals, dead at 3 (once).
    start = HEARTBEAT_S + 0.5
    server.handle_timer(start + HEARTBEAT_S)
    server.handle_timer(start + 2 * HEARTBEAT_S)
    assert [f.payload for f in frames_of(server.messages_to_send())] == [  # type: ignore[union-attr]
        struct.pack("!Q", 2),
        struct.pack("!Q", 3),
    ]
    assert server.next_deadline() == start + 3 * HEARTBEAT_S
    server.handle_timer(start + 3 * HEARTBEAT_S + 1)
    assert server.events_received() == [ConnectionDead(3 * HEARTBEAT_S + 1)]
    assert server.next_deadline() is None
    server.handle_timer(start + 10 * HEARTBEAT_S)
    assert server.events_received() == [] and not server.has_data_to_send()
    # A late PONG of PING 3 still gives an RTT; PING 2 (older) stops being outstanding.
    server.receive_message(encode_frame(PongFrame(struct.pack("!Q", 3))), start + 40)
    assert server.events_received() == [PongReceived(40 - 2 * HEARTBEAT_S)]
    assert server.next_deadline() == start + 40 + HEARTBEAT_S
    server.receive_message(encode_frame(PongFrame(struct.pack("!Q", 2))), start + 41)
    assert server.events_received() == []


def test_first_timer_call_starts_the_clock() -> None:
    pair = SessionPair(handshake=False)
    pair.client.handle_timer(100.0)  # before the handshake: only starts the clock
    assert pair.client.next_deadline() is None
    pair.handshake()  # WELCOME received at pair.now == 0.0
    assert pair.client.next_deadline() == HEARTBEAT_S


def test_any_message_counts_as_traffic() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    pair.now = 9.0
    pair.server.send_data(stream_id, b"x")
    pair.to_client()
    assert pair.client.next_deadline() == 9.0 + HEARTBEAT_S


# -- errors, close --------------------------------------------------------------------------------


def test_connection_lost_closes_everything() -> None:
    pair = SessionPair()
    pair.open_stream()
    pair.client.send_ping(bytes(8))
    pair.client.connection_lost()
    assert pair.client.state is SessionState.CLOSED
    assert pair.client.messages_to_send() == [] and pair.client.stream_ids() == []
    assert pair.client.statistics().active_streams == 0
    with pytest.raises(LocalProtocolError):
        pair.client.send_ping(bytes(8))


def test_protocol_error_drops_queued_frames_and_sends_only_goaway() -> None:
    pair = SessionPair()
    stream_id = pair.open_stream()
    pair.server.send_data(stream_id, b"pending")
    with pytest.raises(RemoteProtocolError):
        pair.server.receive_message(encode_frame(WindowFrame(stream_id, 1))[:-1], 0.0)
    assert goaway_of(pair.server) == GoAwayFrame(ErrorCode.PROTOCOL_ERROR, "truncated WINDOW frame: 3 of 4 payload bytes")
    assert pair.server.stream_ids() == []


def test_events_before_the_bad_frame_are_kept() -> None:
    pair = SessionPair()
    message = encode_frame(OpenFrame(1, 5)) + encode_frame(OpenFrame(1, 5))
    with pytest.raises(RemoteProtocolError, match="ids must increase"):
        pair.server.receive_message(message, 0.0)
    assert pair.server.events_received() == [StreamOpened(1, 5, None)]


def test_session_over_other_config() -> None:
    config = SessionConfig(Role.SERVER, 1, WINDOW, 16384, 1, 1.0)
    assert config.max_message_size == 1 << 20 and config.subprotocol == "hoody-tunnel.v1"


def test_v2_hello_with_resume_reaches_the_driver() -> None:
    from tunnel.protocol import ResumeRequest, StreamOffsets

    server = Session(make_config(Role.SERVER, version=2))
    resume = {"sessionId": "sess_0123456789ab", "resumeToken": "x", "received": {"1": [5, 3, False]}}
    server.receive_message(hello(resume=resume), 0.0)
    (event,) = server.events_received()
    assert isinstance(event, HelloReceived)
    assert event.hello.resume == ResumeRequest("sess_0123456789ab", "x", {1: StreamOffsets(5, 3, False)})


def test_client_goaway_before_welcome_closes() -> None:
    client = Session(make_config(Role.CLIENT))
    client.receive_message(encode_frame(GoAwayFrame(ErrorCode.TIMEOUT, "no HELLO")), 0.0)
    assert client.events_received() == [GoAwayReceived(ErrorCode.TIMEOUT, "no HELLO")]
    assert client.state is SessionState.CLOSED
