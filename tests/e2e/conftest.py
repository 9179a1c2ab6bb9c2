"""Fixtures for e2e tests: real gunicorn processes (tests/e2e/harness.py).

- ``kit``: a started, ready server with the test tokens (function scope).
- ``make_kit(**env)``: start more, or differently configured, servers; ``ready=False`` returns
  at once (for servers expected to fail). Every server is stopped at teardown, and the output of
  each is printed when the test failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import KitProcess

MakeKit = Callable[..., KitProcess]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    item.stash.setdefault(_FAILED_KEY, False)
    if report.failed:
        item.stash[_FAILED_KEY] = True
    return report


_FAILED_KEY = pytest.StashKey[bool]()


@pytest.fixture
def make_kit(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeKit]:
    started: list[KitProcess] = []

    def make(*, ready: bool = True, port: int = 0, **env: str) -> KitProcess:
        kit = KitProcess.launch(tmp_path / f"kit{len(started)}", env, port=port)
        started.append(kit)
        if ready:
            kit.wait_ready()
        return kit

    yield make

    for kit in started:
        kit.stop()
    if request.node.stash.get(_FAILED_KEY, False):
        for index, kit in enumerate(started):
            print(f"=== server {index} on port {kit.port}\n{kit.output()}")


@pytest.fixture
def kit(make_kit: MakeKit) -> KitProcess:
    return make_kit()
