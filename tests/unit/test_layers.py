"""Import layers of tunnel/, enforced with import-linter (and grimp, the graph library under it).

The rules live as import-linter contracts in setup.cfg (the ``[importlinter...]`` sections); each
contract is one test here, so a failure names the rule that broke. By hand:
``.venv/bin/lint-imports`` (all) or ``.venv/bin/lint-imports --contract ID``.

- no import circle anywhere in tunnel/ (``acyclic``; the test adds grimp's circles, module by
  module);
- layers ``wsgi > app > api > server, client > mux > protocol`` (``layers``);
- tunnel.server and tunnel.client never import each other (``server-client``);
- tunnel.protocol imports nothing else of ours, tunnel.mux only tunnel.protocol (``protocol-own``,
  ``mux-own``); config, credentials, metrics and log_lines import no layer above protocol
  (``leaves``);
- tunnel.protocol imports no I/O, event-loop or web library (``protocol-no-io``) and, below, only
  itself and the standard library (not even the root package ``tunnel``);
- flask, werkzeug, marshmallow and apispec are imported by tunnel.api and tunnel.app only
  (``web-framework``).

Every import counts: module-level ones, those under ``if TYPE_CHECKING:`` and those inside
functions (grimp records all three; ``test_the_graph_counts_type_checking_and_local_imports``
pins that down).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grimp
import pytest
from grimp.exceptions import NotATopLevelModule
from importlinter import api as importlinter_api

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "setup.cfg"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# The house rules, by contract id: removing one of these from setup.cfg fails a test.
HOUSE_RULES = {
    "acyclic",
    "layers",
    "server-client",
    "protocol-own",
    "mux-own",
    "leaves",
    "protocol-no-io",
    "web-framework",
}

_CONFIGURATION = importlinter_api.read_configuration(str(CONFIG))
SESSION_OPTIONS: dict[str, Any] = _CONFIGURATION["session_options"]
CONTRACTS: dict[str, dict[str, Any]] = {
    str(options["id"]): options for options in _CONFIGURATION["contracts_options"]
}


def _flag(name: str) -> bool:
    return str(SESSION_OPTIONS.get(name, "False")) in ("True", "true")


def _build_graph(*, exclude_type_checking_imports: bool) -> grimp.ImportGraph:
    roots = SESSION_OPTIONS["root_packages"]
    try:
        return grimp.build_graph(
            *roots,
            include_external_packages=_flag("include_external_packages"),
            exclude_type_checking_imports=exclude_type_checking_imports,
            cache_dir=None,
        )
    except NotATopLevelModule:
        # tunnel.client is a root only while tunnel/client has no __init__.py.
        pytest.fail(
            f"root_packages in {CONFIG.name} ({roots}) names a regular subpackage (did "
            "tunnel/client get an __init__.py? then drop tunnel.client from root_packages)"
        )


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The graph import-linter checks (same roots and options, from setup.cfg)."""
    # Several worktrees of this repository may exist side by side: check this one's tunnel/.
    import tunnel

    assert Path(tunnel.__file__).resolve().parent == REPO_ROOT / "tunnel", tunnel.__file__
    return _build_graph(exclude_type_checking_imports=_flag("exclude_type_checking_imports"))


# ---------------------------------------------------------------------------------------------
# The contracts, one test each


@pytest.mark.parametrize("contract_id", sorted(CONTRACTS))
def test_contract(contract_id: str, graph: grimp.ImportGraph) -> None:
    result = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--contract", contract_id, str(CONFIG)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        # This worktree's tunnel/ first; wide, plain output.
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "160", "NO_COLOR": "1"},
    )
    kept = result.returncode == 0
    report = f"lint-imports --contract {contract_id}:\n{result.stdout}{result.stderr}"
    if CONTRACTS[contract_id]["type"] == "acyclic_siblings":
        # import-linter checks siblings (and names imports that would break each circle); a
        # circle through a package's own __init__ (tunnel.server <-> tunnel.server.kit) is not
        # between siblings, so grimp's module-level circles are checked too, and listed.
        circles = describe_circles(graph)
        kept = kept and not circles
        report = f"{circles}\n\n{report}"
    assert kept, report


def test_the_house_rules_are_all_configured() -> None:
    missing = HOUSE_RULES - set(CONTRACTS)
    assert not missing, f"contracts missing from {CONFIG.name}: {sorted(missing)}"


# ---------------------------------------------------------------------------------------------
# What the contracts rely on


def test_the_graph_has_every_module_of_tunnel(graph: grimp.ImportGraph) -> None:
    # grimp only walks directories that have an __init__.py: a namespace directory (tunnel/client
    # has none) is in the graph only when named in root_packages.
    on_disk = {_module_name(path) for path in (REPO_ROOT / "tunnel").rglob("*.py")}
    missing = sorted(on_disk - graph.modules)
    assert not missing, (
        f"modules not in the import graph, so no contract checks them: {missing}; add their "
        f"package to root_packages in {CONFIG.name} (or give it an __init__.py)"
    )


def test_the_graph_counts_type_checking_and_local_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not _flag("exclude_type_checking_imports"), "imports under TYPE_CHECKING must count"
    package = tmp_path / "layers_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("typed", "typed_qualified", "local", "method_local", "top"):
        (package / f"{name}.py").write_text("X = 1\n")
    (package / "importer.py").write_text(
        textwrap.dedent(
            """
            from __future__ import annotations
            import typing
            from typing import TYPE_CHECKING
            from layers_probe import top
            if TYPE_CHECKING:
                from layers_probe import typed
            if typing.TYPE_CHECKING:
                import layers_probe.typed_qualified
            def function() -> None:
                from layers_probe import local
            class Thing:
                def method(self) -> None:
                    from . import method_local
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = grimp.build_graph(
        "layers_probe",
        exclude_type_checking_imports=_flag("exclude_type_checking_imports"),
        cache_dir=None,
    )
    assert probe.find_modules_directly_imported_by("layers_probe.importer") == {
        "layers_probe.top",
        "layers_probe.typed",
        "layers_probe.typed_qualified",
        "layers_probe.local",
        "layers_probe.method_local",
    }


def test_protocol_imports_only_itself_and_the_standard_library(graph: grimp.ImportGraph) -> None:
    # Also covers what no contract can name: the root package tunnel (its __init__) on its own.
    protocol = {"tunnel.protocol"} | graph.find_descendants("tunnel.protocol")
    outside = sorted(
        (importer, imported)
        for importer in protocol
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported not in protocol and imported.split(".")[0] not in sys.stdlib_module_names
    )
    assert not outside, f"tunnel.protocol imports outside itself and the stdlib: {outside}"


# ---------------------------------------------------------------------------------------------
# Circles, module by module


def describe_circles(graph: grimp.ImportGraph) -> str:
    """Every import circle among tunnel's modules, as text; empty when there is none."""
    groups = list(_circular_groups(graph))
    if not groups:
        return ""
    # The same graph without the imports under TYPE_CHECKING, to mark those.
    runtime = _build_graph(exclude_type_checking_imports=True)
    lines = [
        f"{len(groups)} import circle(s) in tunnel/ (an import under TYPE_CHECKING or inside a "
        "function counts like any other):"
    ]
    for number, group in enumerate(groups, start=1):
        lines.append("")
        lines.append(f"circle {number}: {len(group)} modules import each other: {', '.join(group)}")
        circles = _shortest_circles_through(graph, group)
        if len(circles) > 1:
            lines.append(f"  made of {len(circles)} shortest circles:")
        for circle in circles:
            lines.append("  " + " -> ".join(circle))
            for importer, imported in zip(circle, circle[1:]):
                lines.extend(_import_lines(graph, runtime, importer, imported))
    return "\n".join(lines)


def _circular_groups(graph: grimp.ImportGraph) -> Iterator[list[str]]:
    """Strongly connected groups of tunnel's modules (each module in a circle lies in one)."""
    seen: set[str] = set()
    for module in sorted(m for m in graph.modules if m.split(".")[0] == "tunnel"):
        if module in seen:
            continue
        group = graph.find_upstream_modules(module) & graph.find_downstream_modules(module)
        if group:
            group.add(module)
            seen |= group
            yield sorted(group)


def _shortest_circles_through(graph: grimp.ImportGraph, group: list[str]) -> list[tuple[str, ...]]:
    """For each module of the group, a shortest circle through it; rotations counted once."""
    members = set(group)
    circles: list[tuple[str, ...]] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for module in group:
        best: tuple[str, ...] | None = None
        for first in sorted(graph.find_modules_directly_imported_by(module) & members):
            chain = graph.find_shortest_chain(importer=first, imported=module)
            if chain is not None and (best is None or len(chain) + 1 < len(best)):
                best = (module, *chain)
        if best is None:
            continue
        edges = frozenset(zip(best, best[1:]))
        if edges not in seen:
            seen.add(edges)
            circles.append(best)
    return circles


def _import_lines(
    graph: grimp.ImportGraph, runtime: grimp.ImportGraph, importer: str, imported: str
) -> list[str]:
    path = _module_path(importer)
    source = path.read_text().splitlines()
    runtime_lines = {
        int(detail["line_number"])
        for detail in runtime.get_import_details(importer=importer, imported=imported)
    }
    lines = []
    for detail in graph.get_import_details(importer=importer, imported=imported):
        number = int(detail["line_number"])
        text = source[number - 1] if 0 < number <= len(source) else str(detail["line_contents"])
        if number not in runtime_lines:
            note = "  (under TYPE_CHECKING)"
        elif text != text.lstrip():
            note = "  (inside a function or block)"
        else:
            note = ""
        lines.append(f"      {path.relative_to(REPO_ROOT)}:{number}: {text.strip()}{note}")
    return lines


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_path(module: str) -> Path:
    base = REPO_ROOT.joinpath(*module.split("."))
    package_init = base / "__init__.py"
    return package_init if package_init.exists() else base.with_suffix(".py")
