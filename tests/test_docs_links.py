"""Every link in the repository's Markdown stays inside the repository and resolves.

The docs are read from a checkout, often offline: a link to an outside page breaks there (and rots
everywhere), so a page that must name one (the Open Inference Protocol, W3C Trace Context) names
the project in plain text instead. Checked in each Markdown file that git tracks or would track
(`git ls-files --cached --others --exclude-standard`, so a new page counts before its commit), outside
fenced code, code spans and HTML comments:

- inline links and images `[text](dest)`, reference definitions `[ref]: dest`, autolinks `<scheme:...>`
  and bare `http(s)://` / `www.` text (which GitHub turns into links): any URL with a scheme fails;
- a relative destination must name a file or folder that exists inside the repository, and a
  `#fragment` a heading of that Markdown file (GitHub's heading ids).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
INLINE = re.compile(r"\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE = re.compile(r"^[ ]{0,3}\[[^\]]+\]:[ \t]*(<[^>]*>|\S+)", re.M)
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*)>")
BARE = re.compile(r"(?<![\w/])(?:https?://|www\.)[^\s<>)\]]+", re.I)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{1,31}:")
HEADING = re.compile(r"^[ ]{0,3}#{1,6}[ \t]+(.*?)[ \t#]*$", re.M)


@dataclass(frozen=True)
class Link:
    line: int
    target: str


def markdown_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted({ROOT / name for name in out.stdout.splitlines() if (ROOT / name).is_file()})


def blank(match: re.Match[str]) -> str:
    """The match replaced by spaces, its newlines kept, so line numbers stay true."""
    return re.sub(r"[^\n]", " ", match.group(0))


def unfenced(text: str) -> str:
    """The text with fenced code blocks and HTML comments blanked out."""
    lines, fence = [], ""
    for line in text.split("\n"):
        opened = FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            lines.append("")
        elif opened:
            fence = opened.group(1)
            lines.append("")
        else:
            lines.append(line)
    return HTML_COMMENT.sub(blank, "\n".join(lines))


def prose(text: str) -> str:
    """The text with fenced code blocks, HTML comments and code spans blanked out."""
    return CODE_SPAN.sub(blank, unfenced(text))


def links(text: str) -> list[Link]:
    """Every link destination in a Markdown text, with its line."""
    text = prose(text)
    found: list[tuple[int, str]] = []
    for rx in (INLINE, REFERENCE, AUTOLINK):
        for m in rx.finditer(text):
            found.append((m.start(1), m.group(1).strip("<>")))
    # Bare URLs, except where they already are the destination of a link found above.
    taken = {start for start, _ in found}
    for m in BARE.finditer(text):
        if not any(start <= m.start() < start + len(target) + 1 for start, target in found) and m.start() not in taken:
            found.append((m.start(), m.group(0)))
    return [Link(text.count("\n", 0, start) + 1, target) for start, target in sorted(found)]


def slug(heading: str) -> str:
    """GitHub's id for a heading: markup dropped, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    ids: set[str] = set()
    for m in HEADING.finditer(unfenced(path.read_text())):
        base = slug(m.group(1))
        name, n = base, 0
        while name in ids:
            n += 1
            name = f"{base}-{n}"
        ids.add(name)
    return ids


def problem(source: Path, target: str) -> str | None:
    """Why a link from `source` is wrong, or None."""
    if SCHEME.match(target) or target.lower().startswith("www."):
        return "points outside the repository: name the page in plain text instead"
    if target.startswith("/"):
        return "an absolute path: use a path relative to this file"
    path_part, _, fragment = target.partition("#")
    path_part = path_part.split("?", 1)[0]
    resolved = (source.parent / path_part).resolve() if path_part else source
    if not resolved.is_relative_to(ROOT):
        return "points outside the repository"
    if not resolved.exists():
        return f"{resolved.relative_to(ROOT)} does not exist"
    if fragment and resolved.suffix == ".md" and fragment.lower() not in anchors(resolved):
        return f"{resolved.relative_to(ROOT)} has no heading #{fragment}"
    return None


def test_every_markdown_link_stays_inside_the_repository_and_resolves() -> None:
    files = markdown_files()
    assert ROOT / "README.md" in files and len(files) > 5, files
    bad = []
    for path in files:
        for link in links(path.read_text()):
            if (why := problem(path, link.target)) is not None:
                bad.append(f"{path.relative_to(ROOT)}:{link.line}: ({link.target}) {why}")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_outside_and_broken_links(tmp_path: Path) -> None:
    text = (
        "See [the spec](SPEC.md), [KEDA](https://keda.sh), <http://localhost:8000/docs>,\n"
        "https://example.org/x and `https://in.code/span`.\n"
        '<!-- readme-test: background ready-url="http://127.0.0.1:8000/readyz" -->\n'
        "```bash\ncurl https://in.a.fence\n```\n"
        '[ref]: ../other.md "title"\n'
        "![picture](docs/a.png) [here](#a-heading-with-code)\n"
    )
    found = [(link.line, link.target) for link in links(text)]
    assert found == [
        (1, "SPEC.md"),
        (1, "https://keda.sh"),
        (1, "http://localhost:8000/docs"),
        (2, "https://example.org/x"),
        (7, "../other.md"),
        (8, "docs/a.png"),
        (8, "#a-heading-with-code"),
    ]
    page = ROOT / "README.md"
    assert problem(page, "https://keda.sh") is not None
    assert problem(page, "no/such/file.md") == "no/such/file.md does not exist"
    assert problem(page, "../outside.md") == "points outside the repository"
    assert problem(page, "ARCHITECTURE.md") is None
    assert slug("Dashboard and `neutrino status`") == "dashboard-and-neutrino-status"
    assert slug("2.1 CURVE on tcp:// links") == "21-curve-on-tcp-links"
    assert {"layout", "quickstart"} <= anchors(page)
    assert problem(page, "#no-such-heading") == "README.md has no heading #no-such-heading"
