"""Logging handlers for the kit's gunicorn worker (configured in ``tunnel/gunicorn_conf.py``).

HTTP mode writes one access-log line per request. Through a plain ``StreamHandler`` each line
costs a (gevent-patched, Python-level) lock, a ``write`` and a ``flush`` system call: about 8 % of
the kit's CPU in the HTTP bench. :class:`LoopBatchedStreamHandler` writes the lines of one turn of
the event loop together, at the end of that turn, so lines still appear at once and in order.
"""

from __future__ import annotations

import logging
from typing import TextIO

import gevent

__all__ = ["LoopBatchedStreamHandler"]


class LoopBatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes once per turn of gevent's event loop.

    ``emit`` formats the record and keeps the line; the first line of a turn schedules a callback
    on the loop that writes every kept line in one ``write`` and flushes. More than ``max_lines``
    kept lines are written at once (a loop that never turns cannot hold them forever).

    For a process that runs gevent's loop (the gevent worker): in a process that never runs it
    lines wait for ``max_lines`` or ``close()``.
    """

    def __init__(self, stream: TextIO | None = None, max_lines: int = 256) -> None:
        super().__init__(stream)
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._scheduled = False

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: appending to a list and swapping it out are atomic, and the worker is
        # one thread of greenlets.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        if len(self._lines) >= self.max_lines:
            self.write_lines()
        elif not self._scheduled:
            self._scheduled = True
            gevent.get_hub().loop.run_callback(self.write_lines)

    def write_lines(self) -> None:
        """Write and flush every kept line (the loop callback)."""
        self._scheduled = False
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            self.stream.write("".join(lines))
            self.flush()
        except (OSError, ValueError):
            pass  # the stream is gone (closed stderr): there is nowhere to say so either

    def close(self) -> None:
        self.write_lines()
        super().close()
