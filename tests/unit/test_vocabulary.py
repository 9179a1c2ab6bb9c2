"""One vocabulary per concept: every exception class the package defines derives from TunnelError,
no two exception classes share a name, and no two enums share a name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import Counter
from enum import Enum

import tunnel
from tunnel.protocol import TunnelError


def _classes() -> list[type]:
    """Every class defined by a module of the package."""
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(tunnel.__path__, "tunnel."):
        if info.name in ("tunnel.wsgi", "tunnel.client.__main__"):
            continue  # wsgi builds the app; __main__ monkeypatches: neither defines a class
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def _exception_classes() -> list[type[BaseException]]:
    return [cls for cls in _classes() if issubclass(cls, BaseException)]


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


def test_no_two_enums_share_a_name() -> None:
    enums = [cls for cls in _classes() if issubclass(cls, Enum)]
    assert len(enums) >= 8
    counts = Counter(cls.__name__ for cls in enums)
    assert sorted(name for name, count in counts.items() if count > 1) == []
