"""The public surface of tunnel.protocol: a sorted, complete __all__, docstrings, stdlib only."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import types
from pathlib import Path

import tunnel.protocol as package
from tunnel.protocol import config, errors, events, flow, frames, messages, session, session_state, stream

# Modules whose public names all belong in the package's __all__, and single names picked from
# modules that are otherwise internal.
EXPORTED_MODULES = [config, errors, events, flow, frames, messages, session]
EXPORTED_NAMES = {"SessionState": session_state, "StreamState": stream}
PROTOCOL_DIR = Path(package.__file__).parent
# stdlib modules the sans-I/O core must never import (docs/architecture.md §3).
FORBIDDEN = {"socket", "select", "selectors", "time", "random", "secrets", "os", "threading", "asyncio"}


def public_names(module: types.ModuleType) -> set[str]:
    declared = getattr(module, "__all__", None)
    if declared is not None:
        return set(declared)
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    }


def test_all_is_sorted_and_unique() -> None:
    assert package.__all__ == sorted(package.__all__)
    assert len(set(package.__all__)) == len(package.__all__)


def test_all_is_complete() -> None:
    expected = set().union(*(public_names(m) for m in EXPORTED_MODULES)) | set(EXPORTED_NAMES)
    assert sorted(expected - set(package.__all__)) == []
    for name, module in EXPORTED_NAMES.items():
        assert getattr(package, name) is getattr(module, name)


def test_every_exported_name_exists_and_is_documented() -> None:
    for name in package.__all__:
        obj = getattr(package, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_session_public_methods_document_args_returns_raises() -> None:
    for name, method in inspect.getmembers(package.Session, inspect.isfunction):
        if name.startswith("_"):
            continue
        doc = inspect.getdoc(method) or ""
        assert doc, name
        signature = inspect.signature(method)
        if len(signature.parameters) > 1:
            assert "Args:" in doc, name
        if signature.return_annotation not in ("None", None):
            assert "Returns:" in doc, name


def test_protocol_imports_only_the_stdlib_and_itself() -> None:
    for path in sorted(PROTOCOL_DIR.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "tunnel":
                    assert name.startswith("tunnel.protocol"), (path.name, name)
                else:
                    assert top in sys.stdlib_module_names, (path.name, name)
                    assert top not in FORBIDDEN, (path.name, name)


def test_import_leaves_gevent_out() -> None:
    code = "import sys, tunnel.protocol; print(sorted(m for m in ('gevent', 'flask', 'socket') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PROTOCOL_DIR.parents[1]
    )
    assert result.stdout.strip() == "[]"
