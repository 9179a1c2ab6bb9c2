"""Imports have no side effects (docs/architecture.md §4.1, §9), checked in fresh interpreters.

- ``tunnel.protocol`` is sans-I/O: importing it pulls in neither gevent nor flask.
- ``tunnel.config`` and ``tunnel.credentials`` run in gunicorn's master (gunicorn.conf.py),
  which must stay unpatched and light: no gevent, flask or prometheus there either.
- ``tunnel.app`` patches nothing: only gunicorn's gevent worker calls patch_all(), in the worker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("module", ["tunnel.protocol", "tunnel.config", "tunnel.credentials"])
def test_leaf_modules_import_neither_gevent_nor_flask(module: str) -> None:
    result = run_python(
        f"""
        import sys
        import {module}
        heavy = sorted(
            name for name in sys.modules
            if name.split(".")[0] in ("gevent", "flask", "werkzeug", "prometheus_client", "greenlet")
        )
        print("heavy:", heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "heavy: []" in result.stdout, result.stdout


def test_importing_the_app_patches_nothing() -> None:
    result = run_python(
        """
        import socket, threading
        import tunnel.app
        from gevent import monkey
        patched = [name for name in ("socket", "ssl", "threading", "time", "select", "os")
                   if monkey.is_module_patched(name)]
        print("patched:", patched)
        print("socket is stdlib:", socket.socket.__module__ == "socket")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "patched: []" in result.stdout, result.stdout
    assert "socket is stdlib: True" in result.stdout, result.stdout


def test_importing_the_app_reads_no_config() -> None:
    # A bad value in the environment must not break the import: config is read in create_app().
    result = subprocess.run(
        [sys.executable, "-c", "import tunnel.app, tunnel.metrics, tunnel.api.health"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOODY_TUNNEL_WINDOW": "abc", "PORT": "nope"},
    )
    assert result.returncode == 0, result.stderr
