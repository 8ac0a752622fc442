"""Every reference to the project's docs names a file and a section that exist: code, tests and
docs point at `docs/X.md`, `docs/X.md, "Section"` or `README.md, 'Section'`, and a file renamed or
a heading reworded fails here, naming the reference, instead of leaving the pointer stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("kgg", "bench", "tests")
SUFFIXES = {".py", ".md", ".j2", ".sh", ".yaml", ".toml", ".txt", ".cfg", ".service", ".timer"}
# A doc's path (never part of a URL or a longer path), then optionally `, "Section"`
# (or `'Section'`, `section "Section"`) and one more `and "Section"`.
REFERENCE = re.compile(
    r"(?<![\w/.-])(docs/[\w.-]+\.md|README\.md)"
    r"(?:,\s*(?:section\s+)?([\"'])([^\"'\n]+?)\2(?:\s+and\s+([\"'])([^\"'\n]+?)\4)?)?"
)
# Inside a doc, `section "Section"` with no file before it names one of the doc's own headings.
OWN_SECTION = re.compile(r"(?<!\.md, )\bsection \"([^\"\n]+)\"")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _flat(text: str) -> str:
    """The text as one line: each line without its indentation and comment marker, so a
    reference wrapped over two comment or docstring lines reads as one."""
    return " ".join(re.sub(r"^\s*(#\s?)?", "", line) for line in text.splitlines())


def references(text: str) -> list[tuple[str, str | None]]:
    """(file, section or None) for every docs reference in `text`."""
    found: list[tuple[str, str | None]] = []
    for match in REFERENCE.finditer(_flat(text)):
        sections = [s for s in (match.group(3), match.group(5)) if s] or [None]
        found += [(match.group(1), section) for section in sections]
    return found


def headings(markdown: str) -> set[str]:
    """The headings of a Markdown file (those inside code blocks are not headings)."""
    return {" ".join(h.split()) for h in HEADING.findall(FENCE.sub("", markdown))}


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in SCANNED:
        files += [
            path for path in sorted((ROOT / folder).rglob("*"))
            if path.is_file() and path.suffix in SUFFIXES and path != Path(__file__).resolve()
            and not {"__pycache__", "results"} & set(path.relative_to(ROOT).parts)
        ]  # fmt: skip
    return files


def _all_references() -> list[tuple[str, str, str | None]]:
    found = []
    for path in _scanned_files():
        where, text = str(path.relative_to(ROOT)), path.read_text(errors="replace")
        found += [(where, doc, section) for doc, section in references(text)]
        if path.suffix == ".md" and path.parent in (ROOT, ROOT / "docs"):
            found += [(where, where, section) for section in OWN_SECTION.findall(_flat(text))]
    return found


def test_finder_reads_wrapped_quoted_and_paired_sections() -> None:
    text = (
        '"""See (docs/A.md, "Bucket layout" and\n"VM metadata"), README.md, \'Security model\'.\n'
        '# and its grants (docs/B.md,\n# "Why a stop\n# workflow"); docs/C.md alone.\n'
        "https://cloud.google.com/compute/docs/x.md and kgg/docs/y.md are no references.\n"
    )
    assert references(text) == [
        ("docs/A.md", "Bucket layout"),
        ("docs/A.md", "VM metadata"),
        ("README.md", "Security model"),
        ("docs/B.md", "Why a stop workflow"),
        ("docs/C.md", None),
    ]


def test_a_docs_own_sections_are_read_apart_from_another_files() -> None:
    text = 'as in section "The workspace", and docs/A.md, section "Other"'
    assert OWN_SECTION.findall(text) == ["The workspace"]
    assert references(text) == [("docs/A.md", "Other")]


def test_headings_skip_code_blocks() -> None:
    markdown = "# Title\n## The  rooms\n```bash\n# a shell comment\n```\n### `kgg` it is ##\n"
    assert headings(markdown) == {"Title", "The rooms", "`kgg` it is"}


def test_the_project_has_references_to_check() -> None:
    found = {(doc, section) for _, doc, section in _all_references()}
    assert ("docs/CONTRACTS.md", "Stopping itself") in found
    assert ("docs/ARCHITECTURE.md", "The rooms") in found
    assert ("docs/CONTRACTS.md", "The trial contract") in found


@pytest.mark.parametrize(
    ("where", "doc", "section"), _all_references(), ids=lambda value: str(value)
)
def test_reference_names_an_existing_doc_and_heading(where: str, doc: str, section: str | None):
    path = ROOT / doc
    assert path.is_file(), f"{where} refers to {doc}, which does not exist"
    if section is not None:
        assert section in headings(path.read_text()), (
            f"{where} refers to {doc}, {section!r}: no such heading there"
        )


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_slug_is_githubs() -> None:
    assert _slug("7. Fetch the results") == "7-fetch-the-results"
    assert _slug("What `pulumi up` creates") == "what-pulumi-up-creates"


@pytest.mark.parametrize(
    "doc", ["README.md", *(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
)
def test_in_page_links_name_a_heading(doc: str) -> None:
    text = (ROOT / doc).read_text()
    anchors = {_slug(heading) for heading in headings(text)}
    missing = sorted(set(re.findall(r"\]\(#([^)]+)\)", text)) - anchors)
    assert missing == [], f"{doc} links to anchors {missing} that no heading makes"
