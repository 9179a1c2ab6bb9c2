"""Citations of the project's docs point at files and sections that exist.

The one citation form (docs/gevent-websocket.md, at the top): ``docs/<file>.md``, optionally
followed by ``§N``, the number of one of that file's numbered headings, and by more sections of
the same file (``docs/protocol.md §7.6, §12``, ``docs/protocol.md §13 and §14``). A bare ``§N``
is allowed only inside a numbered doc of docs/, for its own sections, and after a standard
(``RFC 6455 §5.3``). Relative Markdown links in docs/ and README.md must resolve.

Nothing may cite a document that is not in the repository: the original wire spec, the traps
list, the customer's admin API page (the project's own is docs/admin-api.md, and only that path
may name it; inside docs/ a relative Markdown link to it is fine), the original style guide (its
rules are docs/architecture.md now), or anything in the shared folder.

Pure: reads files under the repository root, nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

SCANNED_DIRS = ("tunnel", "tests", "bench", "docs")
SCANNED_TOP_FILES = ("README.md", "gunicorn.conf.py", "setup.cfg", "setup.py", "Makefile", "Procfile")
TEXT_SUFFIXES = (".py", ".md", ".txt", ".cfg", ".toml", ".ini", ".yaml", ".yml", ".sh")

SECTION = r"\d+(?:\.\d+)*"
# Between a doc and its first section: blanks, or a line break (plus indentation and "# ").
GAP = r"(?:[ \t]+|[ \t]*\n[ \t]*(?:#[ \t]*)?)"
MORE = r"(?:(?:,[ \t]*|[ \t]+and[ \t]+)§" + SECTION + r"|[-–]§" + SECTION + r")"
CHAIN = r"§" + SECTION + r"(?:" + MORE + r")*"

DOC_PATH_RE = re.compile(r"(?<![\w/.-])docs/[\w./-]*[\w-]")
DOC_CITATION_RE = re.compile(
    r"(?<![\w/.-])(?P<doc>docs/[\w./-]*[\w-]\.md)(?:\]\((?P=doc)\))?(?:" + GAP + r"(?P<chain>" + CHAIN + r"))?"
)
# Sections of a standard (RFC 6455 §5.3): not ours to check.
FOREIGN_CHAIN_RE = re.compile(r"RFC[ \t]+\d+(?:'s)?[ \t]+" + CHAIN)
BARE_SECTION_RE = re.compile(r"§(?P<section>" + SECTION + r")")
HEADING_RE = re.compile(r"^#{1,6}[ \t]+(?P<number>" + SECTION + r")\.?[ \t]", re.M)
MARKDOWN_LINK_RE = re.compile(r"\]\((?!https?:|mailto:|#)(?P<target>[^)\s#]+)(?:#[^)\s]*)?\)")

# Documents that are not in the repository. Spelled in pieces so this file does not cite them.
FORBIDDEN = (
    ("the original wire spec", re.compile("wire" + "-protocol")),
    ("the shared folder", re.compile(re.escape(".." + "/shared"))),
    ("the traps list", re.compile(r"\b" + "[Tt]rap" + r"s?:?[ \t]+\d")),
    ("the original style guide (cite docs/architecture.md)", re.compile("(?i)house" + r"[- ]" + "style")),
)
# The customer's admin API page by any other path than docs/ (a name, a shared/ path, a relative
# path outside docs/): cite docs/admin-api.md.
ADMIN_API_NAME_RE = re.compile("admin" + r"-api(?:\.md|[ \t]+§)")
ADMIN_API_WHAT = "the customer's admin API page (cite docs/admin-api.md)"


def scanned_files() -> list[Path]:
    files = [REPO_ROOT / name for name in SCANNED_TOP_FILES if (REPO_ROOT / name).is_file()]
    files += sorted(REPO_ROOT.glob("requirements*.txt"))
    for top in SCANNED_DIRS:
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def sections_of(doc: Path) -> set[str]:
    return {m.group("number") for m in HEADING_RE.finditer(doc.read_text(encoding="utf-8"))}


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def citation_problems(relpath: str, text: str, root: Path = REPO_ROOT) -> list[str]:
    """What is wrong with the citations in ``text`` (the content of ``relpath``)."""
    problems: list[str] = []
    covered: list[tuple[int, int]] = []

    for match in DOC_PATH_RE.finditer(text):
        if not match.group(0).endswith(".md") and not (root / match.group(0)).exists():
            problems.append(f"{relpath}:{line_of(text, match.start())}: {match.group(0)} does not exist")

    for match in DOC_CITATION_RE.finditer(text):
        doc = root / match.group("doc")
        where = f"{relpath}:{line_of(text, match.start())}"
        if not doc.is_file():
            problems.append(f"{where}: {match.group('doc')} does not exist")
            continue
        covered.append(match.span())
        chain = match.group("chain")
        if chain:
            known = sections_of(doc)
            for section in re.findall(SECTION, chain):
                if section not in known:
                    problems.append(f"{where}: {match.group('doc')} has no section §{section}")

    covered += [m.span() for m in FOREIGN_CHAIN_RE.finditer(text)]

    own_sections: set[str] = set()  # a numbered doc of docs/ may cite its own sections bare
    if relpath.startswith("docs/") and relpath.endswith(".md") and (root / relpath).is_file():
        own_sections = sections_of(root / relpath)
    for match in BARE_SECTION_RE.finditer(text):
        if any(start <= match.start() < end for start, end in covered):
            continue
        where = f"{relpath}:{line_of(text, match.start())}"
        if not own_sections:
            problems.append(f"{where}: bare §{match.group('section')}: name the doc (docs/<file>.md §N)")
        elif match.group("section") not in own_sections:
            problems.append(f"{where}: {relpath} has no section §{match.group('section')}")

    for what, regex in FORBIDDEN:
        for match in regex.finditer(text):
            problems.append(f"{relpath}:{line_of(text, match.start())}: cites {what} ({match.group(0)!r})")

    for match in ADMIN_API_NAME_RE.finditer(text):
        before = text[max(0, match.start() - 5) : match.start()]
        ahead = text[max(0, match.start() - 6) : match.start() - 5]
        if before == "docs/" and not re.match(r"[\w/.-]", ahead):
            continue  # docs/admin-api.md, the one allowed form
        if relpath.startswith("docs/") and text[max(0, match.start() - 2) : match.start()] == "](":
            continue  # a relative Markdown link from a page of docs/ to its sibling
        problems.append(f"{relpath}:{line_of(text, match.start())}: cites {ADMIN_API_WHAT} ({match.group(0)!r})")

    if relpath.endswith(".md"):
        base = (root / relpath).parent
        for match in MARKDOWN_LINK_RE.finditer(text):
            if not (base / match.group("target")).exists():
                problems.append(f"{relpath}:{line_of(text, match.start())}: link to {match.group('target')} does not resolve")
    return problems


# -- the repository --------------------------------------------------------------------------


def test_the_citation_form_is_documented_where_the_docs_say() -> None:
    doc = REPO_ROOT / "docs" / "gevent-websocket.md"
    assert "docs/<file>.md §N" in doc.read_text(encoding="utf-8")


def test_every_citation_in_the_repository_resolves() -> None:
    problems: list[str] = []
    for path in scanned_files():
        relpath = path.relative_to(REPO_ROOT).as_posix()
        problems += citation_problems(relpath, path.read_text(encoding="utf-8"))
    assert not problems, "broken or forbidden citations:\n" + "\n".join(problems)


def test_this_file_is_scanned() -> None:
    assert Path(__file__).resolve() in {p.resolve() for p in scanned_files()}


# -- the checker itself, on made-up text -----------------------------------------------------

# Spelled in pieces too, so that the examples do not count as citations in this file.
PROTOCOL = "docs/" + "protocol.md"
ADMIN_API = "docs/" + "admin" + "-api.md"
ARCHITECTURE = "docs/" + "architecture.md"
ADMIN_API_NAME = "admin" + "-api.md"
HOUSE = "house"
S = "\N{SECTION SIGN}"


@pytest.mark.parametrize(
    "text",
    [
        f"see {PROTOCOL} {S}13.2 and {PROTOCOL} {S}7.6, {S}12",
        f"[{PROTOCOL}]({PROTOCOL}) {S}13 and {S}14 have the details",
        f"(bytes really written ({PROTOCOL}\n    # {S}8).",
        f"a range: {PROTOCOL} {S}2-{S}4",
        f"masking (RFC 6455 {S}5.3, {S}5.5.1)",
        f"{PROTOCOL} without a section",
        f"the DELETE order ({ADMIN_API} {S}7), the views ({ADMIN_API} {S}6.1, {S}7)",
        f"field names as {ADMIN_API} gives them",
        f"(the write lock: {ARCHITECTURE} {S}4.2; {ARCHITECTURE} {S}4.1, {S}9)",
    ],
)
def test_checker_accepts(text: str) -> None:
    assert citation_problems("tunnel/example.py", text) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{PROTOCOL} {S}99", f"has no section {S}99"),
        (f"{PROTOCOL} {S}13, {S}77", f"has no section {S}77"),
        (f"{PROTOCOL} {S}2-{S}77", f"has no section {S}77"),
        ("docs/" + f"nowhere.md {S}1", "does not exist"),
        ("docs/" + "operations: the admin API", "does not exist"),
        (f"parked ({S}7)", f"bare {S}7"),
        ("wire" + f"-protocol.md {S}3", "cites the original wire spec"),
        ("see " + ".." + "/shared/spec", "cites the shared folder"),
        ("the lock (" + "trap" + " 6)", "cites the traps list"),
        ("(" + "Trap" + "s: 12)", "cites the traps list"),
        (f"{ADMIN_API} {S}99", f"has no section {S}99"),
        (f"{ADMIN_API} {S}6.1, {S}6.9", f"has no section {S}6.9"),
        (f"{ARCHITECTURE} {S}99", f"has no section {S}99"),
        (f"{ARCHITECTURE} {S}4.1, {S}4.7", f"has no section {S}4.7"),
        (f"(the API reference, {ADMIN_API_NAME})", "cites the customer's admin API page"),
        (f"({ADMIN_API_NAME} \"our decisions\")", "cites the customer's admin API page"),
        ("see " + ".." + f"/shared/spec/{ADMIN_API_NAME}", "cites the customer's admin API page"),
        (f"see spec/{ADMIN_API_NAME}", "cites the customer's admin API page"),
        (f"see tests/docs/{ADMIN_API_NAME}", "cites the customer's admin API page"),
        ("admin" + f"-api {S}3", "cites the customer's admin API page"),
        (f"({HOUSE} style {S}4)", "cites the original style guide"),
        (f"({HOUSE}-style {S}2)", "cites the original style guide"),
        (f"({HOUSE} style: one vocabulary per concept)", "cites the original style guide"),
        (f"{HOUSE.capitalize()} style {S}5", f"bare {S}5"),
    ],
)
def test_checker_refuses(text: str, expected: str) -> None:
    problems = citation_problems("tunnel/example.py", text)
    assert any(expected in problem for problem in problems), problems


def test_a_page_of_docs_may_link_to_admin_api_by_its_relative_path() -> None:
    link = f"[the admin API]({ADMIN_API_NAME}#7-delete)"
    assert citation_problems("docs/operations.md", link) == []
    assert any("admin API page" in p for p in citation_problems("tunnel/example.py", link))


def test_the_two_reference_docs_are_numbered() -> None:
    for doc in (ADMIN_API, ARCHITECTURE):
        assert {"1", "2", "3"} <= sections_of(REPO_ROOT / doc), doc


def test_a_numbered_doc_may_cite_its_own_sections_bare() -> None:
    assert f"{S}13.2" in (REPO_ROOT / PROTOCOL).read_text(encoding="utf-8")
    assert citation_problems(PROTOCOL, f"as in {S}13.2") == []
    assert f"has no section {S}88" in citation_problems(PROTOCOL, f"as in {S}88")[0]
    assert f"bare {S}5" in citation_problems("docs/http-mode.md", f"(protocol {S}5)")[0]
