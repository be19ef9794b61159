"""The repository's citations of its algorithm pages (`docs/*.md`) resolve, and nothing cites a spec that is not in
the repository.

A citation is `docs/<page>.md#<anchor>` anywhere in a text file (a comment, a docstring, a link); the anchor must be
the GitHub anchor of a heading of that page.
"""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
# Spelled in two parts so that this file does not mention it.
MISSING_SPEC = "ORIGINAL" + ".md"
# Directories that are not part of the repository's content: VCS data, caches, build and run outputs (.gitignore),
# and the recording of release 0.1's outputs, which is compared byte for byte and never edited.
SKIPPED_DIRS = {
    ".git",
    "__pycache__",
    ".venv",
    "venv",
    "build",
    "dist",
    ".pytest_cache",
    ".ruff_cache",
    "runs",
    "outputs",
    "data",
}
SKIPPED_PATHS = {Path("tests/fixtures/release_0_1")}
CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+?\.md)(?:#([A-Za-z0-9_-]*))?")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: markup dropped, lower case, punctuation removed (word characters,
    spaces and hyphens stay), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    """Every heading anchor of a Markdown text (headings inside fenced code blocks are not headings); a repeated
    heading gets `-1`, `-2`, ... as on GitHub."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match is None:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def repository_files(root: Path):
    """`(relative path, bytes)` of every file under `root`, outside the skipped directories."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in relative.parts[:-1]):
            continue
        if any(relative.is_relative_to(skipped) for skipped in SKIPPED_PATHS) or not path.is_file():
            continue
        yield relative, path.read_bytes()


def files_mentioning(root: Path, needle: str) -> list[str]:
    return [str(relative) for relative, data in repository_files(root) if needle.encode() in data]


def unresolved_citations(root: Path) -> list[str]:
    """`file: citation` for every citation whose page or heading does not exist."""
    anchors_of: dict[str, set[str] | None] = {}
    unresolved = []
    for relative, data in repository_files(root):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:  # binary files (weights, images) cite nothing
            continue
        for match in CITATION.finditer(text):
            page, anchor = match.group(1), match.group(2)
            if page not in anchors_of:
                page_path = root / "docs" / page
                anchors_of[page] = heading_anchors(page_path.read_text("utf-8")) if page_path.is_file() else None
            anchors = anchors_of[page]
            if anchors is None or (anchor and anchor not in anchors):
                unresolved.append(f"{relative}: {match.group(0)}")
    return unresolved


def test_no_file_cites_a_spec_outside_the_repository():
    mentioning = files_mentioning(ROOT, MISSING_SPEC)
    assert not mentioning, (
        f"{MISSING_SPEC} is not in this repository; cite the section of docs/tokenset.md or docs/tokenbridge.md "
        f"that says the same instead. Files: {mentioning}"
    )


def test_every_cited_docs_anchor_is_a_heading():
    unresolved = unresolved_citations(ROOT)
    assert not unresolved, f"citations of docs/ pages or headings that do not exist: {unresolved}"


def test_the_algorithm_pages_exist_and_their_own_links_resolve():
    for page in ("tokenset.md", "tokenbridge.md"):
        text = (ROOT / "docs" / page).read_text("utf-8")
        anchors = heading_anchors(text)
        assert {"quirks-we-keep", "differences-on-purpose", "measured-figures"} <= anchors
        in_page = set(re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", text))
        assert in_page <= anchors, f"docs/{page} links to missing headings: {sorted(in_page - anchors)}"


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("Late-step fallback", "late-step-fallback"),
        ("`TokenSetVQVAE`: the set tokenizer", "tokensetvqvae-the-set-tokenizer"),
        ("Steps 21, 22 and 23 (of 25)", "steps-21-22-and-23-of-25"),
        ("[Guidance](#guidance) on features", "guidance-on-features"),
    ],
)
def test_github_anchor(heading, anchor):
    assert github_anchor(heading) == anchor


def test_the_checks_find_what_they_look_for(tmp_path):
    """The two checks above, on a small tree made for them: a bad anchor, a missing page and a stray mention are
    found; fenced code, repeated headings and the skipped directories are handled as on GitHub."""
    page = "docs" + "/page.md"  # built, so that this file cites nothing itself
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Step\n\n```bash\n# not a heading\n```\n\n## Step\n", encoding="utf-8"
    )
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "module.py").write_text(
        f"# {page}#step {page}#step-1 {page}\n# {page}#not-a-heading {page.replace('page', 'other')}#page\n",
        encoding="utf-8",
    )
    (tmp_path / "src" / "notes.md").write_text(f"see {MISSING_SPEC}\n", encoding="utf-8")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "stale.md").write_text(f"{MISSING_SPEC} {page}#gone\n", encoding="utf-8")
    assert heading_anchors((tmp_path / "docs" / "page.md").read_text("utf-8")) == {"page", "step", "step-1"}
    assert files_mentioning(tmp_path, MISSING_SPEC) == [str(Path("src") / "notes.md")]
    assert unresolved_citations(tmp_path) == [
        f"{Path('src') / 'module.py'}: {page}#not-a-heading",
        f"{Path('src') / 'module.py'}: {page.replace('page', 'other')}#page",
    ]
