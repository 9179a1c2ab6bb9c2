"""Logging at a request's rate: HTTP mode writes one access-log line per request.

A LogRecord per line (the caller's frame looked up, file names parsed, a gevent-patched
Python-level handler lock, formatting, a ``write`` and a ``flush``) cost the kit about 30 µs per
request in the HTTP bench, a fifth of its CPU there. So the lines are batched at the source:

- :class:`LineBatch` gathers the lines added during one turn of gevent's event loop and logs them
  at its end as one record, one line per line of its message (levels, handlers and propagation
  apply as to any record);
- :class:`LineFormatter` (configured for ``tunnel.http.access`` in ``tunnel/gunicorn_conf.py``)
  formats every line of such a message as a log line of its own, prefix included, and renders
  the time once per second. The output is one log line per request, as if each had its record.
"""

from __future__ import annotations

import logging

import gevent

__all__ = ["LineBatch", "LineFormatter"]


class LineBatch:
    """Lines for ``logger`` at ``level``, logged as one record per turn of the event loop.

    The first line of a turn schedules a callback on gevent's loop that logs every gathered line
    in one record (``"\\n"``-joined); more than ``max_lines`` go out at once.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.INFO, max_lines: int = 256) -> None:
        self.logger = logger
        self.level = level
        self.max_lines = max_lines
        self._lines: list[str] = []
        self._scheduled = False

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(self.level)

    def add(self, line: str) -> None:
        """Log ``line`` (one line, no ``%`` formatting) at the end of this turn of the loop."""
        self._lines.append(line)
        if len(self._lines) >= self.max_lines:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            gevent.get_hub().loop.run_callback(self.flush)

    def flush(self) -> None:
        """Log the gathered lines now (the loop callback; also fine to call directly)."""
        self._scheduled = False
        lines, self._lines = self._lines, []
        if lines:
            self.logger.log(self.level, "\n".join(lines))


class LineFormatter(logging.Formatter):
    """A Formatter for records that carry several lines (:class:`LineBatch`).

    Each line of the message is formatted as a line of its own with the record's fields, so
    ``%(asctime)s ... %(message)s`` prefixes every line. Records with an exception or a stack are
    formatted as by ``logging.Formatter``. With a ``datefmt`` the time is rendered once per
    second (without one, the default format carries milliseconds).
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._second = -1
        self._time_text = ""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        message = record.message
        if "\n" not in message or record.exc_info or record.exc_text or record.stack_info:
            return super().formatMessage(record)
        try:
            lines = []
            for line in message.split("\n"):
                record.message = line
                lines.append(super().formatMessage(record))
        finally:
            record.message = message
        return "\n".join(lines)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._time_text = super().formatTime(record, datefmt)
            self._second = second
        return self._time_text
