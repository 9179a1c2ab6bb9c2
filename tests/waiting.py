"""Deadlines and polling for every test layer (unit, integration, e2e): the one place tests wait.

- :func:`timeout_factor` / :func:`scaled_s`: a timeout in tests is a number of seconds times
  ``TUNNEL_TEST_TIMEOUT_FACTOR`` (default 1; raise it on a slow machine).
- :func:`wait_until`: poll a condition until it is true, against a scaled deadline; on timeout
  fail with what was awaited and the last value seen.
- :func:`holds_for`: the converse, an absence check: a condition stays true for a while.

These are the only places where tests sleep to wait for something. Everything else waits on an
event, a condition variable or a socket with a timeout; the few other sleeps in the tests are
part of a scenario (how long an outage lasts, a slow client, staggered starts) and say so.

Sleeping works under gevent and without it: when the calling thread has a gevent hub (the
integration tests drive the kit and the client as greenlets in the test's own thread, without
monkeypatching), the poll sleeps with ``gevent.sleep`` so those greenlets run meanwhile; in a
thread without a hub (e2e tests, helper threads) it sleeps with ``time.sleep``. With gevent's
monkeypatching active the two are the same. ``sleep=`` overrides the choice.

Importable as ``tests.waiting`` from any layer: tests/conftest.py puts the repository root on
``sys.path``, and e2e subprocesses run with the repository root as their working directory.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["WaitTimeout", "holds_for", "scaled_s", "timeout_factor", "wait_until"]

T = TypeVar("T")

FACTOR_VARIABLE = "TUNNEL_TEST_TIMEOUT_FACTOR"
DEFAULT_INTERVAL_S = 0.02
_SHOWN_CHARS = 500


def timeout_factor() -> float:
    """``TUNNEL_TEST_TIMEOUT_FACTOR`` (default 1); ValueError unless it is a positive number."""
    raw = os.environ.get(FACTOR_VARIABLE, "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        factor = float("nan")
    if not factor > 0:
        raise ValueError(f"{FACTOR_VARIABLE}: must be a positive number, got {raw!r}")
    return factor


def scaled_s(seconds: float) -> float:
    """``seconds`` times TUNNEL_TEST_TIMEOUT_FACTOR."""
    return seconds * timeout_factor()


class WaitTimeout(AssertionError):
    """A :func:`wait_until` deadline passed (an AssertionError, so it fails a test as one)."""


def wait_until(
    condition: Callable[[], T | None],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    context: Callable[[], object] | None = None,
    sleep: Callable[[float], object] | None = None,
) -> T:
    """Call ``condition`` every ``interval_s`` until it returns something truthy; return that.

    ``timeout_s`` is scaled by TUNNEL_TEST_TIMEOUT_FACTOR. The condition is called once more at
    the deadline; if it is still falsy, :class:`WaitTimeout` names ``what``, the last value the
    condition returned and, when given, ``context()`` (evaluated then, e.g. a process's output).
    An exception raised by ``condition`` propagates at once.

    ``sleep`` defaults to ``gevent.sleep`` in a thread with a gevent hub, else ``time.sleep``
    (see the module docstring).
    """
    budget_s = scaled_s(timeout_s)
    deadline = time.monotonic() + budget_s
    nap = sleep if sleep is not None else _sleep_for_this_thread()
    while True:
        value = condition()
        if value:
            return value
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise WaitTimeout(_timeout_message(what, timeout_s, budget_s, value, context))
        nap(min(interval_s, remaining_s))


def holds_for(
    condition: Callable[[], object],
    duration_s: float,
    what: str,
    *,
    interval_s: float = 0.01,
    sleep: Callable[[float], object] | None = None,
) -> None:
    """Assert ``condition`` stays truthy for ``duration_s``, checked every ``interval_s``.

    An absence check ("nothing arrives meanwhile"): ``duration_s`` is part of the scenario, not
    a deadline, so it is NOT scaled. Fails at the first falsy value, naming ``what`` and the value.
    """
    nap = sleep if sleep is not None else _sleep_for_this_thread()
    began = time.monotonic()
    end = began + duration_s
    while True:
        value = condition()
        if not value:
            raise AssertionError(
                f"no longer {what} after {time.monotonic() - began:.2f} of {duration_s} s: got {_shown(value)}"
            )
        remaining_s = end - time.monotonic()
        if remaining_s <= 0:
            return
        nap(min(interval_s, remaining_s))


def _timeout_message(
    what: str, timeout_s: float, budget_s: float, last: object, context: Callable[[], object] | None
) -> str:
    scaled = "" if budget_s == timeout_s else f" ({timeout_s} s x {FACTOR_VARIABLE})"
    message = f"timed out after {budget_s:g} s{scaled} waiting for {what}; last value: {_shown(last)}"
    if context is not None:
        message += f"\n{context()}"
    return message


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def _sleep_for_this_thread() -> Callable[[float], object]:
    """``gevent.sleep`` when gevent is loaded and this thread has a hub, else ``time.sleep``."""
    if "gevent" not in sys.modules:
        return time.sleep
    try:
        from gevent._hub_local import get_hub_if_exists
    except ImportError:  # pragma: no cover - a gevent without it: decide by the main thread
        import threading

        has_hub = threading.current_thread() is threading.main_thread()
    else:
        has_hub = get_hub_if_exists() is not None
    if not has_hub:
        return time.sleep
    import gevent

    return gevent.sleep
