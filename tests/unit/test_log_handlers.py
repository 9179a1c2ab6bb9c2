"""LoopBatchedStreamHandler: the lines of one event-loop turn are written together, in order."""

from __future__ import annotations

import io
import logging

import gevent

from tunnel.log_handlers import LoopBatchedStreamHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.batched.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_lines_of_one_loop_turn_go_out_in_one_write_at_its_end() -> None:
    stream = CountingStream()
    handler = LoopBatchedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = _logger(handler)
    for number in range(3):
        logger.info("line %d", number)
    assert stream.getvalue() == ""  # kept until the loop turns
    gevent.idle()
    assert stream.getvalue() == "INFO line 0\nINFO line 1\nINFO line 2\n"
    assert stream.writes == 1
    logger.info("next turn")
    gevent.idle()
    assert stream.getvalue().endswith("INFO line 2\nINFO next turn\n") and stream.writes == 2


def test_max_lines_writes_at_once_and_close_writes_the_rest() -> None:
    stream = CountingStream()
    handler = LoopBatchedStreamHandler(stream, max_lines=2)
    logger = _logger(handler)
    logger.info("a")
    logger.info("b")
    assert stream.getvalue() == "a\nb\n"  # the second line reached max_lines
    logger.info("c")
    handler.close()
    assert stream.getvalue() == "a\nb\nc\n"
    logger.debug("filtered out by the level")
    logger.removeHandler(handler)


def test_record_factory_records_format_like_the_logger_s_own() -> None:
    from tunnel.log_handlers import RecordFactory

    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = _logger(Keep())
    factory = RecordFactory(logger, logging.INFO, pathname=__file__, func="here")
    factory.log("a=%d b=%s", 1, "x")
    logger.info("a=%d b=%s", 1, "x")
    made, real = records
    formatter = logging.Formatter("%(name)s %(levelname)s %(process)d %(module)s %(funcName)s %(message)s")
    assert formatter.format(made).replace("here", "test_record_factory_records_format_like_the_logger_s_own") == formatter.format(real)
    assert made.getMessage() == "a=1 b=x" and made.args == (1, "x")
    assert 0 <= real.created - made.created < 1 and abs(made.relativeCreated - real.relativeCreated) < 1000
    assert 0 <= made.msecs < 1000
    logger.setLevel(logging.WARNING)
    factory.log("not at this level")
    assert len(records) == 2


def test_cached_time_formatter_renders_like_the_plain_one_across_seconds() -> None:
    from tunnel.log_handlers import CachedTimeFormatter

    fmt, datefmt = "%(asctime)s %(message)s", "[%Y-%m-%d %H:%M:%S %z]"
    cached, plain = CachedTimeFormatter(fmt, datefmt), logging.Formatter(fmt, datefmt)
    for created in (1_000_000.1, 1_000_000.9, 1_000_001.0, 1_000_000.5, 1_000_002.2):
        record = logging.makeLogRecord({"msg": "line", "created": created})
        assert cached.format(record) == plain.format(record)
    record = logging.makeLogRecord({"msg": "line", "created": 5.25, "msecs": 250.0})
    assert CachedTimeFormatter("%(asctime)s").format(record) == logging.Formatter("%(asctime)s").format(record)
