"""Per-stream flow control: byte accounting for both directions (docs/protocol.md §8).

Outbound (what we may send): the credit starts at the window the *peer* announced (client→server:
WELCOME.window; server→client: HELLO.window, 256 KiB when absent). DATA payload bytes consume it
(an empty DATA with FIN consumes none); each WINDOW received adds its increment. Credit above
2^31-1 is a flow-control error (an RST of that stream, not of the session).

Inbound (what the peer may send): it starts at the window *we* announced. Each DATA received
uses it up; DATA beyond it is a flow-control error of that stream. When the driver has written
bytes to the local socket it acknowledges them; once at least half of our window has been
acknowledged since the last WINDOW, we grant that many bytes back in one WINDOW (batching,
docs/protocol.md §8). So the peer can never have more than our window in flight, and memory per
stream is bounded by it.

Counters kept for statistics and for resume (docs/protocol.md §13.5, protocol/resume.py): ``sent_bytes``,
``received_bytes`` and ``consumed_bytes`` (acknowledged).
"""

from __future__ import annotations

from tunnel.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = ["MAX_CREDIT", "Window"]

#: Largest credit a sender may hold on one stream (docs/protocol.md §8).
MAX_CREDIT = 2**31 - 1


class Window:
    """Byte accounting of one stream, both directions.

    Args:
        send_credit: initial outbound credit (the peer's announced window), 0..2^31-1.
        receive_window: our announced per-stream window, > 0.

    Raises:
        LocalProtocolError: an initial value out of range.
    """

    __slots__ = (
        "_consumed_in_map",
        "_granted",
        "_send_credit",
        "_unannounced",
        "consumed_bytes",
        "receive_window",
        "received_bytes",
        "sent_bytes",
    )

    def __init__(self, *, send_credit: int, receive_window: int) -> None:
        if not 0 <= send_credit <= MAX_CREDIT:
            raise LocalProtocolError(f"initial send credit {send_credit} out of 0..{MAX_CREDIT}")
        if not 0 < receive_window <= MAX_CREDIT:
            raise LocalProtocolError(f"receive window {receive_window} out of 1..{MAX_CREDIT}")
        self.receive_window = receive_window
        self._send_credit = send_credit
        self._granted = receive_window  # total credit ever granted to the peer
        self._consumed_in_map = 0
        self._unannounced = 0  # acknowledged since the last WINDOW we emitted
        self.sent_bytes = 0
        self.received_bytes = 0
        self.consumed_bytes = 0

    # -- outbound -------------------------------------------------------------------------------

    @property
    def send_credit(self) -> int:
        """Bytes we may still send (0..2^31-1)."""
        return self._send_credit

    def consume_send_credit(self, size: int) -> None:
        """Account for ``size`` DATA payload bytes we are sending.

        Args:
            size: payload bytes (0 for an empty FIN).

        Raises:
            LocalProtocolError: ``FLOW_CONTROL_ERROR`` when ``size`` exceeds the credit (nothing
                is consumed then).
        """
        if size < 0 or size > self._send_credit:
            raise LocalProtocolError(
                f"cannot send {size} bytes with {self._send_credit} bytes of credit",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._send_credit -= size
        self.sent_bytes += size

    def add_send_credit(self, increment: int) -> None:
        """Apply a WINDOW received from the peer.

        Args:
            increment: the WINDOW increment (> 0).

        Raises:
            RemoteProtocolError: ``FLOW_CONTROL_ERROR`` when the credit would exceed 2^31-1
                (the credit is left unchanged).
        """
        if increment <= 0 or self._send_credit + increment > MAX_CREDIT:
            raise RemoteProtocolError(
                f"WINDOW of {increment} would raise the credit of {self._send_credit} "
                f"above {MAX_CREDIT}",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        self._send_credit += increment

    # -- inbound --------------------------------------------------------------------------------

    @property
    def receive_credit(self) -> int:
        """Bytes the peer may still send us (0..receive_window)."""
        return self._granted - self.received_bytes

    @property
    def unacknowledged_bytes(self) -> int:
        """Bytes received but not yet acknowledged (buffered by the driver)."""
        return self.received_bytes - self.consumed_bytes

    def record_received(self, size: int) -> None:
        """Account for ``size`` DATA payload bytes received from the peer.

        Args:
            size: payload bytes.

        Raises:
            RemoteProtocolError: ``FLOW_CONTROL_ERROR`` when the peer exceeded the credit we
                granted (nothing is recorded then).
        """
        if size > self.receive_credit:
            raise RemoteProtocolError(
                f"DATA of {size} bytes exceeds the {self.receive_credit} bytes of credit granted",
                ErrorCode.FLOW_CONTROL_ERROR,
            )
        self.received_bytes += size

    def mark_consumed_announced(self) -> None:
        """Remember the consumed count just told to the peer in a resume map."""
        self._consumed_in_map = self.consumed_bytes

    def restart(self, *, send_credit: int) -> None:
        """After a resume: the send credit the peer's map implies, and a receive window that
        restarts from the consumed count we announced in our own map (bytes consumed since
        then are still to be announced by WINDOW)."""
        self._send_credit = max(0, min(send_credit, MAX_CREDIT))
        self._granted = self.receive_window + self._consumed_in_map
        self._unannounced = self.consumed_bytes - self._consumed_in_map

    def acknowledge(self, size: int, *, announce: bool = True, drained: bool = False) -> int:
        """Account for ``size`` received bytes written to the local socket.

        Args:
            size: bytes written (>= 0, at most :attr:`unacknowledged_bytes`).
            announce: False when no WINDOW may be sent any more (the peer already sent FIN);
                the bytes are still counted as consumed.
            drained: the driver has written everything it held for this stream. A WINDOW is
                then due from a quarter of the window on, so a sender that is faster than our
                threshold is not left waiting while we sit idle (docs/protocol.md §15: "or the
                buffer has drained").

        Returns:
            The increment of the WINDOW to send now, or 0 when none is due yet (less than half
            the window acknowledged since the last one, or less than a quarter when drained).

        Raises:
            LocalProtocolError: ``size`` negative or above the unacknowledged bytes.
        """
        if size < 0 or size > self.unacknowledged_bytes:
            raise LocalProtocolError(
                f"cannot acknowledge {size} bytes: {self.unacknowledged_bytes} are unacknowledged"
            )
        self.consumed_bytes += size
        self._unannounced += size
        threshold_size = self.receive_window // 4 if drained else self.receive_window // 2
        if not announce or self._unannounced < max(threshold_size, 1):
            return 0
        increment, self._unannounced = self._unannounced, 0
        self._granted += increment
        return increment
