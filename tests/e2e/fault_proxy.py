"""A fault-injecting TCP proxy for the resume tests: plain sockets, one selector thread.

The client connects to ``ws://127.0.0.1:<proxy.port>``; every accepted connection (a *link*) is
forwarded to the kit. The test can then break the network in the ways a real one breaks:

* :meth:`FaultProxy.cut` resets every current link: both sockets are closed with SO_LINGER 0, so
  the client and the kit each see a TCP reset (no close frame, no GOAWAY);
* :meth:`FaultProxy.pause` / :meth:`FaultProxy.unpause` stall forwarding: a silent network.
  Nothing is read or written on existing links, and new connections are accepted by the kernel
  but neither connected upstream nor read until the proxy is unpaused;
* :meth:`FaultProxy.refuse` resets every new connection at once (the kit is unreachable);
* armed cuts land at exact byte offsets: :meth:`cut_after` (N more bytes in a direction, over
  all links), :meth:`cut_next_connection_after` (byte N of the next link, e.g. inside the HTTP
  upgrade or the HELLO/WELCOME exchange), and :meth:`cut_after_frame` (right after, or K bytes
  into what follows, the next tunnel frame of a given type and flags, e.g. a DATA frame carrying
  FIN). The proxy forwards exactly the bytes before the cut point, then resets the link.

To find tunnel frames the proxy watches each direction passively: the HTTP upgrade up to the
blank line, then RFC 6455 frames (unmasking only the bytes of tunnel frame headers), then the
10-byte tunnel frame headers inside binary messages (docs/protocol.md §2.1). It never changes a
byte it forwards.

Directions: ``"up"`` is client -> kit, ``"down"`` is kit -> client, ``"any"`` is either.
Every method is thread-safe: the calls run inside the proxy's thread and return when done.

:func:`launch_client` starts the real CLI through a proxy (via :class:`ProxiedKit`).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.harness import KitProcess
from tests.e2e.loopback import listen_loopback
from tests.e2e.tunnel_support import ClientProcess, launch_with_expose
from tests.e2e.wire import DATA, FLAG_FIN, FRAME_NAMES, HEADER

UP, DOWN = "up", "down"
DIRECTIONS = (UP, DOWN)
_READ_SIZE = 256 * 1024
_BUFFER_LIMIT = 1024 * 1024  # stop reading a side while this much waits to be written
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class TunnelFrameSeen:
    """A tunnel frame header the watcher decoded: ``end`` is the link offset just past the frame."""

    type: int
    flags: int
    stream_id: int
    length: int
    end: int

    def describe(self) -> str:
        fin = "+FIN" if self.type == DATA and self.flags & FLAG_FIN else ""
        return f"{FRAME_NAMES.get(self.type, hex(self.type))}{fin} sid={self.stream_id} len={self.length}"


class StreamWatcher:
    """Follows one direction of a link: HTTP head, then WebSocket frames, then tunnel frames.

    :meth:`feed` takes the next bytes and returns the tunnel frame headers completed in them.
    A parse failure (e.g. an HTTP error answer) only stops the watching.
    """

    def __init__(self) -> None:
        self.offset = 0  # bytes fed so far
        self.phase = "http"
        self.http_tail = b""
        self.http_end: int | None = None  # offset just past the HTTP head's blank line
        self.broken = False
        # WebSocket frame state
        self.ws_head = bytearray()
        self.ws_remaining = 0  # payload bytes left in the current WebSocket frame
        self.ws_key = b""
        self.ws_pos = 0  # position inside the current WebSocket frame's payload (for unmasking)
        self.ws_is_data = False
        self.ws_frames = 0
        # tunnel frame state (inside data messages)
        self.tf_head = bytearray()
        self.tf_skip = 0
        self.last_frame: TunnelFrameSeen | None = None
        self.frames_seen = 0

    def feed(self, data: bytes | memoryview) -> list[TunnelFrameSeen]:
        found: list[TunnelFrameSeen] = []
        if self.broken:
            self.offset += len(data)
            return found
        view = memoryview(data)
        index = 0
        size = len(view)
        try:
            while index < size:
                if self.phase == "http":
                    window = self.http_tail + bytes(view[index:])
                    end = window.find(b"\r\n\r\n")
                    if end < 0:
                        self.http_tail = window[-3:]
                        index = size
                        continue
                    consumed = end + 4 - len(self.http_tail)
                    self.http_tail = b""
                    index += consumed
                    self.http_end = self.offset + index
                    self.phase = "ws"
                    continue
                if self.ws_remaining == 0:  # between WebSocket frames: a header comes next
                    need = self._ws_header_need()
                    take = min(need - len(self.ws_head), size - index)
                    self.ws_head += view[index : index + take]
                    index += take
                    if len(self.ws_head) < self._ws_header_need():
                        continue
                    if not self._ws_header_parsed():
                        continue
                    if self.ws_remaining == 0:
                        self._end_ws_frame()
                    continue
                # inside a WebSocket payload
                if not self.ws_is_data:
                    take = min(self.ws_remaining, size - index)
                    index += take
                    self.ws_remaining -= take
                    self.ws_pos += take
                else:
                    if self.tf_skip:
                        take = min(self.tf_skip, self.ws_remaining, size - index)
                        self.tf_skip -= take
                    else:
                        take = min(10 - len(self.tf_head), self.ws_remaining, size - index)
                        chunk = bytes(view[index : index + take])
                        if self.ws_key:
                            chunk = bytes(
                                b ^ self.ws_key[(self.ws_pos + i) % 4] for i, b in enumerate(chunk)
                            )
                        self.tf_head += chunk
                        if len(self.tf_head) == 10:
                            ftype, flags, sid, length = HEADER.unpack(self.tf_head)
                            end = self.offset + index + take + length
                            seen = TunnelFrameSeen(ftype, flags, sid, length, end)
                            self.last_frame = seen
                            self.frames_seen += 1
                            found.append(seen)
                            self.tf_head = bytearray()
                            self.tf_skip = length
                    index += take
                    self.ws_remaining -= take
                    self.ws_pos += take
                if self.ws_remaining == 0:
                    self._end_ws_frame()
        except Exception:  # noqa: BLE001 - watching is best effort
            self.broken = True
        self.offset += size
        return found

    def _ws_header_need(self) -> int:
        if len(self.ws_head) < 2:
            return 2
        b1 = self.ws_head[1]
        length_code = b1 & 0x7F
        extra = 2 if length_code == 126 else 8 if length_code == 127 else 0
        return 2 + extra + (4 if b1 & 0x80 else 0)

    def _ws_header_parsed(self) -> bool:
        """True once the whole header is in: sets up the payload state."""
        if len(self.ws_head) < 2 or len(self.ws_head) < self._ws_header_need():
            return False
        b0, b1 = self.ws_head[0], self.ws_head[1]
        opcode = b0 & 0x0F
        length_code = b1 & 0x7F
        pos = 2
        if length_code == 126:
            length = struct.unpack_from("!H", self.ws_head, 2)[0]
            pos = 4
        elif length_code == 127:
            length = struct.unpack_from("!Q", self.ws_head, 2)[0]
            pos = 10
        else:
            length = length_code
        self.ws_key = bytes(self.ws_head[pos : pos + 4]) if b1 & 0x80 else b""
        self.ws_remaining = length
        self.ws_pos = 0
        # data frames: binary (2), text (1), continuation (0); control frames: 8, 9, 10
        self.ws_is_data = opcode < 8
        self.ws_frames += 1
        self.ws_head = bytearray()
        return True

    def _end_ws_frame(self) -> None:
        self.ws_head = bytearray()
        self.ws_remaining = 0
        self.ws_pos = 0
        self.ws_key = b""
        self.ws_is_data = False


@dataclass
class Link:
    """One proxied connection."""

    number: int
    client: socket.socket
    upstream: socket.socket | None
    buffers: dict[str, bytearray] = field(default_factory=lambda: {UP: bytearray(), DOWN: bytearray()})
    forwarded: dict[str, int] = field(default_factory=lambda: {UP: 0, DOWN: 0})
    eof: dict[str, bool] = field(default_factory=lambda: {UP: False, DOWN: False})
    shut: dict[str, bool] = field(default_factory=lambda: {UP: False, DOWN: False})
    cut_at: dict[str, int | None] = field(default_factory=lambda: {UP: None, DOWN: None})
    cut_after_head: dict[str, int | None] = field(default_factory=lambda: {UP: None, DOWN: None})
    watchers: dict[str, StreamWatcher] = field(default_factory=lambda: {UP: StreamWatcher(), DOWN: StreamWatcher()})
    cut_reason: str = ""
    closed: bool = False

    def source(self, direction: str) -> socket.socket | None:
        return self.client if direction == UP else self.upstream

    def sink(self, direction: str) -> socket.socket | None:
        return self.upstream if direction == UP else self.client


@dataclass
class _FrameTrigger:
    direction: str
    predicate: Callable[[TunnelFrameSeen], bool]
    extra: int
    label: str


class FaultProxy:
    """See the module docstring. Use as a context manager, or call :meth:`close`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = listen_loopback()
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._calls: list[tuple[Callable[[], Any], threading.Event, list[Any]]] = []
        self._calls_lock = threading.Lock()
        self._changed = threading.Condition()
        self.links: list[Link] = []
        self._held: list[socket.socket] = []  # accepted while paused, not yet connected upstream
        self.paused = False
        self.refusing = False
        self.totals = {UP: 0, DOWN: 0}
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self.log: list[str] = []
        self._byte_triggers: list[tuple[str, int, str]] = []  # (direction, absolute total, label)
        self._next_conn_triggers: list[tuple[str, int, str]] = []
        self._frame_triggers: list[_FrameTrigger] = []
        self._stopping = False
        self.selector.register(self.listener, selectors.EVENT_READ, ("accept", None))
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._thread = threading.Thread(target=self._loop, name=f"fault-proxy:{self.port}", daemon=True)
        self._thread.start()

    # -- public API ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._stopping:
            return
        self._call(self._shutdown_all)
        self._stopping = True
        self._wake()
        self._thread.join(5)

    def cut(self, reason: str = "cut()") -> int:
        """Reset every current link now (both sides see a TCP reset). Returns how many."""
        return int(self._call(lambda: self._cut_all(reason)))

    def pause(self) -> None:
        """Stall: no byte moves on any link, new connections are held. Undo with :meth:`unpause`."""
        self._call(lambda: self._set_paused(True))

    def unpause(self) -> None:
        self._call(lambda: self._set_paused(False))

    def refuse(self, on: bool = True) -> None:
        """While on, every new connection is reset at once."""
        self._call(lambda: setattr(self, "refusing", on))

    def cut_after(self, n_bytes: int, direction: str = UP, label: str = "") -> None:
        """Cut every link once ``n_bytes`` more bytes were forwarded in ``direction`` (total)."""
        assert direction in DIRECTIONS
        self._call(lambda: self._byte_triggers.append(
            (direction, self.totals[direction] + n_bytes, label or f"after {n_bytes} more {direction} bytes")))

    def cut_next_connection_after(
        self, n_bytes: int, direction: str = DOWN, *, after_upgrade: bool = False, label: str = ""
    ) -> None:
        """The next new link is cut after its first ``n_bytes`` in ``direction`` (0: at accept),
        or, with ``after_upgrade``, ``n_bytes`` after the end of the HTTP head in that direction
        (the upgrade request going up, the 101 answer coming down)."""
        assert direction in DIRECTIONS
        where = "after the upgrade + " if after_upgrade else "after "
        self._call(lambda: self._next_conn_triggers.append(
            (direction, -1 - n_bytes if after_upgrade else n_bytes,
             label or f"next connection {where}{n_bytes} {direction} bytes")))

    def cut_after_frame(
        self,
        direction: str,
        predicate: Callable[[TunnelFrameSeen], bool],
        *,
        extra: int = 0,
        label: str = "after a frame",
    ) -> None:
        """Cut a link ``extra`` bytes after the end of the next tunnel frame matching
        ``predicate`` in ``direction`` (``extra`` < 0 cuts inside that frame)."""
        assert direction in DIRECTIONS
        self._call(lambda: self._frame_triggers.append(_FrameTrigger(direction, predicate, extra, label)))

    def disarm(self) -> None:
        """Forget every armed cut that has not fired."""
        def clear() -> None:
            self._byte_triggers.clear()
            self._next_conn_triggers.clear()
            self._frame_triggers.clear()
        self._call(clear)

    def armed(self) -> int:
        return int(self._call(lambda: len(self._byte_triggers) + len(self._next_conn_triggers) + len(self._frame_triggers)))

    def live_links(self) -> int:
        return int(self._call(lambda: sum(1 for link in self.links if not link.closed)))

    def snapshot(self) -> dict[str, Any]:
        return dict(self._call(lambda: {
            "up": self.totals[UP], "down": self.totals[DOWN], "accepted": self.accepted,
            "refused": self.refused, "cuts": self.cuts, "links": sum(1 for l in self.links if not l.closed),
            "paused": self.paused, "held": len(self._held),
        }))

    def wait_accepted(self, count: int, timeout_s: float) -> None:
        """Wait until at least ``count`` connections were accepted in total."""
        with self._changed:
            ok = self._changed.wait_for(lambda: self.accepted >= count, timeout_s)
        assert ok, f"the proxy accepted {self.accepted} connections, not {count}: {self.log[-10:]}"

    def wait_cuts(self, count: int, timeout_s: float) -> None:
        with self._changed:
            ok = self._changed.wait_for(lambda: self.cuts >= count, timeout_s)
        assert ok, f"only {self.cuts} cuts happened, not {count}: {self.log[-10:]}"

    # -- plumbing ------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        if self._stopping:
            raise RuntimeError("proxy closed")
        done = threading.Event()
        box: list[Any] = []
        with self._calls_lock:
            self._calls.append((fn, done, box))
        self._wake()
        if not done.wait(10):
            raise RuntimeError("the proxy thread did not answer")
        if box and isinstance(box[0], BaseException):
            raise box[0]
        return box[0] if box else None

    def _note(self, text: str) -> None:
        self.log.append(f"{time.monotonic():.3f} {text}")

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            self._update_interest()
            for key, mask in self.selector.select(timeout=0.5):
                kind, link = key.data
                if kind == "accept":
                    self._accept()
                elif kind == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                    self._run_calls()
                else:
                    direction = kind
                    if link.closed:
                        continue
                    sock = key.fileobj
                    if mask & selectors.EVENT_READ and sock is link.source(direction):
                        self._read(link, direction)
                    if not link.closed:
                        for d in DIRECTIONS:
                            if mask & selectors.EVENT_WRITE and sock is link.sink(d) and link.buffers[d]:
                                self._flush(link, d)
            self._run_calls()
        try:
            self.selector.close()
        except Exception:  # noqa: BLE001
            pass

    def _run_calls(self) -> None:
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for fn, done, box in calls:
            try:
                box.append(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                box.append(exc)
            done.set()

    def _update_interest(self) -> None:
        for link in self.links:
            if link.closed or link.upstream is None:
                continue
            for sock in (link.client, link.upstream):
                mask = 0
                tag = UP if sock is link.client else DOWN  # the direction this socket is the source of
                if not self.paused:
                    if not link.eof[tag] and len(link.buffers[tag]) < _BUFFER_LIMIT:
                        mask |= selectors.EVENT_READ
                    other = DOWN if tag == UP else UP  # this socket is the sink of the other direction
                    if link.buffers[other]:
                        mask |= selectors.EVENT_WRITE
                self._set_mask(sock, mask, (tag, link))

    def _set_mask(self, sock: socket.socket, mask: int, data: Any) -> None:
        try:
            key = self.selector.get_key(sock)
        except KeyError:
            if mask:
                self.selector.register(sock, mask, data)
            return
        if mask == 0:
            self.selector.unregister(sock)
        elif key.events != mask:
            self.selector.modify(sock, mask, data)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.accepted += 1
            conn.setblocking(False)
            if self.refusing:
                self.refused += 1
                self._note(f"refused connection #{self.accepted}")
                self._reset_socket(conn)
            elif self.paused:
                self._held.append(conn)
                self._note(f"holding connection #{self.accepted} (paused)")
            else:
                self._open_link(conn)
            self._notify()

    def _open_link(self, conn: socket.socket) -> None:
        number = len(self.links) + 1
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError as exc:
            self._note(f"link {number}: upstream connect failed ({exc}); resetting the client")
            self._reset_socket(conn)
            return
        upstream.setblocking(False)
        for sock in (conn, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = Link(number, conn, upstream)
        self.links.append(link)
        for direction, n_bytes, label in self._next_conn_triggers:
            if n_bytes < 0:
                link.cut_after_head[direction] = -1 - n_bytes
            else:
                link.cut_at[direction] = n_bytes
            link.cut_reason = label
        self._next_conn_triggers.clear()
        self._note(f"link {number} open")
        if link.cut_at[UP] == 0 or link.cut_at[DOWN] == 0:
            self._reset_link(link, link.cut_reason or "at accept")

    def _read(self, link: Link, direction: str) -> None:
        sock = link.source(direction)
        assert sock is not None
        try:
            data = sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._reset_link(link, f"{direction} source error {exc!r}", count=False)
            return
        if not data:
            link.eof[direction] = True
            self._note(f"link {link.number}: EOF {direction} after {link.forwarded[direction]} bytes")
            self._maybe_shutdown(link, direction)
            return
        self._forward(link, direction, data)

    def _forward(self, link: Link, direction: str, data: bytes) -> None:
        start = link.forwarded[direction]
        watcher = link.watchers[direction]
        limit = len(data)
        reason = ""
        # armed cuts, as link offsets
        cut_at = link.cut_at[direction]
        if cut_at is not None and start + limit >= cut_at:
            limit, reason = max(0, cut_at - start), link.cut_reason or "armed offset"
        for trigger_dir, total, label in list(self._byte_triggers):
            if trigger_dir == direction and self.totals[direction] + limit >= total:
                limit = max(0, min(limit, total - self.totals[direction]))
                reason = label
                self._byte_triggers.remove((trigger_dir, total, label))
                break
        # the frame watcher sees only the bytes that will be forwarded
        head_seen = watcher.http_end is not None
        seen = watcher.feed(memoryview(data)[:limit])
        after_head = link.cut_after_head[direction]
        if after_head is not None and not head_seen and watcher.http_end is not None and not reason:
            target = watcher.http_end + after_head
            link.cut_at[direction] = target
            link.cut_after_head[direction] = None
            if target <= start + limit:
                limit, reason = target - start, link.cut_reason
        if self._frame_triggers and seen and not reason:
            for frame in seen:
                trigger = next(
                    (t for t in self._frame_triggers if t.direction == direction and t.predicate(frame)), None
                )
                if trigger is None:
                    continue
                self._frame_triggers.remove(trigger)
                target = max(frame.end + trigger.extra, start)
                link.cut_reason = f"{trigger.label}: {frame.describe()} (+{trigger.extra})"
                link.cut_at[direction] = target
                if target <= start + limit:
                    # the cut point lies in this chunk: forward up to it only
                    limit = target - start
                    reason = link.cut_reason
                break
        piece = data[:limit]
        link.buffers[direction] += piece
        link.forwarded[direction] += len(piece)
        self.totals[direction] += len(piece)
        if reason:
            self._flush(link, direction)
            self._reset_link(link, f"{reason} (at {direction} offset {link.forwarded[direction]} of the link)")
            return
        self._flush(link, direction)

    def _flush(self, link: Link, direction: str) -> None:
        sink = link.sink(direction)
        buffer = link.buffers[direction]
        if sink is None or link.closed:
            return
        while buffer:
            try:
                sent = sink.send(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._reset_link(link, f"{direction} sink error {exc!r}", count=False)
                return
            del buffer[:sent]
        self._maybe_shutdown(link, direction)

    def _maybe_shutdown(self, link: Link, direction: str) -> None:
        if link.eof[direction] and not link.buffers[direction] and not link.shut[direction]:
            sink = link.sink(direction)
            link.shut[direction] = True
            try:
                if sink is not None:
                    sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if all(link.shut.values()) and not link.closed:
            link.closed = True
            self._note(f"link {link.number} closed normally")
            for sock in (link.client, link.upstream):
                if sock is not None:
                    self._unregister(sock)
                    sock.close()

    def _unregister(self, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _reset_socket(self, sock: socket.socket) -> None:
        self._unregister(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        sock.close()

    def _reset_link(self, link: Link, reason: str, *, count: bool = True) -> None:
        if link.closed:
            return
        link.closed = True
        if count:
            self.cuts += 1
        up, down = link.watchers[UP], link.watchers[DOWN]
        context = (
            f"last up frame {up.last_frame.describe() if up.last_frame else '-'}, "
            f"last down frame {down.last_frame.describe() if down.last_frame else '-'}"
        )
        self._note(
            f"link {link.number} {'CUT' if count else 'reset'}: {reason}; forwarded up={link.forwarded[UP]} "
            f"down={link.forwarded[DOWN]}; {context}"
        )
        for sock in (link.client, link.upstream):
            if sock is not None:
                self._reset_socket(sock)
        link.buffers = {UP: bytearray(), DOWN: bytearray()}
        self._notify()

    def _cut_all(self, reason: str) -> int:
        count = 0
        for link in self.links:
            if not link.closed:
                self._reset_link(link, reason)
                count += 1
        for conn in self._held:
            self._reset_socket(conn)
        self._held.clear()
        return count

    def _set_paused(self, paused: bool) -> None:
        self.paused = paused
        self._note("paused" if paused else "unpaused")
        if not paused:
            held, self._held = self._held, []
            for conn in held:
                self._open_link(conn)

    def _shutdown_all(self) -> None:
        for link in self.links:
            if not link.closed:
                self._reset_link(link, "proxy closing", count=False)
        for conn in self._held:
            self._reset_socket(conn)
        self._held.clear()
        self._unregister(self.listener)
        self.listener.close()
        self._stopping = True


def is_fin(frame: TunnelFrameSeen) -> bool:
    """A DATA frame carrying FIN (a stream half-closing)."""
    return frame.type == DATA and bool(frame.flags & FLAG_FIN)


def is_type(*types: int) -> Callable[[TunnelFrameSeen], bool]:
    return lambda frame: frame.type in types


class ProxiedKit:
    """What ``ClientProcess.launch`` reads from a kit, with the URL pointing at a proxy, so the
    real CLI connects through it."""

    def __init__(self, kit: KitProcess, proxy: FaultProxy) -> None:
        self.ws_url = proxy.url
        self.client_token = kit.client_token
        self.state_dir = kit.state_dir


def launch_client(
    kit: KitProcess, proxy: FaultProxy | None, make_args: Callable[[int], list[str]]
) -> tuple[ClientProcess, int]:
    """The CLI through ``proxy`` (or straight to the kit), exposing a free container port
    (:func:`~tests.e2e.tunnel_support.launch_with_expose`). Returns (client, port)."""
    where: Any = ProxiedKit(kit, proxy) if proxy is not None else kit
    return launch_with_expose(where, make_args)


__all__ = [
    "DOWN", "UP", "FaultProxy", "ProxiedKit", "StreamWatcher", "TunnelFrameSeen", "is_fin", "is_type", "launch_client",
]
