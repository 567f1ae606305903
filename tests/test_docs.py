"""Every section citation in the repository points at a numbered heading of the cited file in ``docs/``.

A citation is ``docs/<name>.md §N[.M...]`` optionally followed by more sections (``, §2.4``, ``§2.2-2.4``). Inside a
docs file, a ``§N`` that follows no ``docs/<name>.md`` refers to that file itself. The specs outside the repository
(``methods.md``/``protocols.md`` without ``docs/``, ``../shared``, the stack and toy-world notes) must not be cited.
This file is not scanned: its examples cite missing sections and the forbidden names on purpose.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("dplbench", "methods", "protocols", "benchmarks", "tests", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".ini"}

SECTION = r"\d+(?:\.\d+)*[a-z]?"
SECTION_REF = rf"§\s?(?P<first>{SECTION})(?:\s?[-–]\s?(?P<last>{SECTION}))?"
# a docs citation followed by any further section references of the same citation
CITATION = re.compile(rf"docs/(?P<file>[\w-]+)\.md`?(?P<refs>(?:[\s,;`]*(?:and\s+|or\s+)?§\s?{SECTION}"
                      rf"(?:\s?[-–]\s?{SECTION})?)+)")
REF = re.compile(SECTION_REF)
HEADING = re.compile(rf"^#{{1,6}}\s+(?P<number>{SECTION})\.?\s", re.MULTILINE)
# the unreachable spec files, cited without the docs/ prefix
FORBIDDEN = {
    "bare spec citation": re.compile(rf"(?<![\w/])(?:methods|protocols)\.md\s+§?\s?{SECTION}"),
    "path into ../shared": re.compile(r"\.\./shared\b"),
    "stack or toy-world notes": re.compile(r"\b(?:stack_notes|toyworld_notes)\.md"),
}


def numbered_sections(markdown: str) -> set[str]:
    """Section numbers of the numbered headings ("## 4.", "### 4.7 PromptSRC", "#### 5.5a ...")."""
    return {m.group("number") for m in HEADING.finditer(markdown)}


def citations(text: str, own_file: str | None = None) -> list[tuple[str, str]]:
    """(docs file stem, section) for every section a text cites. With ``own_file`` (the text is that docs file),
    section references outside a ``docs/<name>.md`` citation are resolved against ``own_file``."""
    found: list[tuple[str, str]] = []
    covered: list[tuple[int, int]] = []
    for m in CITATION.finditer(text):
        covered.append(m.span())
        for ref in REF.finditer(m.group("refs")):
            found += [(m.group("file"), s) for s in (ref.group("first"), ref.group("last")) if s]
    if own_file is not None:
        for ref in REF.finditer(text):
            if not any(a <= ref.start() < b for a, b in covered):
                found += [(own_file, s) for s in (ref.group("first"), ref.group("last")) if s]
    return found


def scanned_files() -> list[Path]:
    """Text files of the scanned tree, without this test file (its examples cite missing sections on purpose)."""
    this = Path(__file__).resolve()
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        files += [p for p in candidates if p.is_file() and p.suffix in TEXT_SUFFIXES and p.resolve() != this]
    return files


def unresolved(files: list[Path], docs_dir: Path) -> list[str]:
    """Citations whose docs file or section does not exist, as "path: docs/x.md §N" lines."""
    sections = {p.stem: numbered_sections(p.read_text(encoding="utf-8")) for p in docs_dir.glob("*.md")}
    problems = []
    for path in files:
        own = path.stem if path.parent == docs_dir and path.suffix == ".md" else None
        for stem, number in citations(path.read_text(encoding="utf-8"), own):
            if number not in sections.get(stem, set()):
                problems.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
                                f"docs/{stem}.md §{number}")
    return problems


def test_every_citation_resolves_to_a_numbered_heading():
    files = scanned_files()
    assert len(files) > 50  # the scan really walks the tree
    assert sum(len(citations(p.read_text(encoding="utf-8"))) for p in files) >= 50  # and finds the citations
    assert unresolved(files, DOCS) == []


def test_no_file_cites_the_specs_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {what}: {m.group(0)!r}"
            for p in scanned_files()
            for text in [p.read_text(encoding="utf-8")]
            for what, pattern in FORBIDDEN.items() for m in pattern.finditer(text)]
    assert hits == []


def test_docs_keep_the_spec_section_numbers():
    """The sections the code relies on exist (e.g. §4.7 is PromptSRC, §5.5a the LIFT protocol)."""
    methods = (DOCS / "methods.md").read_text(encoding="utf-8")
    protocols = (DOCS / "protocols.md").read_text(encoding="utf-8")
    assert re.search(r"^### 4\.7 PromptSRC", methods, re.MULTILINE)
    assert re.search(r"^#### 5\.1\.2 IWTD", methods, re.MULTILINE)
    assert re.search(r"^## 6\. Metrics and aggregation rules", protocols, re.MULTILINE)
    assert re.search(r"^#### 5\.5a LIFT", protocols, re.MULTILINE)


def test_citation_parser_reads_lists_and_ranges():
    text = "see docs/methods.md §2.2-2.4, §4.6 and docs/protocols.md §5.5a; `docs/stack.md §7`, `§6`"
    assert citations(text) == [("methods", "2.2"), ("methods", "2.4"), ("methods", "4.6"),
                               ("protocols", "5.5a"), ("stack", "7"), ("stack", "6")]
    assert citations("§3.1 and docs/methods.md §4", own_file="protocols") == [("methods", "4"),
                                                                             ("protocols", "3.1")]


@pytest.mark.parametrize("citation", ["docs/methods.md §4.77", "docs/protocols.md §5.5d",
                                      "docs/methods.md §4.7, §10", "docs/nowhere.md §1"])
def test_a_citation_of_a_missing_section_fails(tmp_path, citation):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("methods.md", "protocols.md"):
        (docs / name).write_text((DOCS / name).read_text(encoding="utf-8"), encoding="utf-8")
    module = tmp_path / "module.py"
    module.write_text(f'"""Something ({citation})."""\n', encoding="utf-8")
    assert unresolved([module], docs) != []
    module.write_text('"""Something (docs/methods.md §4.7, docs/protocols.md §5.5a)."""\n', encoding="utf-8")
    assert unresolved([module], docs) == []
