"""The send queue of a Session: frame order and packing into WebSocket messages.

Order (docs/protocol.md §9, fairness): every frame that is not DATA (OPEN, OPEN_OK, WINDOW, RST,
PING, PONG, GOAWAY and the JSON control frames) goes out first, in the order it was queued.
DATA follows, one frame per stream in turn (round robin), so a bulk stream holds back another
stream's small message by at most one frame. A stream's own DATA keeps its order.

Packing: v1 sends one frame per message. v2 packs whole frames back to back into messages of at
most ``max_message_size`` bytes; a single frame larger than that travels alone. A frame never
spans messages (docs/protocol.md §1.2).

Control frames are encoded when queued (they are small); DATA is kept as the caller's
``memoryview`` slices until it is packed, so each payload byte is copied once, into its message.
"""

from __future__ import annotations

from collections import deque
from collections.abc import KeysView

from tunnel.protocol.frames import HEADER, HEADER_SIZE, Flags, Frame, FrameType, encode_frame

__all__ = ["Outbox"]

_DATA = int(FrameType.DATA)
_FIN = int(Flags.FIN)


class Outbox:
    """Queued frames of one session, drained as WebSocket messages.

    Args:
        version: protocol version (1: one frame per message; 2: batching).
        max_message_size: v2 batching target (bytes).
    """

    def __init__(self, *, version: int, max_message_size: int) -> None:
        self.version = version
        self.max_message_size = max_message_size
        self._control: deque[bytes] = deque()
        self._data: dict[int, deque[tuple[bytes | memoryview, bool]]] = {}
        self._round_robin: deque[int] = deque()
        #: DATA payload bytes handed out in messages so far.
        self.data_bytes_sent = 0
        #: WebSocket messages handed out so far.
        self.messages_sent = 0

    def __bool__(self) -> bool:
        return bool(self._control) or bool(self._round_robin)

    def queue_control(self, frame: Frame) -> None:
        """Queue a non-DATA frame (FIFO, ahead of all DATA).

        Args:
            frame: any frame but DATA.

        Raises:
            LocalProtocolError: the frame cannot be encoded.
        """
        self._control.append(encode_frame(frame))

    def queue_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None:
        """Queue one DATA frame (the caller already split it to the peer's maxFrame).

        Args:
            stream_id: the stream.
            data: the payload; it must not change until it has been sent.
            end_stream: set FIN.
        """
        queue = self._data.get(stream_id)
        if queue is None:
            queue = self._data[stream_id] = deque()
            self._round_robin.append(stream_id)
        queue.append((data, end_stream))

    def drop_stream(self, stream_id: int) -> None:
        """Forget the queued DATA of a stream (it was reset).

        Args:
            stream_id: the stream.
        """
        if self._data.pop(stream_id, None) is not None:
            self._round_robin.remove(stream_id)

    def clear(self) -> None:
        """Forget everything queued."""
        self._control.clear()
        self._data.clear()
        self._round_robin.clear()

    def queued_stream_ids(self) -> KeysView[int]:
        """Ids of the streams with DATA still queued (a live view)."""
        return self._data.keys()

    def _peek_size(self) -> int | None:
        if self._control:
            return len(self._control[0])
        if self._round_robin:
            data, _ = self._data[self._round_robin[0]][0]
            return HEADER_SIZE + len(data)
        return None

    def _pop(self, parts: list[bytes | memoryview]) -> None:
        if self._control:
            parts.append(self._control.popleft())
            return
        stream_id = self._round_robin.popleft()
        queue = self._data[stream_id]
        data, end_stream = queue.popleft()
        if queue:
            self._round_robin.append(stream_id)
        else:
            del self._data[stream_id]
        parts.append(HEADER.pack(_DATA, _FIN if end_stream else 0, stream_id, len(data)))
        parts.append(data)
        self.data_bytes_sent += len(data)

    def pop_messages(self, max_bytes: int | None = None) -> list[bytes]:
        """Take queued frames out as WebSocket messages.

        Args:
            max_bytes: stop once about that many bytes are taken (never splitting a frame, and
                always at least one message when anything is queued); None for everything.

        Returns:
            The messages, in sending order. What is left stays queued.
        """
        messages: list[bytes] = []
        parts: list[bytes | memoryview] = []
        produced = 0  # bytes in finished messages
        current = 0  # bytes in ``parts``
        limit_message = self.max_message_size if self.version >= 2 else 0
        while True:
            size = self._peek_size()
            if size is None:
                break
            if parts and current + size > limit_message:
                messages.append(b"".join(parts))
                produced += current
                parts, current = [], 0
            if max_bytes is not None and (messages or parts) and produced + current + size > max_bytes:
                break
            self._pop(parts)
            current += size
        if parts:
            messages.append(b"".join(parts))
        self.messages_sent += len(messages)
        return messages
