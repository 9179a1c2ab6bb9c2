"""The load generator: four measurements against an ``Endpoint`` (plain blocking sockets and
one selector; no monkeypatching).

Every wait has a bound: sockets carry a stall timeout, and each measurement has an overall
deadline checked between chunks. A measurement that cannot finish raises ``MeasureError``
with what it saw so far; the runner records it and carries on.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass
from typing import Callable

LENGTH = struct.Struct("!Q")
CHUNK_SIZE = 1 << 20
MB = 1_000_000


class MeasureError(Exception):
    """A measurement failed; the message is the reason shown in the table's notes."""


@dataclass(frozen=True)
class Endpoint:
    """Where a path delivers: the three target modes, each on its own port."""

    host: str
    sink_port: int
    source_port: int
    echo_port: int


@dataclass(frozen=True)
class Limits:
    stall_s: float  # no byte moving for this long is a failure
    test_timeout_s: float  # overall bound of one measurement


def _connect(host: str, port: int, timeout_s: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise MeasureError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def _fail(what: str, exc: BaseException, moved_bytes: int, started: float) -> MeasureError:
    elapsed = time.perf_counter() - started
    rate = moved_bytes / MB / elapsed if elapsed > 0 else 0.0
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return MeasureError(f"{what}: {detail} after {moved_bytes / (1 << 20):.0f} MiB "
                        f"in {elapsed:.1f} s ({rate:.1f} MB/s so far)")


def probe(ep: Endpoint, timeout_s: float) -> None:
    """One small echo round trip: the path works end to end."""
    payload = b"bench-probe"
    try:
        with _connect(ep.host, ep.echo_port, timeout_s) as sock:
            sock.sendall(payload)
            if _recv_exact(sock, len(payload)) != payload:
                raise MeasureError("probe: echo returned different bytes")
    except OSError as exc:
        raise MeasureError(f"probe: {type(exc).__name__}: {exc}") from exc


def upload(ep: Endpoint, size_bytes: int, limits: Limits) -> float:
    """Client -> target, one stream; MB/s measured until the sink confirms the count."""
    block = memoryview(os.urandom(CHUNK_SIZE))
    sent = 0
    started = time.perf_counter()
    deadline = started + limits.test_timeout_s
    try:
        with _connect(ep.host, ep.sink_port, limits.stall_s) as sock:
            sock.sendall(LENGTH.pack(size_bytes))
            while sent < size_bytes:
                n = min(CHUNK_SIZE, size_bytes - sent)
                sock.sendall(block[:n])
                sent += n
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"over the {limits.test_timeout_s:.0f} s limit")
            (confirmed,) = LENGTH.unpack(_recv_exact(sock, LENGTH.size))
            elapsed = time.perf_counter() - started
    except (OSError, MeasureError) as exc:
        raise _fail("upload", exc, sent, started) from exc
    if confirmed != size_bytes:
        raise MeasureError(f"upload: target received {confirmed} of {size_bytes} bytes")
    return size_bytes / MB / elapsed


def download(ep: Endpoint, size_bytes: int, limits: Limits) -> float:
    """Target -> client, one stream; MB/s until the last byte has been read."""
    buf = memoryview(bytearray(CHUNK_SIZE))
    received = 0
    started = time.perf_counter()
    deadline = started + limits.test_timeout_s
    try:
        with _connect(ep.host, ep.source_port, limits.stall_s) as sock:
            sock.sendall(LENGTH.pack(size_bytes))
            while received < size_bytes:
                n = sock.recv_into(buf, min(CHUNK_SIZE, size_bytes - received))
                if n == 0:
                    raise MeasureError("connection closed early")
                received += n
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"over the {limits.test_timeout_s:.0f} s limit")
            elapsed = time.perf_counter() - started
    except (OSError, MeasureError) as exc:
        raise _fail("download", exc, received, started) from exc
    return size_bytes / MB / elapsed


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, min(len(sorted_values), int(fraction * len(sorted_values) + 0.999999)))
    return sorted_values[rank - 1]


def round_trips(ep: Endpoint, count: int, warmup: int, payload_size: int, limits: Limits,
                on_start: Callable[[], None] | None = None,
                on_end: Callable[[], None] | None = None) -> tuple[float, float]:
    """``payload_size``-byte ping-pong over one connection; (p50, p99) in microseconds.

    ``on_start`` is called after the warm-up, right before the first measured round trip, and
    ``on_end`` right after the last one (e.g. to read the CPU time of the path's processes)."""
    payload = os.urandom(payload_size)
    samples: list[float] = []
    started = time.perf_counter()
    deadline = started + limits.test_timeout_s
    try:
        with _connect(ep.host, ep.echo_port, limits.stall_s) as sock:
            buf = memoryview(bytearray(payload_size))
            for i in range(warmup + count):
                if i == warmup and on_start is not None:
                    on_start()
                t0 = time.perf_counter_ns()
                sock.sendall(payload)
                got = 0
                while got < payload_size:
                    n = sock.recv_into(buf[got:])
                    if n == 0:
                        raise MeasureError("connection closed")
                    got += n
                t1 = time.perf_counter_ns()
                if i >= warmup:
                    samples.append((t1 - t0) / 1000.0)
                if t1 / 1e9 > deadline:
                    raise TimeoutError(f"over the {limits.test_timeout_s:.0f} s limit")
            if on_end is not None:
                on_end()
            if bytes(buf) != payload:
                raise MeasureError("echo returned different bytes")
    except (OSError, MeasureError) as exc:
        raise MeasureError(f"rtt: {type(exc).__name__}: {exc} after {len(samples)} "
                           f"round trips") from exc
    samples.sort()
    return percentile(samples, 0.50), percentile(samples, 0.99)


@dataclass
class _EchoConn:
    index: int
    sock: socket.socket
    expected: memoryview
    received: bytearray
    sent: int = 0
    got: int = 0
    connected: bool = False
    done: bool = False
    error: str | None = None


@dataclass(frozen=True)
class EchoResult:
    wall_s: float  # until every connection finished, failed or hit the deadline
    errors: int
    first_error: str | None
    ok_wall_s: float | None  # until the last successful connection finished


def concurrent_echo(ep: Endpoint, conns: int, size_bytes: int, limits: Limits) -> EchoResult:
    """``conns`` connections at once, each sends ``size_bytes`` and reads them back.

    One thread and a selector: non-blocking connect, then reads and writes interleaved so a
    connection never deadlocks on full buffers. An error is a connection that failed, closed
    early, did not finish by the deadline, or returned different bytes.
    """
    pattern = os.urandom(size_bytes + conns * 7)
    sel = selectors.DefaultSelector()
    states: list[_EchoConn] = []
    started = time.perf_counter()
    deadline = started + limits.test_timeout_s
    last_done = started
    last_ok = None
    try:
        for i in range(conns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            state = _EchoConn(i, sock, memoryview(pattern)[i * 7:i * 7 + size_bytes],
                              bytearray(size_bytes))
            states.append(state)
            rc = sock.connect_ex((ep.host, ep.echo_port))
            if rc not in (0, errno.EINPROGRESS):
                state.error = f"connect: {os.strerror(rc)}"
                state.done = True
                sock.close()
                continue
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, state)
        pending = sum(1 for s in states if not s.done)
        while pending:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            events = sel.select(min(remaining, 1.0))
            for key, mask in events:
                state = key.data
                if state.done:
                    continue
                finished = _echo_step(sel, state, mask)
                if finished:
                    pending -= 1
                    last_done = time.perf_counter()
                    if state.error is None:
                        last_ok = last_done
        if pending:
            last_done = time.perf_counter()
    finally:
        for state in states:
            if not state.done:
                state.error = f"not finished after {limits.test_timeout_s:.0f} s " \
                              f"({state.sent} sent, {state.got} received)"
                state.done = True
            try:
                sel.unregister(state.sock)
            except (KeyError, ValueError):
                pass
            state.sock.close()
        sel.close()
    errors = [s for s in states if s.error is not None]
    first = f"conn {errors[0].index}: {errors[0].error}" if errors else None
    # Every connection counts: one that never finished holds the wall time to the deadline.
    return EchoResult(last_done - started, len(errors), first,
                      None if last_ok is None else last_ok - started)


def _echo_step(sel: selectors.BaseSelector, state: _EchoConn, mask: int) -> bool:
    """Advance one connection; True when it just finished (well or not)."""
    sock = state.sock
    try:
        if not state.connected:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if not mask & selectors.EVENT_WRITE:
                return False
            state.connected = True
        if mask & selectors.EVENT_WRITE and state.sent < len(state.expected):
            try:
                state.sent += sock.send(state.expected[state.sent:state.sent + CHUNK_SIZE])
            except BlockingIOError:
                pass
            if state.sent >= len(state.expected):
                sel.modify(sock, selectors.EVENT_READ, state)
        if mask & selectors.EVENT_READ:
            try:
                n = sock.recv_into(memoryview(state.received)[state.got:])
            except BlockingIOError:
                return False
            if n == 0:
                raise ConnectionError(f"closed after {state.got} of {len(state.expected)} bytes")
            state.got += n
            if state.got >= len(state.expected):
                if state.received != state.expected:
                    state.error = "echo returned different bytes"
                state.done = True
                sel.unregister(sock)
                return True
        return False
    except OSError as exc:
        state.error = f"{type(exc).__name__}: {exc}"
        state.done = True
        sel.unregister(sock)
        return True


@dataclass(frozen=True)
class SetupResult:
    per_s: float
    count: int
    errors: int
    first_error: str | None


def connection_setups(ep: Endpoint, duration_s: float, max_count: int,
                      limits: Limits) -> SetupResult:
    """Sequential connect / 1 byte / 1 byte back / close, for ``duration_s`` or ``max_count``."""
    count = 0
    errors = 0
    first_error: str | None = None
    started = time.perf_counter()
    end = started + duration_s
    while count + errors < max_count and time.perf_counter() < end:
        try:
            with _connect(ep.host, ep.echo_port, limits.stall_s) as sock:
                sock.sendall(b"x")
                if sock.recv(1) != b"x":
                    raise MeasureError("no echo")
            count += 1
        except (OSError, MeasureError) as exc:
            errors += 1
            if first_error is None:
                first_error = f"{type(exc).__name__}: {exc}"
            if count == 0 and errors >= 3:
                break
    elapsed = time.perf_counter() - started
    if count == 0:
        raise MeasureError(f"setups: every attempt failed ({errors}); first: {first_error}")
    return SetupResult(count / elapsed, count, errors, first_error)
