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
