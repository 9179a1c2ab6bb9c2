"""Shared test setup: import path, timeout scaling, and markers by directory.

Timeouts in tests are multiples of a unit scaled by ``TUNNEL_TEST_TIMEOUT_FACTOR`` (default 1;
raise it on a slow machine). Tests never sleep to synchronise: they wait on an event or poll a
condition against such a deadline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# `tests.*` helpers (e.g. tests.e2e.harness) and `tunnel` import from a plain checkout too.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def _timeout_factor() -> float:
    raw = os.environ.get("TUNNEL_TEST_TIMEOUT_FACTOR", "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        raise pytest.UsageError(
            f"TUNNEL_TEST_TIMEOUT_FACTOR: must be a positive number, got {raw!r}"
        ) from None
    if not factor > 0:
        raise pytest.UsageError(f"TUNNEL_TEST_TIMEOUT_FACTOR: must be a positive number, got {raw!r}")
    return factor


TIMEOUT_FACTOR = _timeout_factor()


def scaled_timeout_s(seconds: float) -> float:
    """``seconds`` times TUNNEL_TEST_TIMEOUT_FACTOR."""
    return seconds * TIMEOUT_FACTOR


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
