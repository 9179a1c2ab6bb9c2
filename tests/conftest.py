"""Shared test setup: import path, timeout scaling, and markers by directory.

Timeouts in tests are multiples of a unit scaled by ``TUNNEL_TEST_TIMEOUT_FACTOR`` (default 1;
raise it on a slow machine): ``tests.waiting.scaled_s``. Tests never sleep to synchronise: they
wait on an event, or poll a condition against such a deadline with ``tests.waiting.wait_until``
(the one polling loop of every layer).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# `tests.*` helpers (e.g. tests.waiting, tests.e2e.harness) and `tunnel` import from a plain
# checkout too.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests import waiting  # noqa: E402 (needs the path above)

try:
    TIMEOUT_FACTOR = waiting.timeout_factor()
except ValueError as exc:
    raise pytest.UsageError(str(exc)) from None


@pytest.fixture
def timeout_factor() -> float:
    return TIMEOUT_FACTOR


_DIRECTORY_MARKERS = {"integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every test under tests/integration/ or tests/e2e/ carries that marker, so `-m "not e2e"`
    # works without each module remembering to mark itself.
    tests_dir = REPO_ROOT / "tests"
    for item in items:
        try:
            relative = Path(str(item.path)).resolve().relative_to(tests_dir)
        except ValueError:
            continue
        marker = _DIRECTORY_MARKERS.get(relative.parts[0]) if relative.parts else None
        if marker is not None:
            item.add_marker(getattr(pytest.mark, marker))
