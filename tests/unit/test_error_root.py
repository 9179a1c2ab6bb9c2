"""One error root: every exception class the package defines derives from TunnelError, and no
two of them share a name (docs/architecture.md §6: one vocabulary per concept)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import Counter

import tunnel
from tunnel.protocol import TunnelError


def _exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(tunnel.__path__, "tunnel."):
        if info.name in ("tunnel.wsgi", "tunnel.client.__main__"):
            continue  # wsgi builds the app; __main__ monkeypatches: neither defines exceptions
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_the_package_defines_exceptions_to_check() -> None:
    assert len(_exception_classes()) >= 15


def test_every_exception_the_package_defines_derives_from_tunnel_error() -> None:
    outside = sorted(
        f"{cls.__module__}.{cls.__qualname__}" for cls in _exception_classes() if not issubclass(cls, TunnelError)
    )
    assert outside == []


def test_no_two_exception_classes_share_a_name() -> None:
    counts = Counter(cls.__name__ for cls in _exception_classes())
    assert sorted(name for name, count in counts.items() if count > 1) == []
