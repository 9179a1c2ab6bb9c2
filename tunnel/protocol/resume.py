"""Resume of a v2 session on a new WebSocket (wire-protocol §7): detach, exchange offsets,
retransmit.

Theory of operation
-------------------
When the WebSocket of an OPEN v2 session ends without GOAWAY, the driver calls
:meth:`ResumableSession.detach`: the session becomes DETACHED, everything queued is dropped and
the streams stay as they are. While DETACHED (and, on the client, RESUMING) the outbox takes
nothing: DATA sent meanwhile only goes into the streams' replay buffers, acknowledged bytes only
into the windows, OPEN_OK and RST only into the streams' ledgers. All of that is regenerated
when the session resumes, from the ledgers, so nothing reaches the new connection before the
handshake and nothing is sent twice.

The handshake: the client sends ``HELLO.resume {sessionId, resumeToken, received}``
(:meth:`ResumableSession.send_resume`); the server's driver checks the token and calls
:meth:`ResumableSession.resume` on the parked session, which answers ``WELCOME(resumed=true,
received=…)``. Each side then applies the other's map (:meth:`_apply_resume`), per stream:

* closed by RST: the RST is sent again if the peer still lists the stream; then forgotten;
* listed by the peer: DATA from the peer's ``receivedBytes`` on, a FIN it did not get, and an
  OPEN_OK it may have missed are queued; the send credit becomes peer window + peer's consumed
  bytes - bytes sent; the receive window restarts from our own consumed count as announced in
  our map; a closed stream whose bytes and FIN the peer has is forgotten;
* not listed by the peer: a stream we opened that the peer never answered is opened again (OPEN,
  then its data from offset 0); any other stream is closed locally (StreamReset, STREAM_CLOSED).
"""

from __future__ import annotations

from dataclasses import replace

from tunnel.protocol import events as ev
from tunnel.protocol.core import SessionCore
from tunnel.protocol.session_state import SessionState
from tunnel.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel.protocol.config import Role
from tunnel.protocol.frames import HelloFrame, OpenFrame, OpenOkFrame, RstFrame, WelcomeFrame, WindowFrame
from tunnel.protocol.messages import Hello, ResumeRequest, StreamOffsets, Welcome
from tunnel.protocol.stream import Opener, Stream, StreamState

__all__ = ["ResumableSession"]

_DETACHED_STATES = (SessionState.DETACHED, SessionState.RESUMING)


class ResumableSession(SessionCore):
    """The resume part of :class:`~tunnel.protocol.session.Session` (v2 only)."""

    # -- commands ----------------------------------------------------------------------------------

    def detach(self) -> None:
        """The WebSocket of an OPEN v2 session ended without GOAWAY: keep the streams, drop
        what was queued, and wait for a resume (server: :meth:`resume`; client:
        :meth:`send_resume`).

        Also valid while DETACHED or RESUMING (the new connection was lost too): the session is
        then DETACHED again.

        Raises:
            LocalProtocolError: not a v2 session in state OPEN, DETACHED or RESUMING.
        """
        for stream in self._pending_reopens:  # considered again at the next resume
            stream.ledger.reopen_pending = False
        self._pending_reopens.clear()
        if self.state in _DETACHED_STATES:  # lost again during (or before) the resume
            self._outbox.clear()
            self.state = SessionState.DETACHED
            return
        if self.version < 2 or self.state is not SessionState.OPEN:
            raise LocalProtocolError(
                f"detach: only an OPEN v2 session can be parked (state {self.state.name}, v{self.version})"
            )
        self._outbox.clear()
        self.state = SessionState.DETACHED

    def received_map(self) -> dict[int, StreamOffsets]:
        """The ``received`` map of a resume handshake.

        Also snapshots each window's consumed count: the receive window restarts from exactly
        what the peer is told here.

        Returns:
            ``[receivedBytes, consumedBytes, finReceived]`` of every stream still remembered
            (live, or closed since the last handshake), by stream id.
        """
        offsets: dict[int, StreamOffsets] = {}
        for stream in [*self._streams.values(), *self._closed.values()]:
            window = stream.window
            window.mark_consumed_announced()
            offsets[stream.stream_id] = StreamOffsets(
                window.received_bytes, window.consumed_bytes, stream.ledger.fin_received
            )
        return dict(sorted(offsets.items()))

    def send_resume(self, token: str, client: str) -> None:
        """Client, DETACHED: send ``HELLO.resume`` on the new connection (the first message).

        Args:
            token: the client token (checked again by the server).
            client: the client's name, e.g. ``"hoody-tunnel/0.1.0"``.

        Raises:
            LocalProtocolError: not a client in state DETACHED, or no resume token known.
        """
        if self.role is not Role.CLIENT or self.state is not SessionState.DETACHED:
            raise LocalProtocolError(f"send_resume: not allowed in session state {self.state.name}")
        welcome = self.welcome
        if welcome is None or not welcome.resume_token:
            raise LocalProtocolError("send_resume: the server gave no resume token")
        hello = Hello(
            token=token,
            client=client,
            window=self.config.receive_window_size,
            resume=ResumeRequest(welcome.session_id, welcome.resume_token, self.received_map()),
        )
        self._outbox.clear()
        self._outbox.queue_control(HelloFrame(hello))
        self.hello = hello
        self.state = SessionState.RESUMING

    def resume(self, welcome: Welcome, peer_received: dict[int, StreamOffsets], now: float) -> None:
        """Server, DETACHED: take the client back. Queues WELCOME(resumed) with our map, then
        every retransmission. Events (StreamReset for streams the client forgot) follow.

        Args:
            welcome: the WELCOME to send: ``resumed`` true, a fresh ``resume_token``; its
                ``received`` is filled in here.
            peer_received: the ``received`` map of the client's HELLO.resume.
            now: current time (restarts the heartbeat).

        Raises:
            LocalProtocolError: not a server in state DETACHED, or ``welcome.resumed`` false.
        """
        if self.role is not Role.SERVER or self.state is not SessionState.DETACHED:
            raise LocalProtocolError(f"resume: not allowed in session state {self.state.name}")
        if not welcome.resumed:
            raise LocalProtocolError("resume: the WELCOME must say resumed")
        self._outbox.clear()
        welcome = replace(welcome, received=self.received_map())
        self._outbox.queue_control(WelcomeFrame(welcome))
        self.welcome = welcome
        self.welcome_acknowledged = False
        self.state = SessionState.OPEN
        self._now = now
        self._heartbeat.received(now)
        self._apply_resume(peer_received)

    def _on_resumed_welcome(self, welcome: Welcome) -> None:
        """Client, RESUMING: the server's answer to HELLO.resume."""
        previous = self.welcome
        if not welcome.resumed or previous is None or welcome.session_id != previous.session_id:
            raise RemoteProtocolError(
                "WELCOME does not resume the session we asked for", ErrorCode.RESUME_FAILED
            )
        self.welcome = welcome
        self.state = SessionState.OPEN
        self._apply_resume(welcome.received or {})
        self._events.append(ev.WelcomeReceived(welcome))

    # -- the bookkeeping rule ----------------------------------------------------------------------

    def _apply_resume(self, peer: dict[int, StreamOffsets]) -> None:
        records = sorted(
            [(sid, s, True) for sid, s in self._streams.items()]
            + [(sid, s, False) for sid, s in self._closed.items()]
        )
        for stream_id, stream, live in records:
            ledger = stream.ledger
            entry = peer.get(stream_id)
            if ledger.reset_sent is not None or ledger.reset_received:
                if entry is not None and ledger.reset_sent is not None:
                    self._outbox.queue_control(RstFrame(stream_id, *ledger.reset_sent))
                self._closed.pop(stream_id, None)
                continue
            if entry is None:
                if live and stream.opener is Opener.LOCAL and not ledger.answered and ledger.replay_start == 0:
                    self._reopen(stream)
                elif live:
                    self._drop_live(stream, "the peer no longer knows this stream")
                else:
                    self._closed.pop(stream_id, None)
                continue
            data = ledger.retransmission(entry.received_bytes)
            credit = self.peer_window_size + entry.consumed_bytes - ledger.sent_bytes
            if data is None or credit < 0 or entry.consumed_bytes > entry.received_bytes:
                if live:
                    self._outbox.queue_control(
                        RstFrame(stream_id, ErrorCode.PROTOCOL_ERROR, "resume offsets disagree")
                    )
                    self._drop_live(stream, "resume offsets disagree")
                else:
                    self._closed.pop(stream_id, None)
                continue
            ledger.trim_to(entry.consumed_bytes)
            ledger.resumed = True
            if stream.opener is Opener.REMOTE and ledger.accepted and entry.received_bytes == 0 and not entry.fin_received:
                self._outbox.queue_control(OpenOkFrame(stream_id))  # it may have been lost
            self._queue_replay(stream_id, data, ledger.fin_sent and not entry.fin_received)
            stream.window.restart(send_credit=credit)
            if not live and ledger.delivered(entry.received_bytes, entry.fin_received):
                self._closed.pop(stream_id, None)
            elif live:
                self._announce_pending(stream)

    def _queue_replay(self, stream_id: int, data: bytes, fin: bool) -> None:
        step = self.peer_max_frame_size
        view = memoryview(data)
        self._bytes_retransmitted += len(data)
        for offset in range(0, len(data), step):
            last = offset + step >= len(data)
            self._outbox.queue_data(stream_id, view[offset : offset + step], fin and last)
        if fin and not data:
            self._outbox.queue_data(stream_id, b"", True)

    def _reopen(self, stream: Stream) -> None:
        """Our OPEN never reached the peer: open it again, with all the data sent since.

        Deferred until everything queued before it is out: an OPEN is a control frame and would
        otherwise overtake the retransmitted FIN of a stream the peer still counts against
        maxStreams, and be refused.
        """
        stream.window.restart(send_credit=self.peer_window_size - stream.ledger.sent_bytes)
        stream.ledger.resumed = True
        stream.ledger.reopen_pending = True
        self._pending_reopens.append(stream)

    def _flush_reopens(self) -> None:
        for stream in self._pending_reopens:
            ledger = stream.ledger
            ledger.reopen_pending = False
            if stream.closed:
                continue  # reset meanwhile: the peer never knew it
            self._outbox.queue_control(OpenFrame(stream.stream_id, stream.bind_id, stream.origin))
            data = ledger.retransmission(ledger.replay_start) or b""  # all of it: from offset 0
            self._queue_replay(stream.stream_id, data, ledger.fin_sent)
        self._pending_reopens.clear()

    def _drop_live(self, stream: Stream, reason: str) -> None:
        stream.machine.state = StreamState.CLOSED
        if self._streams.pop(stream.stream_id, None) is not None:
            self._open_counts[stream.opener] -= 1
        self._events.append(ev.StreamReset(stream.stream_id, ErrorCode.STREAM_CLOSED, reason, False))

    def _announce_pending(self, stream: Stream) -> None:
        """Bytes consumed while detached were not announced: send their WINDOW when due."""
        if not stream.remote_open:
            return
        increment = stream.window.acknowledge(0, announce=True)
        if increment:
            self._outbox.queue_control(WindowFrame(stream.stream_id, increment))

