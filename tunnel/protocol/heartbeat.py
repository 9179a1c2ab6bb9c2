"""Liveness: heartbeat PINGs, RTT and dead-connection detection (docs/protocol.md §10).

The clock is an input: every method takes ``now`` (seconds, any monotonic origin). The first
call that passes a time (:meth:`Heartbeat.received` or :meth:`Heartbeat.poll`) starts the clock.

Rules:

* Any received WebSocket message counts as traffic; it ends the current *silence*.
* After one interval of silence a PING is due; after a second interval of silence another one
  (at most one PING per interval of silence, so a handle_timer loop never floods the peer).
* After three intervals of silence the connection is dead: reported once per silence.
* A PING's payload is an 8-byte big-endian counter. A PONG carrying the payload of one of our
  outstanding heartbeat PINGs gives the RTT (``now`` minus the time that PING was sent); other
  PONGs are ignored.
"""

from __future__ import annotations

import struct

__all__ = ["Heartbeat"]

_COUNTER = struct.Struct("!Q")
_PINGS_PER_SILENCE = 2  # the third interval of silence is death
_DEAD_AFTER_INTERVALS = 3
_MAX_OUTSTANDING = 8


class Heartbeat:
    """Heartbeat bookkeeping of one session.

    Args:
        interval_s: the heartbeat interval in seconds (> 0); may be changed later (the client
            takes WELCOME.heartbeatMs).
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_received_at: float | None = None
        self.rtt_s: float | None = None
        self._pings_in_silence = 0
        self._first_ping_at: float | None = None  # first PING of the current silence
        self._dead_reported = False
        self._counter = 0
        self._outstanding: dict[bytes, float] = {}

    @property
    def started(self) -> bool:
        """True once a time was given."""
        return self.last_received_at is not None

    def received(self, now: float) -> None:
        """Record traffic from the peer at ``now`` (starts a new silence).

        Args:
            now: current time in seconds.
        """
        self.last_received_at = now
        self._pings_in_silence = 0
        self._first_ping_at = None
        self._dead_reported = False

    def poll(self, now: float) -> tuple[bytes | None, float | None]:
        """Decide what is due at ``now``.

        Args:
            now: current time in seconds.

        Returns:
            ``(ping_payload, silent_s)``: the payload of a PING to send now (or None), and the
            silence in seconds when the connection just became dead (or None; reported once).
        """
        last = self.last_received_at
        if last is None:
            self.last_received_at = now
            return None, None
        interval = self.interval_s
        # Dead only once a PING of this silence went unanswered for two intervals: a poll that
        # comes late (a busy loop, a timer that slept through the handshake) must not declare a
        # healthy peer dead that was never asked (found by an e2e test with a 200 ms heartbeat).
        first_ping_at = self._first_ping_at
        if (
            not self._dead_reported
            and now >= last + _DEAD_AFTER_INTERVALS * interval
            and first_ping_at is not None
            and now >= first_ping_at + (_DEAD_AFTER_INTERVALS - 1) * interval
        ):
            self._dead_reported = True
            return None, now - last
        if self._dead_reported:
            return None, None
        due = 0
        while due < _PINGS_PER_SILENCE and now >= last + (due + 1) * interval:
            due += 1
        if due <= self._pings_in_silence:
            return None, None
        self._pings_in_silence = due
        if self._first_ping_at is None:
            self._first_ping_at = now
        self._counter += 1
        payload = _COUNTER.pack(self._counter)
        self._outstanding[payload] = now
        if len(self._outstanding) > _MAX_OUTSTANDING:
            del self._outstanding[next(iter(self._outstanding))]
        return payload, None

    def deadline(self) -> float | None:
        """The next time :meth:`poll` has something to do.

        Returns:
            That time in seconds, or None when nothing is pending (clock not started, or death
            already reported for this silence).
        """
        last = self.last_received_at
        if last is None or self._dead_reported:
            return None
        interval = self.interval_s
        if self._pings_in_silence < _PINGS_PER_SILENCE:
            return last + (self._pings_in_silence + 1) * interval
        dead_at = last + _DEAD_AFTER_INTERVALS * interval
        if self._first_ping_at is not None:
            dead_at = max(dead_at, self._first_ping_at + (_DEAD_AFTER_INTERVALS - 1) * interval)
        return dead_at

    def pong(self, payload: bytes, now: float) -> float | None:
        """Match a PONG against our outstanding heartbeat PINGs.

        Args:
            payload: the PONG's 8 bytes.
            now: the time it arrived.

        Returns:
            The round-trip time in seconds when it answers one of our heartbeat PINGs (that PING
            and older ones stop being outstanding); None otherwise.
        """
        sent_at = self._outstanding.get(payload)
        if sent_at is None:
            return None
        for key in list(self._outstanding):
            del self._outstanding[key]
            if key == payload:
                break
        self.rtt_s = max(0.0, now - sent_at)
        return self.rtt_s
