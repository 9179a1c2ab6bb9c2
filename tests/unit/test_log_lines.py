"""LineBatch and LineFormatter: lines of one event-loop turn go out as one record, and come out
as one log line each, exactly as separate records would."""

from __future__ import annotations

import io
import logging

import gevent

from tunnel.log_lines import LineBatch, LineFormatter

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"
DATEFMT = "[%Y-%m-%d %H:%M:%S %z]"


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.lines.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_lines_of_one_loop_turn_are_one_record_at_its_end() -> None:
    keep = Keep()
    batch = LineBatch(_logger("turn", keep))
    for number in range(3):
        batch.add(f"line {number} 100%")
    assert keep.records == []  # kept until the loop turns
    gevent.idle()
    assert [record.getMessage() for record in keep.records] == ["line 0 100%\nline 1 100%\nline 2 100%"]
    batch.add("next turn")
    gevent.idle()
    assert keep.records[-1].getMessage() == "next turn" and len(keep.records) == 2


def test_max_lines_go_out_at_once_and_a_disabled_level_is_seen() -> None:
    keep = Keep()
    logger = _logger("max", keep)
    batch = LineBatch(logger, max_lines=2)
    batch.add("a")
    batch.add("b")
    assert [record.getMessage() for record in keep.records] == ["a\nb"]
    assert batch.enabled()
    logger.setLevel(logging.WARNING)
    assert not batch.enabled()


def test_line_formatter_writes_each_line_as_the_plain_formatter_writes_a_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter(FORMAT, DATEFMT))
    batch = LineBatch(_logger("format", handler))
    batch.add("http request: one")
    batch.add("http request: two")
    batch.flush()
    plain = logging.Formatter(FORMAT, DATEFMT)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for line, message in zip(lines, ("http request: one", "http request: two")):
        # The same prefix (time, pid, level, logger) as a record of its own would get.
        record = logging.makeLogRecord({"name": "test.lines.format", "msg": message, "levelname": "INFO"})
        expected = plain.format(record)
        assert line.endswith(message) and line[: -len(message)].split("]", 1)[1] == expected[: -len(message)].split("]", 1)[1]


def test_line_formatter_time_is_cached_per_second_and_exceptions_are_left_alone() -> None:
    cached, plain = LineFormatter("%(asctime)s %(message)s", DATEFMT), logging.Formatter("%(asctime)s %(message)s", DATEFMT)
    for created in (1_000_000.1, 1_000_000.9, 1_000_001.0, 1_000_000.5, 1_000_002.2):
        record = logging.makeLogRecord({"msg": "a\nb", "created": created})
        stamp = plain.formatTime(record, DATEFMT)
        assert cached.format(record) == f"{stamp} a\n{stamp} b"
    record = logging.makeLogRecord({"msg": "x", "created": 5.25, "msecs": 250.0})
    assert LineFormatter("%(asctime)s").format(record) == logging.Formatter("%(asctime)s").format(record)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failing = logging.makeLogRecord({"msg": "two\nlines", "levelname": "INFO", "exc_info": sys.exc_info()})
    text = LineFormatter("%(levelname)s %(message)s").format(failing)
    assert text.startswith("INFO two\nlines\nTraceback") and text.endswith("ValueError: boom")
