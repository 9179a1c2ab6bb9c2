"""Logging at a request's rate: HTTP mode writes one access-log line per request.

Through the plain ``logging`` path such a line cost about 14 µs of the kit's CPU (15 % of it in
the HTTP bench): the caller's frame looked up, file names parsed, thread and process looked up
for every record, then a (gevent-patched, Python-level) lock, a ``write`` and a ``flush``.

- :class:`RecordFactory` makes the records of one call site from a template taken once, and
  hands them to the logger's handlers as ``Logger.handle`` does (levels, filters, propagation and
  every configured handler still apply, the test suite's ``caplog`` included).
- :class:`LoopBatchedStreamHandler` (configured for ``tunnel.http.access`` in
  ``tunnel/gunicorn_conf.py``) writes the lines of one turn of the event loop together, at the end
  of that turn, so lines still appear at once and in order.
"""

from __future__ import annotations

import logging
import time
from typing import TextIO

import gevent

__all__ = ["CachedTimeFormatter", "LoopBatchedStreamHandler", "RecordFactory"]


class CachedTimeFormatter(logging.Formatter):
    """A Formatter that renders ``%(asctime)s`` once per second.

    Only with a ``datefmt`` (without one, the default format carries milliseconds): each line in
    the same second then reuses the text, where ``time.localtime`` and ``strftime`` were a
    fifth of an access-log line's cost.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._text = super().formatTime(record, datefmt)
            self._second = second
        return self._text


class RecordFactory:
    """Records for one logger and one call site, without ``LogRecord.__init__``'s lookups.

    The template is a real record made once (at construction, so in the process that logs: the
    process id is right); each record copies it and sets the message, its arguments and the time.
    """

    def __init__(self, logger: logging.Logger, level: int, *, pathname: str, func: str) -> None:
        self.logger = logger
        self.level = level
        template = logger.makeRecord(logger.name, level, pathname, 0, "", (), None, func=func)
        self._template = template.__dict__
        self._created = template.created

    def log(self, msg: str, *args: object) -> None:
        """``logger.log(level, msg, *args)``, when the level is enabled."""
        logger = self.logger
        if not logger.isEnabledFor(self.level):
            return
        record = logging.LogRecord.__new__(logging.LogRecord)
        fields = record.__dict__
        fields.update(self._template)
        now = time.time()
        fields["msg"] = msg
        fields["args"] = args
        fields["created"] = now
        fields["msecs"] = (now - int(now)) * 1000 // 1 + 0.0
        fields["relativeCreated"] = self._template["relativeCreated"] + (now - self._created) * 1000
        logger.handle(record)


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
